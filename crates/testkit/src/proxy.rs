//! A TCP fault proxy for the links between clusters: a test points a secondary at the proxy
//! (the primary's `primary_cluster_addr`) and then cuts the link, stalls it (bytes stop, the
//! connection stays open) or restores it, at the moment it chooses.
//!
//! Plain threads and std sockets: the harness is synchronous, and a proxy with a handful of
//! connections needs no runtime. A stall parks the pumps on a condition variable that a
//! restore or a cut wakes; reads are sliced (a read timeout) so a pump sees a change of mode.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Stall,
    Cut,
    Stopped,
}

/// The link's mode, and a condition variable that wakes pumps held by a stall.
#[derive(Clone)]
struct Link(Arc<(Mutex<Mode>, Condvar)>);

impl Link {
    fn get(&self) -> Mode {
        *self.0 .0.lock().expect("link mode")
    }

    fn set(&self, mode: Mode) {
        *self.0 .0.lock().expect("link mode") = mode;
        self.0 .1.notify_all();
    }

    /// Block while the link is stalled; returns the mode that ended the stall.
    fn wait_unstalled(&self) -> Mode {
        let guard = self.0 .0.lock().expect("link mode");
        *self
            .0
             .1
            .wait_while(guard, |m| *m == Mode::Stall)
            .expect("link mode")
    }
}

/// How long a pump's read waits before it looks at the link's mode again.
const READ_SLICE: Duration = Duration::from_millis(20);

/// A proxy on a free loopback port forwarding to `target`.
pub struct FaultProxy {
    addr: SocketAddr,
    link: Link,
    /// Every connection ever made (both halves), so a cut can close them.
    conns: Arc<Mutex<Vec<TcpStream>>>,
    /// One flag per connection: set, its next bytes close it ([`FaultProxy::break_silently`]).
    broken: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// One flag per connection: set, it moves no bytes ([`FaultProxy::stall_open`]).
    held: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    accepted: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let link = Link(Arc::new((Mutex::new(Mode::Pass), Condvar::new())));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let broken = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let flags = Flags {
            broken: broken.clone(),
            held: held.clone(),
        };
        let (l, c, a) = (link.clone(), conns.clone(), accepted.clone());
        thread::spawn(move || accept_loop(listener, target, l, c, flags, a));
        FaultProxy {
            addr,
            link,
            conns,
            broken,
            held,
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
        self.link.set(Mode::Cut);
        for c in self.conns.lock().expect("conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Stop moving bytes both ways; connections stay open (a hung peer or a black hole).
    pub fn stall(&self) {
        self.link.set(Mode::Stall);
    }

    /// Break every open connection without telling either end: each stays open until one side
    /// sends, and then closes unanswered (a database restarted behind a NAT or a load balancer
    /// that dropped idle sessions: a client learns on its next query). New connections pass.
    pub fn break_silently(&self) {
        for flag in self.broken.lock().expect("broken").iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Stall the connections open now (bytes stop both ways, both ends keep them open), while
    /// new connections pass: a peer that gave up on a hung connection and reconnected, while
    /// the other end still holds the old one.
    pub fn stall_open(&self) {
        for flag in self.held.lock().expect("held").iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Pass bytes and accept connections again.
    pub fn restore(&self) {
        for flag in self.held.lock().expect("held").iter() {
            flag.store(false, Ordering::SeqCst);
        }
        self.link.set(Mode::Pass);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.link.set(Mode::Stopped);
        // Wake the accept loop blocked in accept(); it sees Stopped and returns.
        let _ = TcpStream::connect(self.addr);
    }
}

/// The per-connection flags, as the accept loop registers them.
struct Flags {
    broken: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    held: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    link: Link,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    flags: Flags,
    accepted: Arc<AtomicUsize>,
) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        match link.get() {
            Mode::Stopped => return,
            Mode::Cut => continue,
            Mode::Pass | Mode::Stall => {}
        }
        let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
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
        let flag = Arc::new(AtomicBool::new(false));
        flags.broken.lock().expect("broken").push(flag.clone());
        let held = Arc::new(AtomicBool::new(false));
        flags.held.lock().expect("held").push(held.clone());
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (from, to) = (
                from.try_clone().expect("clone"),
                to.try_clone().expect("clone"),
            );
            let (link, flag, held) = (link.clone(), flag.clone(), held.clone());
            thread::spawn(move || pump(from, to, &link, &flag, &held));
        }
    }
}

/// Copy bytes from `from` to `to` while the link passes them; hold them while stalled (the
/// link, or this connection: `held`). Bytes read on a connection marked broken are dropped
/// and the connection closed both ways.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    link: &Link,
    broken: &AtomicBool,
    held: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(READ_SLICE));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A stall holds the pump here (and what it read last) until restored or cut.
        if link.wait_unstalled() != Mode::Pass {
            break;
        }
        if held.load(Ordering::SeqCst) {
            thread::sleep(READ_SLICE);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if broken.load(Ordering::SeqCst) {
                    let _ = from.shutdown(Shutdown::Both);
                    break;
                }
                // Bytes read after the connection was held wait with it (a stall of the whole
                // link meanwhile holds them too; a cut ends the pump).
                while held.load(Ordering::SeqCst) && matches!(link.get(), Mode::Pass | Mode::Stall)
                {
                    thread::sleep(READ_SLICE);
                }
                if link.wait_unstalled() != Mode::Pass {
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
