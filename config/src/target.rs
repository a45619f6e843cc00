//! The `target` key: which workload's pods the session attaches to.

use std::fmt;
use std::str::FromStr;

/// Kinds of workload a session can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Pod,
    Deployment,
    StatefulSet,
    ReplicaSet,
    Job,
    CronJob,
    Rollout,
    Service,
    /// The pods a label selector picks; the target's name is the selector.
    Label,
}

impl TargetKind {
    /// Kinds as a target path spells them: mirrord's set, case-sensitive
    /// (`Deployment/api` is refused there too), with its `deploy` alias.
    const ALL: [(&'static str, TargetKind); 10] = [
        ("pod", TargetKind::Pod),
        ("deployment", TargetKind::Deployment),
        ("deploy", TargetKind::Deployment),
        ("statefulset", TargetKind::StatefulSet),
        ("replicaset", TargetKind::ReplicaSet),
        ("job", TargetKind::Job),
        ("cronjob", TargetKind::CronJob),
        ("rollout", TargetKind::Rollout),
        ("service", TargetKind::Service),
        ("label", TargetKind::Label),
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
    /// The object's name; for [`TargetKind::Label`] the selector
    /// (`app=api,tier=web`).
    pub name: String,
    pub container: Option<String>,
    pub namespace: Option<String>,
}

impl Target {
    /// Parses a target path and checks the namespace; `Err` explains what was
    /// expected. `Ok(None)` is `targetless`.
    pub fn parse(path: &str, namespace: Option<&str>) -> Result<Option<Self>, String> {
        if let Some(ns) = namespace {
            check_dns_label(ns, "namespace")?;
        }
        if path == "targetless" {
            return Ok(None);
        }
        let mut target: Target = path.parse()?;
        target.namespace = namespace.map(str::to_owned);
        Ok(Some(target))
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(path: &str) -> Result<Self, String> {
        let expected = "expected \"KIND/NAME\" or \"KIND/NAME/container/CONTAINER\", e.g. \"deployment/api\"";
        let invalid = |e: String| format!("invalid target {path:?}: {e}");
        let (head, container) = match path.rsplit_once("/container/") {
            Some((head, c)) => (head, Some(c)),
            None => (path, None),
        };
        let Some((kind, name)) = head.split_once('/') else {
            return Err(invalid(expected.to_owned()));
        };
        let kind = TargetKind::ALL.iter().find(|(s, _)| *s == kind).map(|(_, k)| *k).ok_or_else(|| {
            let kinds: Vec<&str> = TargetKind::ALL.iter().map(|(s, _)| *s).collect();
            let hint = crate::suggest::nearest(kind, kinds.iter().copied())
                .map(|k| format!("did you mean {k:?}? "))
                .unwrap_or_default();
            invalid(format!("unknown kind {kind:?}, {hint}expected one of {} (lowercase)", kinds.join(", ")))
        })?;
        let name = match kind {
            TargetKind::Label => label_selector(name).map_err(invalid)?,
            _ if name.contains('/') => return Err(invalid(expected.to_owned())),
            _ => {
                check_dns_subdomain(name, "name").map_err(invalid)?;
                name.to_owned()
            }
        };
        if let Some(c) = container {
            check_dns_label(c, "container name").map_err(invalid)?;
        }
        Ok(Target { kind, name, container: container.map(str::to_owned), namespace: None })
    }
}

/// `key=value,…` as mirrord's `label/` targets write it: keys unique and
/// not empty.
fn label_selector(selector: &str) -> Result<String, String> {
    let mut keys = std::collections::BTreeSet::new();
    for requirement in selector.split(',') {
        let (key, _) = requirement.split_once('=').filter(|(k, _)| !k.is_empty()).ok_or_else(|| {
            format!("invalid label selector {selector:?}: expected key=value pairs separated by commas")
        })?;
        if !keys.insert(key) {
            return Err(format!("invalid label selector {selector:?}: key {key:?} is given twice"));
        }
    }
    Ok(selector.to_owned())
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
        let t = Target::parse("statefulset/db", Some("prod")).unwrap().unwrap();
        assert_eq!(t.to_string(), "statefulset/db in namespace prod");
        let t: Target = "deploy/api".parse().unwrap();
        assert_eq!((t.kind, t.to_string().as_str()), (TargetKind::Deployment, "deployment/api"));
        let t: Target = "label/app=api,tier=web/container/app".parse().unwrap();
        assert_eq!(
            (t.kind, t.name.as_str(), t.container.as_deref()),
            (TargetKind::Label, "app=api,tier=web", Some("app"))
        );
        assert_eq!(Target::parse("targetless", None), Ok(None));
    }

    #[test]
    fn rejects_with_reasons() {
        let e = "deploymnt/api".parse::<Target>().unwrap_err();
        assert!(e.contains("did you mean \"deployment\""), "{e}");
        assert!("api".parse::<Target>().unwrap_err().contains("expected \"KIND/NAME\""));
        assert!("pod/API".parse::<Target>().unwrap_err().contains("invalid name \"API\""));
        assert!("pod/a/cont/b".parse::<Target>().is_err());
        assert!(Target::parse("pod/a", Some("Bad_NS")).unwrap_err().contains("invalid namespace"));
        // Kinds are case-sensitive, as in mirrord.
        let e = "Deployment/api".parse::<Target>().unwrap_err();
        assert!(e.contains("did you mean \"deployment\""), "{e}");
        assert!("daemonset/x".parse::<Target>().unwrap_err().contains("unknown kind \"daemonset\""));
        assert!("label/app=a,app=b".parse::<Target>().unwrap_err().contains("key \"app\" is given twice"));
        assert!("label/=a".parse::<Target>().unwrap_err().contains("expected key=value pairs"));
    }
}
