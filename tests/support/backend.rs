//! A small real HTTP/1.1 backend that answers with its own name, used by the tests and the demo.
//!
//! Std only, one thread per connection, keep-alive honoured. Answers every request with a JSON
//! body naming the backend and echoing the request (method, path, headers, body length), so a
//! test can see exactly what the gateway forwarded. Special paths:
//! `/slow/<ms>` waits before answering; `/status/<code>` answers with that status;
//! `/bytes/<n>` streams n bytes of body (chunked).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A running backend; stops accepting when dropped.
pub struct Backend {
    /// Name the backend answers with.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests answered so far.
    pub hits: Arc<AtomicUsize>,
    /// While set, every request is answered 503 (a failing instance).
    pub failing: Arc<AtomicBool>,
    /// The most requests it ever had in progress at once.
    pub peak: Arc<AtomicUsize>,
    /// Connections it accepted.
    pub connections: Arc<AtomicUsize>,
    /// Every request head it received (request line and header lines, as sent), in order.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
    /// Every trailer line of the chunked request bodies it received, in order.
    pub trailers: Arc<std::sync::Mutex<Vec<String>>>,
    /// Its open connections (to close them all when it is killed).
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Backend {
    /// Starts a backend named `name` on a free loopback port.
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Starts a backend named `name` on `addr`.
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let gauge = Arc::new(Gauge::default());
        let peak = gauge.peak.clone();
        let heads = gauge.heads.clone();
        let trailers = gauge.trailers.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let (n, s, h, f) = (name.to_string(), stop.clone(), hits.clone(), failing.clone());
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = open.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    tracked.lock().unwrap().push(c);
                }
                accepted.fetch_add(1, Ordering::Relaxed);
                let (n, h, f, g) = (n.clone(), h.clone(), f.clone(), gauge.clone());
                std::thread::spawn(move || serve(conn, &n, &h, &f, &g));
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            stop,
            hits,
            failing,
            peak,
            connections,
            heads,
            trailers,
            open,
        }
    }

    /// Dies as a killed process does: the port refuses connections and every open connection
    /// is closed.
    pub fn kill(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Closes every open connection, as an instance's own idle timeout does, and goes on
    /// accepting new ones.
    pub fn close_connections(&self) {
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// How many requests it received whose request line starts with `prefix` ("GET /health").
    pub fn requests_to(&self, prefix: &str) -> usize {
        self.heads.lock().unwrap().iter().filter(|h| h.starts_with(prefix)).count()
    }

    /// `host:port`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag and closes the socket.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Requests in progress, and the most there ever were.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
    trailers: Arc<std::sync::Mutex<Vec<String>>>,
}

/// One request in progress until dropped.
struct InProgress<'a>(&'a Gauge);

impl<'a> InProgress<'a> {
    fn new(g: &'a Gauge) -> Self {
        let now = g.now.fetch_add(1, Ordering::SeqCst) + 1;
        g.peak.fetch_max(now, Ordering::SeqCst);
        InProgress(g)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(conn: TcpStream, name: &str, hits: &AtomicUsize, failing: &AtomicBool, gauge: &Gauge) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) =
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = Vec::new();
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        let mut head = line.clone();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            head.push_str(&h);
            let h = h.trim_end();
            if h.is_empty() {
                gauge.heads.lock().unwrap().push(std::mem::take(&mut head));
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                match k.as_str() {
                    "content-length" => length = v.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
                headers.push((k, v));
            }
        }
        let received = if chunked {
            read_chunked(&mut reader, &gauge.trailers)
        } else {
            drain(&mut reader, length)
        };
        let Some(received) = received else { return };
        hits.fetch_add(1, Ordering::Relaxed);
        let _in_progress = InProgress::new(gauge);
        let mut status = if failing.load(Ordering::Relaxed) { 503u16 } else { 200 };
        if path == "/ws" {
            // An Upgrade endpoint: 101, then echo every byte back (enough to prove pass-through).
            let _ = writer
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n");
            let mut buf = [0u8; 4096];
            let mut inner = reader.into_inner();
            let _ = inner.set_read_timeout(Some(Duration::from_secs(10)));
            while let Ok(n) = inner.read(&mut buf) {
                if n == 0 || writer.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            return;
        }
        if let Some(ms) = path.strip_prefix("/slow/").and_then(|s| s.parse::<u64>().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if let Some(code) = path.strip_prefix("/status/").and_then(|s| s.parse::<u16>().ok()) {
            status = code;
        }
        if let Some(n) = path.strip_prefix("/bytes/").and_then(|s| s.parse::<u64>().ok()) {
            if stream_bytes(&mut writer, n).is_err() {
                return;
            }
            continue;
        }
        let hdrs: Vec<String> = headers.iter().map(|(k, v)| format!("{:?}:{:?}", k, v)).collect();
        let body = format!(
            "{{\"backend\":{:?},\"method\":{:?},\"path\":{:?},\"received\":{},\"headers\":{{{}}}}}\n",
            name,
            method,
            path,
            received,
            hdrs.join(",")
        );
        // A HEAD answer carries the length of the body it does not send (RFC 9110 §9.3.2).
        let payload = if method == "HEAD" { "" } else { body.as_str() };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nx-backend: {name}\r\ncontent-length: {}\r\n{}\r\n{payload}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if writer.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn drain(reader: &mut impl Read, mut n: usize) -> Option<u64> {
    let mut buf = [0u8; 65536];
    let total = n as u64;
    while n > 0 {
        let k = reader.read(&mut buf[..n.min(65536)]).ok()?;
        if k == 0 {
            return None;
        }
        n -= k;
    }
    Some(total)
}

fn read_chunked(
    reader: &mut BufReader<TcpStream>,
    trailers: &std::sync::Mutex<Vec<String>>,
) -> Option<u64> {
    let mut total = 0u64;
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if n == 0 {
            // The trailer section, up to its empty line.
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).ok()?;
                let line = line.trim_end();
                if line.is_empty() {
                    return Some(total);
                }
                trailers.lock().unwrap().push(line.to_string());
            }
        }
        total += drain(reader, n)?;
        let mut crlf = String::new();
        reader.read_line(&mut crlf).ok()?;
    }
}

