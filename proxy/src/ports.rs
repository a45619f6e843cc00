//! Port lists as given on the command line and in annotations: `80,8080`,
//! `8000-8010`, or `*` for every port.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A set of ports, or all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortList {
    All,
    Some(BTreeSet<u16>),
}

impl PortList {
    pub fn contains(&self, port: u16) -> bool {
        match self {
            PortList::All => true,
            PortList::Some(p) => p.contains(&port),
        }
    }

    /// The explicit ports (empty for `*`).
    pub fn ports(&self) -> BTreeSet<u16> {
        match self {
            PortList::All => BTreeSet::new(),
            PortList::Some(p) => p.clone(),
        }
    }
}

impl Default for PortList {
    fn default() -> Self {
        PortList::Some(BTreeSet::new())
    }
}

impl FromStr for PortList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(PortList::All);
        }
        let mut ports = BTreeSet::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let port = |s: &str| match s.trim().parse::<u16>() {
                Ok(p) if p != 0 => Ok(p),
                _ => Err(format!("invalid port {s:?} in {text:?}: expected 1-65535, a range such as 8000-8010, or *")),
            };
            match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(format!("invalid port range {item:?}: the first port must not exceed the second"));
                    }
                    ports.extend(lo..=hi);
                }
                None => {
                    ports.insert(port(item)?);
                }
            }
        }
        Ok(PortList::Some(ports))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortList::All => f.write_str("*"),
            PortList::Some(p) => {
                let list: Vec<String> = p.iter().map(u16::to_string).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("*".parse::<PortList>(), Ok(PortList::All));
        assert_eq!("".parse::<PortList>(), Ok(PortList::default()));
        let p: PortList = "8080, 80,9000-9002".parse().unwrap();
        assert_eq!(p.to_string(), "80,8080,9000,9001,9002");
        assert!("0".parse::<PortList>().unwrap_err().contains("invalid port \"0\""));
        assert!("70000".parse::<PortList>().is_err());
        assert!("90-80".parse::<PortList>().unwrap_err().contains("range"));
        assert!("http".parse::<PortList>().is_err());
    }
}
