//! SIGUSR2 binary upgrades on the real binary: under load, the new supervisor takes the slot
//! sockets over (0 refused connections, 0 failed requests), the old supervisor and its workers
//! are gone, and the new one answers `/healthz`; a new binary that cannot start leaves the old
//! one serving.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::load::{Load, Reuse, Spec};
use support::{zkgate, Backend, Gateway, Toml};

static SERIAL: Mutex<()> = Mutex::new(());

/// A copy of the binary in `dir`, as an operator's /usr/bin/zkgate.
fn installed(dir: &Path) -> PathBuf {
    let path = dir.join("zkgate");
    std::fs::copy(zkgate(), &path).unwrap();
    path
}

/// Replaces the installed binary the way a package manager does: a new file renamed over it.
fn replace(path: &Path, with: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(with, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn alive(pid: i32) -> bool {
    // A zombie is gone for our purpose: it serves nothing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn usr2_under_load_hands_the_sockets_over_with_nothing_refused_or_lost() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = installed(bin_dir.path());
    let b = Backend::start("b");
    let mut gw = Gateway::with(Toml::new().backends("web", &[&b]).route_all("web"))
        .binary(&bin)
        .workers(2)
        .admin()
        .start();
    let old = gw.pid().as_raw();
    let old_workers = gw.workers();
    let load = Load::start(Spec::paced(gw.port, Reuse::Unchecked));
    load.wait_for(400);

    replace(&bin, Path::new(zkgate()));
    gw.signal(Signal::SIGUSR2);
    // The new supervisor tells systemd MAINPID= once every worker of its own is ready.
    assert_eventually!(20, gw.successor().is_some(), "no take-over:\n{}", gw.log());
    let new = gw.successor().unwrap();
    // The old supervisor drains and exits 0; its workers with it.
    assert_eq!(gw.wait_exit(Duration::from_secs(20)), Some(0), "{}", gw.log());
    for w in &old_workers {
        assert!(!alive(*w), "old worker {w} still running");
    }
    load.wait_for(400);
    let tally = load.stop();
    eprintln!("upgrade under load: {tally}");
    assert_eq!(tally.lost(), 0, "{tally}");
    assert_eq!(tally.refused, 0, "{tally}");

    let health = gw.admin_get("/healthz").json();
    assert_eq!(health["supervisor"], new, "{health}");
    assert_ne!(new, old);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = installed(bin_dir.path());
    let b = Backend::start("b");
    let gw = Gateway::with(Toml::new().backends("web", &[&b]).route_all("web"))
        .binary(&bin)
        .workers(1)
        .start();
    let broken = bin_dir.path().join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'cannot start' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    replace(&bin, &broken);
    gw.signal(Signal::SIGUSR2);
    assert_eventually!(
        10,
        gw.log().contains("exited with code 3 before taking over; still serving"),
        "{}",
        gw.log()
    );
    assert!(alive(gw.pid().as_raw()));
    for _ in 0..20 {
        assert_eq!(gw.get("/").unwrap().status, 200);
    }
}
