//! What the session is doing, for the developer: one live status line on a
//! terminal, or one JSON event per line for scripts.
//!
//! Lines are written by a thread of their own, from a bounded queue: a
//! terminal or pipe that is slow to read, or not read at all, never holds
//! up the delivery of traffic (a stolen request waits for nobody's stdout).
//! When the queue is full, the lines about single requests are left out and
//! counted (`{"event":"events_lost","count":N}` follows the lines that were
//! queued when they were); lines about the session are kept up to a much
//! larger bound.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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

/// Lines about single requests queued before more are left out.
const TRAFFIC_LINES: usize = 1024;
/// Lines of any kind queued before more are left out.
const ALL_LINES: usize = 8192;

/// How long the writer waits after the first line of a batch: lines (one
/// per request under load) are written many at a time, not each with a
/// write and a wake-up of its own.
const BATCH: Duration = Duration::from_millis(10);

/// Where a queued line goes.
#[derive(Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Default)]
struct Queue {
    lines: VecDeque<(Stream, String)>,
    /// Lines left out since the last one written.
    lost: u64,
    /// A line is being written.
    writing: bool,
    /// The [`Status`] is gone: the writer ends once the queue is empty.
    closed: bool,
}

/// The queue between the session's tasks and the writing thread.
#[derive(Debug, Default)]
struct Output {
    queue: Mutex<Queue>,
    changed: Condvar,
}

impl Output {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `text` (written as it is: newline included) unless `bound`
    /// lines are queued already.
    fn push(&self, stream: Stream, text: String, bound: usize) {
        let mut queue = self.lock();
        if queue.lines.len() >= bound {
            queue.lost += 1;
            return;
        }
        let was_empty = queue.lines.is_empty();
        queue.lines.push_back((stream, text));
        drop(queue);
        // The writer waits only on an empty queue.
        if was_empty {
            self.changed.notify_all();
        }
    }

