//! Listing services: one with or without watches, many at once (multi-read); each node parsed
//! by the registry format into an instance or a reason (kept for `/registry`), Dubbo's
//! dubbo-admin overrides applied, and each change dated for the discovery lag and slow start.

use std::collections::{HashMap, HashSet};

use zookeeper_client as zk;

use super::Watcher;
use crate::config::Format;
use crate::discovery::formats::{apply_overrides, Node, Override};
use crate::discovery::report::{NodeReport, Outcome};
use crate::discovery::update::Update;
use crate::table::Instance;

/// What one node read said: its data and its stat (mzxid, mtime, ctime) when read.
type Read = (Vec<u8>, Option<Dates>);

/// A service's override nodes: each name, and the rule it holds (or why it holds none).
type Rules = [(String, Result<Option<Override>, String>)];

/// A node's mzxid, mtime and ctime (ms since the epoch, ZooKeeper's clock).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dates {
    mzxid: i64,
    mtime: i64,
    ctime: i64,
}

impl From<&zk::Stat> for Dates {
    fn from(s: &zk::Stat) -> Self {
        Dates { mzxid: s.mzxid, mtime: s.mtime, ctime: s.ctime }
    }
}

/// One listing of a service, and the watches that fire when it changes.
pub(super) struct Listed {
    pub(super) instances: Vec<Instance>,
    pub(super) watches: Vec<zk::OneshotWatcher>,
    /// Nodes that did not parse: full path, and why.
    malformed: Vec<(String, String)>,
    /// The most recently changed node read (its mzxid and mtime), for the discovery lag.
    pub(super) newest: Option<(i64, i64)>,
    /// The instance node names listed.
    children: Vec<String>,
    /// Every node read, with its outcome.
    pub(super) nodes: Vec<NodeReport>,
    /// Registrations their status withdrew on purpose: address, why.
    pub(super) withdrawn: Vec<(String, String)>,
}

impl Listed {
    /// The [`Update::Withdrawn`] that goes just before this listing, when it withdraws any.
    pub(super) fn withdrawals(&mut self, service: &str) -> Option<Update> {
        let list = std::mem::take(&mut self.withdrawn);
        (!list.is_empty()).then(|| Update::Withdrawn(service.to_string(), list))
    }

    fn empty(watches: Vec<zk::OneshotWatcher>) -> Self {
        Listed {
            instances: Vec::new(),
            watches,
            malformed: Vec::new(),
            newest: None,
            children: Vec::new(),
            nodes: Vec::new(),
            withdrawn: Vec::new(),
        }
    }

    /// Warns about each malformed node once: `warned` holds the nodes warned about in the
    /// previous listing, so a relisting does not warn again but a node broken anew does.
    pub(super) fn warn_malformed(&self, service: &str, warned: &mut HashSet<String>) {
        for (node, why) in &self.malformed {
            if !warned.contains(node) {
                log::warn!("service {service}: skipping {node}: {why}");
            }
        }
        *warned = self.malformed.iter().map(|(node, _)| node.clone()).collect();
    }
}

/// The newest change each service's listing has shown, so that a relisting stamps only a
/// change that is new: its node's mtime is when ZooKeeper recorded it (a removal leaves no node
/// to date, so it carries no stamp). Also the node names last listed, so that the formats
/// whose nodes are not read (registrator) can date the new ones.
#[derive(Default)]
pub(super) struct Stamps {
    newest: HashMap<String, i64>,
    names: HashMap<String, HashSet<String>>,
}

impl Stamps {
    /// Records `service`'s listing; returns the mtime of its newest node when that node is
    /// newer than the last seen (never for the first listing: that is a baseline, not a
    /// change).
    pub(super) fn seen(&mut self, service: &str, l: &Listed) -> Option<u64> {
        self.names.insert(service.to_string(), l.children.iter().cloned().collect());
        let (mzxid, mtime) = l.newest?;
        let last = self.newest.insert(service.to_string(), mzxid);
        match last {
            Some(last) if mzxid > last => Some(mtime.max(0) as u64),
            Some(last) => {
                self.newest.insert(service.to_string(), last.max(mzxid));
                None
            }
            None => None,
        }
    }

