use std::process::ExitCode;

use clap::Parser;
use mirrord_injector::run::{Args, Injector};

/// An admission parses, copies and diffs a whole pod as JSON: mostly small
/// allocations, which glibc's allocator makes half the cost of.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("MIRRORD_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // A log write that fails is dropped: reporting it would panic
        // writing to the same stderr.
        .log_internal_errors(false)
        .init();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mirrord-injector: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mirrord-injector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    Injector::bind(args).await?.serve(stop_signal()).await;
    Ok(())
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    } else {
        std::future::pending::<()>().await;
    }
}
