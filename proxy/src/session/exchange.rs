//! The channels of one intercepted request or connection: the data path holds
//! one end, the tunnel's Exchange call the other once the client attaches.
//! Both directions are bounded, so a slow client slows only its own exchange.

use tokio::sync::mpsc;

use super::wire::Frame;
use crate::metrics::SessionLabel;

/// Frames in flight per direction of one exchange.
const FRAMES: usize = 16;

/// The data path's end.
#[derive(Debug)]
pub struct Exchange {
    pub to_client: mpsc::Sender<Frame>,
    pub from_client: mpsc::Receiver<Frame>,
}

/// The tunnel's end, kept by the session until the client attaches.
#[derive(Debug)]
pub struct Slot {
    pub to_client: mpsc::Receiver<Frame>,
    /// `None` for a copy: nothing the client sends back is read.
    pub from_client: Option<mpsc::Sender<Frame>>,
}

pub fn pair(copy: bool) -> (Exchange, Slot) {
    let (to_tx, to_rx) = mpsc::channel(FRAMES);
    let (from_tx, from_rx) = mpsc::channel(FRAMES);
    let from_client = (!copy).then_some(from_tx);
    (Exchange { to_client: to_tx, from_client: from_rx }, Slot { to_client: to_rx, from_client })
}

/// Lossy copies to mirroring sessions: a session that cannot keep up loses
/// its copy (counted), and never slows the original down.
#[derive(Debug, Default)]
pub struct Copies {
    targets: Vec<(mpsc::Sender<Frame>, SessionLabel)>,
    /// Some session got a copy (with an exchange, or whole in its announcement).
    mirrored: bool,
}

impl Copies {
    pub fn add(&mut self, target: mpsc::Sender<Frame>, session: SessionLabel) {
        self.targets.push((target, session));
        self.mirrored = true;
    }

    /// A copy travelled whole in its announcement: no exchange to feed.
    pub fn announced(&mut self) {
        self.mirrored = true;
    }

    /// Whether any session got a copy of this request or connection.
    pub fn mirrored(&self) -> bool {
        self.mirrored
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub fn send(&mut self, frame: &Frame, metrics: &crate::metrics::Metrics) {
        self.targets.retain(|(target, session)| match target.try_send(frame.clone()) {
            Ok(()) => true,
            Err(_) => {
                metrics.mirror_dropped(session);
                false
            }
        });
    }
}
