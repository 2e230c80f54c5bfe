//! A staged rollout on a fleet as it runs: 4 gateway hosts (network namespaces this test
//! creates, 2 workers each) on a 3-node ensemble, paced keep-alive load on every host
//! throughout. Asserted: `--canary 2` puts exactly the first two hosts on the release while it
//! bakes; the whole ensemble stopped mid-bake costs no request on any host, a canary restarted
//! meanwhile boots the release from its cache, the deciding command waits (untimed) and goes
//! on once the ensemble is back, promotes, and every worker of every host serves the release;
//! the history has each step once. Skipped, saying why, where network namespaces cannot be
//! created (not root).

mod support;

use std::time::{Duration, Instant};

use support::fleet::{config, push, Deciding};
use support::load::{Load, Reuse, Spec};
use support::netns::{Fabric, SERVICES_IP, ZK_IP};
use support::zk::Zk;
use support::{free_port, write_file, Backend, Gateway, Toml};

const HOSTS: usize = 4;

/// Host `i`'s file: a static `web` service on `good`, its snapshot and release cache in `dir`.
fn host_config(i: usize, zk: &Zk, good: &Backend, dir: &std::path::Path) -> Toml {
    let zone = if i % 2 == 1 { "a" } else { "b" };
    Toml::new()
        .proxy("debug_headers = true")
        .zookeeper_at(&zk.hosts_at(ZK_IP), "session_timeout = \"4s\"\nconnect_timeout = \"2s\"")
        .snapshot(&dir.join(format!("h{i}")).join("routes.json"))
        .section("[services.web]", &format!("instances = [\"{}\"]", good.address()))
        .route_all("web")
        .section(
            "[fleet]",
            &format!("cluster = \"netns\"\nhost = \"h{i}\"\nlabels = {{ zone = \"{zone}\" }}"),
        )
}

fn start_host(i: usize, toml: &Toml, port: u16) -> Gateway {
    Gateway::with(toml.clone()).netns(&Fabric::ns(i)).port(port).workers(2).start()
}

fn load_on(i: usize, port: u16) -> Load {
    let mut spec = Spec::paced(port, if i % 2 == 1 { Reuse::Unchecked } else { Reuse::Checked });
    spec.host = Fabric::addr(i).parse().unwrap();
    (spec.rate, spec.keep_alive, spec.fresh) = (100, 3, 1);
    Load::start(spec)
}

/// What `status` says each host serves with every one of its workers (`None`: a host
/// between releases, or not reporting).
fn serving(gw: &Gateway) -> Vec<Option<String>> {
    let (_, out, _) = config(gw, &["status"]);
    (1..=HOSTS)
        .map(|i| {
            let line = out.lines().find(|l| l.starts_with(&format!("h{i}\t")))?;
            let field = |k: &str| line.split('\t').find_map(|f| f.strip_prefix(k));
            let (release, workers) = (field("serving ")?, field("workers ")?);
            workers.split(',').all(|w| w == release).then(|| release.to_string())
        })
        .collect()
}

/// The release that routed an answer of host `i` (`x-zkgate-release`).
fn release_of(i: usize, port: u16) -> String {
    let r = support::http::get_at(&Fabric::addr(i), port, "/").expect("host answers");
    assert_eq!(r.status, 200);
    r.header("x-zkgate-release").unwrap_or("file").to_string()
}

