//! The injector's metrics, rendered on its admin port.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::mutate::Skip;

/// What became of one admission review.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Admission {
    Injected,
    Skipped(Skip),
    /// Admitted unchanged with a warning: this annotation cannot be honoured.
    Invalid(&'static str),
    /// Not answered with an AdmissionReview.
    Error(Failure),
}

/// Why an admission got no AdmissionReview back.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Failure {
    /// Over the body cap, or too many JSON values or levels (413 or 400).
    TooLarge,
    /// The body did not arrive in time (408).
    Timeout,
    /// The body could not be read (400).
    Unreadable,
    /// Not an AdmissionReview that can be answered (400).
    BadReview,
    /// The webhook failed on it (500).
    Panic,
}

impl Admission {
    fn labels(self) -> AdmissionLabels {
        let (result, reason) = match self {
            Admission::Injected => ("injected", ""),
            Admission::Skipped(skip) => ("skipped", skip.reason()),
            Admission::Invalid(key) => ("invalid", key),
            Admission::Error(failure) => ("error", failure.reason()),
        };
        AdmissionLabels { result: Label(result), reason: Label(reason) }
    }
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::TooLarge => "too_large",
            Failure::Timeout => "timeout",
            Failure::Unreadable => "unreadable",
            Failure::BadReview => "bad_review",
            Failure::Panic => "panic",
        }
    }
}

/// A label value from a fixed set (bounded cardinality).
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct Label(&'static str);

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0, encoder)
    }
}

/// `result`: injected, skipped, invalid or error; `reason`: the skip
/// reason, the annotation that cannot be honoured, or the failure.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    result: Label,
    reason: Label,
}

/// Calls to the Kubernetes API.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ApiCall {
    /// Listing and watching Namespaces for the opt-in annotation.
    WatchNamespaces,
    /// Writing the CA into the webhook configuration (`--self-signed`).
    PatchCaBundle,
}

impl ApiCall {
    fn label(self) -> Label {
        Label(match self {
            ApiCall::WatchNamespaces => "watch_namespaces",
            ApiCall::PatchCaBundle => "patch_ca_bundle",
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    operation: Label,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    admissions: Family<AdmissionLabels, Counter>,
    pub duration: Histogram,
    api_errors: Family<ApiLabels, Counter>,
    /// When the serving certificate expires (Unix seconds); 0 until one is loaded.
    pub certificate_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrord_injector");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        // Every failure exists at 0 from the start, so that a rate over
        // them has data from the first failure on.
        for failure in [Failure::TooLarge, Failure::Timeout, Failure::Unreadable, Failure::BadReview, Failure::Panic] {
            let _ = admissions.get_or_create(&Admission::Error(failure).labels());
        }
        registry.register("admissions", "Admission reviews answered, by result and reason", admissions.clone());
        let buckets = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
        let duration = Histogram::new(buckets);
        registry.register_with_unit(
            "admission_duration",
            "Time to answer an admission review",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        let api_errors = Family::<ApiLabels, Counter>::default();
        // Present at 0 from the start, so that a rate over them has data.
        for call in [ApiCall::WatchNamespaces, ApiCall::PatchCaBundle] {
            let _ = api_errors.get_or_create(&ApiLabels { operation: call.label() });
        }
        registry.register("api_errors", "Failed calls to the Kubernetes API, by operation", api_errors.clone());
        let certificate_expiry = Gauge::default();
        registry.register_with_unit(
            "certificate_expiry_timestamp",
            "When the serving certificate expires, as a Unix timestamp",
            prometheus_client::registry::Unit::Seconds,
            certificate_expiry.clone(),
        );
        registry.register(
            "build",
            "The injector's version",
            Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
        );
        Metrics { registry, admissions, duration, api_errors, certificate_expiry }
    }
}

impl Metrics {
    pub fn admission(&self, admission: Admission) {
        self.admissions.get_or_create(&admission.labels()).inc();
    }

    pub fn api_error(&self, call: ApiCall) {
        self.api_errors.get_or_create(&ApiLabels { operation: call.label() }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
