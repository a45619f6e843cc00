//! Two sessions that would both steal a port whole: the newcomer's
//! `on_concurrent_steal` decides. `abort` (the default) refuses it;
//! `continue` lets it go on without the contested ports; `override` hands
//! the ports to it, and the session that had them is told. A port given up
//! comes back when the session it went to leaves, and its owner is told.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mirrord_config::ConcurrentSteal;

use super::plan::{conflicting_ports, Conflict};
use super::Session;
use crate::ports::PortList;
use crate::proto::{self, session_event};

/// Ports a session has given up to another one: port → (its seq, its name).
#[derive(Debug, Default)]
pub struct Yielded {
    ports: Mutex<BTreeMap<u16, (u64, String)>>,
    /// Whether any port is given up: the data path's check without a lock.
    any: AtomicBool,
}

impl Yielded {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, (u64, String)>> {
        // Only inserted into and removed from: a panic cannot leave it torn.
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this port was given up (the session does not take it).
    pub fn contains(&self, port: u16) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().contains_key(&port)
    }

    /// The session a port was given up to, by name.
    pub fn holder(&self, port: u16) -> Option<String> {
        self.lock().get(&port).map(|(_, name)| name.clone())
    }

    fn give(&self, ports: &[u16], to: &Session) {
        let mut map = self.lock();
        for &p in ports {
            map.insert(p, (to.seq, to.name.clone()));
        }
        self.any.store(!map.is_empty(), Ordering::Release);
    }

    fn take_back(&self, from: u64) -> Vec<u16> {
        let mut map = self.lock();
        let back: Vec<u16> = map.iter().filter(|(_, (seq, _))| *seq == from).map(|(p, _)| *p).collect();
        for p in &back {
            map.remove(p);
        }
        self.any.store(!map.is_empty(), Ordering::Release);
        back
    }
}

/// Admits `new` beside the connected sessions, resolving every port both
/// would steal whole as its `on_concurrent_steal` says. `Ok` holds lines
/// for its plan's warnings; `Err` the refusal. Nothing changes on `Err`.
pub fn admit(connected: &[Arc<Session>], new: &Session, known: &PortList) -> Result<Vec<String>, Conflict> {
    let contested: Vec<(&Arc<Session>, Vec<u16>)> = connected
        .iter()
        .map(|other| (other, conflicting_ports(other, new, known)))
        .filter(|(_, ports)| !ports.is_empty())
        .collect();
    let mut warnings = Vec::new();
    for (other, ports) in &contested {
        match new.config.incoming.on_concurrent_steal {
            ConcurrentSteal::Abort => return Err(Conflict { port: ports[0], holder: other.name.clone() }),
            ConcurrentSteal::Continue => {
                new.yielded.give(ports, other);
                warnings.push(format!(
                    "{} stolen whole by session {:?}: this session goes on without {} (on_concurrent_steal: continue) until that session leaves",
                    ports_are(ports),
                    other.name,
                    if ports.len() == 1 { "it" } else { "them" }
                ));
            }
            ConcurrentSteal::Override => {
                other.yielded.give(ports, new);
                notice(
                    other,
                    format!(
                        "session {:?} took over {} (on_concurrent_steal: override): this session no longer steals there until that session leaves",
                        new.name,
                        ports_list(ports)
                    ),
                );
                warnings.push(format!(
                    "took over {} from session {:?} (on_concurrent_steal: override); it has been told",
                    ports_list(ports),
                    other.name
                ));
            }
        }
    }
    Ok(warnings)
}

/// `gone` left: the ports others gave up to it are theirs again.
pub fn release(connected: &[Arc<Session>], gone: &Session) {
    for session in connected {
        let back = session.yielded.take_back(gone.seq);
        if !back.is_empty() {
            notice(session, format!("session {:?} left: this session steals {} again", gone.name, ports_list(&back)));
        }
    }
}

fn notice(session: &Session, message: String) {
    session.notify(session_event::Kind::Notice(proto::Notice { message }));
}

fn ports_list(ports: &[u16]) -> String {
    let list = ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    if ports.len() == 1 {
        format!("port {list}")
    } else {
        format!("ports {list}")
    }
}

fn ports_are(ports: &[u16]) -> String {
    format!("{} {}", ports_list(ports), if ports.len() == 1 { "is" } else { "are" })
}

#[cfg(test)]
mod tests {
    use mirrord_config::Config;

    use super::super::{Events, Sessions};
    use super::*;