#[test]
fn a_staged_rollout_on_four_hosts_rides_out_the_loss_of_the_whole_ensemble() {
    let fabric = match Fabric::new(HOSTS) {
        Ok(f) => f,
        Err(why) => {
            eprintln!("SKIPPED: cannot create network namespaces here ({why}); run as root");
            return;
        }
    };
    let mut zk = Zk::ensemble_anywhere();
    let good = Backend::start_on("good", format!("{SERVICES_IP}:0").parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=HOSTS {
        std::fs::create_dir_all(dir.path().join(format!("h{i}"))).unwrap();
    }
    let port = free_port();
    let tomls: Vec<Toml> = (1..=HOSTS).map(|i| host_config(i, &zk, &good, dir.path())).collect();
    let mut gws: Vec<Gateway> = (1..=HOSTS).map(|i| start_host(i, &tomls[i - 1], port)).collect();
    assert_eq!(config(&gws[0], &["init"]).0, 0);
    let releases = |name: &str, extra: &str| {
        let text = format!(
            "[services.web]\ninstances = [\"{}\"]\n\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n{extra}",
            good.address()
        );
        push(&gws[0], &write_file(dir.path(), name, &text), name)
    };
    let base = releases("base.toml", "");
    let next = releases("next.toml", "\n[tracing]\nsample = 0.5\n");
    assert_eq!(config(&gws[0], &["rollout", &base, "--all", "-m", "base"]).0, 0);
    let (code, out, _) = config(&gws[0], &["status", "--wait", &base, "--timeout", "30s"]);
    assert_eq!(code, 0, "{out}");
    let mut loads: Vec<Load> = (1..=HOSTS).map(|i| load_on(i, port)).collect();
    for l in &loads {
        l.wait_for(100);
    }

    // Two canaries, the first two hosts by name; the others stay on base while it bakes.
    let deciding = Deciding::start(&gws[0], &["rollout", &next, "--canary", "2", "--bake", "20s"]);
    let on = |r: &str| Some(r.to_string());
    let staged = vec![on(&next), on(&next), on(&base), on(&base)];
    assert_eventually!(
        20,
        serving(&gws[0]) == staged,
        "canaries: {:?}\n{}",
        serving(&gws[0]),
        config(&gws[0], &["status"]).1
    );
    for _ in 0..5 {
        assert_eq!(serving(&gws[0]), staged, "only the canaries serve {next}");
        assert_eq!(release_of(3, port), base);
        std::thread::sleep(Duration::from_millis(200));
    }

    // The whole ensemble goes. Every host keeps serving what it served.
    zk.kill_all();
    let down = Instant::now();
    for l in &loads {
        l.wait_for(200);
    }
    assert_eq!((release_of(1, port), release_of(4, port)), (next.clone(), base.clone()));
    // A canary restarted meanwhile boots the release from its cache (its clients wait).
    let tally2 = loads.remove(1).stop();
    gws[1].signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(gws[1].wait_exit(Duration::from_secs(20)), Some(0));
    gws[1] = start_host(2, &tomls[1], port);
    assert_eq!(release_of(2, port), next, "h2 did not boot its cached release");
    loads.insert(1, load_on(2, port));
    loads[1].wait_for(100);
    eprintln!("fleet rollout: ensemble down for {:?}", down.elapsed());
    zk.restart_all();

    // The deciding command went on where it was, promoted, and everyone follows.
    let (code, out) = deciding.wait();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("zookeeper unreachable") && out.contains("zookeeper back"), "{out}");
    assert!(out.contains(&format!("promoted: stable -> {next}")), "{out}");
    let (code, out, _) = config(&gws[0], &["status", "--wait", &next, "--timeout", "30s"]);
    assert_eq!(code, 0, "not every worker serves {next}:\n{out}");
    for i in 1..=HOSTS {
        assert_eq!(release_of(i, port), next, "host {i}");
    }
    let mut lost = 0;
    for (i, l) in loads.into_iter().enumerate() {
        let tally = l.stop();
        eprintln!("fleet rollout: host {}: {tally}", i + 1);
        lost += tally.lost();
    }
    eprintln!("fleet rollout: host 2 before its restart: {tally2}");
    assert_eq!(lost + tally2.lost(), 0, "requests lost");
    let (_, history, _) = config(&gws[0], &["history"]);
    let verbs: Vec<&str> = history.lines().map(|l| l.split('\t').nth(2).unwrap()).collect();
    let count = |v: &str| verbs.iter().filter(|x| **x == v).count();
    assert_eq!((count("canary"), count("promote"), count("promoted")), (1, 1, 1), "{history}");
    drop(gws);
    drop(fabric);
}
