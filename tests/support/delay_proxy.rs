//! A delaying TCP proxy, a far link on loopback: every chunk read on one side is written on
//! the other `delay` later, in each direction, and a link can be cut ("partitioned": nothing
//! is forwarded and nothing is closed, no FIN, no RST, as a cut cable or a stuck NAT looks)
//! and healed (what waited is delivered, in order). Used by the e2e tests in-process and by
//! `bench/far.sh` through `cargo run --example delay_proxy`.
//!
//! Threads and blocking sockets, so that it runs the same inside and outside a tokio
//! runtime. A chunk waits in memory, not in the socket, so a delay costs latency, not
//! throughput: chunks read one after the other are written one after the other, each
//! `delay` after it was read.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One far link: its one-way delay and whether it is cut. Several forwards may share it
/// (a host's broker and file server connections go over the same cable).
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
}

struct Shared {
    delay: Duration,
    partitioned: Mutex<bool>,
    healed: Condvar,
}

/// What one direction of a connection carries: a chunk and when it may be written, or the
/// end of the stream.
enum Carried {
    Chunk(Instant, Vec<u8>),
    End,
}

impl Link {
    /// A link that delays every chunk by `delay` each way.
    pub fn new(delay: Duration) -> Link {
        Link {
            shared: Arc::new(Shared {
                delay,
                partitioned: Mutex::new(false),
                healed: Condvar::new(),
            }),
        }
    }

    /// Forwards connections to `127.0.0.1:<port returned>` to `target` over this link.
    pub fn forward(&self, target: &str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let port = listener.local_addr().expect("the proxy's port").port();
        self.forward_from(listener, target);
        port
    }

    /// Forwards the connections `listener` accepts to `target` over this link.
    pub fn forward_from(&self, listener: TcpListener, target: &str) {
        let target = target
            .to_socket_addrs()
            .ok()
            .and_then(|mut addresses| addresses.next())
            .unwrap_or_else(|| panic!("cannot resolve {target}"));
        let link = self.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let link = link.clone();
                std::thread::spawn(move || link.connect(client, target));
            }
        });
    }

    /// Cuts the link: nothing more is forwarded, nothing is closed.
    pub fn partition(&self) {
        *self.shared.partitioned.lock().unwrap() = true;
    }

    /// Heals the link: what waited is forwarded, in order.
    pub fn heal(&self) {
        *self.shared.partitioned.lock().unwrap() = false;
        self.shared.healed.notify_all();
    }

    /// Blocks while the link is cut.
    fn wait_until_flowing(&self) {
        let mut partitioned = self.shared.partitioned.lock().unwrap();
        while *partitioned {
            partitioned = self.shared.healed.wait(partitioned).unwrap();
        }
    }

    /// One connection: the handshake's round trip, then both directions.
    fn connect(&self, client: TcpStream, target: SocketAddr) {
        std::thread::sleep(self.shared.delay * 2);
        self.wait_until_flowing();
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.shutdown(Shutdown::Both);
            return;
        };
        for stream in [&client, &server] {
            let _ = stream.set_nodelay(true);
        }
        self.direction(&client, &server);
        self.direction(&server, &client);
    }

    /// Forwards what `from` sends to `to`, each chunk `delay` after it was read.
    fn direction(&self, from: &TcpStream, to: &TcpStream) {
        let (sender, receiver) = channel();
        let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
        let delay = self.shared.delay;
        std::thread::spawn(move || read_chunks(from, &sender, delay));
        let link = self.clone();
        std::thread::spawn(move || link.write_chunks(&receiver, to));
    }

    /// Writes each chunk once its time has come and the link flows; ends `to`'s writing
    /// when the stream ends, and the whole connection when `to` refuses a chunk.
    fn write_chunks(&self, chunks: &Receiver<Carried>, mut to: TcpStream) {
        for carried in chunks {
            let Carried::Chunk(due, bytes) = carried else {
                self.wait_until_flowing();
                let _ = to.shutdown(Shutdown::Write);
                return;
            };
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            self.wait_until_flowing();
            if to.write_all(&bytes).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Reads `from` until it ends, stamping each chunk with when it may be written.
fn read_chunks(mut from: TcpStream, chunks: &Sender<Carried>, delay: Duration) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => {
                let _ = chunks.send(Carried::End);
                return;
            }
            Ok(read) => {
                let chunk = Carried::Chunk(Instant::now() + delay, buffer[..read].to_vec());
                if chunks.send(chunk).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}
