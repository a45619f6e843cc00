use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mirrord_config::names::{ENV_LOG, ENV_LOG_FORMAT};
use mirrord_proxy::pause::{self, guard};
use mirrord_proxy::{iptables, run};

/// The mirrord sidecar: iptables init container and inbound proxy.
#[derive(Debug, Parser)]
#[command(name = "mirrord-proxy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Redirect the pod's inbound ports to the sidecar (the init container).
    Init(iptables::InitArgs),
    /// Run the sidecar proxy.
    Run(Box<run::RunArgs>),
    /// Resume the app whenever the sidecar exits while it is paused (runs in
    /// its own container of the pod).
    Guard(guard::GuardArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Init(args) => iptables::init(&args).map_err(anyhow::Error::from),
        Command::Run(args) => run_sidecar(*args),
        Command::Guard(args) => guard::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "mirrord-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_sidecar(args: run::RunArgs) -> anyhow::Result<()> {
    pause::install_panic_hook(args.scope.scope());
    mirrord_proxy::memory::tune_allocator();
    match mirrord_proxy::socket::raise_fd_limit() {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
    let threads = match args.threads {
        Some(n) => {
            tracing::info!(threads = n, "worker threads (--threads)");
            usize::from(n)
        }
        None => {
            let auto = mirrord_proxy::cpu::Threads::of_this_process();
            match &auto.quota {
                Some((cpus, cgroup)) => tracing::info!(
                    threads = auto.count,
                    cpu_limit = cpus,
                    cgroup = %cgroup.display(),
                    usable_cpus = auto.cpus,
                    "worker threads from the CPU limit"
                ),
                None => tracing::info!(threads = auto.count, usable_cpus = auto.cpus, "worker threads: no CPU limit"),
            }
            auto.count
        }
    };
    // The main thread's runtime: the whole data path with one thread; with
    // more, the admin server and the pause, beside the workers' own.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = run::Running::bind(&args)?.with_threads(threads);
        running.serve(stop_signal()).await;
        Ok(())
    })
}

/// SIGTERM (kubelet) or SIGINT (a terminal).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can only be killed; run on.
            std::future::pending::<()>().await;
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log write that fails (the container runtime's pipe went away)
        // is dropped: reporting it would panic writing to the same stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
