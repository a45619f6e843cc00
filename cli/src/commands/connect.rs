//! `mirrord-cli connect`: open a session on the sidecar of every pod of a
//! target (through the Kubernetes API) or on one sidecar (`--addr`), and
//! deliver their traffic to the local app until Ctrl-C.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mirrord_api::proto::{self, session_request, Bye, SessionRequest};
use mirrord_config::{Config, Target};

mod fleet;
mod session;

use crate::cluster::{self, Access, Cluster, ClusterFlags, Place};
use crate::status::{LogFormat, Status};
use crate::ExitCode;
use fleet::{Fleet, Watch};
use session::{open, Opened};

/// Flags of `mirrord-cli connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The workload whose pods get a session: pod/NAME, deployment/NAME
    /// (deploy/), statefulset/NAME, replicaset/NAME, service/NAME or
    /// label/KEY=VALUE; default: the config's `target`.
    #[arg(short = 't', long, value_name = "TARGET", conflicts_with = "addr")]
    pub target: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// One sidecar's session tunnel, HOST:PORT (a port-forward of a pod's
    /// 18010 made by hand, or a sidecar on this machine), instead of a target.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: Option<String>,
    /// Session config (JSON, YAML or TOML); mirrord's variable names it too.
    #[arg(short = 'f', long = "config-file", value_name = "FILE", env = "MIRRORD_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// The session token (with --addr; a target's is read from its
    /// namespace's Secret mirrord-session-token).
    #[arg(long, value_name = "TOKEN", env = "MIRRORD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How this session is named to other sessions (default: user@host).
    #[arg(long)]
    pub name: Option<String>,
    /// Address of the local app.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub local_host: IpAddr,
    /// `text`: the plan and a live status line; `json`: one event per line on
    /// stdout (a reader that falls behind gets `events_lost`, never holds up
    /// traffic).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Told once the session is open and its rules are in place (embedding).
    #[arg(skip)]
    pub on_open: Option<tokio::sync::oneshot::Sender<()>>,
    /// The local app to run (after `--`): started before the sessions open,
    /// it gets their traffic; when it exits the sessions end, and its exit
    /// code is this command's.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs the sessions to their end; then what is still queued for stdout and
/// stderr is written (if they are read within a few seconds).
pub async fn run(args: ConnectArgs, stop: impl std::future::Future<Output = ()>) -> ExitCode {
    let status = Arc::new(Status::new(args.log_format));
    let code = run_sessions(args, stop, &status).await;
    status.flush(Duration::from_secs(3)).await;
    code
}

async fn run_sessions(
    mut args: ConnectArgs,
    stop: impl std::future::Future<Output = ()>,
    status: &Arc<Status>,
) -> ExitCode {
    let (config, config_json) = match load_config(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            status.fail(&e.to_string());
            return ExitCode::InvalidConfig;
        }
    };
    let (places, what, watch) = match places(&args, &config, status).await {
        Ok(found) => found,
        Err(code) => return code,
    };
    // Checked before any port-forward: without the token every sidecar
    // would refuse the session.
    if let (Some(watch), None) = (&watch, &args.token) {
        match watch.cluster.session_token().await {
            Ok(token) => args.token = Some(token),
            Err(e) => return cluster_failed(status, e),
        }
    }
    let mut app = match args.command.split_first() {
        Some((program, rest)) => match tokio::process::Command::new(program).args(rest).kill_on_drop(true).spawn() {
            Ok(child) => Some(child),
            Err(e) => {
                status.fail(&format!("cannot start {program:?}: {e}"));
                return ExitCode::Failure;
            }
        },
        None => None,
    };
    let sessions = match open_all(places, &args, &config_json, status, &mut app).await {
        Ok(sessions) => sessions,
        Err(code) => return code,
    };
    print_plan(status, &sessions[0].1 .3, &what, &config);
    if let Some(open) = args.on_open.take() {
        let _ = open.send(());
    }
    let mut fleet = Fleet {
        status: status.clone(),
        config,
        config_json,
        args: Arc::new(args),
        running: tokio::task::JoinSet::new(),
        open: std::collections::HashMap::new(),
    };
    let pods = watch.is_some();
    for (place, opened) in sessions {
        fleet.serve(place, opened);
    }
    if pods {
        status.pods(fleet.open.len());
    }
    match app {
        Some(app) => with_app(fleet, app, stop, watch).await,
        None => fleet.run(stop, watch).await,
    }
}

