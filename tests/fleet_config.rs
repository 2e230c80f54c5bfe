//! Fleet configuration on the real binary and a real ZooKeeper: `zkgate config` pushes
//! releases (the dynamic sections of gateway.toml) into the ensemble and flips the `stable`
//! channel; the host's watcher (one worker per host) fetches, checks, caches and applies them
//! through the zero-loss reload, under paced keep-alive load; a release the host refuses never
//! serves and the refusal is visible in ZooKeeper; a rollback comes from the host's cache even
//! with the release's bytes gone from ZooKeeper.

mod support;

use std::sync::atomic::Ordering;

use support::fleet::{answers, config, host, push, push_next, routes_to, two_hosts_on_base};
use support::load::{Load, Reuse, Spec};
use support::zk::Zk;
use support::{write_file, Backend, Gateway, Toml};

#[test]
fn releases_roll_out_through_zookeeper_lose_no_request_and_roll_back_from_the_cache() {
    let zk = Zk::standalone();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let toml = Toml::new()
        .zookeeper(&zk, "")
        .section("[services.web]", &format!("instances = [\"{}\"]", a.address()))
        .route_all("web")
        .section("[fleet]", "cluster = \"test\"\nhost = \"h1\"\nlabels = { dc = \"eu1\" }");
    let gw = Gateway::with(toml).workers(2).admin().start();
    assert_eq!(answers(&gw, 10), ["a".to_string()].into());
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(200);
    assert_eq!(config(&gw, &["init"]).0, 0);

    // Refused at push: a section a release may not hold, a wrong value (named by its key).
    let server = write_file(dir.path(), "server.toml", "[server]\nworkers = 1\n");
    let (code, _, err) = config(&gw, &["push", server.to_str().unwrap(), "-m", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("server is not a section a release may hold"), "{err}");
    let wrong = "[[route]]\npath_prefix = 7\nservice = \"web\"\n";
    let wrong = write_file(dir.path(), "wrong.toml", wrong);
    let (code, _, err) = config(&gw, &["push", wrong.to_str().unwrap(), "-m", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("route[0].path_prefix"), "{err}");

    // Release 1 moves the traffic to b: every worker, through the reload.
    let one = push(&gw, &write_file(dir.path(), "one.toml", &routes_to(&b)), "to b");
    assert!(one.starts_with("r-"), "{one}");
    assert_eq!(push(&gw, &dir.path().join("one.toml"), "again"), one, "content-addressed");
    assert_eq!(config(&gw, &["rollout", &one, "--all", "-m", "to b"]).0, 0);
    let (code, out, err) = config(&gw, &["status", "--wait", &one, "--timeout", "20s"]);
    assert_eq!(code, 0, "{out}{err}\n{}", gw.log());
    assert!(out.contains(&format!("h1\tserving {one}")), "{out}");
    assert_eventually!(10, answers(&gw, 20) == ["b".to_string()].into(), "not on release 1");
    let served = gw.admin_get("/config").json();
    assert_eq!(served["release"], one.as_str(), "{served}");
    assert_eq!(served["labels"]["dc"], "eu1", "{served}");
    let release_info = format!("cluster=\"test\",host=\"h1\",release=\"{one}\"");
    assert_eq!(gw.metric("zkgate_config_release_info", &release_info), 2, "on each worker");
    let hits_a = a.hits.load(Ordering::Relaxed);

    // Release 2 back to a; then release 1's bytes vanish from ZooKeeper and a rollback still
    // works: the host has it cached.
    let two = push(&gw, &write_file(dir.path(), "two.toml", &routes_to(&a)), "back to a");
    let (code, out, _) = config(&gw, &["diff", &one, &two]);
    assert_eq!((code, out.trim()), (0, "~ service web: instances"), "{out}");
    let exported = dir.path().join("exported.toml");
    assert_eq!(config(&gw, &["export", &one, "-o", exported.to_str().unwrap()]).0, 0);
    assert_eq!(std::fs::read_to_string(&exported).unwrap(), routes_to(&b));
    assert_eq!(config(&gw, &["rollout", &two, "--all"]).0, 0);
    assert_eventually!(20, answers(&gw, 20) == ["a".to_string()].into(), "not on release 2");
    assert!(a.hits.load(Ordering::Relaxed) > hits_a);
    let c = zk.client();
    let blobs = c.children("/zkgate/test/blobs");
    for blob in &blobs {
        let sha = &blob[..16];
        if one.ends_with(sha) {
            for chunk in c.children(&format!("/zkgate/test/blobs/{blob}")) {
                c.delete(&format!("/zkgate/test/blobs/{blob}/{chunk}"));
            }
        }
    }
    let (code, out, err) = config(&gw, &["rollback", "-m", "a was wrong"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("-> {one}")), "{out}");
    assert_eventually!(20, answers(&gw, 20) == ["b".to_string()].into(), "rollback not applied");

    // Valid at push, refused on the host: its htpasswd file is gone by the time it applies.
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let htpasswd = write_file(dir.path(), "htpasswd", &format!("ops:{hash}\n"));
    let three_text = format!(
        "{}auth = \"ops\"\n\n[auth.ops]\ntype = \"basic\"\nhtpasswd = {:?}\n",
        routes_to(&a),
        htpasswd
    );
    let three = push(&gw, &write_file(dir.path(), "three.toml", &three_text), "auth");
    std::fs::remove_file(&htpasswd).unwrap();
    assert_eq!(config(&gw, &["rollout", &three, "--all"]).0, 0);
    assert_eventually!(
        5,
        config(&gw, &["status"]).1.contains(&format!("rejected {three}")),
        "the refusal is not visible in ZooKeeper: {}\n{}",
        config(&gw, &["status"]).1,
        gw.log()
    );
    assert_eq!(answers(&gw, 20), ["b".to_string()].into(), "a refused release served");

    let tally = load.stop();
    eprintln!("fleet config: three rollouts, a rollback, a refusal under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    // Every push and flip once: pushes of one, two, three; rollouts of one, two, three; one
    // rollback (the repeated push of one stored nothing).
    let (_, history, _) = config(&gw, &["history"]);
    let verbs: Vec<&str> = history.lines().map(|l| l.split('\t').nth(2).unwrap()).collect();
    assert_eq!(
        verbs,
        ["push", "rollout", "push", "rollout", "rollback", "push", "rollout"],
        "{history}"
    );
}

#[test]
fn two_concurrent_flips_one_wins_the_other_gets_a_conflict() {
    let zk = Zk::standalone();
    let b = Backend::start("b");
    let dir = tempfile::tempdir().unwrap();
    let toml = Toml::new()
        .zookeeper(&zk, "")
        .section("[services.web]", &format!("instances = [\"{}\"]", b.address()))
        .route_all("web")
        .section("[fleet]", "cluster = \"race\"\nhost = \"h1\"");
    let gw = Gateway::with(toml).workers(1).start();
    assert_eq!(config(&gw, &["init"]).0, 0);
    let one = push(&gw, &write_file(dir.path(), "one.toml", &routes_to(&b)), "one");
    let two_text = format!("{}\n[tracing]\nsample = 0.5\n", routes_to(&b));
    let two = push(&gw, &write_file(dir.path(), "two.toml", &two_text), "two");
    // Two operators at once, each from the version they read.
    let path = gw.config_path.clone();
    let flip = move |id: String| {
        let path = path.clone();
        std::thread::spawn(move || {
            std::process::Command::new(support::zkgate())
                .args(["config", "rollout", &id, "--all", "-c"])
                .arg(&path)
                .output()
                .unwrap()
                .status
                .code()
        })
    };
    // A freeze holds every flip until it is lifted.
    assert_eq!(config(&gw, &["lock", "-m", "freeze"]).0, 0);
    let (code, _, err) = config(&gw, &["rollout", &one, "--all"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("locked") && err.contains("freeze"), "{err}");
    assert_eq!(config(&gw, &["unlock"]).0, 0);
    let (x, y) = (flip(one.clone()), flip(two.clone()));
    let mut codes = [x.join().unwrap(), y.join().unwrap()];
    codes.sort();
    // Both may also succeed one after the other (the second read the first's version): then
    // history shows two flips; never a lost one.
    let (_, history, _) = config(&gw, &["history"]);
    let flips = history.lines().filter(|l| l.contains("\trollout\t")).count();
    match codes {
        [Some(0), Some(3)] => assert_eq!(flips, 1, "{history}"),
        [Some(0), Some(0)] => assert_eq!(flips, 2, "{history}"),
        other => panic!("exit codes {other:?}\n{history}"),
    }
}

#[test]
fn a_canary_that_answers_worse_than_the_other_hosts_is_rolled_back_by_itself() {
    let zk = Zk::standalone();
    let (good, bad) = (Backend::start("good"), Backend::start("bad"));
    bad.failing.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let (h1, h2, base) = two_hosts_on_base(&zk, &good, dir.path());
    let broken = push(&h1, &write_file(dir.path(), "broken.toml", &routes_to(&bad)), "broken");
    let mut spec = Spec::paced(h1.port, Reuse::Unchecked);
    (spec.keep_alive, spec.fresh, spec.rate) = (4, 1, 200);
    let load1 = Load::start(spec.clone());
    spec.port = h2.port;
    let load2 = Load::start(spec);
    load2.wait_for(100);
    // One canary (h1, first by name), a bake long enough to judge it.
    let started = std::time::Instant::now();
    let (code, out, err) =
        config(&h1, &["rollout", &broken, "--canary", "1", "--bake", "60s", "-m", "try"]);
    let took = started.elapsed();
    assert_eq!(code, 2, "not aborted by itself: {out}{err}");
    assert!(out.contains("canary: h1 serve"), "{out}");
    assert!(out.contains("aborted: canary 5xx share"), "{out}");
    eprintln!("fleet config: canary aborted after {took:?}: {out}");
    assert!(took < std::time::Duration::from_secs(60), "{took:?}");
    // h1 is back on the stable release, h2 never left it.
    assert_eventually!(
        10,
        h1.admin_get("/config").json()["release"] == base.as_str()
            && answers(&h1, 10) == ["good".to_string()].into(),
        "the canary did not go back to stable"
    );
    let tally2 = load2.stop();
    let tally1 = load1.stop();
    eprintln!("fleet config: canary host {tally1}; other host {tally2}");
    assert_eq!(tally2.lost(), 0, "the other host served the broken release: {tally2}");
    assert!(tally1.status.get(&503).copied().unwrap_or(0) > 0, "the canary never served it");
    assert_eq!(h2.metric("zkgate_requests_total", "code_class=\"5xx\""), 0);
    // The audit entry has the numbers.
    let (_, history, _) = config(&h1, &["history"]);
    let abort = history.lines().find(|l| l.contains("\tabort\t")).expect(&history);
    assert!(abort.contains("5xx share") && abort.contains("requests"), "{abort}");
    // A release that bakes well becomes stable, and every host serves it.
    let next = push_next(&h1, &good, dir.path());
    let (code, out, err) = config(&h1, &["rollout", &next, "--canary", "1", "--bake", "3s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("promoted: stable -> {next}")), "{out}");
    let (code, out, _) = config(&h2, &["status", "--wait", &next, "--timeout", "20s"]);
    assert_eq!(code, 0, "{out}");
}

/// A release with 200 routes `/r0` … `/r199` (and `/`) to `service`, whose instance is
/// `backend`; both services are defined so either release can route to either.
fn two_hundred_routes(service: &str, a: &Backend, b: &Backend) -> String {
    let mut text = format!(
        "[services.sa]\ninstances = [\"{}\"]\n\n[services.sb]\ninstances = [\"{}\"]\n",
        a.address(),
        b.address()
    );
    for i in 0..200 {
        text += &format!("\n[[route]]\npath_prefix = \"/r{i}\"\nservice = \"{service}\"\n");
    }
    text + &format!("\n[[route]]\npath_prefix = \"/\"\nservice = \"{service}\"\n")
}

#[test]
fn a_release_changing_200_routes_switches_under_load_and_every_answer_names_its_release() {
    let zk = Zk::standalone();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    let toml = Toml::new()
        .zookeeper(&zk, "")
        .proxy("debug_headers = true")
        .section("[services.web]", &format!("instances = [\"{}\"]", a.address()))
        .route_all("web")
        .section("[fleet]", "cluster = \"big\"\nhost = \"h1\"");
    let gw = Gateway::with(toml).workers(2).admin().start();
    assert_eq!(config(&gw, &["init"]).0, 0);
    let ra = push(&gw, &write_file(dir.path(), "a.toml", &two_hundred_routes("sa", &a, &b)), "a");
    let rb = push(&gw, &write_file(dir.path(), "b.toml", &two_hundred_routes("sb", &a, &b)), "b");
    assert_eq!(config(&gw, &["rollout", &ra, "--all"]).0, 0);
    assert_eq!(config(&gw, &["status", "--wait", &ra, "--timeout", "20s"]).0, 0);
    let mut spec = Spec::paced(gw.port, Reuse::Unchecked);
    spec.path = "/r7".into();
    let load = Load::start(spec);
    load.wait_for(200);
    assert_eq!(config(&gw, &["rollout", &rb, "--all"]).0, 0);
    let flipped = std::time::Instant::now();
    // Every answer names the release that routed it, and was routed as that release says.
    let (mut in_a_row, mut checked) = (0, 0);
    while in_a_row < 40 {
        assert!(flipped.elapsed() < std::time::Duration::from_secs(30), "never converged");
        let path = format!("/r{}", checked % 200);
        let r = gw.get(&path).unwrap();
        assert_eq!(r.status, 200, "{path}");
        let release = r.header("x-zkgate-release").expect("the release header").to_string();
        let want = if release == rb { "b" } else { "a" };
        assert!(release == ra || release == rb, "{release}");
        assert_eq!(r.backend(), want, "{path} answered by {} under {release}", r.backend());
        in_a_row = if release == rb { in_a_row + 1 } else { 0 };
        checked += 1;
    }
    let converged = flipped.elapsed();
    let tally = load.stop();
    eprintln!("fleet config: 200 routes switched, every worker on the new release {converged:?} after the flip ({checked} answers checked); {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    // The host timed it: from the pointer's flip to its last worker serving the release.
    let metrics = gw.admin_get("/metrics").body_text();
    let seconds = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
        assert!(line.contains(&format!("release=\"{rb}\"")), "{line}");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let (apply, convergence) =
        (seconds("zkgate_config_apply_seconds"), seconds("zkgate_config_convergence_seconds"));
    eprintln!("fleet config: the host applied it in {apply} s, {convergence} s after the flip");
    assert!(apply <= convergence && convergence < converged.as_secs_f64() + 1.0);
    let slots = metrics.lines().filter(|l| l.starts_with("zkgate_config_release_info{")).count();
    assert_eq!(slots, 2, "one release_info per worker:\n{metrics}");
}

#[test]
fn a_host_restarted_while_zookeeper_is_down_boots_its_cached_release() {
    let mut zk = Zk::standalone();
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = tempfile::tempdir().unwrap();
    // The release cache lives beside the snapshot: it outlives the gateway process.
    let body = Toml::new()
        .zookeeper(&zk, "")
        .snapshot(&dir.path().join("routes.json"))
        .section("[services.web]", &format!("instances = [\"{}\"]", a.address()))
        .route_all("web")
        .section("[fleet]", "cluster = \"boot\"\nhost = \"h1\"");
    let mut gw = Gateway::with(body.clone()).workers(2).admin().start();
    assert_eq!(config(&gw, &["init"]).0, 0);
    let one = push(&gw, &write_file(dir.path(), "one.toml", &routes_to(&b)), "to b");
    assert_eq!(config(&gw, &["rollout", &one, "--all"]).0, 0);
    assert_eventually!(20, answers(&gw, 10) == ["b".to_string()].into(), "not on the release");
    // The ensemble goes; the host keeps serving the release, then restarts meanwhile.
    zk.kill(0);
    assert_eq!(answers(&gw, 10), ["b".to_string()].into());
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(gw.wait_exit(std::time::Duration::from_secs(20)), Some(0));
    let port = gw.port;
    drop(gw);
    let gw = Gateway::with(body).port(port).workers(2).admin().start();
    assert_eq!(answers(&gw, 20), ["b".to_string()].into(), "booted on the file, not the release");
    assert_eq!(gw.admin_get("/config").json()["release"], one.as_str());
}

#[test]
fn a_staged_rollout_reaches_the_canary_then_half_the_hosts_then_stable_in_that_order() {
    let zk = Zk::standalone();
    let good = Backend::start("good");
    let dir = tempfile::tempdir().unwrap();
    let hosts: Vec<Gateway> = ["h1", "h2", "h3"].iter().map(|h| host(&zk, h, &good)).collect();
    assert_eq!(config(&hosts[0], &["init"]).0, 0);
    let base = push(&hosts[0], &write_file(dir.path(), "base.toml", &routes_to(&good)), "base");
    assert_eq!(config(&hosts[0], &["rollout", &base, "--all"]).0, 0);
    assert_eq!(config(&hosts[0], &["status", "--wait", &base, "--timeout", "20s"]).0, 0);
    let next = format!("{}\n[tracing]\nsample = 0.5\n", routes_to(&good));
    let next = push(&hosts[0], &write_file(dir.path(), "next.toml", &next), "next");
    let rollout = std::process::Command::new(support::zkgate())
        .args(["config", "rollout", &next, "--canary", "1", "--stages", "50%,100%"])
        .args(["--bake", "3s", "-c"])
        .arg(&hosts[0].config_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // What each host serves, watched while the rollout runs: a later host never serves the
    // release before an earlier one does.
    let serving = |gw: &Gateway| gw.admin_get("/config").json()["release"] == next.as_str();
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let now: Vec<bool> = hosts.iter().map(serving).collect();
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.iter().all(|s| *s) || started.elapsed() > std::time::Duration::from_secs(40) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = rollout.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("canary: h1 serve") && text.contains("canary: h1 h2 serve"), "{text}");
    assert!(text.contains(&format!("promoted: stable -> {next}")), "{text}");
    for state in &seen {
        assert!(state.windows(2).all(|w| w[0] || !w[1]), "out of order: {seen:?}");
    }
    assert!(seen.contains(&vec![true, true, false]), "no half stage seen: {seen:?}");
    assert_eq!(seen.last(), Some(&vec![true, true, true]), "{seen:?}");
}

#[test]
fn a_paused_rollout_holds_its_canaries_and_goes_on_when_resumed() {
    let zk = Zk::standalone();
    let good = Backend::start("good");
    let dir = tempfile::tempdir().unwrap();
    let (h1, h2, base) = two_hosts_on_base(&zk, &good, dir.path());
    let next = push_next(&h1, &good, dir.path());
    let mut rollout = std::process::Command::new(support::zkgate())
        .args(["config", "rollout", &next, "--canary", "1", "--bake", "3s", "-c"])
        .arg(&h1.config_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let on_next = |gw: &Gateway| gw.admin_get("/config").json()["release"] == next.as_str();
    assert_eventually!(15, on_next(&h1), "the canary never took the release");
    assert_eq!(config(&h1, &["pause"]).0, 0);
    // Paused for longer than the whole bake: nothing moves.
    let paused = std::time::Instant::now();
    while paused.elapsed() < std::time::Duration::from_secs(5) {
        assert!(rollout.try_wait().unwrap().is_none(), "the rollout ended while paused");
        assert!(on_next(&h1) && !on_next(&h2), "paused canaries moved");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, _, err) = config(&h1, &["rollout", &base, "--canary", "1"]);
    assert_eq!(code, 1, "a second rollout while one is paused: {err}");
    assert!(err.contains("in progress (paused)"), "{err}");
    assert_eq!(config(&h1, &["resume"]).0, 0);
    assert_eq!(rollout.wait().unwrap().code(), Some(0), "not promoted after the resume");
    assert_eq!(config(&h2, &["status", "--wait", &next, "--timeout", "20s"]).0, 0);
}