    fn session(sessions: &Sessions, name: &str, json: &str) -> (Arc<Session>, Events) {
        Session::new(
            sessions.next_seq(),
            format!("secret-{name}"),
            name.to_owned(),
            name.into(),
            Config::from_json(json).unwrap(),
        )
    }

    fn steal(on_concurrent_steal: &str) -> String {
        format!(
            r#"{{"feature":{{"network":{{"incoming":{{"mode":"steal","on_concurrent_steal":"{on_concurrent_steal}"}}}}}}}}"#
        )
    }

    fn notices(events: &mut Events) -> Vec<String> {
        let mut found = Vec::new();
        while let Ok(Ok(proto::SessionEvent { kind: Some(session_event::Kind::Notice(n)) })) = events.try_recv() {
            found.push(n.message);
        }
        found
    }

    fn thief(sessions: &Sessions, port: u16) -> Option<String> {
        sessions.decide(port, None).steal.map(|s| s.name.clone())
    }

    #[test]
    fn abort_refuses_and_changes_nothing() {
        let sessions = Sessions::new(PortList::Some([80, 5432].into()));
        let (a, _ea) = session(&sessions, "alice", &steal("abort"));
        sessions.add(a).unwrap();
        let (b, _eb) = session(&sessions, "bob", &steal("abort"));
        let e = sessions.add(b).unwrap_err().to_string();
        assert!(e.starts_with("port 80 is already stolen whole by session \"alice\""), "{e}");
        assert_eq!(thief(&sessions, 80).as_deref(), Some("alice"));
    }

    #[test]
    fn continue_goes_on_without_the_ports_and_gets_them_back() {
        let sessions = Sessions::new(PortList::Some([80, 5432].into()));
        let (a, _ea) = session(&sessions, "alice", &steal("abort"));
        let alice = a.seq;
        sessions.add(a).unwrap();
        let (b, mut eb) = session(&sessions, "bob", &steal("continue"));
        let warnings = sessions.add(b.clone()).unwrap();
        assert_eq!(
            warnings,
            ["ports 80, 5432 are stolen whole by session \"alice\": this session goes on without them (on_concurrent_steal: continue) until that session leaves"]
        );
        assert_eq!(thief(&sessions, 80).as_deref(), Some("alice"));
        let (lines, _) = super::super::plan(&b, &sessions.known_ports);
        assert_eq!(lines[0].action, "untouched (stolen whole by session \"alice\")");
        sessions.remove(alice);
        assert_eq!(thief(&sessions, 80).as_deref(), Some("bob"));
        assert_eq!(notices(&mut eb), ["session \"alice\" left: this session steals ports 80, 5432 again"]);
    }

    #[test]
    fn override_takes_the_ports_and_tells_the_other_session() {
        let sessions = Sessions::new(PortList::Some([80].into()));
        let (a, mut ea) = session(&sessions, "alice", &steal("abort"));
        sessions.add(a.clone()).unwrap();
        let (b, _eb) = session(&sessions, "bob", &steal("override"));
        let bob = b.seq;
        let warnings = sessions.add(b).unwrap();
        assert_eq!(
            warnings,
            ["took over port 80 from session \"alice\" (on_concurrent_steal: override); it has been told"]
        );
        assert_eq!(thief(&sessions, 80).as_deref(), Some("bob"));
        assert_eq!(
            notices(&mut ea),
            ["session \"bob\" took over port 80 (on_concurrent_steal: override): this session no longer steals there until that session leaves"]
        );
        // A third session meets bob, not alice, on port 80.
        let (c, _ec) = session(&sessions, "carol", &steal("abort"));
        match sessions.add(c) {
            Err(super::super::Refusal::Conflict(conflict)) => assert_eq!(conflict.holder, "bob"),
            other => panic!("expected a conflict with bob, got {other:?}"),
        }
        sessions.remove(bob);
        assert_eq!(thief(&sessions, 80).as_deref(), Some("alice"));
        assert_eq!(notices(&mut ea), ["session \"bob\" left: this session steals port 80 again"]);
    }

    #[test]
    fn filtered_sessions_never_contest() {
        let sessions = Sessions::new(PortList::Some([80].into()));
        let filtered =
            r#"{"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x: 1"}}}}}"#;
        let (a, _ea) = session(&sessions, "alice", filtered);
        sessions.add(a).unwrap();
        let (b, _eb) = session(&sessions, "bob", &steal("abort"));
        assert!(sessions.add(b).unwrap().is_empty());
    }
}