/// Opens a session on every place at once: all or nothing, so that on a
/// failure no session stays open (and the command, if started, is stopped).
async fn open_all(
    places: Vec<Place>,
    args: &ConnectArgs,
    config_json: &str,
    status: &Status,
    app: &mut Option<tokio::process::Child>,
) -> Result<Vec<(Place, Opened)>, ExitCode> {
    let opened = futures::future::join_all(places.iter().map(|p| open(p, args, config_json.to_owned()))).await;
    if let Some(Err((code, message))) = opened.iter().find(|r| r.is_err()) {
        status.fail(message);
        for (_, _, requests, _) in opened.iter().flatten() {
            let _ = requests.send(SessionRequest { kind: Some(session_request::Kind::Bye(Bye {})) }).await;
        }
        if let Some(app) = app {
            stop_app(app).await;
        }
        return Err(*code);
    }
    Ok(places.into_iter().zip(opened.into_iter().flatten()).collect())
}

/// Runs the sessions until the command `app` exits (or on Ctrl-C, which
/// reaches the app too: it is in the terminal's process group); the exit
/// code is the app's.
async fn with_app(
    fleet: Fleet,
    mut app: tokio::process::Child,
    stop: impl std::future::Future<Output = ()>,
    watch: Option<Watch>,
) -> ExitCode {
    let (exited_tx, exited_rx) = tokio::sync::oneshot::channel::<ExitCode>();
    let waiting = tokio::spawn(async move {
        let code = match app.wait().await {
            Ok(status) => ExitCode::Command(exit_status_code(status)),
            Err(_) => ExitCode::Failure,
        };
        let _ = exited_tx.send(code);
        code
    });
    let app_exited = async move {
        tokio::select! {
            () = stop => {}
            _ = exited_rx => {}
        }
    };
    let sessions = fleet.run(app_exited, watch).await;
    match tokio::time::timeout(Duration::from_secs(10), waiting).await {
        Ok(Ok(code)) => code,
        _ => sessions,
    }
}

/// A shell's view of how a process ended: its exit code, or 128 + signal.
fn exit_status_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Ends the local app this command started: SIGTERM, then SIGKILL.
async fn stop_app(app: &mut tokio::process::Child) {
    if let Some(pid) = app.id() {
        // SAFETY: kill(2) of our own child, still unreaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(5), app.wait()).await.is_err() {
        let _ = app.kill().await;
    }
}

