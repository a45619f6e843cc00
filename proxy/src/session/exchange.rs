//! The channels of one intercepted request or connection: the data path holds
//! one end, the tunnel's Exchange call the other once the client attaches.
//! Both directions are bounded, so a slow client slows only its own exchange.

use tokio::sync::mpsc;

use crate::proto::exchange_frame::Kind as Frame;

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
    pub from_client: mpsc::Sender<Frame>,
}

pub fn pair() -> (Exchange, Slot) {
    let (to_tx, to_rx) = mpsc::channel(FRAMES);
    let (from_tx, from_rx) = mpsc::channel(FRAMES);
    (Exchange { to_client: to_tx, from_client: from_rx }, Slot { to_client: to_rx, from_client: from_tx })
}
