//! Per-request cost of each balancer, end to end: req/s through one worker with 2 and with 50
//! instances, measured by wrk (Debian's package) on loopback. Figures, not assertions.
//! Run: `scripts/bench` or `cargo bench --bench balancers` (needs `wrk` on PATH).

#[path = "../tests/support/mod.rs"]
#[allow(unused_macros, unused_imports)]
mod support;

use std::process::Command;

use support::{Backend, Gateway};

fn wrk(port: u16, secs: &str) -> String {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s"), "-H", "x-user: bench"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn config(lb: &str, backends: &[Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{}\"", b.address())).collect();
    format!(
        "[proxy]\nload_balance = \"{lb}\"\nhash_on = \"header:x-user\"\n\n[services.web]\ninstances = [{}]\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n",
        list.join(", ")
    )
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk not found: install it (apt-get install wrk) or run scripts/bench");
        std::process::exit(1);
    }
    let secs = std::env::var("BENCH_SECONDS").unwrap_or_else(|_| "3".into());
    let backends: Vec<Backend> = (0..50).map(|i| Backend::start(&format!("b{i}"))).collect();
    println!("{:<16} {:>12} {:>12}", "balancer", "2 inst req/s", "50 inst req/s");
    for lb in ["round_robin", "random", "weighted", "least_request", "consistent_hash"] {
        let mut row = Vec::new();
        for n in [2, 50] {
            let gw = Gateway::with(config(lb, &backends[..n])).workers(1).start();
            let rps = wrk(gw.port, &secs);
            row.push(rps);
        }
        println!("{:<16} {:>12} {:>12}", lb, row[0], row[1]);
    }
    // Workers per core: the same load through 1 and 2 workers (wrk shares the 2 cores).
    for workers in [1, 2] {
        let gw = Gateway::with(config("round_robin", &backends[..2])).workers(workers).start();
        println!("round_robin, 2 instances, {workers} worker(s): {} req/s", wrk(gw.port, &secs));
    }
}
