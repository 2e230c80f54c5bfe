//! Fleet configuration: the dynamic sections of `gateway.toml` (services, routes, limits,
//! auth, header routing, tracing) as immutable releases in the ZooKeeper the fleet already
//! runs, a `stable` channel every host follows, and one watcher per host that fetches, checks,
//! caches and applies a release through the zero-loss reload.
//!
//! [`store`] is the tree in ZooKeeper, [`records`] what its nodes hold; [`apply`] the host's
//! side.

pub mod apply;
pub mod records;
pub mod store;
