//! The mirrord mutating admission webhook.
//!
//! For every pod that opts in (the `mirrord.dev/inject: "enabled"` annotation
//! on its template or its Namespace, see [`mirrord_config::names`]), it adds
//! the `mirrord-proxy init` init container, the `mirrord-proxy run` sidecar
//! and `shareProcessNamespace: true`. [`mutate`] is the pure `Pod -> Pod`
//! mutation; [`patch`] turns the difference into the JSON Patch an admission
//! response carries.

pub mod kube;
pub mod metrics;
pub mod mutate;
pub mod namespaces;
pub mod patch;
pub mod review;
pub mod run;
pub mod server;
pub mod tls;
