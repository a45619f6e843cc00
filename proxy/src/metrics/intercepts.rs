//! A session's count of intercepted requests and connections
//! (`mirrord_proxy_intercepted_total`), per port and mode.

use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;

use super::{InterceptLabels, InterceptMode, Metrics, SessionLabel};

/// Each counter is found in the registry once per port and mode, then kept:
/// an intercepted request increments it without hashing its labels (the
/// session's name among them) and reading the registry's lock. A session
/// holds one counter per port and mode it took traffic on, as many as the
/// registry itself holds for it.
#[derive(Debug)]
pub struct Intercepts {
    label: SessionLabel,
    found: Mutex<Vec<(u16, InterceptMode, Counter)>>,
}

impl Intercepts {
    pub fn new(label: SessionLabel) -> Intercepts {
        Intercepts { label, found: Mutex::default() }
    }

    /// Counts one request or connection taken on `port` in `mode`.
    pub fn count(&self, metrics: &Metrics, port: u16, mode: InterceptMode) {
        // A panic elsewhere cannot leave the list half-changed: it is only
        // pushed to.
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, counter)) = found.iter().find(|(p, m, _)| *p == port && *m == mode) {
            counter.inc();
            return;
        }
        let labels = InterceptLabels { port, mode, session: self.label.clone() };
        let counter = metrics.intercepted.get_or_create(&labels).clone();
        counter.inc();
        found.push((port, mode, counter));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The kept counters are the registry's: what a session counts shows in
    /// the rendered metrics, per port and mode, beside another session's.
    #[test]
    fn kept_counters_are_the_registrys() {
        let metrics = Metrics::default();
        let (alice, bob) =
            (Intercepts::new(metrics.session_label("alice")), Intercepts::new(metrics.session_label("bob")));
        for _ in 0..3 {
            alice.count(&metrics, 80, InterceptMode::Mirror);
        }
        alice.count(&metrics, 80, InterceptMode::Steal);
        alice.count(&metrics, 81, InterceptMode::Mirror);
        bob.count(&metrics, 80, InterceptMode::Mirror);
        let text = metrics.render();
        for series in [
            r#"{port="80",mode="mirror",session="alice"} 3"#,
            r#"{port="80",mode="steal",session="alice"} 1"#,
            r#"{port="81",mode="mirror",session="alice"} 1"#,
            r#"{port="80",mode="mirror",session="bob"} 1"#,
        ] {
            assert!(text.contains(&format!("mirrord_proxy_intercepted_total{series}\n")), "{series} not in\n{text}");
        }
        assert_eq!(text.matches("mirrord_proxy_intercepted_total{").count(), 4, "{text}");
    }
}
