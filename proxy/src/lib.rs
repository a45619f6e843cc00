//! The mirrord sidecar.
//!
//! - `mirrord-proxy init` ([`iptables`]) runs as the pod's init container and
//!   redirects the pod's inbound ports to the sidecar.
//! - `mirrord-proxy run` ([`run`]) accepts those connections, recovers their
//!   original destination, detects the protocol and proxies them to the app:
//!   raw TCP as bytes, HTTP per request.

pub mod admin;
pub mod app;
pub mod budget;
mod cgroup;
pub mod cpu;
pub mod detect;
mod fasthash;
pub mod gate;
pub mod h1;
pub mod h2;
pub mod inbound;
pub mod iptables;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod pause;
pub mod pool;
pub mod ports;
pub mod pressure;
pub mod rewind;
pub mod run;
mod runtime_thread;
pub mod secret;
pub mod session;
pub mod shutdown;
pub mod socket;
pub mod tcp;
pub mod tunnel;
mod wait;
mod workers;

/// The tunnel's gRPC API (crate `mirrord-api`).
pub use mirrord_api::proto;