    /// A resync's listing is a new baseline: what changed while the session was away has no
    /// one moment to measure from.
    pub(super) fn baseline(&mut self, service: &str, l: &Listed) {
        self.newest.insert(service.to_string(), l.newest.map_or(0, |(z, _)| z));
        self.names.insert(service.to_string(), l.children.iter().cloned().collect());
    }

    /// The node names `service` had at its last listing (`None`: never listed).
    pub(super) fn names(&self, service: &str) -> Option<&HashSet<String>> {
        self.names.get(service)
    }
}

impl Watcher {
    /// Lists one service, with one-shot watches (`watch`) or without (under the persistent
    /// recursive watch, which already covers every node). `known`: the node names of its last
    /// listing, so that new nodes of a format that reads no data get dated by their stat.
    pub(super) async fn list_service_as(
        &self,
        client: &zk::Client,
        name: &str,
        watch: bool,
        known: Option<&HashSet<String>>,
    ) -> Result<Listed, zk::Error> {
        let path = self.service_path(name);
        let mut watches = Vec::new();
        let children = if watch {
            match children_or_creation(client, &path).await? {
                Children::Listed(children, w) => {
                    watches.push(w);
                    children
                }
                Children::Missing(w) => return Ok(Listed::empty(vec![w])),
            }
        } else {
            match client.list_children(&path).await {
                Ok(children) => children,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(e),
            }
        };
        let overrides = self.list_overrides(client, name, watch, &mut watches).await?;
        let format = self.settings.format;
        let data: Vec<Option<Read>> = if format.needs_data() {
            let reads = children.iter().map(|c| {
                let p = format!("{path}/{c}");
                let wanted = format.accepts_name(c);
                async move {
                    match (wanted, watch) {
                        (false, _) => Ok((Vec::new(), None, None)),
                        (true, true) => client
                            .get_and_watch_data(&p)
                            .await
                            .map(|(d, st, w)| (d, Some(Dates::from(&st)), Some(w))),
                        (true, false) => client
                            .get_data(&p)
                            .await
                            .map(|(d, st)| (d, Some(Dates::from(&st)), None)),
                    }
                }
            });
            let mut out = Vec::new();
            for r in futures::future::join_all(reads).await {
                match r {
                    Ok((data, dates, w)) => {
                        watches.extend(w);
                        out.push(Some((data, dates)));
                    }
                    // Vanished between the listing and the read: the children watch fires too.
                    Err(zk::Error::NoNode) => out.push(None),
                    Err(e) => return Err(e),
                }
            }
            out
        } else {
            // Nothing to read but the name: new nodes are dated by their stat (one round trip
            // for all of them; additions only, a removal has no node to date).
            let new: Vec<bool> =
                children.iter().map(|c| known.is_some_and(|k| !k.contains(c))).collect();
            let stats = futures::future::join_all(children.iter().zip(&new).map(|(c, new)| {
                let p = format!("{path}/{c}");
                async move {
                    match new {
                        true => client.check_stat(&p).await.ok().flatten(),
                        false => None,
                    }
                }
            }))
            .await;
            stats.into_iter().map(|st| Some((Vec::new(), st.as_ref().map(Dates::from)))).collect()
        };
        Ok(self.parse_listing(name, &path, &children, data, (watches, &overrides)))
    }

    /// Dubbo only: the dubbo-admin overrides under `<root>/<interface>/configurators`, watched
    /// with the providers (with one-shot watches, a watch of their own).
    async fn list_overrides(
        &self,
        client: &zk::Client,
        name: &str,
        watch: bool,
        watches: &mut Vec<zk::OneshotWatcher>,
    ) -> Result<Vec<(String, Result<Option<Override>, String>)>, zk::Error> {
        if self.settings.format != Format::Dubbo {
            return Ok(Vec::new());
        }
        let path = self.configurators_path(name);
        let names = if watch {
            match children_or_creation(client, &path).await? {
                Children::Listed(names, w) => {
                    watches.push(w);
                    names
                }
                Children::Missing(w) => {
                    watches.push(w);
                    Vec::new()
                }
            }
        } else {
            match client.list_children(&path).await {
                Ok(names) => names,
                Err(zk::Error::NoNode) => Vec::new(),
                Err(e) => return Err(e),
            }
        };
        Ok(names.into_iter().map(|n| (n.clone(), Override::parse(&n))).collect())
    }

