//! `mirrord-cli`: what the developer runs.
//!
//! Each subcommand lives in [`commands`]; `main` only parses arguments and
//! maps the outcome to an exit code (see [`ExitCode`]).

pub mod cluster;
pub mod commands;
mod deliver;
mod inbound_body;
mod local;
mod status;
pub mod vars;

/// Documented exit codes of `mirrord-cli`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Something failed at run time (I/O, network).
    Failure = 1,
    /// The config (or a flag) is invalid; nothing was attempted.
    InvalidConfig = 2,
    /// The sidecar refused the session (conflict, version, token).
    Refused = 3,
    /// The target cannot be used: not found, no running pod, no pod with
    /// the sidecar, or a kind that has no pods of its own.
    Target = 4,
    /// The Kubernetes API cannot be used: no or unknown kubeconfig context,
    /// unreachable, or the request was forbidden (RBAC).
    Cluster = 5,
    /// `connect -- CMD`: the command's own exit code (128 + the signal's
    /// number when a signal ended it).
    Command(u8),
}

impl ExitCode {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            ExitCode::Ok => 0,
            ExitCode::Failure => 1,
            ExitCode::InvalidConfig => 2,
            ExitCode::Refused => 3,
            ExitCode::Target => 4,
            ExitCode::Cluster => 5,
            ExitCode::Command(code) => code,
        }
    }
}
