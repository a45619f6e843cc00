//! What the session is doing, for the developer: one live status line on a
//! terminal, or one JSON event per line for scripts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

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

/// Counters per remote port, and the printer.
#[derive(Debug)]
pub struct Status {
    format: LogFormat,
    live: bool,
    ports: Mutex<BTreeMap<u16, PortCounts>>,
    /// App processes stopped, while the app is paused.
    paused: Mutex<Option<u32>>,
}

impl Status {
    pub fn new(format: LogFormat) -> Self {
        let live = format == LogFormat::Text && std::io::stderr().is_terminal();
        Status { format, live, ports: Mutex::default(), paused: Mutex::default() }
    }

    fn update(&self, port: u16, f: impl FnOnce(&mut PortCounts)) {
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        f(ports.entry(port).or_default());
    }

    /// A request or connection was delivered to the local app.
    pub fn delivered(&self, port: u16, steal: bool, status: Option<u16>) {
        self.update(port, |c| if steal { c.stolen += 1 } else { c.mirrored += 1 });
        let mode = if steal { "steal" } else { "mirror" };
        self.event(&serde_json::json!({"event": "delivered", "port": port, "mode": mode, "status": status}));
    }

    /// The app was paused (with this many processes stopped) or resumed.
    pub fn paused(&self, processes: Option<u32>) {
        *self.paused.lock().unwrap_or_else(|p| p.into_inner()) = processes;
    }

    /// A copy dropped because too many were still with the local app.
    pub fn dropped(&self, port: u16) {
        self.update(port, |c| c.dropped += 1);
        self.event(&serde_json::json!({"event": "dropped", "port": port}));
    }

    pub fn error(&self, port: u16, message: &str) {
        self.update(port, |c| c.errors += 1);
        self.event(&serde_json::json!({"event": "error", "port": port, "message": message}));
        if self.format == LogFormat::Text {
            self.line(&format!("error on port {port}: {message}"));
        }
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
        if let Some(n) = *self.paused.lock().unwrap_or_else(|p| p.into_inner()) {
            text = format!("app paused ({n} processes) | {text}");
        }
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{text}");
    }
}
