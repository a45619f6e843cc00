//! What a config template can refer to, read from this machine as mirrord
//! reads it: `MIRRORD_KEY` (the session key), `MIRRORD_BRANCH_NAME` or the
//! current git branch (`git_branch`), and a generated key as the fallback.

use std::io::Read;
use std::process::{Command, Stdio};

use mirrord_config::Vars;

/// The template variables for configs loaded by this process.
pub fn from_environment() -> Vars {
    Vars {
        key: std::env::var("MIRRORD_KEY").ok().filter(|k| !k.is_empty()),
        generated_key: generated_key(),
        git_branch: git_branch(),
    }
}

/// Five hex digits, as mirrord generates them.
fn generated_key() -> String {
    let mut bytes = [0u8; 3];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // No /dev/urandom: the clock's nanoseconds still tell sessions apart.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        bytes.copy_from_slice(&nanos.to_le_bytes()[..3]);
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    hex[..5].to_owned()
}

/// `MIRRORD_BRANCH_NAME`, else the branch checked out in the current
/// directory; `None` outside a repository, without git, or detached.
fn git_branch() -> Option<String> {
    if let Some(branch) = std::env::var("MIRRORD_BRANCH_NAME").ok().filter(|b| !b.is_empty()) {
        return Some(branch);
    }
    let out = Command::new("git")
        .args(["rev-parse", "--abbrev-ref", "HEAD"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let branch = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !branch.is_empty() && branch != "HEAD").then_some(branch)
}
