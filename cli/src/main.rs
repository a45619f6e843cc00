use clap::{Parser, Subcommand};
use mirrord_cli::commands::config::{self, ConfigCommand};
use mirrord_cli::commands::connect::{self, ConnectArgs};

/// mirrord: run your local process as part of a Kubernetes service.
///
/// Exit codes: 0 success, 1 run-time failure (sidecar unreachable, tunnel
/// lost), 2 invalid config or flags, 3 session refused by the sidecar.
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
    /// Open a session on a sidecar and deliver its traffic to the local app.
    Connect(Box<ConnectArgs>),
    /// mirrord end to end on this machine: a sidecar, a session, two apps.
    Demo,
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
    let code = match cli.command {
        Command::Config(cmd) => config::run(&cmd, &mut std::io::stdout(), &mut std::io::stderr()),
        Command::Connect(args) => block_on(connect::run(*args, ctrl_c())),
        Command::Demo => block_on(mirrord_cli::commands::demo::run()),
    };
    std::process::ExitCode::from(code.code())
}

fn block_on(task: impl std::future::Future<Output = mirrord_cli::ExitCode>) -> mirrord_cli::ExitCode {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt.block_on(task),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            mirrord_cli::ExitCode::Failure
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn ctrl_c() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