    /// The writing thread: the lines queued in the first [`BATCH`] after
    /// one arrived, in as few writes as the streams allow, then a note of
    /// those left out after them.
    fn write_all(&self, format: LogFormat, mut write: impl FnMut(&Stream, &str)) {
        loop {
            {
                let mut queue = self.lock();
                queue.writing = false;
                self.changed.notify_all();
                while queue.lines.is_empty() {
                    if queue.closed {
                        return;
                    }
                    queue = self.changed.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                queue.writing = true;
            }
            std::thread::sleep(BATCH);
            let (lines, lost) = {
                let mut queue = self.lock();
                (std::mem::take(&mut queue.lines), std::mem::take(&mut queue.lost))
            };
            let mut lines: Vec<(Stream, String)> = lines.into();
            if lost > 0 {
                lines.push(match format {
                    LogFormat::Json => {
                        (Stream::Stdout, format!("{}\n", serde_json::json!({"event": "events_lost", "count": lost})))
                    }
                    LogFormat::Text => (
                        Stream::Stderr,
                        format!("\r\x1b[2Knote: {lost} status lines were left out: the output was not read in time\n"),
                    ),
                });
            }
            for run in lines.chunk_by(|a, b| a.0 == b.0) {
                let text: String = run.iter().map(|(_, text)| text.as_str()).collect();
                write(&run[0].0, &text);
            }
        }
    }

    /// Whether every queued line was written, waiting up to `within`.
    fn drained(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut queue = self.lock();
        while !queue.lines.is_empty() || queue.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            queue = self.changed.wait_timeout(queue, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

fn write_to(stream: &Stream, text: &str) {
    let _ = match stream {
        Stream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        }
        Stream::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
    };
}

/// Counters per remote port (summed over pods), and the printer.
#[derive(Debug)]
pub struct Status {
    format: LogFormat,
    live: bool,
    output: Arc<Output>,
    ports: Mutex<BTreeMap<u16, PortCounts>>,
    /// App processes stopped, per pod whose app is paused.
    paused: Mutex<BTreeMap<String, u32>>,
    /// Pods with a session open, when sessions are on pods.
    pods: Mutex<Option<usize>>,
}

impl Status {
    pub fn new(format: LogFormat) -> Self {
        let live = format == LogFormat::Text && std::io::stderr().is_terminal();
        let output = Arc::new(Output::default());
        let writer = output.clone();
        if let Err(e) =
            std::thread::Builder::new().name("output".to_owned()).spawn(move || writer.write_all(format, write_to))
        {
            eprintln!("error: no thread for the status output: {e}");
        }
        Status { format, live, output, ports: Mutex::default(), paused: Mutex::default(), pods: Mutex::default() }
    }

    /// Waits (up to `within`) until every queued line is written: before
    /// the command ends.
    pub async fn flush(&self, within: Duration) {
        let output = self.output.clone();
        let _ = tokio::task::spawn_blocking(move || output.drained(within)).await;
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
            LogFormat::Json => self.event(event, ALL_LINES),
            LogFormat::Text => self.line(text, ALL_LINES),
        }
    }

    /// An error that ends the command, on stderr after every line queued
    /// before it (whatever the format).
    pub fn fail(&self, message: &str) {
        self.line(&format!("error: {message}"), ALL_LINES);
    }

    /// Queues a JSON event (JSON format only), unless `bound` lines wait.
    fn event(&self, event: &serde_json::Value, bound: usize) {
        if self.format == LogFormat::Json {
            self.output.push(Stream::Stdout, format!("{event}\n"), bound);
        }
    }

    /// Queues a line for stderr (over the live status line, on a terminal).
    fn line(&self, text: &str, bound: usize) {
        let clear = if self.live { "\r\x1b[2K" } else { "" };
        self.output.push(Stream::Stderr, format!("{clear}{text}\n"), bound);
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
        self.output.push(Stream::Stderr, format!("\r\x1b[2K{text}"), TRAFFIC_LINES);
    }
}

impl Drop for Status {
    fn drop(&mut self) {
        self.output.lock().closed = true;
        self.output.changed.notify_all();
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
            TRAFFIC_LINES,
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
        self.status.event(&self.event(serde_json::json!({"event": "dropped", "port": port})), TRAFFIC_LINES);
    }

    pub fn error(&self, port: u16, message: &str) {
        self.status.update(port, |c| c.errors += 1);
        self.status
            .event(&self.event(serde_json::json!({"event": "error", "port": port, "message": message})), TRAFFIC_LINES);
        if self.status.format == LogFormat::Text {
            let text = match &self.pod {
                Some(pod) => format!("{pod}: error on port {port}: {message}"),
                None => format!("error on port {port}: {message}"),
            };
            self.status.line(&text, TRAFFIC_LINES);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Lines about single requests beyond the bound are left out, counted
    /// in a note that comes after the lines kept; lines about the session
    /// are kept beyond that bound; everything queued is written in order.
    #[test]
    fn a_full_queue_leaves_out_request_lines_and_says_how_many() {
        let output = Arc::new(Output::default());
        for i in 0..TRAFFIC_LINES + 10 {
            output.push(Stream::Stdout, format!("{i}\n"), TRAFFIC_LINES);
        }
        output.push(Stream::Stderr, "session\n".to_owned(), ALL_LINES);
        let written = Arc::new(Mutex::new(Vec::new()));
        let (writer, sink) = (output.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            writer.write_all(LogFormat::Json, |stream, text| {
                sink.lock().unwrap().push((matches!(stream, Stream::Stdout), text.to_owned()));
            });
        });
        assert!(output.drained(Duration::from_secs(10)));
        output.push(Stream::Stdout, "after\n".to_owned(), TRAFFIC_LINES);
        assert!(output.drained(Duration::from_secs(10)));
        output.lock().closed = true;
        output.changed.notify_all();
        thread.join().unwrap();

        let written = written.lock().unwrap();
        let stdout: String = written.iter().filter(|(out, _)| *out).map(|(_, t)| t.as_str()).collect();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), TRAFFIC_LINES + 2, "{lines:?}");
        assert!(lines[..TRAFFIC_LINES].iter().enumerate().all(|(i, l)| *l == i.to_string()));
        assert_eq!(lines[TRAFFIC_LINES], r#"{"count":10,"event":"events_lost"}"#);
        assert_eq!(lines[TRAFFIC_LINES + 1], "after");
        let stderr: Vec<_> = written.iter().filter(|(out, _)| !*out).map(|(_, t)| t.as_str()).collect();
        assert_eq!(stderr, ["session\n"]);
        // Many lines, few writes.
        assert!(written.len() <= 4, "{} writes", written.len());
    }
}