    /// Instances (and the report of every node) from a service's children, their data and the
    /// service's overrides.
    fn parse_listing(
        &self,
        name: &str,
        path: &str,
        children: &[String],
        data: Vec<Option<Read>>,
        (watches, overrides): (Vec<zk::OneshotWatcher>, &Rules),
    ) -> Listed {
        let format = self.settings.format;
        let rules: Vec<Override> =
            overrides.iter().filter_map(|(_, o)| o.as_ref().ok().cloned().flatten()).collect();
        let mut listed = Listed::empty(watches);
        for (child, read) in children.iter().zip(data) {
            let Some((data, dates)) = read else { continue };
            let report = |outcome, reason: Option<String>, instance: Option<String>| NodeReport {
                node: child.clone(),
                outcome,
                reason,
                instance,
                mzxid: dates.map(|d| d.mzxid),
                changed_unix_ms: dates.map(|d| d.mtime),
            };
            if !format.accepts_name(child) {
                let why = format!("not a {} instance node name", format.name());
                listed.nodes.push(report(Outcome::Excluded, Some(why), None));
                continue;
            }
            listed.children.push(child.clone());
            if let Some(d) = dates {
                match listed.newest {
                    Some((z, _)) if z >= d.mzxid => {}
                    _ => listed.newest = Some((d.mzxid, d.mtime)),
                }
            }
            let endpoint = self.settings.serverset_endpoint.as_deref();
            let parsed = format.parse(child, &data, endpoint, self.tls.contains(name));
            let parsed = parsed.map(|node| apply_overrides(node, &rules));
            match parsed {
                Ok((Node::Accepted(mut i), note)) => {
                    // Slow start ramps from the registration: the registry's own time where
                    // it writes one, else the node's creation.
                    if i.since_ms == 0 {
                        i.since_ms = dates.map_or(0, |d| d.ctime.max(0) as u64);
                    }
                    listed.nodes.push(report(Outcome::Accepted, note, Some(i.address.clone())));
                    listed.instances.push(i);
                }
                Ok((Node::Excluded(why), _)) => {
                    listed.nodes.push(report(Outcome::Excluded, Some(why), None));
                }
                Ok((Node::Withdrawn(address, why), _)) => {
                    let reason = format!("withdrawn: {why}");
                    listed.nodes.push(report(
                        Outcome::Excluded,
                        Some(reason),
                        Some(address.clone()),
                    ));
                    listed.withdrawn.push((address, why));
                }
                Err(why) => {
                    listed.nodes.push(report(Outcome::Rejected, Some(why.clone()), None));
                    listed.malformed.push((format!("{path}/{child}"), why));
                }
            }
        }
        listed.nodes.extend(overrides.iter().map(override_report));
        listed
    }