/// Where the sessions go: `--addr`, or every injected pod of the target;
/// and how they are described ("127.0.0.1:18010", "3 pods of deployment/api").
async fn places(
    args: &ConnectArgs,
    config: &Config,
    status: &Status,
) -> Result<(Vec<Place>, String, Option<Watch>), ExitCode> {
    let target = match (&args.addr, &args.target) {
        (Some(addr), _) => return Ok((vec![Place::Addr(addr.clone())], addr.clone(), None)),
        (None, Some(path)) => match Target::parse(path, args.cluster.namespace.as_deref()) {
            Ok(Some(target)) => target,
            Ok(None) => {
                status.fail("--target targetless has no pods to attach to: give a workload, or --addr");
                return Err(ExitCode::InvalidConfig);
            }
            Err(e) => {
                status.fail(&format!("--target: {e}"));
                return Err(ExitCode::InvalidConfig);
            }
        },
        (None, None) => match &config.target {
            Some(target) => target.clone(),
            None => {
                status.fail("no target: pass --target deployment/NAME (or set \"target\" in the config), or --addr HOST:PORT for one sidecar");
                return Err(ExitCode::InvalidConfig);
            }
        },
    };
    let access = Access {
        kubeconfig: args.cluster.kubeconfig.clone().or_else(|| config.kubeconfig.clone().map(PathBuf::from)),
        context: args.cluster.context.clone().or_else(|| config.kube_context.clone()),
        namespace: args.cluster.namespace.clone(),
    };
    let described = format!("{}/{}", target.kind.as_str(), target.name);
    let cluster =
        Cluster::connect(&access, target.namespace.as_deref()).await.map_err(|e| cluster_failed(status, e))?;
    let selector = cluster.selector(&target).await.map_err(|e| cluster_failed(status, e))?;
    let pods = cluster.pods(&selector).await.map_err(|e| cluster_failed(status, e))?;
    if pods.is_empty() {
        return Err(cluster_failed(status, cluster::Error::NoPods { target: described, namespace: cluster.namespace }));
    }
    let (injected, plain): (Vec<_>, Vec<_>) = pods.into_iter().partition(|p| p.injected);
    if injected.is_empty() {
        let which = plain.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
        let opted_in = plain.iter().any(|p| p.opted_in);
        return Err(cluster_failed(
            status,
            cluster::Error::NotInjected { target: described, count: plain.len(), which, opted_in },
        ));
    }
    let (ready, waiting): (Vec<_>, Vec<_>) = injected.into_iter().partition(|p| p.ready);
    if !plain.is_empty() || !waiting.is_empty() {
        let mut parts = Vec::new();
        if !plain.is_empty() {
            parts.push(format!("{} without the sidecar (a rollout in progress?)", plain.len()));
        }
        if !waiting.is_empty() {
            parts.push(format!("{} whose sidecar is not ready yet", waiting.len()));
        }
        status.say(
            &serde_json::json!({"event": "skipped", "without_sidecar": plain.len(), "not_ready": waiting.len()}),
            &format!("note: {described}: skipping {} pod(s): {}", plain.len() + waiting.len(), parts.join(", ")),
        );
    }
    if ready.is_empty() {
        status.fail(&format!("{described}: no pod with a ready sidecar in namespace {}", cluster.namespace));
        return Err(ExitCode::Target);
    }
    let what = match ready.len() {
        1 => format!("pod {} of {described}", ready[0].name),
        n => format!("{n} pods of {described}"),
    };
    let places = ready.into_iter().map(|p| Place::Pod { cluster: cluster.clone(), pod: p.name }).collect();
    Ok((places, what, Some(Watch { cluster, selector, described })))
}

fn cluster_failed(status: &Status, e: cluster::Error) -> ExitCode {
    status.fail(&e.to_string());
    e.exit_code()
}

/// The validated config, and the JSON the sidecar gets (the empty config
/// without a file). Keys of mirrord's that are set aside are listed once.
fn load_config(path: Option<&std::path::Path>) -> Result<(Config, String), mirrord_config::Error> {
    let Some(path) = path else { return Ok((Config::default(), "{}".to_owned())) };
    let loaded = Config::load(path, &crate::vars::from_environment())?;
    if !loaded.ignored.is_empty() {
        eprintln!("note: ignored here (mirrord keys this project does not use): {}", loaded.ignored.join(", "));
    }
    if loaded.templated && loaded.key_source == mirrord_config::KeySource::Generated {
        eprintln!(
            "note: session key {} was generated for this run (set MIRRORD_KEY or \"key\" to choose it)",
            loaded.key
        );
    }
    Ok((loaded.config, loaded.json))
}

fn print_plan(status: &Status, plan: &proto::Plan, addr: &str, config: &Config) {
    // The sidecar warns too; an older one may not know every warning.
    let mut warnings = plan.warnings.clone();
    warnings.extend(config.warnings().into_iter().filter(|w| !plan.warnings.contains(w)));
    let ports: Vec<_> = plan.ports.iter().map(|p| serde_json::json!({"port": p.port, "action": p.action})).collect();
    let mut text = format!("session open on {addr} (sidecar {})", plan.sidecar_version);
    for p in &plan.ports {
        let port = if p.port == 0 { "other ports".to_owned() } else { format!("port {}", p.port) };
        text.push_str(&format!("\n  {port}: {}", p.action));
    }
    for w in &warnings {
        text.push_str(&format!("\n  warning: {w}"));
    }
    let event = serde_json::json!({"event": "plan", "on": addr, "ports": ports, "warnings": warnings});
    status.say(&event, &text);
}
