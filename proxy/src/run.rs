//! `mirrord-proxy run`: the sidecar process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mirrord_config::names::{ADMIN_PORT, INBOUND_PORT, PROXY_PORTS, TUNNEL_PORT};
use mirrord_config::parse_duration;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::admin::{self, Admin};
use crate::budget::{self, Budget};
use crate::h1::head::Reject;
use crate::inbound::{self, Destination, Inbound};
use crate::limits::Limits;
use crate::metrics::{Fault, FaultLabels, Metrics};
use crate::pause::{self, procs::ScopeArgs, Pause};
use crate::ports::PortList;
use crate::pressure::Pressure;
use crate::secret::SessionToken;
use crate::session::Sessions;
use crate::shutdown;
use crate::socket;
use crate::tunnel::{self, Tunnel};
use crate::workers::Workers;

/// Flags of `mirrord-proxy run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address to accept inbound connections on; repeat for several. Default:
    /// 0.0.0.0:18006 and `[::]:18006` (the iptables redirect target).
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Explicit mode: send every connection to ADDR instead of to its original
    /// destination. No iptables needed.
    #[arg(long, value_name = "ADDR")]
    pub upstream: Option<SocketAddr>,
    /// Address of the admin server (/live, /ready, /metrics).
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)))]
    pub admin: SocketAddr,
    /// Ports whose traffic is passed through as raw TCP without HTTP
    /// detection. Default: the well-known ports of server-first protocols
    /// (FTP 21, SMTP 25, POP3 110, IMAP 143, submission 587, MySQL 3306,
    /// NATS 4222, VNC 5900), whose clients wait for the server; a list
    /// given here replaces them (`""` for none).
    #[arg(long, value_name = "PORTS", default_value = mirrord_config::names::SERVER_FIRST_PORTS)]
    pub opaque_ports: PortList,
    /// How long to wait for a client's first bytes before treating the
    /// connection as a server-first protocol (raw TCP).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// How long an HTTP/1 client may take to send a complete request head.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// How long an HTTP/1 request body may go without a byte arriving before
    /// the connection is closed (a slow upload that keeps sending is fine).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// How long a raw TCP connection may carry no data in either direction
    /// before it is closed (0s: never). Generous, like a load balancer's
    /// idle timeout, so that idle pooled connections of server-first or
    /// long-lived protocols keep working.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// How long an HTTP client connection may wait for its next request
    /// (HTTP/2: with no stream open) before it is closed (0s: never closed
    /// for idleness). Between requests an HTTP/1 connection holds no app
    /// connection and no buffer, so idle clients are cheap.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub http_idle_timeout: Duration,
    /// File descriptors the inbound side may hold at once (client and app
    /// sockets, splice pipes). Default: the open-files limit less a
    /// sixteenth of it (at least 64, at most 4096), kept for the tunnel,
    /// the admin port and pausing. Beyond it, new connections are refused
    /// (`mirrord_proxy_errors_total{reason="fd_budget"}`).
    #[arg(long, value_name = "FDS")]
    pub fd_budget: Option<usize>,
    /// The memory the sidecar may use, against its resident memory, as a
    /// byte count (`64Mi`, `1G`, `67108864`). From five eighths of it on,
    /// it sheds what would take more instead of growing into an OOM kill:
    /// request heads that outgrow their buffer get 503, HTTP/2 connections
    /// read a ration shared by all, new HTTP/2 streams are refused, streams
    /// held back for a second are reset, and clients that read nothing are
    /// disconnected. Default: the container's memory limit (its cgroup's),
    /// against the cgroup's usage; `0` for none.
    #[arg(long, value_name = "BYTES", value_parser = crate::pressure::parse_bytes)]
    pub memory_limit: Option<u64>,
    /// Largest HTTP request head accepted, in bytes (431 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    pub max_header_size: usize,
    /// On SIGTERM, how long in-flight requests and connections may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub grace_period: Duration,
    /// Address of the session tunnel (gRPC). Keep it on loopback: sessions
    /// reach it through the Kubernetes port-forward.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], TUNNEL_PORT)))]
    pub tunnel: SocketAddr,
    /// File holding the token sessions must present (every container of the
    /// pod shares the tunnel's loopback). Read at every session open, so a
    /// rotated token takes effect at once; while the file is missing or
    /// empty, sessions are refused. The injector always sets it. Without
    /// it, explicit mode (--upstream) makes a token for this run and logs
    /// it, and redirect mode refuses to start.
    #[arg(long, value_name = "PATH", conflicts_with = "insecure_no_token")]
    pub token_file: Option<std::path::PathBuf>,
    /// Accept sessions without a token: any process that reaches the tunnel
    /// (every container of the pod shares its loopback) can then steal the
    /// pod's traffic and pause its app. For local experiments only.
    #[arg(long)]
    pub insecure_no_token: bool,
    /// The pod ports the init container redirects (for session plans and
    /// conflict checks): a list, or `*` when unknown.
    #[arg(long, value_name = "PORTS", default_value = "*")]
    pub ports: PortList,
    /// Threads of the data path, each accepting and serving connections on
    /// its own (1 runs everything on the main thread).
    /// Default: the container's CPU limit (its cgroup's CPU quota) rounded
    /// up, within the CPUs it may run on; 1 without a limit.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
    /// Whether sessions may pause the app (needs a shared process namespace).
    #[arg(long, value_enum, default_value = "enabled", value_name = "enabled|disabled")]
    pub pause: PauseSetting,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// The longest a pause may last; then the app is resumed and the
    /// sessions holding it are told.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = mirrord_config::parse_lease)]
    pub max_pause: Duration,
    /// Sessions served at once; beyond, a new session is refused (each is
    /// tried on every request of its ports, and each mirroring one gets a
    /// copy). The tunnel takes at most twice as many connections.
    #[arg(long, value_name = "N", default_value_t = crate::session::DEFAULT_MAX_SESSIONS,
          value_parser = mirrord_config::names::parse_max_sessions)]
    pub max_sessions: u16,
}

