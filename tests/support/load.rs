//! A paced, counting HTTP/1.1 load for chaos tests: keep-alive connections (each reused as real
//! clients reuse them) plus loops that open a connection per request, every failure sorted
//! into a class — refused, reset, EOF, timeout, status — so a test can assert "0 lost" and show
//! exactly what was lost when it is not.
//!
//! Std only, raw sockets: what the client sees is what the gateway did, no client library
//! retries or hides anything. Every loop is bounded (its duration and a stop flag).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a keep-alive client treats a connection it holds between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Checks that the server has not closed it before reusing it (curl, urllib3 and Go do).
    Checked,
    /// Writes the next request without looking (it still honours `Connection: close`).
    Unchecked,
}

/// What the load sends and how hard.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The gateway's address (loopback unless the test runs it in a network namespace).
    pub host: std::net::IpAddr,
    pub port: u16,
    /// Request path.
    pub path: String,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Keep-alive connections.
    pub keep_alive: usize,
    /// Loops opening one connection per request.
    pub fresh: usize,
    /// Requests per second, all loops together.
    pub rate: u32,
    pub reuse: Reuse,
    /// A client gives up on a request after this long (a timeout failure).
    pub client_timeout: Duration,
    /// Upper bound on the run, whatever happens.
    pub max_duration: Duration,
}

impl Spec {
    /// The load: 12 keep-alive connections and 4 fresh-connection loops at 800 req/s.
    pub fn paced(port: u16, reuse: Reuse) -> Spec {
        Spec {
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            port,
            path: "/".into(),
            headers: Vec::new(),
            keep_alive: 12,
            fresh: 4,
            rate: 800,
            reuse,
            client_timeout: Duration::from_secs(15),
            max_duration: Duration::from_secs(240),
        }
    }
}

/// Outcomes by class.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub ok: usize,
    pub refused: usize,
    pub reset: usize,
    pub eof: usize,
    pub timeout: usize,
    /// Non-2xx answers by status.
    pub status: BTreeMap<u16, usize>,
    /// The first few failures, with when they happened (seconds into the run).
    pub examples: Vec<String>,
}

impl Tally {
    /// Every request that did not get a 2xx answer.
    pub fn lost(&self) -> usize {
        self.refused + self.reset + self.eof + self.timeout + self.status.values().sum::<usize>()
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.reset += other.reset;
        self.eof += other.eof;
        self.timeout += other.timeout;
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        self.examples.extend(other.examples.into_iter().take(20 - self.examples.len().min(20)));
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ok {}, lost {} (refused {}, reset {}, EOF {}, timeout {}, status {:?}); first failures: {:?}",
            self.ok,
            self.lost(),
            self.refused,
            self.reset,
            self.eof,
            self.timeout,
            self.status,
            self.examples
        )
    }
}

/// A running load.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Answers received so far (2xx), for waiting on progress.
    pub ok: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Tally>>,
}

