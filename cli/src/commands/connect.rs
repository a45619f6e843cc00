//! `mirrord-cli connect`: open a session on a sidecar and deliver its
//! traffic to the local app until Ctrl-C (or until the tunnel is lost).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mirrord_api::proto::tunnel_client::TunnelClient;
use mirrord_api::proto::{self, session_event, session_request, Bye, Hello, SessionRequest};
use mirrord_api::PROTOCOL_VERSION;
use mirrord_config::Config;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::deliver::Delivery;
use crate::local::Clients;
use crate::status::{LogFormat, Status};
use crate::ExitCode;

/// Flags of `mirrord-cli connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// The sidecar's session tunnel, HOST:PORT (a port-forward of the pod's 18010).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// Session config (JSON, YAML or TOML).
    #[arg(short = 'f', long = "config-file", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Token, when the sidecar requires one.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// How this session is named to other sessions (default: user@host).
    #[arg(long)]
    pub name: Option<String>,
    /// Address of the local app.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub local_host: IpAddr,
    /// `text`: the plan and a live status line; `json`: one event per line on stdout.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Told once the session is open and its rules are in place (embedding).
    #[arg(skip)]
    pub on_open: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Runs a session to its end.
pub async fn run(mut args: ConnectArgs, stop: impl std::future::Future<Output = ()>) -> ExitCode {
    let status = Arc::new(Status::new(args.log_format));
    let (config, config_json) = match load_config(args.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::InvalidConfig;
        }
    };
    let (client, events, requests, plan) = match open(&args, config_json).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    print_plan(&status, &plan, &args.addr, &config);
    if let Some(open) = args.on_open.take() {
        let _ = open.send(());
    }
    let delivery = Arc::new(Delivery {
        client,
        session_id: plan.session_id.clone(),
        clients: Clients::default(),
        status: status.clone(),
        config,
        local_host: args.local_host,
        copies: Arc::new(tokio::sync::Semaphore::new(crate::deliver::MAX_COPIES_IN_FLIGHT)),
    });
    serve(events, delivery, status, requests, stop).await
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

type Opened = (TunnelClient<Channel>, tonic::Streaming<proto::SessionEvent>, mpsc::Sender<SessionRequest>, proto::Plan);

/// Connects, says Hello, and waits for the plan. `Err` is the exit code,
/// after the reason was printed.
async fn open(args: &ConnectArgs, config_json: String) -> Result<Opened, ExitCode> {
    let channel = connect(&args.addr).await.map_err(|e| {
        eprintln!("error: cannot reach the sidecar at {}: {e}", args.addr);
        ExitCode::Failure
    })?;
    let mut client = TunnelClient::new(channel);
    let (requests, rx) = mpsc::channel(4);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: args.name.clone().unwrap_or_else(default_name),
        config_json,
        token: args.token.clone().unwrap_or_default(),
        client_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let _ = requests.send(SessionRequest { kind: Some(session_request::Kind::Hello(hello)) }).await;
    let mut events = client.session(ReceiverStream::new(rx)).await.map_err(|e| refused(&e))?.into_inner();
    match events.message().await {
        Ok(Some(proto::SessionEvent { kind: Some(session_event::Kind::Plan(plan)) })) => {
            Ok((client, events, requests, plan))
        }
        Ok(_) => {
            eprintln!("error: the sidecar did not answer with a plan");
            Err(ExitCode::Failure)
        }
        Err(e) => Err(refused(&e)),
    }
}

async fn serve(
    mut events: tonic::Streaming<proto::SessionEvent>,
    delivery: Arc<Delivery>,
    status: Arc<Status>,
    requests: mpsc::Sender<SessionRequest>,
    stop: impl std::future::Future<Output = ()>,
) -> ExitCode {
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut deliveries = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
            event = events.message() => match event {
                Ok(Some(proto::SessionEvent { kind: Some(kind) })) => match kind {
                    session_event::Kind::Incoming(incoming) => {
                        deliveries.spawn(delivery.clone().handle(incoming));
                    }
                    session_event::Kind::Notice(n) => {
                        status.say(&serde_json::json!({"event": "notice", "message": n.message}), &format!("notice: {}", n.message));
                    }
                    session_event::Kind::Pause(p) => {
                        status.paused(p.paused.then_some(p.processes));
                        let event = serde_json::json!({"event": "pause", "paused": p.paused, "processes": p.processes, "message": p.message});
                        status.say(&event, &p.message);
                    }
                    session_event::Kind::Closed(_) => return ExitCode::Ok,
                    session_event::Kind::Plan(_) => {}
                },
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    status.say(&serde_json::json!({"event": "lost"}), "error: the tunnel to the sidecar was lost; the session has ended");
                    return ExitCode::Failure;
                }
            },
            _ = ticker.tick() => status.redraw(),
            () = &mut stop => break,
        }
    }
    // Ctrl-C: ask the sidecar to drop this session's rules, and wait until it
    // says the traffic is the app's again.
    let _ = requests.send(SessionRequest { kind: Some(session_request::Kind::Bye(Bye {})) }).await;
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(event)) = events.message().await {
            match event.kind {
                Some(session_event::Kind::Closed(_)) => return true,
                // Announced before the rules went away: still delivered.
                Some(session_event::Kind::Incoming(incoming)) => {
                    deliveries.spawn(delivery.clone().handle(incoming));
                }
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    // Requests already with the local app finish (copies included).
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while deliveries.join_next().await.is_some() {} }).await;
    let text = if closed { "session closed: traffic goes to the app again" } else { "session ended" };
    status.say(&serde_json::json!({"event": "closed", "acknowledged": closed}), text);
    ExitCode::Ok
}

/// Why the sidecar's tunnel cannot be reached.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("invalid address {addr:?}: expected HOST:PORT ({error})")]
    Address { addr: String, error: String },
    /// The transport error with its causes, on one line.
    #[error("{0}")]
    Connect(String),
}

async fn connect(addr: &str) -> Result<Channel, Unreachable> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Unreachable::Address { addr: addr.to_owned(), error: e.to_string() })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true);
    endpoint.connect().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(&format!(": {s}"));
            source = s.source();
        }
        Unreachable::Connect(msg)
    })
}

fn refused(e: &tonic::Status) -> ExitCode {
    eprintln!("error: the sidecar refused the session: {}", e.message());
    match e.code() {
        tonic::Code::FailedPrecondition | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => {
            ExitCode::Refused
        }
        _ => ExitCode::Failure,
    }
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
    let event = serde_json::json!({"event": "plan", "ports": ports, "warnings": warnings});
    status.say(&event, &text);
}

/// The config as the sidecar gets it: JSON, whatever format the file is in.
fn default_name() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "someone".to_owned());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}
