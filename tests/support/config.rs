//! `gateway.toml` bodies for tests, built section by section (the `[server]` section comes from
//! [`super::GatewayBuilder`]). One builder instead of a TOML helper per test file: keys given for
//! the same section twice are merged, so helpers compose.

use std::fmt;

use super::zk::Zk;
use super::Backend;

/// A configuration body under construction.
#[derive(Debug, Default, Clone)]
pub struct Toml {
    sections: Vec<(String, String)>,
}

impl Toml {
    pub fn new() -> Self {
        Toml::default()
    }

    /// Adds `keys` under `header` (`"[proxy]"`, `"[[route]]"` …); a table header given twice is
    /// one section, an array-of-tables header adds an element each time.
    pub fn section(mut self, header: &str, keys: &str) -> Self {
        let keys = keys.trim_end().to_string();
        match self.sections.iter_mut().find(|(h, _)| h == header && !header.starts_with("[[")) {
            Some((_, existing)) => {
                existing.push('\n');
                existing.push_str(&keys);
            }
            None => self.sections.push((header.to_string(), keys)),
        }
        self
    }

    /// `[proxy]` keys.
    pub fn proxy(self, keys: &str) -> Self {
        self.section("[proxy]", keys)
    }

    /// `[services.NAME]` with static instances (`"host:port"` or an inline table such as
    /// `{ address = "…", weight = 5 }`) and more keys.
    pub fn service(self, name: &str, instances: &[String], extra: &str) -> Self {
        let list: Vec<String> = instances
            .iter()
            .map(|i| if i.starts_with('{') { i.clone() } else { format!("\"{i}\"") })
            .collect();
        self.section(
            &format!("[services.{name}]"),
            &format!("instances = [{}]\n{extra}", list.join(", ")),
        )
    }

    /// `[services.NAME]` on these backends.
    pub fn backends(self, name: &str, backends: &[&Backend]) -> Self {
        let list: Vec<String> = backends.iter().map(|b| b.address()).collect();
        self.service(name, &list, "")
    }

    /// A `[[route]]` sending every path to `service`.
    pub fn route_all(self, service: &str) -> Self {
        self.section("[[route]]", &format!("path_prefix = \"/\"\nservice = \"{service}\""))
    }

    /// `[zookeeper]` on `zk` with test timeouts (4 s sessions, 2 s connect) and more keys.
    pub fn zookeeper(self, zk: &Zk, extra: &str) -> Self {
        self.zookeeper_at(
            &zk.hosts(),
            &format!("session_timeout = \"4s\"\nconnect_timeout = \"2s\"\n{extra}"),
        )
    }

    /// `[zookeeper]` with this connect string and keys.
    pub fn zookeeper_at(self, hosts: &str, keys: &str) -> Self {
        self.section("[zookeeper]", &format!("hosts = \"{hosts}\"\n{keys}"))
    }

    /// `[cache] snapshot`.
    pub fn snapshot(self, path: &std::path::Path) -> Self {
        self.section("[cache]", &format!("snapshot = \"{}\"", path.display()))
    }

    /// `[admin]` on `port`, with an optional bearer token.
    pub fn admin(self, port: u16, token: Option<&str>) -> Self {
        let token = token.map(|t| format!("token = \"{t}\"")).unwrap_or_default();
        self.section("[admin]", &format!("listen = \"127.0.0.1:{port}\"\n{token}"))
    }
}

impl fmt::Display for Toml {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (header, keys) in &self.sections {
            writeln!(f, "{header}\n{keys}\n")?;
        }
        Ok(())
    }
}
