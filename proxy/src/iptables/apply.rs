//! Running the rendered script: backend detection and `iptables-restore`.

use std::io::Write;
use std::process::{Command, Stdio};

use mirrord_config::names::INBOUND_PORT;
use tracing::info;

use super::{has_global_ipv6, render, Plan};
use crate::ports::PortList;

/// Flags of `mirrord-proxy init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Inbound ports to redirect to the sidecar: `80,8080`, `8000-8010`, or `*`.
    #[arg(long, value_name = "PORTS", default_value = "*")]
    pub ports: PortList,
    /// Inbound ports never redirected.
    #[arg(long, value_name = "PORTS", default_value = "")]
    pub skip_ports: PortList,
    /// The sidecar's inbound port (REDIRECT target).
    #[arg(long, value_name = "PORT", default_value_t = INBOUND_PORT)]
    pub proxy_port: u16,
    /// Print the iptables-restore script(s) instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// iptables backend: detect, or force legacy (xtables) or nft.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Legacy,
    Nft,
}

/// Which iptables binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Legacy,
    Nft,
    /// Plain `iptables-restore`, for images that ship only one variant.
    Plain,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--skip-ports '*' would redirect nothing: expected a list of ports")]
    SkipAll,
    #[error(
        "no usable iptables found: expected iptables-nft-restore, iptables-legacy-restore or iptables-restore on PATH"
    )]
    NoIptables,
    #[error("cannot run {program}: {error}")]
    Spawn { program: String, error: std::io::Error },
    #[error("{program} failed ({status}): {stderr}\nscript was:\n{script}")]
    Failed { program: String, status: std::process::ExitStatus, stderr: String, script: String },
}

impl Backend {
    fn binary(self, ipv6: bool, tool: &str) -> String {
        let base = if ipv6 { "ip6tables" } else { "iptables" };
        match self {
            Backend::Legacy => format!("{base}-legacy-{tool}"),
            Backend::Nft => format!("{base}-nft-{tool}"),
            Backend::Plain => format!("{base}-{tool}"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            Backend::Plain => "default",
        }
    }
}

/// Picks the backend whose tables already hold rules (the one the node's
/// other components use, so that rules do not end up split across both);
/// with no rules anywhere, nft, then legacy, then whatever `iptables` is.
/// Each argument is that backend's `-save` output, `None` if it cannot run.
pub fn choose_backend(nft: Option<&str>, legacy: Option<&str>, plain: Option<&str>) -> Option<Backend> {
    let rules = |s: Option<&str>| s.map_or(0, |s| s.lines().filter(|l| l.starts_with("-A ")).count());
    if rules(legacy) > rules(nft) {
        return Some(Backend::Legacy);
    }
    [(nft, Backend::Nft), (legacy, Backend::Legacy), (plain, Backend::Plain)]
        .into_iter()
        .find_map(|(out, b)| out.map(|_| b))
}

fn save(program: &str) -> Option<String> {
    let out = Command::new(program).args(["-t", "nat"]).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn detect_backend(choice: BackendChoice) -> Result<Backend, Error> {
    match choice {
        BackendChoice::Legacy => Ok(Backend::Legacy),
        BackendChoice::Nft => Ok(Backend::Nft),
        BackendChoice::Auto => {
            let probe = |b: Backend| save(&b.binary(false, "save"));
            choose_backend(
                probe(Backend::Nft).as_deref(),
                probe(Backend::Legacy).as_deref(),
                probe(Backend::Plain).as_deref(),
            )
            .ok_or(Error::NoIptables)
        }
    }
}

fn restore(program: &str, script: &str) -> Result<(), Error> {
    let spawn_err = |error| Error::Spawn { program: program.to_owned(), error };
    let mut child = Command::new(program)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(Error::Failed {
            program: program.to_owned(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            script: script.to_owned(),
        });
    }
    Ok(())
}

/// Renders and applies (or prints) the rules for IPv4, and for IPv6 when the
/// namespace has a global IPv6 address.
pub fn init(args: &InitArgs) -> Result<(), Error> {
    if args.skip_ports == PortList::All {
        return Err(Error::SkipAll);
    }
    let plan = Plan { ports: args.ports.clone(), skip_ports: args.skip_ports.ports(), proxy_port: args.proxy_port };
    let ipv6 = std::fs::read_to_string("/proc/net/if_inet6").is_ok_and(|s| has_global_ipv6(&s));
    let backend = match detect_backend(args.backend) {
        Ok(b) => b,
        // A dry run shows the script even where iptables is not installed.
        Err(_) if args.dry_run => Backend::Nft,
        Err(e) => return Err(e),
    };
    for v6 in [false, true] {
        if v6 && !ipv6 {
            continue;
        }
        let current = save(&backend.binary(v6, "save")).unwrap_or_default();
        let script = render(&plan, &current);
        let program = backend.binary(v6, "restore");
        if args.dry_run {
            println!("# {program} --noflush\n{script}");
            continue;
        }
        restore(&program, &script)?;
        info!(backend = backend.name(), ipv6 = v6, ports = %plan.ports, "inbound redirect installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choice() {
        let rules = "*nat\n-A PREROUTING -j KUBE\nCOMMIT\n";
        let empty = "*nat\nCOMMIT\n";
        assert_eq!(choose_backend(Some(empty), Some(rules), None), Some(Backend::Legacy));
        assert_eq!(choose_backend(Some(rules), Some(empty), None), Some(Backend::Nft));
        assert_eq!(choose_backend(Some(empty), Some(empty), None), Some(Backend::Nft));
        assert_eq!(choose_backend(None, Some(empty), None), Some(Backend::Legacy));
        assert_eq!(choose_backend(None, None, Some(empty)), Some(Backend::Plain));
        assert_eq!(choose_backend(None, None, None), None);
    }

    #[test]
    fn binaries() {
        assert_eq!(Backend::Nft.binary(true, "restore"), "ip6tables-nft-restore");
        assert_eq!(Backend::Legacy.binary(false, "save"), "iptables-legacy-save");
        assert_eq!(Backend::Plain.binary(false, "restore"), "iptables-restore");
    }
}
