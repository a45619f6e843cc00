use clap::{Parser, Subcommand};
use mirrord_cli::commands::config::{self, ConfigCommand};
use mirrord_cli::commands::connect::{self, ConnectArgs};
use mirrord_cli::commands::{inject, status};

/// mirrord: run your local process as part of a Kubernetes service.
///
/// Exit codes: 0 success, 1 run-time failure (sidecar unreachable, tunnel
/// lost, a rollout that failed), 2 invalid config or flags, 3 session
/// refused by the sidecar, 4 target unusable (not found, not injected, no
/// session token), 5 Kubernetes API unusable (credentials, RBAC).
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
    /// Opt a workload's pods (or a namespace) in to the sidecar; makes the
    /// namespace's session token when missing.
    Inject(Box<inject::InjectArgs>),
    /// Opt a workload's pods (or a namespace) out again.
    Uninject(Box<inject::UninjectArgs>),
    /// The pods of a target (or namespace) and what their sidecars are doing.
    Status(Box<status::StatusArgs>),
    /// The namespace's session token.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// A new token (made when missing); sessions already open stay open.
    Rotate(inject::TokenArgs),
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
        Command::Connect(args) => block_on(|| connect::run(*args, ctrl_c())),
        Command::Demo => block_on(mirrord_cli::commands::demo::run),
        Command::Inject(args) => block_on(|| inject::inject(*args)),
        Command::Uninject(args) => block_on(|| inject::uninject(*args)),
        Command::Status(args) => block_on(|| status::run(*args)),
        Command::Token(TokenCommand::Rotate(args)) => block_on(|| inject::rotate(args)),
    };
    std::process::ExitCode::from(code.code())
}

/// Runs the task made by `make` (inside the runtime, so that what it sets up
/// at once, such as signal handlers, can be). One thread: what the CLI does
/// is relay, and handing each request between two threads cost more than
/// the relaying (CPU per mirrored copy at 2000 copies/s: 39-56 us on one
/// thread, 48-63 us on two).
fn block_on<F: std::future::Future<Output = mirrord_cli::ExitCode>>(make: impl FnOnce() -> F) -> mirrord_cli::ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(async move { make().await }),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            mirrord_cli::ExitCode::Failure
        }
    }
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a Ctrl-C right after the session opened
/// must end it cleanly, not kill the process.
fn ctrl_c() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Ok(mut int), Err(_)) => {
                int.recv().await;
            }
            (Err(_), Ok(mut term)) => {
                term.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}
