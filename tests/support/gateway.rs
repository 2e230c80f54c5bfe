//! The gateway under test: its configuration written from a builder, the real binary
//! started on it, readiness from the supervisor's `READY=1`, and everything it started killed
//! by saved PID when the handle drops.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{free_port, http, metric_sum, Toml};

/// The built binary.
pub fn zkgate() -> &'static str {
    env!("CARGO_BIN_EXE_zkgate")
}

/// A running gateway: the supervisor process and its log.
pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    /// The admin API's port, when the builder asked for one.
    pub admin: Option<u16>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
    /// The sd_notify socket the harness gave the supervisor (see [`GatewayBuilder::start`]),
    /// drained by a thread until the gateway is dropped.
    notify: Option<Notify>,
}

/// A NOTIFY_SOCKET the harness owns: readiness is the supervisor's `READY=1`, the state it
/// tells systemd, not a log line's wording.
struct Notify {
    ready: std::sync::mpsc::Receiver<()>,
    /// `READY=1` messages so far: one at start, one more when each reload is in service on
    /// every worker.
    count: Arc<std::sync::atomic::AtomicUsize>,
    /// The last `MAINPID=` told (0: none): a USR2 upgrade's new supervisor, once it took over.
    main_pid: Arc<std::sync::atomic::AtomicI32>,
    /// The last `STATUS=` told ("3/3 workers ready; …").
    status: Arc<std::sync::Mutex<String>>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl Notify {
    fn new() -> (Notify, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let (tx, ready) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let main_pid = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let told = main_pid.clone();
        let status = Arc::new(std::sync::Mutex::new(String::new()));
        let status_told = status.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if line == "READY=1" {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(());
                    } else if let Some(pid) = line.strip_prefix("MAINPID=") {
                        told.store(pid.parse().unwrap_or(0), Ordering::SeqCst);
                    } else if let Some(s) = line.strip_prefix("STATUS=") {
                        *status_told.lock().unwrap() = s.to_string();
                    }
                }
            }
        });
        (Notify { ready, count, main_pid, status, stop, _dir: dir }, path)
    }
}

/// Builder for [`Gateway`].
#[derive(Clone)]
pub struct GatewayBuilder {
    body: String,
    admin: Option<u16>,
    workers: usize,
    port: u16,
    env: Vec<(String, String)>,
    worker_timeout: String,
    server_extra: String,
    binary: Option<PathBuf>,
    /// Run inside this network namespace (`ip netns exec`), listening on `listen_host`.
    netns: Option<String>,
    listen_host: String,
    /// The ports were drawn by [`free_port`], not given: another may be drawn when one was
    /// taken between the draw and the gateway's bind.
    drawn_ports: bool,
}

