//! The flags of `mirrord-cli inject`, `uninject` and `token rotate`, and
//! their values' checks: a bad value is refused before the cluster is
//! asked anything.

use std::time::Duration;

use crate::cluster::ClusterFlags;

/// Flags of `mirrord-cli inject`.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// deployment/NAME (deploy/), statefulset/NAME or replicaset/NAME;
    /// without it, `--namespace NS` opts in every new pod of the namespace.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Whether sessions may pause the app (`--pause` alone: enabled).
    #[arg(long, value_name = "enabled|disabled", num_args = 0..=1, default_missing_value = "enabled",
          value_parser = ["enabled", "disabled"])]
    pub pause: Option<String>,
    /// Inbound ports to redirect (default: the declared container ports).
    #[arg(long, value_name = "PORT,…", value_parser = port_list)]
    pub ports: Option<String>,
    /// Inbound ports never redirected.
    #[arg(long, value_name = "PORT,…", value_parser = port_list)]
    pub skip_ports: Option<String>,
    /// Ports whose traffic is never inspected for HTTP.
    #[arg(long, value_name = "PORT,…", value_parser = port_list)]
    pub opaque_ports: Option<String>,
    /// The longest a session may keep the app paused (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = lease)]
    pub max_pause: Option<String>,
    /// The most sessions the sidecar serves at once (default 64).
    #[arg(long, value_name = "N", value_parser = max_sessions)]
    pub max_sessions: Option<String>,
    #[command(flatten)]
    pub apply: ApplyFlags,
}

/// Flags of `mirrord-cli uninject`.
#[derive(Debug, clap::Args)]
pub struct UninjectArgs {
    /// deployment/NAME (deploy/), statefulset/NAME or replicaset/NAME;
    /// without it, `--namespace NS` opts the namespace out.
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    #[command(flatten)]
    pub apply: ApplyFlags,
}

/// How a change is applied.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyFlags {
    /// Print the patch instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Follow the rollout until every pod is updated and ready (or fail
    /// with the reason).
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = mirrord_config::parse_duration)]
    pub timeout: Duration,
}

/// Flags of `mirrord-cli token rotate`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

fn port_list(text: &str) -> Result<String, String> {
    let ports: Result<Vec<u16>, _> = text.split(',').map(|p| p.trim().parse::<u16>()).collect();
    match ports {
        Ok(ports) if !ports.is_empty() && !ports.contains(&0) => {
            Ok(ports.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
        }
        _ => Err(format!("invalid port list {text:?}: expected ports from 1 to 65535, comma-separated (8080,9090)")),
    }
}

fn lease(text: &str) -> Result<String, String> {
    mirrord_config::parse_lease(text).map(|_| text.to_owned())
}

fn max_sessions(text: &str) -> Result<String, String> {
    mirrord_config::names::parse_max_sessions(text).map(|n| n.to_string())
}
