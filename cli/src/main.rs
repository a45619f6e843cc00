use clap::{Parser, Subcommand};
use mirrord_cli::commands::config::{self, ConfigCommand};

/// mirrord: run your local process as part of a Kubernetes service.
///
/// Exit codes: 0 success, 1 run-time failure, 2 invalid config or flags.
#[derive(Debug, Parser)]
#[command(name = "mirrord-cli", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a session config or print its schema.
    #[command(subcommand)]
    Config(ConfigCommand),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap reports --help/--version as "errors" with exit code 0.
            return std::process::ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let code = match &cli.command {
        Command::Config(cmd) => config::run(cmd, &mut std::io::stdout(), &mut std::io::stderr()),
    };
    std::process::ExitCode::from(code as u8)
}