/// `--pause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PauseSetting {
    Enabled,
    Disabled,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
    #[error("--max-header-size {0} is too small: expected at least 1024 bytes")]
    HeaderSize(usize),
    #[error(
        "the session tunnel needs a token: pass --token-file PATH (the injector does), or --insecure-no-token to \
         accept unauthenticated sessions (local experiments only)"
    )]
    NoToken,
    #[error("cannot make a session token: {0}")]
    Random(std::io::Error),
}

/// A sidecar whose sockets are bound; [`Running::serve`] runs it.
#[derive(Debug)]
pub struct Running {
    listeners: Vec<TcpListener>,
    admin_listener: TcpListener,
    tunnel_listener: TcpListener,
    tunnel: Tunnel,
    inbound: Arc<Inbound>,
    admin: Arc<Admin>,
    grace_period: Duration,
    pause: Arc<Pause>,
    /// Data path threads: 1 serves on the caller's thread.
    threads: usize,
}

impl Running {
    /// Binds every socket, so that a port in use is reported before anything runs.
    pub fn bind(args: &RunArgs) -> Result<Self, Error> {
        if args.max_header_size < 1024 {
            return Err(Error::HeaderSize(args.max_header_size));
        }
        let token = session_token(args)?;
        let listeners = bind_inbound(&args.listen)?;
        let admin_listener = socket::listen(args.admin).map_err(|error| Error::Bind { addr: args.admin, error })?;
        let tunnel_listener = socket::listen(args.tunnel).map_err(|error| Error::Bind { addr: args.tunnel, error })?;
        let metrics = Arc::new(Metrics::default());
        let fd_budget = args.fd_budget.unwrap_or_else(|| {
            // Where the limit cannot be read, assume the common default.
            budget::for_limit(socket::open_files_limit().unwrap_or(1024))
        });
        metrics.fd_budget.set(i64::try_from(fd_budget).unwrap_or(i64::MAX));
        let shed =
            metrics.errors.get_or_create(&FaultLabels { reason: Fault::Refused(Reject::MemoryPressure) }).clone();
        let pressure = Arc::new(Pressure::configured(args.memory_limit, shed));
        let sessions = Arc::new(Sessions::new(args.ports.clone()).with_max(usize::from(args.max_sessions)));
        let pause = match args.pause {
            PauseSetting::Enabled => Pause::new(args.scope.scope(), args.max_pause, metrics.clone(), None),
            PauseSetting::Disabled => Pause::disabled(
                "pausing is disabled on this pod (annotation mirrord.dev/pause: disabled)",
                metrics.clone(),
            ),
        };
        let tunnel = Tunnel { sessions: sessions.clone(), token, metrics: metrics.clone(), pause: pause.clone() };
        let mut own_ports: std::collections::BTreeSet<u16> = PROXY_PORTS.into_iter().collect();
        own_ports.extend(listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.port()));
        let inbound = Inbound {
            destination: args.upstream.map_or(Destination::Original, Destination::Fixed),
            opaque_ports: args.opaque_ports.clone(),
            sessions,
            own_ports,
            limits: Limits {
                detect_timeout: args.detect_timeout,
                header_read_timeout: args.header_read_timeout,
                max_head: args.max_header_size,
                body_read_timeout: args.body_read_timeout,
                tcp_idle_timeout: Some(args.tcp_idle_timeout).filter(|d| !d.is_zero()),
                http_idle_timeout: Some(args.http_idle_timeout).filter(|d| !d.is_zero()),
            },
            pool: Arc::default(),
            budget: Budget::new(fd_budget, metrics.inbound_fds.clone()),
            pressure,
            metrics: metrics.clone(),
            pause: pause.clone(),
        };
        let admin = Admin { metrics, ready: false.into(), sessions: tunnel.sessions.clone(), pause: pause.clone() };
        Ok(Running {
            listeners,
            admin_listener,
            tunnel_listener,
            tunnel,
            inbound: Arc::new(inbound),
            admin: Arc::new(admin),
            grace_period: args.grace_period,
            pause,
            threads: 1,
        })
    }

    /// Serves the data path on `threads` worker threads of its own
    /// (`workers.rs`); with 1 (the default), on the thread that serves.
    #[must_use]
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Addresses accepting inbound connections.
    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// The token made for this run, in explicit mode without `--token-file`.
    pub fn session_token(&self) -> Option<&str> {
        match &self.tunnel.token {
            Some(SessionToken::Generated(token)) => Some(token),
            _ => None,
        }
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener.local_addr().ok()
    }

    pub fn tunnel_addr(&self) -> Option<SocketAddr> {
        self.tunnel_listener.local_addr().ok()
    }

    /// Serves until `stop` resolves, then drains within the grace period.
    pub async fn serve(mut self, stop: impl Future<Output = ()>) {
        self.pause.resume_leftovers();
        let (trigger, shutdown) = shutdown::channel();
        let addrs = self.inbound_addrs();
        let tunnel_addr = self.tunnel_addr();
        let workers = self.serve_inbound(&shutdown);
        tokio::spawn(crate::memory::sweep(self.inbound.clone(), shutdown.clone(), true));
        tokio::spawn(admin::serve(self.admin_listener, self.admin.clone(), shutdown.clone()));
        let tunnel_thread = tunnel::start_thread(self.tunnel_listener, self.tunnel, shutdown.signal());
        drop(shutdown);
        self.admin.ready.store(true, Ordering::Relaxed);
        match self.inbound.destination {
            Destination::Fixed(up) => info!(?addrs, upstream = %up, "listening (explicit mode)"),
            Destination::Original => info!(?addrs, "listening for redirected connections"),
        }
        if let Some(tunnel) = tunnel_addr {
            info!(%tunnel, "session tunnel listening");
        }
        // The pause's rescans run here, not in a task of their own: a panic
        // in them ends the sidecar (and the panic hook resumes the app).
        // They run only while the app is paused: an idle sidecar sleeps.
        let mut ticks = tokio::time::interval(pause::TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut paused = false;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = self.pause.paused(), if !paused => {
                    paused = true;
                    ticks.reset();
                }
                _ = ticks.tick(), if paused => paused = self.pause.tick(),
            }
        }
        // First of all: the app must be free to finish its own requests.
        self.pause.end(pause::Resume::Shutdown);
        self.admin.ready.store(false, Ordering::Relaxed);
        info!(grace_period = ?self.grace_period, "shutting down: finishing in-flight requests");
        if trigger.drain(self.grace_period).await {
            info!("drained; exiting");
        } else {
            warn!("grace period over; closing the remaining connections");
        }
        if let Some(workers) = workers {
            workers.stop();
        }
        if let Some(thread) = tunnel_thread {
            thread.stop();
        }
    }

    /// Accepts on the worker threads or, with one thread (or when the
    /// threads cannot be had: logged), on this one.
    fn serve_inbound(&mut self, shutdown: &shutdown::Shutdown) -> Option<Workers> {
        let listeners = std::mem::take(&mut self.listeners);
        if self.threads > 1 {
            match Workers::start(self.threads, &listeners, &self.inbound, shutdown) {
                // The workers accept on their own copies.
                Ok(workers) => return Some(workers),
                Err(e) => warn!("cannot start {} worker threads ({e}); serving on the main thread", self.threads),
            }
        }
        for listener in listeners {
            tokio::spawn(inbound::accept_loop(listener, self.inbound.clone(), shutdown.clone(), None));
        }
        None
    }
}

