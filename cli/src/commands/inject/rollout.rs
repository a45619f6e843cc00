//! `--wait`: a rollout followed to its end, and the pods it made checked
//! for the sidecar.

use std::time::{Duration, Instant};

use crate::cluster::{self, Cluster, Workload};
use crate::ExitCode;

use super::failed;

/// Follows a rollout like `kubectl rollout status`: progress lines, then
/// done, or why not (the workload's failure condition, warning events).
pub(super) async fn wait(cluster: &Cluster, workload: &Workload, timeout: Duration, injecting: bool) -> ExitCode {
    let deadline = Instant::now() + timeout;
    let described = workload.describe();
    let mut last = String::new();
    loop {
        let object = match cluster.workload(workload).await {
            Ok(o) => o,
            Err(e) => return failed(e),
        };
        let progress = cluster::Rollout::of(&object);
        let line = progress.to_string();
        if line != last {
            println!("{described}: {line}");
            last.clone_from(&line);
        }
        if let Some(failure) = &progress.failure {
            eprintln!("error: {described}: the rollout is stuck: {failure}");
            print_events(cluster, workload).await;
            return ExitCode::Failure;
        }
        if progress.done() {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!("error: {described}: the rollout did not finish within {} s ({line})", timeout.as_secs());
            print_events(cluster, workload).await;
            return ExitCode::Failure;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The rollout is over: do the new pods have the sidecar (or not)?
    let pods = match cluster.workload_pods(workload).await {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let with_sidecar = pods.iter().filter(|p| p.injected).count();
    match (injecting, with_sidecar) {
        (true, n) if n < pods.len() => {
            eprintln!(
                "error: {described}: {} of {} pods rolled out without the sidecar: is the injector installed and \
                 its webhook configured? (kubectl -n mirrord get pods; kubectl get mutatingwebhookconfiguration \
                 mirrord-injector)",
                pods.len() - n,
                pods.len()
            );
            ExitCode::Failure
        }
        (false, n) if n > 0 => {
            eprintln!(
                "error: {described}: {n} pod(s) still have the sidecar: does the namespace opt in? \
                 (mirrord-cli uninject --namespace {})",
                cluster.namespace
            );
            ExitCode::Failure
        }
        _ => {
            let state = if injecting { "with the sidecar" } else { "without the sidecar" };
            println!("{described}: rolled out, {} pod(s) {state}", pods.len());
            ExitCode::Ok
        }
    }
}

async fn print_events(cluster: &Cluster, workload: &Workload) {
    match cluster.warnings(workload).await {
        Ok(events) => {
            for e in events {
                eprintln!("  event: {e}");
            }
        }
        Err(e) => eprintln!("  (events cannot be read: {e})"),
    }
}
