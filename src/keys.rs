//! `zkgate key add|list|revoke`: a `type = "key"` section's keys file, edited in place. A new
//! key (32 random bytes from a CSPRNG the OS seeds) is printed once, and only its SHA-256 digest is
//! written; running workers read the file again within a second of the change.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use worker::auth::key::{digest_of, new_key, parse_keys, to_hex};
use worker::config::AuthSettings;

/// What to do with the keys file.
#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Add a consumer's key; prints the new key once (only its digest is kept).
    Add {
        /// The `[auth.NAME]` section (`type = "key"`).
        #[arg(long)]
        auth: String,
        /// The consumer the key belongs to (reaches instances as X-Auth-Subject).
        #[arg(long)]
        consumer: String,
    },
    /// List the consumers and the start of each key's digest.
    List {
        /// The `[auth.NAME]` section.
        #[arg(long)]
        auth: String,
    },
    /// Revoke every key of a consumer.
    Revoke {
        /// The `[auth.NAME]` section.
        #[arg(long)]
        auth: String,
        /// The consumer whose keys go.
        #[arg(long)]
        consumer: String,
    },
}

/// Runs `verb` on the keys file of the section it names in `config`.
pub fn run(config: &Path, verb: Verb) -> anyhow::Result<u8> {
    let auth = match &verb {
        Verb::Add { auth, .. } | Verb::List { auth } | Verb::Revoke { auth, .. } => auth,
    };
    let file = keys_file(config, auth)?;
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let entries = parse_keys(&file.display().to_string(), &text)?;
    match verb {
        Verb::Add { consumer, .. } => {
            if consumer.is_empty()
                || consumer.contains(char::is_whitespace)
                || consumer.starts_with('#')
            {
                bail!("consumer {consumer:?}: a name without spaces");
            }
            let key = new_key();
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
            writeln!(out, "{sep}{consumer} {}", to_hex(&digest_of(key.as_bytes())))?;
            println!("{key}");
            eprintln!("key added for {consumer} to {} (shown once: keep it now)", file.display());
        }
        Verb::List { .. } => {
            for e in &entries {
                println!("{} {}…", e.consumer, &to_hex(&e.digest)[..12]);
            }
        }
        Verb::Revoke { consumer, .. } => {
            let gone = entries.iter().filter(|e| e.consumer == consumer).count();
            if gone == 0 {
                bail!("{consumer}: no key in {}", file.display());
            }
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| l.split_whitespace().next() != Some(consumer.as_str()))
                .collect();
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, kept.join("\n") + "\n")?;
            std::fs::rename(&tmp, &file)?;
            eprintln!("{gone} key(s) of {consumer} revoked in {}", file.display());
        }
    }
    Ok(0)
}

/// The keys file of `[auth.NAME]` (relative to the configuration's directory).
fn keys_file(config: &Path, auth: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("cannot read {}", config.display()))?;
    let parsed = crate::config::parse(config, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(AuthSettings::Key(k)) = parsed.auth.get(auth) else {
        bail!("{}: no [auth.{auth}] section of type = \"key\"", config.display());
    };
    Ok(match k.keys.is_relative() {
        true => config.parent().unwrap_or(Path::new(".")).join(&k.keys),
        false => k.keys.clone(),
    })
}
