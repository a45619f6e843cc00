//! The injector's metrics, rendered on its admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `injected`, a skip reason, `invalid_annotation` or `error`.
    pub result: &'static str,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub admissions: Family<ResultLabels, Counter>,
    pub duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrord_injector");
        let admissions = Family::default();
        registry.register("admissions", "Admission reviews answered, by result", admissions.clone());
        let buckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
        let duration = Histogram::new(buckets);
        registry.register("admission_duration_seconds", "Time to answer an admission review", duration.clone());
        Metrics { registry, admissions, duration }
    }
}

impl Metrics {
    pub fn admission(&self, result: &'static str) {
        self.admissions.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
