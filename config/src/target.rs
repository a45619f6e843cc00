//! The `target` key: which workload's pods the session attaches to.

use std::fmt;
use std::str::FromStr;

/// Kinds of workload a session can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
    Rollout,
    Service,
}

impl TargetKind {
    const ALL: [(&'static str, TargetKind); 9] = [
        ("pod", TargetKind::Pod),
        ("deployment", TargetKind::Deployment),
        ("statefulset", TargetKind::StatefulSet),
        ("daemonset", TargetKind::DaemonSet),
        ("replicaset", TargetKind::ReplicaSet),
        ("job", TargetKind::Job),
        ("cronjob", TargetKind::CronJob),
        ("rollout", TargetKind::Rollout),
        ("service", TargetKind::Service),
    ];

    /// The kind as written in a target path.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("pod", |(s, _)| s)
    }
}

/// A validated target: `kind/name[/container/container]` plus an optional namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: TargetKind,
    pub name: String,
    pub container: Option<String>,
    pub namespace: Option<String>,
}

impl Target {
    /// Parses a target path and checks the namespace; `Err` explains what was expected.
    pub fn parse(path: &str, namespace: Option<&str>) -> Result<Self, String> {
        let mut target: Target = path.parse()?;
        if let Some(ns) = namespace {
            check_dns_label(ns, "namespace")?;
            target.namespace = Some(ns.to_owned());
        }
        Ok(target)
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(path: &str) -> Result<Self, String> {
        let expected = "expected \"KIND/NAME\" or \"KIND/NAME/container/CONTAINER\", e.g. \"deployment/api\"";
        let parts: Vec<&str> = path.split('/').collect();
        let (kind, name, container) = match parts.as_slice() {
            [kind, name] => (*kind, *name, None),
            [kind, name, "container", c] => (*kind, *name, Some(*c)),
            _ => return Err(format!("invalid target {path:?}: {expected}")),
        };
        let kind =
            TargetKind::ALL.iter().find(|(s, _)| s.eq_ignore_ascii_case(kind)).map(|(_, k)| *k).ok_or_else(|| {
                let kinds: Vec<&str> = TargetKind::ALL.iter().map(|(s, _)| *s).collect();
                let hint = crate::suggest::nearest(kind, kinds.iter().copied())
                    .map(|k| format!("did you mean {k:?}? "))
                    .unwrap_or_default();
                format!("invalid target {path:?}: unknown kind {kind:?}, {hint}expected one of {}", kinds.join(", "))
            })?;
        check_dns_subdomain(name, "name").map_err(|e| format!("invalid target {path:?}: {e}"))?;
        if let Some(c) = container {
            check_dns_label(c, "container name").map_err(|e| format!("invalid target {path:?}: {e}"))?;
        }
        Ok(Target { kind, name: name.to_owned(), container: container.map(str::to_owned), namespace: None })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)?;
        if let Some(c) = &self.container {
            write!(f, "/container/{c}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in namespace {ns}")?;
        }
        Ok(())
    }
}

fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn check_dns_label(s: &str, what: &str) -> Result<(), String> {
    if is_label(s) {
        Ok(())
    } else {
        Err(format!("invalid {what} {s:?}: expected lowercase letters, digits and '-', at most 63 characters"))
    }
}

fn check_dns_subdomain(s: &str, what: &str) -> Result<(), String> {
    if s.len() <= 253 && s.split('.').all(is_label) {
        Ok(())
    } else {
        Err(format!("invalid {what} {s:?}: expected a Kubernetes object name (lowercase letters, digits, '-' and '.')"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        let t: Target = "deployment/api".parse().unwrap();
        assert_eq!((t.kind, t.name.as_str(), t.container), (TargetKind::Deployment, "api", None));
        let t: Target = "pod/api-7d9f-x2/container/app".parse().unwrap();
        assert_eq!(t.container.as_deref(), Some("app"));
        assert_eq!(t.to_string(), "pod/api-7d9f-x2/container/app");
        let t = Target::parse("statefulset/db", Some("prod")).unwrap();
        assert_eq!(t.to_string(), "statefulset/db in namespace prod");
    }

    #[test]
    fn rejects_with_reasons() {
        let e = "deploymnt/api".parse::<Target>().unwrap_err();
        assert!(e.contains("did you mean \"deployment\""), "{e}");
        assert!("api".parse::<Target>().unwrap_err().contains("expected \"KIND/NAME\""));
        assert!("pod/API".parse::<Target>().unwrap_err().contains("invalid name \"API\""));
        assert!("pod/a/cont/b".parse::<Target>().is_err());
        assert!(Target::parse("pod/a", Some("Bad_NS")).unwrap_err().contains("invalid namespace"));
    }
}
