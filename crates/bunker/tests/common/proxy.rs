//! A TCP fault proxy for the links between clusters: a test points a secondary at the proxy
//! (the primary's `primary_cluster_addr`) and then cuts the link, stalls it (bytes stop, the
//! connection stays open) or restores it, at the moment it chooses.
//!
//! Plain threads and std sockets: the harness is synchronous, and a proxy with a handful of
//! connections needs no runtime. Every wait is bounded: the accept loop and the pumps poll
//! their control state every few milliseconds.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const PASS: u8 = 0;
const STALL: u8 = 1;
const CUT: u8 = 2;
const STOPPED: u8 = 3;
const POLL: Duration = Duration::from_millis(5);

/// A proxy on a free loopback port forwarding to `target`.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Every connection ever made (both halves), so a cut can close them.
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy addr");
        let mode = Arc::new(AtomicU8::new(PASS));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (m, c, a) = (mode.clone(), conns.clone(), accepted.clone());
        thread::spawn(move || accept_loop(listener, target, m, c, a));
        FaultProxy {
            addr,
            mode,
            conns,
            accepted,
        }
    }

    /// `host:port` to give a secondary as the primary's cluster address.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Close every connection and refuse new ones until [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.mode.store(CUT, Ordering::SeqCst);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Stop moving bytes both ways; connections stay open (a hung peer or a black hole).
    pub fn stall(&self) {
        self.mode.store(STALL, Ordering::SeqCst);
    }

    /// Pass bytes and accept connections again.
    pub fn restore(&self) {
        self.mode.store(PASS, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.mode.store(STOPPED, Ordering::SeqCst);
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: Arc<AtomicU8>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        match mode.load(Ordering::SeqCst) {
            STOPPED => return,
            m => match listener.accept() {
                Ok((client, _)) if m == CUT => drop(client),
                Ok((client, _)) => {
                    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5))
                    else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let mut list = conns.lock().expect("conns");
                    for s in [&client, &server] {
                        if let Ok(c) = s.try_clone() {
                            list.push(c);
                        }
                    }
                    drop(list);
                    for (from, to) in [(&client, &server), (&server, &client)] {
                        let (from, to) = (
                            from.try_clone().expect("clone"),
                            to.try_clone().expect("clone"),
                        );
                        let mode = mode.clone();
                        thread::spawn(move || pump(from, to, &mode));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
                Err(_) => thread::sleep(POLL),
            },
        }
    }
}

/// Copy bytes from `from` to `to` while the mode passes them; hold them while stalled.
fn pump(mut from: TcpStream, mut to: TcpStream, mode: &AtomicU8) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match mode.load(Ordering::SeqCst) {
            CUT | STOPPED => break,
            STALL => {
                thread::sleep(POLL);
                continue;
            }
            _ => {}
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // A stall that starts now holds these bytes until the link is restored or cut.
                while mode.load(Ordering::SeqCst) == STALL {
                    thread::sleep(POLL);
                }
                if mode.load(Ordering::SeqCst) != PASS {
                    break;
                }
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