    /// Lists many services without watches, a few round trips in all: ZooKeeper's multi-read
    /// (3.6+) takes [`MULTI_READ`] children listings (then node data reads) per request, where
    /// one request per service made a 10 000-service sync cost 10 000 round trips.
    pub(super) async fn list_many(
        &self,
        client: &zk::Client,
        names: &[String],
    ) -> Result<Vec<Listed>, zk::Error> {
        let paths: Vec<String> = names.iter().map(|n| self.service_path(n)).collect();
        let format = self.settings.format;
        let all_children = children_of(client, &paths).await?;
        let all_overrides: Vec<Vec<String>> = if format == Format::Dubbo {
            let paths: Vec<String> = names.iter().map(|n| self.configurators_path(n)).collect();
            children_of(client, &paths).await?
        } else {
            vec![Vec::new(); names.len()]
        };
        let mut all_data: Vec<Vec<Option<Read>>> = all_children
            .iter()
            .map(|c| c.iter().map(|_| Some((Vec::new(), None))).collect())
            .collect();
        if format.needs_data() {
            let nodes: Vec<(usize, usize, String)> = all_children
                .iter()
                .enumerate()
                .flat_map(|(s, cs)| {
                    let path = &paths[s];
                    cs.iter()
                        .enumerate()
                        .filter(|(_, child)| format.accepts_name(child))
                        .map(move |(c, child)| (s, c, format!("{path}/{child}")))
                })
                .collect();
            for chunk in nodes.chunks(MULTI_READ) {
                let mut reader = client.new_multi_reader();
                for (_, _, p) in chunk {
                    reader.add_get_data(p)?;
                }
                for ((s, c, _), result) in chunk.iter().zip(reader.commit().await?) {
                    all_data[*s][*c] = match result {
                        zk::MultiReadResult::Data { data, stat } => {
                            Some((data, Some(Dates::from(&stat))))
                        }
                        // Vanished between the listing and the read: the next event lists again.
                        _ => None,
                    };
                }
            }
        }
        Ok(names
            .iter()
            .zip(paths.iter().zip(all_children.iter().zip(all_data)))
            .zip(all_overrides)
            .map(|((name, (path, (children, data))), overrides)| {
                let rules: Vec<_> =
                    overrides.into_iter().map(|n| (n.clone(), Override::parse(&n))).collect();
                self.parse_listing(name, path, children, data, (Vec::new(), &rules))
            })
            .collect())
    }

    /// The node a service's instances are children of.
    pub(super) fn service_path(&self, name: &str) -> String {
        let path = format!("{}/{name}", self.settings.root.trim_end_matches('/'));
        match self.settings.format.instances_dir() {
            Some(sub) => format!("{path}/{sub}"),
            None => path,
        }
    }

    /// Where dubbo-admin writes a service's overrides.
    fn configurators_path(&self, name: &str) -> String {
        format!("{}/{name}/configurators", self.settings.root.trim_end_matches('/'))
    }
}

/// The children of each path (none where a path does not exist), multi-read in chunks.
async fn children_of(client: &zk::Client, paths: &[String]) -> Result<Vec<Vec<String>>, zk::Error> {
    let mut all = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(MULTI_READ) {
        let mut reader = client.new_multi_reader();
        for p in chunk {
            reader.add_get_children(p)?;
        }
        for result in reader.commit().await? {
            all.push(match result {
                zk::MultiReadResult::Children { children } => children,
                zk::MultiReadResult::Error { err: zk::Error::NoNode } => Vec::new(),
                zk::MultiReadResult::Error { err } => return Err(err),
                _ => Vec::new(),
            });
        }
    }
    Ok(all)
}

/// A node's children with a children watch, or, while the node does not exist, a watch that
/// fires when it is created.
pub(super) enum Children {
    Listed(Vec<String>, zk::OneshotWatcher),
    Missing(zk::OneshotWatcher),
}

/// Lists `path` with a watch. A missing node gets an existence watch instead; if the node
/// appears between the two calls, it is listed again, because an existence watch on a node that
/// already exists would not fire for its children.
pub(super) async fn children_or_creation(
    client: &zk::Client,
    path: &str,
) -> Result<Children, zk::Error> {
    loop {
        match client.list_and_watch_children(path).await {
            Ok((children, w)) => return Ok(Children::Listed(children, w)),
            Err(zk::Error::NoNode) => {
                if let (None, w) = client.check_and_watch_stat(path).await? {
                    return Ok(Children::Missing(w));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads per multi-read request (a few hundred kilobytes of answer at most).
const MULTI_READ: usize = 1000;

/// What `/registry` says of one Dubbo override node.
fn override_report((node, rule): &(String, Result<Option<Override>, String>)) -> NodeReport {
    let (outcome, reason) = match rule {
        Ok(Some(o)) => (Outcome::Accepted, format!("override for {}: {o:?}", o.host)),
        Ok(None) => (Outcome::Excluded, "override turned off or empty".to_string()),
        Err(why) => (Outcome::Rejected, why.clone()),
    };
    NodeReport {
        node: format!("configurators/{node}"),
        outcome,
        reason: Some(reason),
        instance: None,
        mzxid: None,
        changed_unix_ms: None,
    }
}
