//! API keys (`[auth.NAME] type = "key"`) and limits per consumer, as operators run them: keys
//! made with `zkgate key add` (printed once, only digests on disk), presented in a header or a
//! query parameter over HTTP/1.1, TLS and h2, revoked with `zkgate key revoke` while the
//! gateway runs; `[[rate_limit]] per = "identity"` with an override for one consumer.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::sides::{Sides, WAYS};
use support::{zkgate, Backend, Toml};

/// Runs `zkgate key ARGS -c config`; its stdout.
fn key(config: &Path, args: &[&str]) -> String {
    let out = Command::new(zkgate()).arg("key").args(args).arg("-c").arg(config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A gateway whose `/k` route takes the `partners` keys; its configuration file for the verbs.
fn keyed(b: &Backend, dir: &Path, limits: &str) -> (Sides, std::path::PathBuf) {
    std::fs::write(dir.join("partner-keys"), "# consumer sha256\n").unwrap();
    let toml = Toml::new()
        .backends("web", &[b])
        .section(
            "[auth.partners]",
            &format!("type = \"key\"\nkeys = {:?}\nquery = \"api_key\"", dir.join("partner-keys")),
        )
        .section("[[route]]", "path_prefix = \"/k\"\nservice = \"web\"\nauth = \"partners\"")
        .section("[[rate_limit]]", limits);
    // The same file the verbs read: the sections they need, as the gateway has them.
    let config = dir.join("gateway.toml");
    std::fs::write(&config, toml.to_string()).unwrap();
    (Sides::start(toml, ""), config)
}

#[test]
fn keys_added_by_the_cli_open_the_route_on_every_side_and_revoked_ones_stop_at_once() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let (sides, config) =
        keyed(&b, dir.path(), "service = \"web\"\nrate = \"1000/s\"\nburst = 1000");
    let a = key(&config, &["add", "--auth", "partners", "--consumer", "partner-a"]);
    assert_eq!(a.len(), 43, "a 32-byte key, URL-safe base64: {a}");
    let on_disk = std::fs::read_to_string(dir.path().join("partner-keys")).unwrap();
    assert!(!on_disk.contains(&a), "only the digest is kept: {on_disk}");
    assert!(key(&config, &["list", "--auth", "partners"]).starts_with("partner-a "));
    // The running gateway reads the changed file within a second or so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sides.send("h1", "GET", "/k/warm", &[("x-api-key", &a)]).status != 200 {
        assert!(Instant::now() < deadline, "the new key never opened the route");
        std::thread::sleep(Duration::from_millis(100));
    }
    for way in WAYS {
        let r = sides.send(way, "GET", "/k/h", &[("x-api-key", &a)]);
        assert_eq!(r.status, 200, "{way}");
        let path = format!("/k/q?a=1&api_key={a}&b=2");
        assert_eq!(sides.send(way, "GET", &path, &[]).status, 200, "{way}: in the query");
        let r = sides.send(way, "GET", "/k/none", &[]);
        assert_eq!(
            (r.status, r.header("www-authenticate")),
            (401, Some("ApiKey header=\"x-api-key\""))
        );
        assert_eq!(sides.send(way, "GET", "/k/bad", &[("x-api-key", "nope")]).status, 401);
        let twice = format!("/k/twice?api_key={a}");
        assert_eq!(sides.send(way, "GET", &twice, &[("x-api-key", &a)]).status, 400, "{way}");
        // The name as the instance's framework decodes it: `api%5Fkey` is `api_key` there, so
        // it is read (and removed) here too, and beside a header it is a second key.
        let spelled = format!("/k/q?a=1&api%5Fkey={a}&b=2");
        assert_eq!(sides.send(way, "GET", &spelled, &[]).status, 200, "{way}: spelled");
        let beside = "/k/twice?api%5fkey=someone-else";
        assert_eq!(sides.send(way, "GET", beside, &[("x-api-key", &a)]).status, 400, "{way}");
        let plus = "/k/plus?api+key=x&api_key+=y";
        assert_eq!(sides.send(way, "GET", plus, &[("x-api-key", &a)]).status, 200, "{way}");
    }
    let heads = b.heads.lock().unwrap().clone();
    let to_k: Vec<&String> = heads.iter().filter(|h| h.starts_with("GET /k/")).collect();
    assert!(to_k.iter().all(|h| h.contains("x-auth-subject: partner-a")), "{to_k:#?}");
    let queried: Vec<&&String> = to_k.iter().filter(|h| h.starts_with("GET /k/q")).collect();
    assert_eq!(queried.len(), 6, "three ways, two spellings: {queried:#?}");
    assert!(
        queried.iter().all(|h| h.starts_with("GET /k/q?a=1&b=2 ")),
        "key left out: {queried:#?}"
    );
    assert!(!heads
        .iter()
        .any(|h| h.contains("/k/none") || h.contains("/k/bad") || h.contains("/k/twice")));
    // Revoked while running: refused within about a second.
    key(&config, &["revoke", "--auth", "partners", "--consumer", "partner-a"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sides.send("h2", "GET", "/k/after", &[("x-api-key", &a)]).status != 401 {
        assert!(Instant::now() < deadline, "a revoked key kept working");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_consumer_with_an_override_keeps_its_own_rate_when_the_others_are_limited() {
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let limits = "service = \"web\"\nper = \"identity\"\nrate = \"1/s\"\nburst = 2\noverrides = { partner-a = \"1000/s\" }";
    let (sides, config) = keyed(&b, dir.path(), limits);
    let a = key(&config, &["add", "--auth", "partners", "--consumer", "partner-a"]);
    let c = key(&config, &["add", "--auth", "partners", "--consumer", "partner-c"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sides.send("h1", "GET", "/k/warm", &[("x-api-key", &a)]).status != 200 {
        assert!(Instant::now() < deadline, "the keys never opened the route");
        std::thread::sleep(Duration::from_millis(100));
    }
    let statuses = |k: &str, n: usize| -> Vec<u16> {
        (0..n).map(|i| sides.send(WAYS[i % 3], "GET", "/k/x", &[("x-api-key", k)]).status).collect()
    };
    let limited = statuses(&c, 6);
    assert_eq!(&limited[..2], [200, 200], "partner-c's burst: {limited:?}");
    assert!(limited[2..].iter().filter(|s| **s == 429).count() >= 3, "{limited:?}");
    assert!(statuses(&a, 30).iter().all(|s| *s == 200), "partner-a's own 1000/s");
    // `/explain` names the route's auth and the limits with their overrides.
    let why = sides.gw.admin_get("/explain?host=api.example&path=/k/x").json();
    assert_eq!(why["route"]["auth"], "partners", "{why}");
    let rule = &why["rate_limits"][0]["rule"];
    assert_eq!(
        (&rule["per"], &rule["overrides"]["partner-a"]),
        (&"identity".into(), &"1000/s".into()),
        "{why}"
    );
}