fn stream_bytes(w: &mut TcpStream, mut n: u64) -> std::io::Result<()> {
    w.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/octet-stream\r\n\r\n")?;
    let chunk = vec![b'x'; 64 * 1024];
    while n > 0 {
        let k = n.min(chunk.len() as u64) as usize;
        write!(w, "{k:x}\r\n")?;
        w.write_all(&chunk[..k])?;
        w.write_all(b"\r\n")?;
        n -= k as u64;
    }
    w.write_all(b"0\r\n\r\n")
}

/// An instance that dies mid-request: it reads each request, then closes the connection
/// without a byte of answer — what a client of a backend killed during its request sees.
pub struct Dying {
    pub addr: SocketAddr,
    /// Requests it took and dropped.
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Dying {
    pub fn start() -> Dying {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let (hits, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (h, s) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let mut reader = BufReader::new(conn);
                let mut line = String::new();
                // Read the head, then die.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                h.fetch_add(1, Ordering::Relaxed);
            }
        });
        Dying { addr, hits, stop }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Dying {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A hung instance, as a SIGSTOPped process looks from outside: the kernel completes TCP
/// handshakes into its listen queue and takes the request bytes, and nothing ever answers.
pub struct Hung {
    pub addr: SocketAddr,
    _listener: TcpListener,
}

impl Hung {
    pub fn start() -> Hung {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        Hung { addr: listener.local_addr().unwrap(), _listener: listener }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

/// An instance that answers each request with bytes a test scripts by path — framings and
/// shapes a well-behaved backend never sends (until-close bodies, interim answers, bodies
/// longer than declared, malformed chunks). Records every request head it received and counts
/// its connections.
pub struct Scripted {
    pub addr: SocketAddr,
    /// Connections it accepted.
    pub connections: Arc<AtomicUsize>,
    /// Every request head received, in order.
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

/// Written inside a scripted answer: the rest follows 50 ms later.
pub const PAUSE: &[u8] = b"\0PAUSE\0";

trait SplitStr {
    fn split_str<'a>(&'a self, sep: &'a [u8]) -> Vec<&'a [u8]>;
}

impl SplitStr for Vec<u8> {
    fn split_str<'a>(&'a self, sep: &'a [u8]) -> Vec<&'a [u8]> {
        let mut parts = Vec::new();
        let mut rest = &self[..];
        while let Some(at) = rest.windows(sep.len()).position(|w| w == sep) {
            parts.push(&rest[..at]);
            rest = &rest[at + sep.len()..];
        }
        parts.push(rest);
        parts
    }
}

/// What a scripted instance does with one request: the bytes it answers, and whether it then
/// closes the connection.
pub type Script = fn(path: &str) -> (Vec<u8>, bool);

impl Scripted {
    pub fn start(script: Script) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, h, s) = (connections.clone(), heads.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, Ordering::Relaxed);
                let h = h.clone();
                std::thread::spawn(move || {
                    let mut writer = conn.try_clone().unwrap();
                    let mut reader = BufReader::new(conn);
                    loop {
                        let mut head = String::new();
                        let mut line = String::new();
                        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                            head.push_str(&line);
                            line.clear();
                        }
                        if head.is_empty() {
                            return;
                        }
                        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                        h.lock().unwrap().push(head);
                        let (answer, close) = script(&path);
                        // PAUSE in an answer: what follows is written 50 ms later (bytes an
                        // instance sends after its answer, once the gateway has pooled it).
                        for (i, part) in answer.split_str(PAUSE).into_iter().enumerate() {
                            if i > 0 {
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            if writer.write_all(part).is_err() {
                                return;
                            }
                        }
                        if close {
                            // Closing 0–3 ms after the answer: sometimes before the gateway
                            // reuses the connection, sometimes as it does.
                            let answered = h.lock().unwrap().len() as u64;
                            std::thread::sleep(Duration::from_micros(answered * 700 % 3000));
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, connections, heads, stop }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}
