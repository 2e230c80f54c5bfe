//! A host goes back by itself when a release it applied makes its workers crash-loop: the
//! supervisor asks, the host's cache names the release served before, the workers roll back
//! to it, the host publishes the revert in ZooKeeper and never applies that release again; a
//! staged rollout whose canary reverted aborts with the reason. Real binary, real ZooKeeper,
//! real `kill -9`s standing in for a crash the release causes.

mod support;

use std::time::Duration;

use support::fleet::{answers, config, push_next, two_hosts_on_base, Deciding};
use support::load::{Load, Reuse, Spec};
use support::zk::Zk;
use support::Backend;

#[test]
fn a_canary_whose_workers_crash_loop_reverts_by_itself_and_the_rollout_aborts() {
    let zk = Zk::standalone();
    let good = Backend::start("good");
    let dir = tempfile::tempdir().unwrap();
    let (h1, h2, base) = two_hosts_on_base(&zk, &good, dir.path());
    let next = push_next(&h1, &good, dir.path());
    let mut spec = Spec::paced(h2.port, Reuse::Unchecked);
    (spec.keep_alive, spec.fresh, spec.rate) = (4, 1, 200);
    let load2 = Load::start(spec);
    load2.wait_for(100);

    let deciding = Deciding::start(&h1, &["rollout", &next, "--canary", "1", "--bake", "90s"]);
    assert_eventually!(
        20,
        h1.admin_get("/config").json()["release"] == next.as_str(),
        "the canary never applied {next}"
    );
    // The release's workers crash, three times in a row, each soon after it started.
    for round in 0..3 {
        // The workers the release's reload replaced drain first.
        assert_eventually!(10, h1.workers().len() == 2, "round {round}: {:?}", h1.workers());
        let before = h1.workers();
        for pid in &before {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eventually!(
            10,
            {
                let now = h1.workers();
                now.len() == 2 && now.iter().all(|p| !before.contains(p))
            },
            "round {round}: the workers were not respawned: {:?}",
            h1.workers()
        );
    }
    let (code, out) = deciding.wait();
    assert_eq!(code, 2, "the rollout did not abort: {out}");
    assert!(out.contains(&format!("aborted: canary h1 refused {next}")), "{out}");
    assert!(out.contains("crashed 3 times in a row"), "{out}");
    assert!(h1.log().contains(&format!("release {next} reverted on this host")));
    // h1 serves the release it served before, and says why it left the other one.
    assert_eventually!(
        20,
        h1.admin_get("/config").json()["release"] == base.as_str(),
        "h1 is not back on {base}"
    );
    let cfg = h1.admin_get("/config").json();
    assert_eq!(cfg["last_rejection"]["release"], next.as_str(), "{cfg}");
    assert!(cfg["reverted"][0]["why"].as_str().unwrap().contains("crashed"), "{cfg}");
    assert_eventually!(
        10,
        h1.admin_get("/workers").json()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["release"] == base.as_str()),
        "a worker of h1 does not serve {base}: {}",
        h1.admin_get("/workers").body_text()
    );
    assert_eq!(h1.metric("zkgate_config_rejections_total", ""), 1);
    let (_, status, _) = config(&h1, &["status"]);
    let line = status.lines().find(|l| l.starts_with("h1")).expect(&status);
    assert!(line.contains(&format!("rejected {next}")) && line.contains("crashed"), "{line}");
    // Served again without a failure, on both hosts; h2 never left the stable release.
    let mut spec = Spec::paced(h1.port, Reuse::Unchecked);
    (spec.keep_alive, spec.fresh, spec.rate) = (4, 1, 200);
    let load1 = Load::start(spec);
    load1.wait_for(200);
    let (tally1, tally2) = (load1.stop(), load2.stop());
    eprintln!("fleet revert: h1 after the revert {tally1}; h2 throughout {tally2}");
    assert_eq!(tally1.lost(), 0, "{tally1}");
    assert_eq!(tally2.lost(), 0, "{tally2}");
    assert_eq!(h2.admin_get("/config").json()["release"], base.as_str());
    assert_eq!(answers(&h1, 10), ["good".to_string()].into());

    // The reverted release stays refused on h1 even when it becomes stable by hand; h2 takes it.
    let (code, out, err) = config(&h1, &["rollout", &next, "--all", "-m", "forced"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eventually!(
        20,
        h2.admin_get("/config").json()["release"] == next.as_str(),
        "h2 did not apply {next}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(h1.admin_get("/config").json()["release"], base.as_str(), "h1 applied it again");
}