impl Load {
    /// Starts the loops.
    pub fn start(spec: Spec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let loops = spec.keep_alive + spec.fresh;
        let interval = Duration::from_secs_f64(loops as f64 / f64::from(spec.rate.max(1)));
        let started = Instant::now();
        let threads = (0..loops)
            .map(|i| {
                let (spec, stop, ok) = (spec.clone(), stop.clone(), ok.clone());
                let keep_alive = i < spec.keep_alive;
                std::thread::spawn(move || {
                    let mut client = Client::new(&spec, keep_alive);
                    let mut tally = Tally::default();
                    // Spread the loops over one interval so they do not fire together.
                    let mut next = Instant::now() + interval.mul_f64(i as f64 / loops as f64);
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < spec.max_duration {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += interval;
                        match client.request() {
                            Ok(status) if (200..300).contains(&status) => {
                                tally.ok += 1;
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            outcome => {
                                let at = started.elapsed().as_secs_f64();
                                let what = match outcome {
                                    Ok(status) => {
                                        *tally.status.entry(status).or_default() += 1;
                                        format!("status {status}")
                                    }
                                    Err(Failure::Refused) => {
                                        tally.refused += 1;
                                        "refused".into()
                                    }
                                    Err(Failure::Reset(e)) => {
                                        tally.reset += 1;
                                        format!("reset ({e})")
                                    }
                                    Err(Failure::Eof) => {
                                        tally.eof += 1;
                                        "EOF".into()
                                    }
                                    Err(Failure::Timeout) => {
                                        tally.timeout += 1;
                                        "timeout".into()
                                    }
                                };
                                if tally.examples.len() < 20 {
                                    let kind = if keep_alive { "keep-alive" } else { "fresh" };
                                    tally.examples.push(format!("{at:.2}s {kind}: {what}"));
                                }
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    /// Waits until `n` more requests succeeded: the load is flowing (used instead of sleeping
    /// before and after a disruption).
    pub fn wait_for(&self, n: usize) {
        let start = self.ok.load(Ordering::Relaxed);
        crate::assert_eventually!(
            30,
            self.ok.load(Ordering::Relaxed) >= start + n,
            "load made no progress: {} of {n} answers",
            self.ok.load(Ordering::Relaxed) - start
        );
    }

    /// Stops every loop and sums what they saw.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for t in self.threads {
            total.merge(t.join().expect("load thread"));
        }
        total
    }
}

enum Failure {
    Refused,
    Reset(String),
    Eof,
    Timeout,
}

fn classify(e: std::io::Error) -> Failure {
    match e.kind() {
        ErrorKind::ConnectionRefused => Failure::Refused,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::Timeout,
        ErrorKind::UnexpectedEof => Failure::Eof,
        _ => Failure::Reset(e.to_string()),
    }
}

struct Client {
    addr: SocketAddr,
    request: Vec<u8>,
    keep_alive: bool,
    reuse: Reuse,
    timeout: Duration,
    conn: Option<TcpStream>,
}

impl Client {
    fn new(spec: &Spec, keep_alive: bool) -> Client {
        let mut head = format!("GET {} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n", spec.path, spec.port);
        for (k, v) in &spec.headers {
            head += &format!("{k}: {v}\r\n");
        }
        if !keep_alive {
            head += "connection: close\r\n";
        }
        head += "\r\n";
        Client {
            addr: (spec.host, spec.port).into(),
            request: head.into_bytes(),
            keep_alive,
            reuse: spec.reuse,
            timeout: spec.client_timeout,
            conn: None,
        }
    }

    /// One request; the status, or how it failed.
    fn request(&mut self) -> Result<u16, Failure> {
        if self.keep_alive && self.reuse == Reuse::Checked && self.conn.as_ref().is_some_and(closed)
        {
            self.conn = None;
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let c = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(classify)?;
                let _ = c.set_nodelay(true);
                c.set_read_timeout(Some(self.timeout)).map_err(classify)?;
                c
            }
        };
        conn.write_all(&self.request).map_err(classify)?;
        let (status, close) = read_response(&mut conn)?;
        if self.keep_alive && !close {
            self.conn = Some(conn);
        }
        Ok(status)
    }
}

/// Whether the server has closed (or reset) an idle connection: a non-blocking peek sees EOF
/// or an error instead of "nothing to read yet".
fn closed(conn: &TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = !matches!(conn.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    let _ = conn.set_nonblocking(false);
    gone
}

/// Reads one response; returns its status and whether the connection must close after it.
fn read_response(conn: &mut TcpStream) -> Result<(u16, bool), Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).map_err(classify)?;
        if n == 0 {
            return Err(Failure::Eof);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::Reset(format!("not HTTP: {head:?}")))?;
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_string()))
    };
    let close = header("connection").is_some_and(|v| v.contains("close"));
    let mut body = buf[head_end..].to_vec();
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            let n = conn.read(&mut chunk).map_err(classify)?;
            if n == 0 {
                return Err(Failure::Eof);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while find(&body, b"0\r\n\r\n").is_none() {
            let n = conn.read(&mut chunk).map_err(classify)?;
            if n == 0 {
                return Err(Failure::Eof);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if status >= 200 && status != 204 && status != 304 {
        // No length: the body runs to the close.
        return Ok((status, true));
    }
    Ok((status, close))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
