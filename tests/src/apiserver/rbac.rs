//! RBAC as the stand-in enforces it: a ClusterRole's rules.

use serde_json::Value;

/// A rule of a (Cluster)Role, as RBAC evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    /// Empty: every name.
    pub names: Vec<String>,
}

impl Rule {
    /// The rules of a ClusterRole or Role object.
    pub fn of_role(role: &Value) -> Vec<Rule> {
        let list = |r: &Value, key: &str| -> Vec<String> {
            r[key].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
        };
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| Rule {
                groups: list(r, "apiGroups"),
                resources: list(r, "resources"),
                verbs: list(r, "verbs"),
                names: list(r, "resourceNames"),
            })
            .collect()
    }

    /// Whether this rule grants `verb` on `resource` (as `pods/portforward`)
    /// in API group `group`, on the object `name` when the request names one.
    pub fn allows(&self, group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
        let has = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        has(&self.groups, group)
            && has(&self.resources, resource)
            && has(&self.verbs, verb)
            && (self.names.is_empty() || name.is_some_and(|n| self.names.iter().any(|x| x == n)))
    }
}
