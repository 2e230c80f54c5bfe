//! Hosts of their own for multi-host tests: network namespaces the test creates, joined by a
//! bridge in the test's namespace, with addresses of their own. Removed when dropped (and any
//! leftover of an interrupted run removed first). Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
//!
//! ```text
//!  test namespace: bridge zkgbr0 10.210.0.1 (backends, clients), 10.210.0.2 (ZooKeeper)
//!     ├─ veth ─ zkg-h1: 10.210.0.11
//!     ├─ veth ─ zkg-h2: 10.210.0.12
//!     └─ veth ─ zkg-h3: 10.210.0.13
//! ```

use std::process::Command;

const BRIDGE: &str = "zkgbr0";
/// Where backends and test clients live.
pub const SERVICES_IP: &str = "10.210.0.1";
/// Where ZooKeeper is reached.
pub const ZK_IP: &str = "10.210.0.2";

/// The namespaces and the bridge; torn down on drop.
pub struct Fabric {
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Fabric {
    /// `hosts` namespaces on one bridge; `Err` says why when this machine cannot (not root,
    /// no `ip`, no namespaces): the caller skips with that message.
    pub fn new(hosts: usize) -> Result<Fabric, String> {
        teardown(hosts.max(8));
        let fabric = Fabric { hosts };
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{SERVICES_IP}/24"), "dev", BRIDGE])?;
        ip(&["addr", "add", &format!("{ZK_IP}/24"), "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for i in 1..=hosts {
            let (ns, veth) = (Fabric::ns(i), format!("zkg-v{i}"));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            ip(&["link", "set", &veth, "master", BRIDGE, "up"])?;
            ip(&[
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", Fabric::addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "eth0", "up"])?;
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(fabric)
    }

    /// The namespace of host `i` (1-based).
    pub fn ns(i: usize) -> String {
        format!("zkg-h{i}")
    }

    /// Host `i`'s address.
    pub fn addr(i: usize) -> String {
        format!("10.210.0.{}", 10 + i)
    }

    /// Cuts host `i` off from ZooKeeper (a blackhole route to its address); everything else
    /// (clients, backends) still reaches it.
    pub fn cut_off_zookeeper(&self, i: usize) {
        ip(&[
            "netns",
            "exec",
            &Fabric::ns(i),
            "ip",
            "route",
            "add",
            "blackhole",
            &format!("{ZK_IP}/32"),
        ])
        .unwrap();
    }

    /// Undoes [`Fabric::cut_off_zookeeper`].
    pub fn heal(&self, i: usize) {
        ip(&[
            "netns",
            "exec",
            &Fabric::ns(i),
            "ip",
            "route",
            "del",
            "blackhole",
            &format!("{ZK_IP}/32"),
        ])
        .unwrap();
    }
}

fn teardown(hosts: usize) {
    for i in 1..=hosts {
        let _ = ip(&["netns", "del", &Fabric::ns(i)]);
        let _ = ip(&["link", "del", &format!("zkg-v{i}")]);
    }
    let _ = ip(&["link", "del", BRIDGE]);
}

impl Drop for Fabric {
    fn drop(&mut self) {
        teardown(self.hosts);
    }
}