/// What sessions must present: the token file; or, in explicit mode, a
/// token made for this run and logged; nothing only when asked for.
fn session_token(args: &RunArgs) -> Result<Option<SessionToken>, Error> {
    if let Some(path) = &args.token_file {
        let file = crate::secret::TokenFile(path.clone());
        if let Err(e @ crate::secret::TokenError::Missing { .. }) = file.check("") {
            warn!("sessions are refused until the token exists: {e}");
        }
        return Ok(Some(SessionToken::File(file)));
    }
    if args.insecure_no_token {
        warn!("sessions are not authenticated (--insecure-no-token): any process that reaches the tunnel can open one");
        return Ok(None);
    }
    if args.upstream.is_none() {
        return Err(Error::NoToken);
    }
    let token = mirrord_api::random_hex(32).map_err(Error::Random)?;
    info!(
        "sessions must present this token: {token} (mirrord-cli connect --addr ADDR --token TOKEN, or MIRRORD_TOKEN)"
    );
    Ok(Some(SessionToken::Generated(token)))
}

/// Binds the inbound addresses. With none given, binds the redirect port on
/// IPv4 and, where the kernel has IPv6, on IPv6 as well.
fn bind_inbound(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, Error> {
    let bind = |addr: SocketAddr| socket::listen(addr).map_err(|error| Error::Bind { addr, error });
    if !addrs.is_empty() {
        return addrs.iter().map(|a| bind(*a)).collect();
    }
    let mut listeners = vec![bind(SocketAddr::from(([0, 0, 0, 0], INBOUND_PORT)))?];
    match socket::listen(SocketAddr::from(([0u16; 8], INBOUND_PORT))) {
        Ok(l) => listeners.push(l),
        Err(e) => info!("IPv6 inbound listener not available: {e}"),
    }
    Ok(listeners)
}