impl Gateway {
    /// A gateway whose `gateway.toml` is `[server]` (listen, workers, timeouts) plus `body`.
    pub fn with(body: impl std::fmt::Display) -> GatewayBuilder {
        GatewayBuilder {
            body: body.to_string(),
            admin: None,
            workers: 2,
            port: free_port(),
            env: Vec::new(),
            worker_timeout: "10s".into(),
            server_extra: String::new(),
            binary: None,
            netns: None,
            listen_host: "127.0.0.1".into(),
            drawn_ports: true,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Sends a signal to the supervisor.
    pub fn signal(&self, s: Signal) {
        kill(self.pid(), s).expect("signal supervisor");
    }

    /// Worker pids (the supervisor's children), sorted.
    pub fn workers(&self) -> Vec<i32> {
        let pid = self.pid().as_raw();
        let mut v: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| !is_zombie(*p))
            .collect();
        v.sort();
        v
    }

    /// Waits until `old` is gone and `count` workers run again (a replacement was started).
    pub fn assert_replaced(&self, old: i32, count: usize) {
        assert_eventually!(
            10,
            {
                let w = self.workers();
                w.len() == count && !w.contains(&old)
            },
            "worker {old} not replaced: {:?}",
            self.workers()
        );
    }

    /// `READY=1` announcements the supervisor made (a started gateway owns its notify socket):
    /// take it before a HUP, and [`Gateway::reloaded`] tells when that reload is in service.
    pub fn readiness(&self) -> usize {
        let n = self.notify.as_ref().expect("a gateway from start() without its own NOTIFY_SOCKET");
        n.count.load(Ordering::SeqCst)
    }

    /// Whether a reload finished since [`Gateway::readiness`] said `before`: its workers are in
    /// service on every slot (the supervisor's `READY=1`, state, not a log line).
    pub fn reloaded(&self, before: usize) -> bool {
        self.readiness() > before
    }

    /// Whether the supervisor's last `STATUS=` says `n` of `n` workers are ready (it is
    /// refreshed every 2 s while it changes): a TTIN's new worker is ready once this holds.
    pub fn all_ready(&self, n: usize) -> bool {
        let notify = self.notify.as_ref().expect("a gateway without its own NOTIFY_SOCKET");
        notify.status.lock().unwrap().starts_with(&format!("{n}/{n} workers ready"))
    }

    /// The supervisor a USR2 upgrade started, once it took over: the `MAINPID=` it told the
    /// notify socket. Dropping the gateway stops it too (it is no child of the test).
    pub fn successor(&self) -> Option<i32> {
        let n = self.notify.as_ref().expect("a gateway from start() without its own NOTIFY_SOCKET");
        let pid = n.main_pid.load(Ordering::SeqCst);
        (pid != 0 && self.child.as_ref().is_none_or(|c| c.id() as i32 != pid)).then_some(pid)
    }

    /// `GET path` on the admin API (the builder must have asked for `.admin()`).
    pub fn admin_get(&self, path: &str) -> http::Response {
        let port = self.admin.expect("Gateway::with(..).admin() for admin requests");
        http::request(port, "GET", path, &[], b"").expect("admin API answers")
    }

    /// Sum over every sample of `metric` whose labels contain `labels` ("" for all), from
    /// `/metrics`: exact across workers, a better oracle than log text.
    pub fn metric(&self, metric: &str, labels: &str) -> u64 {
        metric_sum(&self.admin_get("/metrics").body_text(), metric, labels)
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Rewrites gateway.toml (for reload tests).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap()
    }

    /// Waits for the supervisor to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` through the gateway.
    pub fn get(&self, path: &str) -> std::io::Result<http::Response> {
        http::request(self.port, "GET", path, &[], b"")
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

impl GatewayBuilder {
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Listen on this port (a restart on the port a previous gateway used).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self.drawn_ports = false;
        self
    }

    /// An admin listener on a free port, so the test can read `/metrics` and `/workers`.
    pub fn admin(mut self) -> Self {
        self.admin = Some(free_port());
        self
    }

    pub fn worker_timeout(mut self, t: &str) -> Self {
        self.worker_timeout = t.into();
        self
    }

    /// Run in network namespace `name` (the test created it), listening on every address.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.into());
        self.listen_host = "0.0.0.0".into();
        self
    }

    /// Run this copy of the binary instead of the one cargo built (an upgrade test replaces it).
    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    /// More `[server]` keys.
    pub fn server_extra(mut self, keys: &str) -> Self {
        self.server_extra = keys.into();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The full configuration file this builder writes.
    pub fn config(&self) -> String {
        let server = server_section(self.port, self.workers)
            .replace("listen = [\"127.0.0.1:", &format!("listen = [\"{}:", self.listen_host))
            .replace(
                "worker_timeout = \"10s\"",
                &format!("worker_timeout = \"{}\"", self.worker_timeout),
            );
        let admin = self.admin.map(|p| Toml::new().admin(p, None).to_string()).unwrap_or_default();
        server.trim_end().to_string()
            + "\n"
            + &self.server_extra
            + "\n"
            + &self.body
            + "\n"
            + &admin
    }

    /// Starts the gateway and waits until every worker is ready: the supervisor's `READY=1`
    /// on a NOTIFY_SOCKET the harness owns (a test that brings its own socket, or runs in a
    /// network namespace, waits for the readiness log line instead). A port drawn by
    /// [`free_port`] can be taken by another test between the draw and the bind: then the
    /// gateway exits at once saying so, and is started again on newly drawn ports.
    pub fn start(mut self) -> Gateway {
        for attempt in 0.. {
            let g = self.clone().spawn();
            let expect = match self_workers(&g) {
                1 => "the worker is ready".to_string(),
                n => format!("all {n} workers ready"),
            };
            let taken = |g: &Gateway| g.log().contains("address already in use");
            let mut ready = false;
            assert_eventually!(
                20,
                {
                    ready = ready
                        || match &g.notify {
                            Some(n) => n.ready.try_recv().is_ok(),
                            None => g.log().contains(&expect),
                        };
                    ready || taken(&g)
                },
                "gateway did not become ready:\n{}",
                g.log()
            );
            if !taken(&g) || !self.drawn_ports || attempt == 3 {
                assert!(!taken(&g), "gateway did not become ready:\n{}", g.log());
                return g;
            }
            drop(g);
            self.port = free_port();
            self.admin = self.admin.map(|_| free_port());
        }
        unreachable!()
    }

    /// Starts the gateway without waiting. Unless the test brings its own NOTIFY_SOCKET or
    /// runs the gateway in a network namespace, the harness owns the notify socket, so
    /// [`Gateway::readiness`] counts the supervisor's `READY=1`s from the start.
    pub fn spawn(mut self) -> Gateway {
        let own_notify =
            self.netns.is_none() && !self.env.iter().any(|(k, _)| k == "NOTIFY_SOCKET");
        let notify = own_notify.then(|| {
            let (notify, path) = Notify::new();
            self.env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
            notify
        });
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, self.config()).unwrap();
        let log_path = dir.path().join("zkgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let binary = self.binary.as_deref().unwrap_or(Path::new(zkgate()));
        // `ip netns exec` enters the namespace and execs the binary: the pid is the supervisor's.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null());
        cmd.env("RUST_LOG", "info");
        cmd.env_remove("NOTIFY_SOCKET");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn zkgate");
        Gateway {
            child: Some(child),
            port: self.port,
            admin: self.admin,
            dir,
            config_path,
            log_path,
            notify,
        }
    }
}

/// SIGKILL to a supervisor (the test's child, or an upgrade's that is not) and to its workers.
fn kill_tree(pid: i32) {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for w in children.split_whitespace().filter_map(|p| p.parse().ok()) {
        let _ = kill(Pid::from_raw(w), Signal::SIGKILL);
    }
}

fn self_workers(g: &Gateway) -> usize {
    let text = g.config_text();
    text.lines()
        .find_map(|l| l.strip_prefix("workers = ").and_then(|n| n.trim().parse().ok()))
        .unwrap_or(1)
}

/// The `[server]` section every test gateway uses: loopback, short timeouts.
pub fn server_section(port: u16, workers: usize) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\nworkers = {workers}\nshutdown_timeout = \"10s\"\nworker_timeout = \"10s\"\n\n"
    )
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(n) = &self.notify {
            n.stop.store(true, Ordering::Relaxed);
        }
        if let Some(pid) = self.notify.as_ref().and_then(|_| self.successor()) {
            kill_tree(pid);
        }
        if self.child.is_none() {
            return;
        }
        let Some(mut child) = self.child.take() else { return };
        kill_tree(child.id() as i32);
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("---- zkgate log ----\n{}", self.log());
        }
    }
}
