//! `zkgate config …`: the fleet's releases from an operator's terminal, and the glue that puts
//! a release's sections over the local file (`[fleet]` in `gateway.toml`).
//!
//! A release is a gateway.toml-schema document holding only the dynamic sections
//! (`worker::config::fleet::DYNAMIC_SECTIONS`); the local file keeps listeners, TLS files,
//! admin, `[[zookeeper]]` and `[fleet]` itself. Exit codes: 0 done, 1 refused or failed, 3 a
//! conflict (someone else moved the channel: read again and retry).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use worker::config::fleet::DYNAMIC_SECTIONS;
use worker::config::Config;
use worker::fleet::store::{Change, Store, StoreError};

/// The fleet verbs.
#[derive(Subcommand)]
pub enum Verb {
    /// Create the cluster's tree in ZooKeeper (idempotent).
    ///
    /// Example: zkgate config init -c /etc/zkgate/gateway.toml
    Init,
    /// Check a release file against this host's file, store it, print its id on the last line.
    ///
    /// Example: zkgate config push -c gateway.toml routes.toml -m "move /api to api-v2"
    Push {
        /// The release: a TOML document of dynamic sections only.
        file: PathBuf,
        /// Why (kept in the audit history).
        #[arg(short, long)]
        message: String,
    },
    /// Roll a release out: to every host at once (`--all`), or first to K canary hosts for
    /// `--bake`, comparing their 5xx share with the other hosts' meanwhile: it aborts by itself
    /// (canaries back to stable, exit 2) when theirs is worse by more than `--max-5xx-increase`,
    /// and becomes `stable` when the bake ends. If this command dies, the rollout waits:
    /// `promote` or `abort` finishes it.
    ///
    /// Example: zkgate config rollout -c gateway.toml r-3f2a9c0d11e4b5a6 --canary 2 --bake 5m
    Rollout {
        /// The release id.
        release: String,
        /// Every host at once.
        #[arg(long, conflicts_with = "canary", required_unless_present = "canary")]
        all: bool,
        /// This many hosts first (by name, among those with `--label`).
        #[arg(long)]
        canary: Option<usize>,
        /// Only hosts with this label (`dc=eu1`) are canaries.
        #[arg(long)]
        label: Option<String>,
        /// Stages after the canaries, as shares of the hosts (`50%,100%`), each baked in
        /// turn; 100% ends in stable.
        #[arg(long, value_delimiter = ',', value_parser = percent)]
        stages: Vec<u32>,
        /// How long each stage bakes before the next (the last: before the release becomes
        /// stable).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        bake: std::time::Duration,
        /// How much worse (a share, 0..1) the canaries' 5xx may be than the others'.
        #[arg(long, default_value_t = 0.05)]
        max_5xx_increase: f64,
        /// How much worse (a share) the canaries' no-route 404s may be than the others'.
        #[arg(long, default_value_t = 0.05)]
        max_404_increase: f64,
        /// How many times the others' p99 the canaries' may be (when above 100 ms).
        #[arg(long, default_value_t = 3.0)]
        max_p99_ratio: f64,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Make the release of the rollout in progress stable now.
    Promote,
    /// Hold the rollout in progress: its canaries keep the release, the bake neither runs
    /// nor judges until `resume`.
    Pause,
    /// Go on with a paused rollout.
    Resume,
    /// Abort the rollout in progress: its canaries go back to stable.
    Abort {
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Point `stable` back at the release before the current one, or at `--to`: hosts that
    /// had it apply it from their cache.
    ///
    /// Example: zkgate config rollback -c gateway.toml --to r-3f2a9c0d11e4b5a6
    Rollback {
        /// The release to go back to (default: the one `stable` served before).
        #[arg(long)]
        to: Option<String>,
        /// Why.
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// What `stable` serves and, per host, the release it serves and its last rejection.
    /// With `--wait`, exits 0 once every host serves that release (1 at the timeout).
    ///
    /// Example: zkgate config status -c gateway.toml --wait r-3f2a9c0d11e4b5a6 --timeout 60s
    Status {
        /// A release every host must serve.
        #[arg(long)]
        wait: Option<String>,
        /// How long to wait for it.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Every push and flip, oldest first, once each.
    History,
    /// A release's text.
    Show {
        /// The release id.
        release: String,
    },
    /// A release's text, to a file (or standard output), for editing into the next one.
    ///
    /// Example: zkgate config export -c gateway.toml r-3f2a9c0d11e4b5a6 -o routes.toml
    Export {
        /// The release id.
        release: String,
        /// Where to write it (default: standard output).
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// What changes between two releases (ids or files): services, routes and the other
    /// sections added, removed or changed.
    ///
    /// Example: zkgate config diff -c gateway.toml r-3f2a9c0d11e4b5a6 routes.toml
    Diff {
        /// The release before (an id, or a file).
        a: String,
        /// The release after (an id, or a file).
        b: String,
    },
    /// Freeze the channels (no rollout, rollback or promotion) until `unlock`.
    ///
    /// Example: zkgate config lock -c gateway.toml -m "black friday"
    Lock {
        /// Why.
        #[arg(short, long)]
        message: String,
    },
    /// Lift the freeze.
    Unlock,
    /// Check a release file against this host's file without storing it.
    Validate {
        /// The release file.
        file: PathBuf,
    },
}

/// `50%` or `50`, 1..100.
fn percent(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a share like 50%"))?;
    (1..=100).contains(&n).then_some(n).ok_or_else(|| format!("{s}: between 1% and 100%"))
}

/// Where the host keeps the releases it applied: beside the route snapshot, else beside the
/// file.
pub fn cache_dir(path: &Path, config: &Config) -> PathBuf {
    let dir = match &config.cache.snapshot {
        Some(snapshot) => snapshot.parent().map(Path::to_path_buf),
        None => path.parent().map(Path::to_path_buf),
    };
    dir.unwrap_or_else(|| PathBuf::from(".")).join("zkgate-releases")
}

/// The release the host serves from its cache: its id and text.
pub fn current(cache: &Path) -> Option<(String, String)> {
    let id = std::fs::read_to_string(cache.join(worker::fleet::apply::CURRENT)).ok()?;
    let id = id.trim().to_string();
    let text = std::fs::read_to_string(worker::fleet::apply::cached(cache, &id)).ok()?;
    Some((id, text))
}

/// The local file's text with `release`'s sections in place of its own dynamic sections.
/// A release holding anything else is refused by name.
pub fn overlay(local: &str, release: &str) -> Result<String, String> {
    let release: toml::Table =
        toml::from_str(release).map_err(|e| format!("release: {}", e.message().trim()))?;
    if let Some(key) = release.keys().find(|k| !DYNAMIC_SECTIONS.contains(&k.as_str())) {
        return Err(format!(
            "release: {key} is not a section a release may hold (only {}); it stays in each host's own file",
            DYNAMIC_SECTIONS.join(", ")
        ));
    }
    let mut merged: toml::Table =
        toml::from_str(local).map_err(|e| format!("local file: {}", e.message().trim()))?;
    for section in DYNAMIC_SECTIONS {
        merged.remove(section);
    }
    merged.extend(release);
    toml::to_string(&merged).map_err(|e| e.to_string())
}

/// The changes from release `a` to release `b`, in an operator's terms: `+ service web`,
/// `- route api.example/v1`, `~ service web: instances, load_balance`, `~ tracing`.
pub fn diff(a: &str, b: &str) -> Result<Vec<String>, String> {
    let parse = |t: &str| toml::from_str::<toml::Table>(t).map_err(|e| e.message().to_string());
    let (a, b) = (parse(a)?, parse(b)?);
    let mut out = Vec::new();
    let table = |t: &toml::Table, k: &str| t.get(k).and_then(|v| v.as_table()).cloned();
    let (sa, sb) =
        (table(&a, "services").unwrap_or_default(), table(&b, "services").unwrap_or_default());
    keyed_changes("service", &sa, &sb, &mut out);
    let routes = |t: &toml::Table| -> toml::Table {
        let list = t.get("route").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        list.into_iter()
            .map(|r| {
                let host = r.get("host").and_then(|h| h.as_str()).unwrap_or("").to_string();
                let prefix = r.get("path_prefix").and_then(|p| p.as_str()).unwrap_or("");
                (format!("{host}{prefix}"), r)
            })
            .collect()
    };
    keyed_changes("route", &routes(&a), &routes(&b), &mut out);
    let (aa, ab) = (table(&a, "auth").unwrap_or_default(), table(&b, "auth").unwrap_or_default());
    keyed_changes("auth", &aa, &ab, &mut out);
    for section in ["rate_limit", "header_routing", "tracing"] {
        let (x, y) = (a.get(section), b.get(section));
        match (x, y) {
            (None, Some(_)) => out.push(format!("+ {section}")),
            (Some(_), None) => out.push(format!("- {section}")),
            (Some(x), Some(y)) if x != y => out.push(format!("~ {section}")),
            _ => {}
        }
    }
    Ok(out)
}

/// Added, removed and changed entries of one keyed section (changed: which keys).
fn keyed_changes(what: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    for (name, value) in b {
        match a.get(name) {
            None => out.push(format!("+ {what} {name}")),
            Some(old) if old != value => {
                let keys = |v: &toml::Value| v.as_table().cloned().unwrap_or_default();
                let (ko, kn) = (keys(old), keys(value));
                let mut changed: Vec<&str> = kn
                    .iter()
                    .filter(|(k, v)| ko.get(*k) != Some(*v))
                    .map(|(k, _)| k.as_str())
                    .chain(ko.keys().filter(|k| !kn.contains_key(*k)).map(String::as_str))
                    .collect();
                changed.sort();
                changed.dedup();
                out.push(format!("~ {what} {name}: {}", changed.join(", ")));
            }
            _ => {}
        }
    }
    for name in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(format!("- {what} {name}"));
    }
}

/// Runs a verb.
pub fn run(path: &Path, verb: Verb) -> anyhow::Result<u8> {
    let config = crate::config::load(path)?;
    let fleet = config.fleet.clone().with_context(|| {
        format!("{}: zkgate config needs a [fleet] section (cluster, labels)", path.display())
    })?;
    if let Verb::Validate { file } = &verb {
        let text = release_text(file)?;
        crate::config::load_release(path, &crate::config::read(path)?, &text)?;
        println!("{}: a valid release for {}", file.display(), path.display());
        return Ok(0);
    }
    let source = match &fleet.zookeeper {
        Some(name) => config.zookeeper.iter().enumerate().find(|(i, z)| z.source_name(*i) == *name),
        None => config.zookeeper.iter().enumerate().next(),
    }
    .map(|(_, z)| z.clone())
    .with_context(|| format!("{}: [fleet] names no [[zookeeper]] source", path.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let store = Store::connect(&source, &fleet).await?;
        match verb_on(&store, path, verb).await {
            Err(e) if matches!(e.downcast_ref(), Some(StoreError::Conflict { .. })) => {
                eprintln!("zkgate: {e:#}");
                Ok(3)
            }
            other => other,
        }
    })
}

fn release_text(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// Who runs a verb, for the audit history.
fn who() -> String {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}@{}", user.unwrap_or_else(|_| "unknown".into()), host.trim())
}

async fn verb_on(store: &Store, path: &Path, verb: Verb) -> anyhow::Result<u8> {
    let moves = matches!(
        verb,
        Verb::Rollout { .. }
            | Verb::Rollback { .. }
            | Verb::Promote
            | Verb::Abort { .. }
            | Verb::Pause
            | Verb::Resume
    );
    if moves {
        if let Some(by) = store.locked().await? {
            bail!("the channels are locked ({by}); `zkgate config unlock` first");
        }
        return move_channels(store, verb).await;
    }
    match verb {
        Verb::Lock { message } => {
            store.lock(&who(), &message).await?;
            println!("locked");
        }
        Verb::Unlock => {
            store.unlock().await?;
            println!("unlocked");
        }
        Verb::Init => {
            store.init().await?;
            println!("initialised");
        }
        Verb::Push { file, message } => {
            let text = release_text(&file)?;
            crate::config::load_release(path, &crate::config::read(path)?, &text)
                .with_context(|| format!("{} refused", file.display()))?;
            let (manifest, new) = store.push(&text, &who(), &message).await?;
            if !new {
                println!("already stored ({} bytes)", manifest.size);
            }
            println!("{}", manifest.id);
        }
        Verb::Status { wait, timeout } => return crate::status::status(store, wait, timeout).await,
        read => read_tree(store, read).await?,
    }
    Ok(0)
}

/// The verbs that move what hosts serve: rollout, rollback, promote, pause, resume, abort.
async fn move_channels(store: &Store, verb: Verb) -> anyhow::Result<u8> {
    match verb {
        Verb::Rollout { release, canary: None, message, .. } => {
            let (from, version) = store.channel("stable").await?;
            store
                .flip(
                    "stable",
                    (&release, version),
                    Change { who: &who(), verb: "rollout", why: &message },
                )
                .await?;
            println!("stable: {} -> {release}", from.as_deref().unwrap_or("nothing"));
        }
        Verb::Rollout {
            release,
            canary: Some(k),
            label,
            bake,
            max_5xx_increase,
            max_404_increase,
            max_p99_ratio,
            stages,
            message,
            ..
        } => {
            let plan = crate::rollout::Plan {
                k,
                label,
                bake,
                max_5xx_increase,
                max_404_increase,
                max_p99_ratio,
                stages,
            };
            return crate::rollout::staged(store, &release, plan, (&who(), &message)).await;
        }
        Verb::Promote => crate::rollout::promote(store, &who()).await?,
        Verb::Pause => crate::rollout::hold(store, ("canary", "paused"), &who()).await?,
        Verb::Resume => crate::rollout::hold(store, ("paused", "canary"), &who()).await?,
        Verb::Abort { message } => crate::rollout::abort(store, (&who(), &message)).await?,
        Verb::Rollback { to, message } => {
            let (now, version) = store.channel("stable").await?;
            let to = match to {
                Some(to) => to,
                None => previous(store, now.as_deref()).await?,
            };
            store
                .flip(
                    "stable",
                    (&to, version),
                    Change { who: &who(), verb: "rollback", why: &message },
                )
                .await?;
            println!("stable: {} -> {to}", now.as_deref().unwrap_or("nothing"));
        }
        _ => unreachable!("only the verbs that move channels come here"),
    }
    Ok(0)
}

/// The verbs that only read the tree: history, show, export, diff.
async fn read_tree(store: &Store, verb: Verb) -> anyhow::Result<()> {
    match verb {
        Verb::History => {
            for e in store.history().await? {
                let from = e.from.as_deref().unwrap_or("-");
                println!("{}\t{}\t{}\t{from} -> {}\t{}", e.at_ms, e.who, e.verb, e.to, e.why);
            }
        }
        Verb::Show { release } => print!("{}", store.fetch(&release).await?),
        Verb::Export { release, out } => {
            let text = store.fetch(&release).await?;
            match out {
                Some(file) => std::fs::write(&file, text)
                    .with_context(|| format!("writing {}", file.display()))?,
                None => print!("{text}"),
            }
        }
        Verb::Diff { a, b } => {
            let read = |x: String| async move {
                match Path::new(&x).is_file() {
                    true => release_text(Path::new(&x)),
                    false => store.fetch(&x).await.map_err(anyhow::Error::from),
                }
            };
            let (a, b) = (read(a).await?, read(b).await?);
            let changes = diff(&a, &b).map_err(anyhow::Error::msg)?;
            for line in &changes {
                println!("{line}");
            }
            if changes.is_empty() {
                println!("no change");
            }
        }
        _ => unreachable!("validate is handled before connecting; the others are dispatched"),
    }
    Ok(())
}

/// The release `stable` served before `now` (the history's last flip to `now`).
async fn previous(store: &Store, now: Option<&str>) -> anyhow::Result<String> {
    let history = store.history().await?;
    let flip = history
        .iter()
        .rev()
        .find(|e| e.verb != "push" && Some(e.to.as_str()) == now)
        .and_then(|e| e.from.clone());
    match flip {
        Some(from) => Ok(from),
        None => bail!("stable has no earlier release to go back to; name one with --to"),
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
