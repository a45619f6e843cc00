//! `mirrord-cli connect` run as a developer runs it, with its JSON events
//! read as they come.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::workspace_bin;

/// A running `mirrord-cli connect`.
#[derive(Debug)]
pub struct Cli {
    pub child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    /// Events read and not wanted, for a failing test to show.
    skipped: std::cell::RefCell<Vec<serde_json::Value>>,
    /// Set: the CLI's stdout is no longer read (its pipe fills up).
    paused: Arc<AtomicBool>,
    /// Reading resumes on a message; the reader ends when this is dropped.
    resume: mpsc::Sender<()>,
    _config: tempfile::NamedTempFile,
}

impl Cli {
    /// Connects with `config` (JSON text) as session `name`.
    pub fn connect(tunnel: SocketAddr, name: &str, config: &str) -> Cli {
        Cli::connect_with(&["--addr", &tunnel.to_string()], name, config, &[])
    }

    /// Connects with `config` as session `name`, with `flags` saying where
    /// (`--addr …`, or `--target … --kubeconfig …`, and `-- CMD…` last), and
    /// `env` added.
    pub fn connect_with(flags: &[&str], name: &str, config: &str, env: &[(&str, &str)]) -> Cli {
        let file = tempfile::Builder::new().suffix(".json").tempfile().expect("config file");
        std::fs::write(file.path(), config).expect("write config");
        // A command after `--` stays last.
        let split = flags.iter().position(|f| *f == "--").unwrap_or(flags.len());
        let (flags, command) = flags.split_at(split);
        let mut child = Command::new(workspace_bin("mirrord-cli"))
            .arg("connect")
            .args(flags)
            .args(["--name", name, "--log-format", "json", "-f"])
            .arg(file.path())
            .args(command)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mirrord-cli");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::channel();
        let paused = Arc::new(AtomicBool::new(false));
        let (resume, resumed) = mpsc::channel::<()>();
        let pause = paused.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(event) = serde_json::from_str(&line) {
                    if tx.send(event).is_err() {
                        break;
                    }
                }
                if pause.load(Ordering::SeqCst) && resumed.recv().is_err() {
                    break;
                }
            }
        });
        Cli { child, events, skipped: Default::default(), paused, resume, _config: file }
    }

    /// Stops reading the CLI's stdout (after at most one more line), as a
    /// consumer that hangs would: the pipe fills and the CLI's writes wait.
    pub fn stop_reading(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Reads its stdout again.
    pub fn resume_reading(&self) {
        self.paused.store(false, Ordering::SeqCst);
        let _ = self.resume.send(());
    }

    /// Waits for an event satisfying `want`; `None` on timeout or exit.
    pub fn wait_for(&self, within: Duration, want: impl Fn(&serde_json::Value) -> bool) -> Option<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(event) if want(&event) => return Some(event),
                Ok(event) => self.skipped.borrow_mut().push(event),
                Err(_) => return None,
            }
        }
    }

    /// The events [`Cli::wait_for`] read and did not want, one per line.
    pub fn skipped(&self) -> String {
        self.skipped.borrow().iter().map(|e| format!("{e}\n")).collect()
    }

    /// Waits for the plan: the session is open and its rules are in place.
    pub fn wait_plan(&mut self) -> serde_json::Value {
        match self.wait_for(Duration::from_secs(10), |e| e["event"] == "plan") {
            Some(plan) => plan,
            None => {
                let _ = self.child.kill();
                let out = self.child.wait_with_output_ref();
                panic!("no plan from mirrord-cli: {out}");
            }
        }
    }

    /// Waits for the CLI to exit: its exit code and standard error.
    pub fn finish(&mut self) -> (Option<i32>, String) {
        let err = self.child.wait_with_output_ref();
        (self.child.try_wait().ok().flatten().and_then(|s| s.code()), err)
    }

    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}

impl WaitOutput for Child {
    fn wait_with_output_ref(&mut self) -> String {
        use std::io::Read;
        let mut err = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        let _ = self.wait();
        err
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
