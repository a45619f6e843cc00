//! The mirrord mutating admission webhook.
//!
//! For every pod that opts in (the `mirrord.dev/inject: "enabled"` annotation
//! on its template or its Namespace, see [`mirrord_config::names`]), it adds
//! the `mirrord-proxy init` init container, the `mirrord-proxy run` sidecar
//! and `shareProcessNamespace: true`. This crate holds the pure `Pod -> Pod`
//! mutation, the HTTPS server and its TLS.
