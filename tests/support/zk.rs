//! A real ZooKeeper from Debian's package for tests: standalone or a 3-node ensemble on free
//! loopback ports, temp data dirs, stopped by saved PID on drop. Plus a client that writes the
//! registry the way Registrator/Curator would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zookeeper_client as zk;

const CP: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";
/// With Netty (TLS): Debian's libnetty-java, a dependency of its zookeeper package.
const CP_NETTY: &str =
    "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar:/usr/share/java/netty-codec.jar:/usr/share/java/netty-handler.jar:/usr/share/java/netty-transport.jar:/usr/share/java/netty-buffer.jar:/usr/share/java/netty-common.jar:/usr/share/java/netty-resolver.jar:/usr/share/java/netty-transport-native-unix-common.jar:/usr/share/java/netty-transport-native-epoll.jar";

struct Node {
    dir: PathBuf,
    port: u16,
    main: &'static str,
    child: Option<Child>,
}

/// A running ZooKeeper (one node or three).
pub struct Zk {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Zk {
    /// One standalone server.
    pub fn standalone() -> Zk {
        Zk::standalone_on(super::free_port())
    }

    /// One standalone server on `port`.
    pub fn standalone_on(port: u16) -> Zk {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::configure(
            dir.path().join("1"),
            port,
            "",
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            None,
        );
        let mut z = Zk { _dir: dir, nodes: vec![node] };
        z.start_all();
        z
    }

    /// One standalone server that also speaks TLS (Netty, `secureClientPort`), with a
    /// certificate for 127.0.0.1 signed by `pki`'s CA; returns it and the TLS port. The plain
    /// port stays for the test's own client and the four-letter words.
    pub fn standalone_tls(pki: &super::pki::Pki) -> (Zk, u16) {
        let dir = tempfile::tempdir().unwrap();
        let (port, secure) = (super::free_port(), super::free_port());
        let leaf = pki.leaf("zookeeper", &["127.0.0.1", "localhost"]);
        let keystore = dir.path().join("server.pem");
        let pem = format!(
            "{}{}",
            std::fs::read_to_string(&leaf.key).unwrap(),
            std::fs::read_to_string(&leaf.cert).unwrap()
        );
        std::fs::write(&keystore, pem).unwrap();
        let extra = format!(
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\nsecureClientPort={secure}\nssl.keyStore.location={}\nssl.keyStore.type=PEM\nssl.trustStore.location={}\nssl.trustStore.type=PEM\nssl.clientAuth=none\n",
            keystore.display(),
            pki.ca_file().display()
        );
        let node = Node::configure(
            dir.path().join("1"),
            port,
            &extra,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            None,
        );
        let mut z = Zk { _dir: dir, nodes: vec![node] };
        z.start_all();
        (z, secure)
    }

    /// A 3-node ensemble.
    pub fn ensemble() -> Zk {
        Zk::ensemble_at("127.0.0.1")
    }

    /// A 3-node ensemble whose clients may connect on any address of this namespace
    /// (`0.0.0.0`), for gateways in network namespaces; the quorum stays on loopback.
    pub fn ensemble_anywhere() -> Zk {
        Zk::ensemble_at("0.0.0.0")
    }

    fn ensemble_at(client_address: &str) -> Zk {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..9).map(|_| super::free_port()).collect();
        let servers: String = (0..3)
            .map(|i| format!("server.{}=127.0.0.1:{}:{}\n", i + 1, ports[3 + i], ports[6 + i]))
            .collect();
        let nodes = (0..3)
            .map(|i| {
                Node::configure(
                    dir.path().join(format!("{}", i + 1)),
                    ports[i],
                    &format!("{servers}clientPortAddress={client_address}\n"),
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    Some(i + 1),
                )
            })
            .collect();
        let mut z = Zk { _dir: dir, nodes };
        z.start_all();
        z
    }

    fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.start();
        }
        for n in &self.nodes {
            n.wait_ready();
        }
    }

    /// Node `i`'s process id, while it runs (a bench reads its CPU time).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// Stops every node (KILL): the whole ensemble is gone.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }

    /// Starts every node again on its data dir and port, and waits until each serves (a
    /// quorum needs most of them up before any answers).
    pub fn restart_all(&mut self) {
        self.start_all();
    }

    /// The connect string with every node on `ip` (an ensemble started `ensemble_anywhere`).
    pub fn hosts_at(&self, ip: &str) -> String {
        self.nodes.iter().map(|n| format!("{ip}:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The connect string.
    pub fn hosts(&self) -> String {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Stops node `i` (KILL, as a crash).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts node `i` again on its data dir and port, and waits until it serves.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].start();
        self.nodes[i].wait_ready();
    }

    /// Which node hosts the session `sid` (from the four-letter word `cons`).
    pub fn node_with_session(&self, sid: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && four_letter(n.port, "cons").contains(sid))
    }

    /// A client that writes the registry.
    pub fn client(&self) -> ZkClient {
        ZkClient::connect(&self.hosts())
    }
}

impl Node {
    fn configure(
        dir: PathBuf,
        port: u16,
        servers: &str,
        main: &'static str,
        myid: Option<usize>,
    ) -> Node {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        if let Some(id) = myid {
            std::fs::write(dir.join("data/myid"), format!("{id}\n")).unwrap();
        }
        // The last clientPortAddress wins: `servers` may carry another.
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=*\nmaxClientCnxns=0\n{servers}",
            dir.join("data").display()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).unwrap();
        Node { dir, port, main, child: None }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("zookeeper.log"))
            .unwrap();
        let netty = std::fs::read_to_string(self.dir.join("zoo.cfg"))
            .is_ok_and(|c| c.contains("NettyServerCnxnFactory"));
        let child = Command::new("java")
            .args(["-Xmx256m", "-cp", if netty { CP_NETTY } else { CP }, self.main])
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java (install Debian's zookeeper package: scripts/zookeeper install)");
        self.child = Some(child);
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if four_letter(self.port, "srvr").contains("Mode:") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "zookeeper on port {} did not start; its log ends:\n{}",
            self.port,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.stop();
        }
    }
}

impl Zk {
    /// A four-letter word's answer from node `i` (`wchs`, `wchc`, `cons` …).
    pub fn four_letter(&self, i: usize, cmd: &str) -> String {
        four_letter(self.nodes[i].port, cmd)
    }
}

