//! Fleet configuration helpers: `zkgate config` against a gateway's own file, and hosts of
//! one cluster on loopback.

use super::zk::Zk;
use super::{Backend, Gateway, Toml};

/// `zkgate config ARGS -c <gw's file>`: exit code, stdout, stderr.
pub fn config(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(super::zkgate())
        .arg("config")
        .args(args)
        .arg("-c")
        .arg(&gw.config_path)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// The release id `push` printed on its last line.
pub fn push(gw: &Gateway, file: &std::path::Path, why: &str) -> String {
    let (code, out, err) = config(gw, &["push", file.to_str().unwrap(), "-m", why]);
    assert_eq!(code, 0, "push {}: {err}", file.display());
    out.lines().last().unwrap().to_string()
}

/// Who answered `n` fresh requests.
pub fn answers(gw: &Gateway, n: usize) -> std::collections::BTreeSet<String> {
    (0..n)
        .filter_map(|_| gw.get("/").ok().filter(|r| r.status == 200).map(|r| r.backend()))
        .collect()
}

pub fn routes_to(b: &Backend) -> String {
    format!(
        "[services.web]\ninstances = [\"{}\"]\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n",
        b.address()
    )
}

/// Two hosts of one cluster (`h1`, `h2`, each routing to `good`), the tree initialised and a
/// first release (routes to `good`) stable and served by both: what a rollout test starts
/// from. Returns the hosts and that release.
pub fn two_hosts_on_base(
    zk: &Zk,
    good: &Backend,
    dir: &std::path::Path,
) -> (Gateway, Gateway, String) {
    let (h1, h2) = (host(zk, "h1", good), host(zk, "h2", good));
    assert_eq!(config(&h1, &["init"]).0, 0);
    let base = push(&h1, &super::write_file(dir, "base.toml", &routes_to(good)), "base");
    assert_eq!(config(&h1, &["rollout", &base, "--all"]).0, 0);
    let (code, out, _) = config(&h1, &["status", "--wait", &base, "--timeout", "20s"]);
    assert_eq!(code, 0, "{out}");
    (h1, h2, base)
}

/// A second release, routing as the first (`routes_to(good)`) with tracing sampled: a change
/// a rollout can carry without changing any answer. Its id.
pub fn push_next(h1: &Gateway, good: &Backend, dir: &std::path::Path) -> String {
    let next = format!("{}\n[tracing]\nsample = 0.5\n", routes_to(good));
    push(h1, &super::write_file(dir, "next.toml", &next), "next")
}

/// A host of the fleet: its own file (and release cache) in `dir`, routing everything to
/// `good` until a release says otherwise.
pub fn host(zk: &Zk, name: &str, good: &Backend) -> Gateway {
    let toml = Toml::new()
        .zookeeper(zk, "")
        .section("[services.web]", &format!("instances = [\"{}\"]", good.address()))
        .route_all("web")
        .section("[fleet]", &format!("cluster = \"stage\"\nhost = \"{name}\""));
    Gateway::with(toml).workers(2).admin().start()
}

/// `zkgate config rollout …` running in the background; killed by its saved pid if the test
/// fails before it ends.
pub struct Deciding(Option<std::process::Child>);

impl Deciding {
    pub fn start(gw: &Gateway, args: &[&str]) -> Self {
        let child = std::process::Command::new(super::zkgate())
            .arg("config")
            .args(args)
            .arg("-c")
            .arg(&gw.config_path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Deciding(Some(child))
    }

    pub fn wait(mut self) -> (i32, String) {
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Deciding {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
