//! The routing decision against a model of the documented rules
//! (docs/steal.md), over generated sessions, filters, ports and requests
//! (proptest): the first connected matching steal takes the request, every
//! matching mirror gets a copy, nobody else sees it, and a session with a
//! filter never takes a connection that is not HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mirrord_config::Config;
use mirrord_proxy::ports::PortList;
use mirrord_proxy::session::{RequestView, Session, Sessions};
use proptest::prelude::*;

const PORTS: [u16; 3] = [80, 81, 82];
const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Debug, Clone)]
struct Spec {
    steal: bool,
    /// `incoming.ports`.
    ports: Option<Vec<u16>>,
    /// A header filter on `x-user`, with its own `ports`.
    filter: Option<(&'static str, Option<Vec<u16>>)>,
}

impl Spec {
    fn json(&self) -> String {
        let mut incoming = serde_json::json!({ "mode": if self.steal { "steal" } else { "mirror" } });
        if let Some(ports) = &self.ports {
            incoming["ports"] = serde_json::json!(ports);
        }
        if let Some((user, ports)) = &self.filter {
            incoming["http_filter"] = serde_json::json!({ "header_filter": format!("^x-user: {user}$") });
            if let Some(ports) = ports {
                incoming["http_filter"]["ports"] = serde_json::json!(ports);
            }
        }
        serde_json::json!({ "feature": { "network": { "incoming": incoming } } }).to_string()
    }

    /// The model: does this session get a request (or, with `user` `None`
    /// and `http` false, a raw connection) on `port`?
    fn gets(&self, port: u16, http: bool, user: Option<&str>) -> bool {
        let takes = match (&self.ports, &self.filter) {
            (Some(ports), _) => ports.contains(&port),
            (None, Some((_, Some(filter_ports)))) => filter_ports.contains(&port),
            (None, _) => true,
        };
        let filtered_here = match &self.filter {
            Some((_, Some(filter_ports))) => filter_ports.contains(&port),
            Some((_, None)) => true,
            None => false,
        };
        let wanted = match &self.filter {
            Some((want, _)) if filtered_here => http && user == Some(*want),
            _ => true,
        };
        takes && wanted
    }
}

fn ports() -> impl Strategy<Value = Vec<u16>> {
    proptest::sample::subsequence(PORTS.to_vec(), 1..=3)
}

fn spec() -> impl Strategy<Value = Spec> {
    let filter = proptest::option::of((proptest::sample::select(USERS.to_vec()), proptest::option::of(ports())));
    (any::<bool>(), proptest::option::of(ports()), filter).prop_map(|(steal, ports, filter)| Spec {
        steal,
        ports,
        filter,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn routing_follows_the_documented_rules(
        specs in proptest::collection::vec(spec(), 0..6),
        requests in proptest::collection::vec(
            (proptest::sample::select(PORTS.to_vec()), any::<bool>(), proptest::option::of(proptest::sample::select(USERS.to_vec()))),
            1..8,
        ),
    ) {
        let sessions = Sessions::new(PortList::All);
        let mut admitted: Vec<(usize, Spec)> = Vec::new();
        let mut receivers = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let config = Config::from_json(&spec.json()).expect("a valid config");
            let (session, rx) = Session::new(i as u64, format!("s{i}"), format!("s{i}"), "s".into(), config);
            // Two sessions that would steal a port whole conflict; the
            // second is refused (on_concurrent_steal: abort).
            if sessions.add(session).is_ok() {
                admitted.push((i, spec.clone()));
                receivers.push(rx);
            }
        }
        for (port, http, user) in requests {
            let header;
            let headers: Vec<(&str, &[u8])> = match user {
                Some(u) => { header = u.as_bytes(); vec![("x-user", header)] }
                None => Vec::new(),
            };
            let view = RequestView { method: "GET", path: "/", headers: &headers, body: None };
            let decision = sessions.decide(port, http.then_some(view));
            let user = if http { user } else { None };
            let getting: Vec<&(usize, Spec)> = admitted.iter().filter(|(_, s)| s.gets(port, http, user)).collect();
            let want_steal = getting.iter().find(|(_, s)| s.steal).map(|(i, _)| format!("s{i}"));
            let want_mirrors: Vec<String> = getting.iter().filter(|(_, s)| !s.steal).map(|(i, _)| format!("s{i}")).collect();
            let got_steal = decision.steal.as_ref().map(|s| s.name.clone());
            let got_mirrors: Vec<String> = decision.mirrors.iter().map(|s| s.name.clone()).collect();
            prop_assert_eq!(&got_steal, &want_steal, "steal on port {} (http {}, user {:?})", port, http, user);
            prop_assert_eq!(&got_mirrors, &want_mirrors, "mirrors on port {} (http {}, user {:?})", port, http, user);
        }
    }
}
