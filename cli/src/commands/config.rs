//! `mirrord-cli config check FILE` and `mirrord-cli config schema`.

use std::io::Write;
use std::path::PathBuf;

use mirrord_config::Config;

use crate::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Validate a session config (JSON, YAML or TOML) and summarise what it will do.
    Check {
        /// The config file; the format comes from its extension.
        file: PathBuf,
    },
    /// Print the JSON schema of the session config (for editors and CI).
    Schema,
}

/// Runs a `config` subcommand, writing results to `out` and errors to `err`.
pub fn run(cmd: &ConfigCommand, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match cmd {
        ConfigCommand::Check { file } => match Config::load(file) {
            Ok(config) => {
                let _ = writeln!(out, "{}: ok: {config}", file.display());
                for w in config.warnings() {
                    let _ = writeln!(err, "warning: {w}");
                }
                ExitCode::Ok
            }
            Err(e @ mirrord_config::Error::Read { .. }) => {
                let _ = writeln!(err, "error: {e}");
                ExitCode::Failure
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                ExitCode::InvalidConfig
            }
        },
        ConfigCommand::Schema => {
            let schema = serde_json::to_string_pretty(&mirrord_config::schema()).unwrap_or_default();
            let _ = writeln!(out, "{schema}");
            ExitCode::Ok
        }
    }
}