fn four_letter(port: u16, cmd: &str) -> String {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(cmd.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A blocking ZooKeeper client for tests, on its own runtime (the client's session task needs
/// one running between calls).
pub struct ZkClient {
    rt: tokio::runtime::Runtime,
    client: zk::Client,
}

impl ZkClient {
    pub fn connect(hosts: &str) -> ZkClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(
                zk::Client::connector().with_session_timeout(Duration::from_secs(4)).connect(hosts),
            )
            .expect("test client connects");
        ZkClient { rt, client }
    }

    /// A client that authenticates as `user:password` (digest), for nodes behind ACLs.
    pub fn connect_as(hosts: &str, user: &str, password: &str) -> ZkClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let auth = format!("{user}:{password}");
        let client = rt
            .block_on(
                zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(4))
                    .with_auth("digest", auth.as_bytes())
                    .connect(hosts),
            )
            .expect("test client connects");
        ZkClient { rt, client }
    }

    /// Creates `path` and its parents readable and writable only by this client's digest
    /// identity (ZooKeeper's `creator_all` ACL).
    pub fn create_private(&self, path: &str, data: &[u8]) {
        let private = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
        let mut at = String::new();
        for part in path.trim_start_matches('/').split('/') {
            at.push('/');
            at.push_str(part);
            let body: &[u8] = if at == path { data } else { b"" };
            match self.rt.block_on(self.client.create(&at, body, &private)) {
                Ok(_) | Err(zk::Error::NodeExists) => {}
                Err(e) => panic!("create {at}: {e}"),
            }
        }
    }

    /// Whether `path`'s children can be listed by this client (false: not allowed).
    pub fn can_list(&self, path: &str) -> bool {
        !matches!(self.rt.block_on(self.client.list_children(path)), Err(zk::Error::NoAuth))
    }

    /// Creates `path` (parents as persistent nodes) with `data`; ephemeral when asked.
    pub fn create(&self, path: &str, data: &[u8], ephemeral: bool) {
        let parent = &path[..path.rfind('/').unwrap()];
        let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        if !parent.is_empty() {
            self.rt.block_on(self.client.mkdir(parent, &persistent)).unwrap();
        }
        let mode = if ephemeral { zk::CreateMode::Ephemeral } else { zk::CreateMode::Persistent };
        self.rt
            .block_on(self.client.create(path, data, &mode.with_acls(zk::Acls::anyone_all())))
            .unwrap_or_else(|e| panic!("create {path}: {e}"));
    }

    /// Children of `path` (none when it does not exist).
    pub fn children(&self, path: &str) -> Vec<String> {
        match self.rt.block_on(self.client.list_children(path)) {
            Ok(c) => c,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => panic!("list {path}: {e}"),
        }
    }

    /// Sets data on `path`.
    pub fn set(&self, path: &str, data: &[u8]) {
        self.rt.block_on(self.client.set_data(path, data, None)).unwrap();
    }

    /// Deletes `path`; a missing node is fine.
    pub fn delete(&self, path: &str) {
        match self.rt.block_on(self.client.delete(path, None)) {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) => panic!("delete {path}: {e}"),
        }
    }

    /// Deletes every node of `paths` in one ZooKeeper `multi`: watchers see them go in one
    /// transaction (a script or a registry fault deleting a service's nodes at once).
    pub fn delete_together(&self, paths: &[String]) {
        let mut multi = self.client.new_multi_writer();
        for p in paths {
            multi.add_delete(p, None).unwrap();
        }
        self.rt.block_on(multi.commit()).unwrap_or_else(|e| panic!("delete {paths:?}: {e:?}"));
    }

    /// Closes the session as a registration client's clean shutdown does: ZooKeeper deletes
    /// its ephemeral nodes at once, not after the session timeout.
    pub fn close(self) {
        let ZkClient { rt, client } = self;
        // The close request goes out from the session task, which runs on this runtime: drop
        // the last client handle, then let the task send it before the runtime goes.
        rt.block_on(async move {
            drop(client);
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
    }

    /// Fills the registry with `services` × `per` Registrator-style persistent instances,
    /// pipelining the creates.
    pub fn populate(&self, services: usize, per: usize) {
        let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        let persistent = &options;
        self.rt.block_on(async {
            let _ = self.client.mkdir("/services", persistent).await;
            for chunk in (0..services).collect::<Vec<_>>().chunks(500) {
                let svcs = chunk.iter().map(|s| format!("/services/s{s}"));
                futures::future::join_all(
                    svcs.map(|p| async move { self.client.create(&p, b"", persistent).await }),
                )
                .await;
                let nodes = chunk.iter().flat_map(|s| {
                    (0..per).map(move |i| {
                        format!("/services/s{s}/10.{}.{}.{}:80", s / 256 % 256, s % 256, i + 1)
                    })
                });
                futures::future::join_all(
                    nodes.map(|p| async move { self.client.create(&p, b"", persistent).await }),
                )
                .await;
            }
        });
    }

    /// Registers an instance as Registrator does: `<root>/<service>/<ip:port>`, ephemeral.
    pub fn register(&self, service: &str, address: &str) {
        self.register_under("/services", service, address);
    }

    /// Registers an instance under another root (a chroot, say).
    pub fn register_under(&self, root: &str, service: &str, address: &str) {
        self.create(&format!("{root}/{service}/{address}"), b"", true);
    }

    /// Deregisters as Registrator does: the instance, then the service node if it is empty.
    pub fn deregister(&self, service: &str, address: &str) {
        self.delete(&format!("/services/{service}/{address}"));
        let _ = self.rt.block_on(self.client.delete(&format!("/services/{service}"), None));
    }
}

/// Java's URLEncoder, as Dubbo's ZookeeperRegistry encodes provider URLs into node names.
pub fn java_url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
