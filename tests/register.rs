//! `zkgate register`, the writer side of every registry format, against a real ZooKeeper and
//! the real gateway: each format routed end to end, a clean stop deregistering, and a
//! registrator that waits for ZooKeeper and registers again after its session expired.

mod support;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::Duration;
use support::zk::Zk;

use support::{every_worker_uses, no_worker_uses, zk_config, Backend, Gateway, Toml};

#[test]
fn every_registry_format_routes_end_to_end_through_zkgate_register() {
    for format in ["registrator", "curator", "serverset", "nerve", "dubbo"] {
        let zk = Zk::standalone();
        let (b1, b2) =
            (Backend::start(&format!("{format}-1")), Backend::start(&format!("{format}-2")));
        let gw =
            Gateway::with(zk_config(&zk, &format!("format = \"{format}\""))).workers(2).start();
        let mut regs: Vec<_> = [&b1, &b2]
            .iter()
            .map(|b| {
                std::process::Command::new(support::zkgate())
                    .args(["register", "-c"])
                    .arg(&gw.config_path)
                    .args(["--service", "svc", "--address", &b.address(), "--weight", "2"])
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        assert_eventually!(
            10,
            every_worker_uses(&gw, "svc", &b1.name) && every_worker_uses(&gw, "svc", &b2.name),
            "{format}: not both routed:\n{}",
            gw.log()
        );
        // A clean stop of the registrator removes its instance.
        kill(Pid::from_raw(regs[0].id() as i32), Signal::SIGTERM).unwrap();
        let _ = regs[0].wait();
        assert_eventually!(
            10,
            no_worker_uses(&gw, "svc", &b1.name),
            "{format}: stopped instance still used"
        );
        let _ = regs[1].kill();
        let _ = regs[1].wait();
    }
}

#[test]
fn register_waits_for_zookeeper_and_registers_again_after_its_session_expired() {
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let hosts = format!("127.0.0.1:{port}");
    let config = support::write_file(
        dir.path(),
        "gateway.toml",
        &Toml::new()
            .zookeeper_at(&hosts, "session_timeout = \"4s\"\nconnect_timeout = \"1s\"")
            .to_string(),
    );
    let log = std::fs::File::create(dir.path().join("register.log")).unwrap();
    let child = std::process::Command::new(support::zkgate())
        .args(["register", "-c"])
        .arg(&config)
        .args(["--service", "web", "--address", "127.0.0.1:9999"])
        .env("RUST_LOG", "info")
        .stderr(log)
        .spawn()
        .unwrap();
    let register = support::Process::new(child);
    let log = || std::fs::read_to_string(dir.path().join("register.log")).unwrap_or_default();
    // ZooKeeper is not there yet: it warns once and keeps trying.
    assert_eventually!(10, log().contains("cannot register"), "no warning:\n{}", log());
    assert!(register.alive(), "register gave up:\n{}", log());
    let mut zk = Zk::standalone_on(port);
    let c = zk.client();
    assert_eventually!(
        15,
        c.children("/services/web") == ["127.0.0.1:9999"],
        "not registered:\n{}",
        log()
    );
    assert_eventually!(5, log().contains("zookeeper reachable again"), "{}", log());
    assert_eq!(log().matches("cannot register").count(), 1, "warned once:\n{}", log());
    // An outage longer than the session: the node goes with it and comes back.
    drop(c);
    zk.kill(0);
    std::thread::sleep(Duration::from_secs(6));
    zk.restart(0);
    assert_eventually!(
        20,
        log().contains("registering again"),
        "session expiry not seen:\n{}",
        log()
    );
    let c = zk.client();
    assert_eventually!(
        15,
        log().matches("registered 127.0.0.1:9999 as").count() == 2
            && c.children("/services/web") == ["127.0.0.1:9999"],
        "not registered again:\n{}",
        log()
    );
    // TERM: deregistered, and the empty service node removed, exit 0.
    register.signal(Signal::SIGTERM);
    assert_eq!(register.wait(Duration::from_secs(10)), Some(0), "{}", log());
    assert!(c.children("/services").is_empty(), "{:?}\n{}", c.children("/services"), log());
}
