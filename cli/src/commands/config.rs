//! `mirrord-cli config check FILE` and `mirrord-cli config schema`.

use std::io::Write;
use std::path::{Path, PathBuf};

use mirrord_config::{Config, KeySource, Loaded, Vars};

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
        ConfigCommand::Check { file } => check(file, &crate::vars::from_environment(), out, err),
        ConfigCommand::Schema => {
            let schema = serde_json::to_string_pretty(&mirrord_config::schema()).unwrap_or_default();
            let _ = writeln!(out, "{schema}");
            ExitCode::Ok
        }
    }
}

/// `config check FILE`: the summary, then one line per fact (target, key,
/// keys set aside, what happens on each port); warnings on `err`.
pub fn check(file: &Path, vars: &Vars, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    match Config::load(file, vars) {
        Ok(loaded) => {
            let _ = write!(out, "{}", report(file, &loaded));
            for w in loaded.config.warnings() {
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
    }
}

/// What `config check` prints for a valid config.
pub fn report(file: &Path, loaded: &Loaded) -> String {
    let config = &loaded.config;
    let mut text = format!("{}: ok: {config}\n", file.display());
    let target = match (&config.target, &config.namespace) {
        (Some(t), _) => t.to_string(),
        (None, Some(ns)) => format!("none (namespace {ns})"),
        (None, None) => "none".to_owned(),
    };
    text.push_str(&format!("  target: {target}\n"));
    let source = match loaded.key_source {
        KeySource::Environment => "from MIRRORD_KEY",
        KeySource::File => "from the file's key",
        KeySource::Generated => "generated for this run; set MIRRORD_KEY or \"key\" to choose it",
    };
    if loaded.templated {
        text.push_str(&format!("  session key: {} ({source})\n", loaded.key));
    }
    if !loaded.ignored.is_empty() {
        text.push_str(&format!(
            "  ignored here (mirrord keys this project does not use): {}\n",
            loaded.ignored.join(", ")
        ));
    }
    let incoming = &config.incoming;
    for port in incoming.named_ports() {
        text.push_str(&format!("  port {port}: {}\n", incoming.describe(port)));
    }
    let others = if incoming.named_ports().is_empty() { "every port" } else { "other ports" };
    text.push_str(&format!("  {others}: {}\n", incoming.describe(0)));
    text
}
