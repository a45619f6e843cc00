//! Kubelet's port-forward, as the CLI sees it: a loopback port on the
//! "laptop" whose connections are joined to 127.0.0.1:PORT inside the pod's
//! network namespace. Half-closes are passed on, as the real one does.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};

use crate::netns;

/// A running relay; it accepts until the test process ends.
#[derive(Debug)]
pub struct Relay {
    pub addr: SocketAddr,
}

impl Relay {
    pub fn start(pod_ns: &str, port: u16) -> io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let ns = pod_ns.to_owned();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let target = SocketAddr::from(([127, 0, 0, 1], port));
                let Ok(pod) = netns::connect(&ns, target) else { continue };
                let _ = client.set_nodelay(true);
                let _ = pod.set_nodelay(true);
                join(client, pod);
            }
        });
        Ok(Relay { addr })
    }
}

fn join(a: TcpStream, b: TcpStream) {
    let pipe = |mut from: TcpStream, mut to: TcpStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    if let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) {
        pipe(a, b2);
        pipe(b, a2);
    }
}
