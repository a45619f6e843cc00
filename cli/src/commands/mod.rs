//! One module per subcommand.

pub mod config;
pub mod connect;
pub mod demo;
pub mod inject;
pub mod status;
