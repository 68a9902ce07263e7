//! A TCP proxy on 127.0.0.1 in front of a test's S3 endpoint, whose failure
//! mode the test switches at run time: the store's outages and transient
//! faults without touching the (shared) server itself.
//!
//! Every request is made the only one on its connection (the proxy rewrites
//! `Connection` to `close`), so each fault hits exactly one request and the
//! request counter is exact.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Accept and read, never answer; hold the socket until the client
    /// gives up (a store behind a dead network path).
    BlackHole,
    /// Reset every connection as soon as it is accepted (a stopped server:
    /// the client sees ECONNRESET/refused at once).
    Refuse,
    /// Read the request head, then reset the connection (SO_LINGER 0).
    Reset,
}

#[derive(Default)]
struct Faults {
    /// Answer the next `fail` requests with this status instead of forwarding.
    fail: usize,
    fail_status: u16,
    /// Cut the next `truncate` response bodies after `truncate_at` bytes.
    truncate: usize,
    truncate_at: usize,
    /// Reset the next `reset` connections after their request head.
    reset: usize,
}

struct State {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    faults: Mutex<Faults>,
    requests: AtomicUsize,
    stop: AtomicBool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// Start a proxy to `upstream` ("http://127.0.0.1:PORT" or "127.0.0.1:PORT").
    pub fn start(upstream: &str) -> Proxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr = hostport.parse().expect("upstream is 127.0.0.1:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            mode: Mutex::new(Mode::Pass),
            faults: Mutex::new(Faults::default()),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || handle(&st, conn));
            }
        });
        Proxy { addr, state }
    }

    /// The endpoint URL to give the client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Answer the next `n` requests with HTTP `status` (e.g. 500, 503).
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut f = self.state.faults.lock().unwrap();
        f.fail = n;
        f.fail_status = status;
    }

    /// Close the next `n` responses after `k` bytes of their bodies.
    pub fn truncate_next(&self, n: usize, k: usize) {
        let mut f = self.state.faults.lock().unwrap();
        f.truncate = n;
        f.truncate_at = k;
    }

    /// Reset the next `n` connections once their request head is read.
    pub fn reset_next(&self, n: usize) {
        self.state.faults.lock().unwrap().reset = n;
    }

    /// Requests seen so far (each connection carries one).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Faults still pending (not yet spent on a request): 5xx, cuts, resets.
    pub fn pending_faults(&self) -> (usize, usize, usize) {
        let f = self.state.faults.lock().unwrap();
        (f.fail, f.truncate, f.reset)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Close with an RST instead of a FIN.
fn reset(conn: TcpStream) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&conn);
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

/// Read up to and including the blank line ending an HTTP head.
fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

/// The request head with `Connection: close`, so the server (and thus the
/// client) ends the connection after this one exchange.
fn one_shot(head: &str) -> String {
    let mut out = String::new();
    for l in head.split("\r\n").filter(|l| !l.is_empty()) {
        let name = l.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out += l;
        out += "\r\n";
    }
    out + "Connection: close\r\n\r\n"
}

fn handle(st: &State, mut conn: TcpStream) {
    let mode = *st.mode.lock().unwrap();
    if mode == Mode::Refuse {
        st.requests.fetch_add(1, Ordering::SeqCst);
        return reset(conn);
    }
    if mode == Mode::BlackHole {
        st.requests.fetch_add(1, Ordering::SeqCst);
        // Swallow whatever comes until the client hangs up.
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
        return;
    }
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    st.requests.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&head).into_owned();
    // The mode may have changed while the client was idle on this socket.
    match *st.mode.lock().unwrap() {
        Mode::Reset | Mode::Refuse => return reset(conn),
        Mode::BlackHole => {
            let _ = std::io::copy(&mut conn, &mut std::io::sink());
            return;
        }
        Mode::Pass => {}
    }
    let (fail, cut) = {
        let mut f = st.faults.lock().unwrap();
        if f.reset > 0 {
            f.reset -= 1;
            drop(f);
            return reset(conn);
        }
        if f.fail > 0 {
            f.fail -= 1;
            (Some(f.fail_status), None)
        } else if f.truncate > 0 {
            f.truncate -= 1;
            (None, Some(f.truncate_at))
        } else {
            (None, None)
        }
    };
    if let Some(status) = fail {
        // Take the body off the wire first so the client sees the answer,
        // not a reset from unread data.
        if let Some(n) = content_length(&head) {
            let _ = std::io::copy(&mut (&mut conn).take(n as u64), &mut std::io::sink());
        }
        let body = format!("injected {status}\n");
        let _ = write!(
            conn,
            "HTTP/1.1 {status} Injected\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.shutdown(Shutdown::Write);
        // Let the client read the answer before the socket goes.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = std::io::copy(&mut conn, &mut std::io::sink());
        return;
    }
    let Ok(mut up) = TcpStream::connect(st.upstream) else {
        return reset(conn);
    };
    if up.write_all(one_shot(&head).as_bytes()).is_err() {
        return reset(conn);
    }
    // The request body (if any) flows on its own thread while the response
    // comes back on this one.
    let (mut c_in, mut u_out) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_in, &mut u_out);
        let _ = u_out.shutdown(Shutdown::Write);
    });
    match cut {
        None => {
            let _ = std::io::copy(&mut up, &mut conn);
        }
        Some(k) => {
            if let Some(rhead) = read_head(&mut up) {
                let _ = conn.write_all(&rhead);
                let _ = std::io::copy(&mut (&mut up).take(k as u64), &mut conn);
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
}
