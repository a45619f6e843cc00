//! What the session is doing, for the developer: one live status line on a
//! terminal, or one JSON event per line for scripts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

/// Output format of `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Default, Clone, Copy)]
struct PortCounts {
    mirrored: u64,
    stolen: u64,
    errors: u64,
    dropped: u64,
}

/// Counters per remote port (summed over pods), and the printer.
#[derive(Debug)]
pub struct Status {
    format: LogFormat,
    live: bool,
    ports: Mutex<BTreeMap<u16, PortCounts>>,
    /// App processes stopped, per pod whose app is paused.
    paused: Mutex<BTreeMap<String, u32>>,
    /// Pods with a session open, when sessions are on pods.
    pods: Mutex<Option<usize>>,
}

impl Status {
    pub fn new(format: LogFormat) -> Self {
        let live = format == LogFormat::Text && std::io::stderr().is_terminal();
        Status { format, live, ports: Mutex::default(), paused: Mutex::default(), pods: Mutex::default() }
    }

    /// How many pods have a session open.
    pub fn pods(&self, n: usize) {
        *self.pods.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
    }

    fn update(&self, port: u16, f: impl FnOnce(&mut PortCounts)) {
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        f(ports.entry(port).or_default());
    }

    /// A message for the developer (text) or an event (JSON).
    pub fn say(&self, event: &serde_json::Value, text: &str) {
        match self.format {
            LogFormat::Json => self.event(event),
            LogFormat::Text => self.line(text),
        }
    }

    fn event(&self, event: &serde_json::Value) {
        if self.format == LogFormat::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{event}");
            let _ = out.flush();
        }
    }

    fn line(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.live {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{text}");
    }

    /// Redraws the live status line (terminals only).
    pub fn redraw(&self) {
        if !self.live {
            return;
        }
        let ports = self.ports.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let parts: Vec<String> = ports
            .iter()
            .map(|(p, c)| {
                let dropped = if c.dropped > 0 { format!(", {} copies dropped", c.dropped) } else { String::new() };
                format!("{p}: {} mirrored, {} stolen, {} errors{dropped}", c.mirrored, c.stolen, c.errors)
            })
            .collect();
        let mut text = if parts.is_empty() { "waiting for traffic".to_owned() } else { parts.join(" | ") };
        let paused = self.paused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !paused.is_empty() {
            let n: u32 = paused.values().sum();
            text = match paused.len() {
                1 => format!("app paused ({n} processes) | {text}"),
                pods => format!("app paused on {pods} pods ({n} processes) | {text}"),
            };
        }
        if let Some(pods) = *self.pods.lock().unwrap_or_else(|p| p.into_inner()) {
            text = format!("{pods} pod{} | {text}", if pods == 1 { "" } else { "s" });
        }
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{text}");
    }
}

/// What one session reports: to the shared [`Status`], its JSON events
/// naming the pod it is on.
#[derive(Debug, Clone)]
pub struct Reporter {
    status: Arc<Status>,
    pod: Option<Arc<str>>,
}

impl Reporter {
    pub fn new(status: Arc<Status>, pod: Option<&str>) -> Self {
        Reporter { status, pod: pod.map(Arc::from) }
    }

    fn event(&self, mut event: serde_json::Value) -> serde_json::Value {
        if let (Some(pod), Some(map)) = (&self.pod, event.as_object_mut()) {
            map.insert("pod".to_owned(), serde_json::Value::from(pod.as_ref()));
        }
        event
    }

    /// A message for the developer (text, prefixed with the pod when there
    /// are pods) or an event (JSON, with the pod).
    pub fn say(&self, event: serde_json::Value, text: &str) {
        let text = match &self.pod {
            Some(pod) => format!("{pod}: {text}"),
            None => text.to_owned(),
        };
        self.status.say(&self.event(event), &text);
    }

    /// A request or connection was delivered to the local app.
    pub fn delivered(&self, port: u16, steal: bool, status: Option<u16>) {
        self.status.update(port, |c| if steal { c.stolen += 1 } else { c.mirrored += 1 });
        let mode = if steal { "steal" } else { "mirror" };
        self.status.event(
            &self.event(serde_json::json!({"event": "delivered", "port": port, "mode": mode, "status": status})),
        );
    }

    /// The app was paused (with this many processes stopped) or resumed.
    pub fn paused(&self, processes: Option<u32>) {
        let key = self.pod.as_deref().unwrap_or("").to_owned();
        let mut paused = self.status.paused.lock().unwrap_or_else(|p| p.into_inner());
        match processes {
            Some(n) => paused.insert(key, n),
            None => paused.remove(&key),
        };
    }

    /// A copy dropped because too many were still with the local app.
    pub fn dropped(&self, port: u16) {
        self.status.update(port, |c| c.dropped += 1);
        self.status.event(&self.event(serde_json::json!({"event": "dropped", "port": port})));
    }

    pub fn error(&self, port: u16, message: &str) {
        self.status.update(port, |c| c.errors += 1);
        self.status.event(&self.event(serde_json::json!({"event": "error", "port": port, "message": message})));
        if self.status.format == LogFormat::Text {
            let text = match &self.pod {
                Some(pod) => format!("{pod}: error on port {port}: {message}"),
                None => format!("error on port {port}: {message}"),
            };
            self.status.line(&text);
        }
    }
}
