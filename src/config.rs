//! `gateway.toml` → typed configuration, checked once here at the binary's edge.
//!
//! The types and defaults live in `worker::config` (their one home); this module owns the
//! whole-file parse (paths resolved from the file's directory, the files it names read),
//! errors that name the file, line and column, and the supervisor's part of the
//! configuration. The checks that span sections are in `checks` and `edge_checks`,
//! `zkgate check`'s summary in `summary`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::checks::check;
pub use worker::config::Config;
use worker::tls::Certificates;

/// A configuration error, with where it is when that is known.
#[derive(Debug)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line and column, when the error points into the file.
    pub position: Option<(usize, usize)>,
    /// What is wrong, naming the key.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and checks a configuration file; files it names (`upstream_ca`) are
/// resolved from its directory and read, so a worker never meets an unreadable one. With
/// `[fleet]`, the release the host last applied (its cache) supplies the dynamic sections; a
/// cached release that no longer fits the file is set aside (logged) and the file serves.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    let config = parse(path, &text)?;
    let Some(fleet) = &config.fleet else { return finish(path, config) };
    let cache = crate::fleet::cache_dir(path, &config);
    let Some((id, release)) = crate::fleet::current(&cache) else {
        return finish(path, config);
    };
    match load_release(path, &text, &release) {
        Ok(mut with_release) => {
            with_release.release = Some(id);
            Ok(with_release)
        }
        Err(e) => {
            log::warn!(
                "fleet {}: cached release {id} set aside ({e}); serving {} alone",
                fleet.cluster,
                path.display()
            );
            finish(path, config)
        }
    }
}

/// The file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message: format!("cannot read: {e}"),
    })
}

/// The file `text` (at `path`) with a release's dynamic sections, parsed and checked as
/// [`load`] checks a file: what a host runs `zkgate config` releases through before serving
/// one.
pub fn load_release(path: &Path, text: &str, release: &str) -> Result<Config, ConfigError> {
    let refuse =
        |message: String| ConfigError { path: path.to_path_buf(), position: None, message };
    // A wrong value is reported at its line in the release, then the whole is checked.
    deserialize(Path::new("release"), release)?;
    let merged = crate::fleet::overlay(text, release).map_err(refuse)?;
    let config = parse(Path::new("release"), &merged).map_err(|e| ConfigError {
        position: None, // a line of the merged document would point nowhere the operator knows
        ..e
    })?;
    finish(path, config)
}

/// Resolves the paths a configuration names from `path`'s directory and reads the files.
fn finish(path: &Path, mut config: Config) -> Result<Config, ConfigError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let relative = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    for s in config.services.values_mut() {
        s.upstream_ca.as_mut().map(relative);
    }
    for a in config.auth.values_mut() {
        match a {
            worker::config::AuthSettings::Jwt(j) => {
                j.jwks.as_mut().map(relative);
            }
            worker::config::AuthSettings::Basic(b) => relative(&mut b.htpasswd),
            worker::config::AuthSettings::Key(k) => relative(&mut k.keys),
        }
    }
    for t in &mut config.tls {
        t.client_ca.as_mut().map(relative);
        t.client_crl.as_mut().map(relative);
    }
    let refuse =
        |message: String| ConfigError { path: path.to_path_buf(), position: None, message };
    // A route's fixed answer is read now, once: workers never read it, and a missing file
    // fails `check` and the reload.
    for (i, r) in config.routes.iter_mut().enumerate() {
        let Some(answer) = r.answer.as_mut() else { continue };
        if let Some(file) = answer.body_file.as_mut() {
            if answer.body.is_some() {
                return Err(refuse(format!("route[{i}].answer: body and body_file both set")));
            }
            relative(file);
            let body = std::fs::read(&*file).map_err(|e| {
                refuse(format!("route[{i}].answer.body_file {}: {e}", file.display()))
            })?;
            answer.body = Some(String::from_utf8(body).map_err(|_| {
                refuse(format!("route[{i}].answer.body_file {}: not UTF-8 text", file.display()))
            })?);
        }
    }
    worker::http::client::transport::Transports::from_config(&config)
        .map_err(|e| refuse(e.to_string()))?;
    // Every JWKS and htpasswd file is read now: a bad one fails `check` and the reload, and
    // the running workers keep what they have.
    if let Err((_, errors)) = worker::auth::Auth::from_config(&config) {
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(refuse(errors.join("; ")));
    }
    Ok(config)
}

/// Parses and checks configuration text; `path` is only used in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config = deserialize(path, text)?;
    check(&config).map_err(|message| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message,
    })?;
    Ok(config)
}

/// The text as typed sections, unchecked. The dotted key of a wrong value goes in the message
/// ("auth.idp.leeway: …"), toml's span gives its line and column.
fn deserialize(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let config: Config =
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
            let key = e.path().to_string();
            let e = e.into_inner();
            let message = e.message().trim();
            ConfigError {
                path: path.to_path_buf(),
                position: e.span().map(|s| line_col(text, s.start)),
                message: match key.as_str() {
                    "" | "." | "?" => message.to_string(),
                    _ => format!("{key}: {message}"),
                },
            }
        })?;
    Ok(config)
}

/// Reads and checks the `[[tls]]` certificates (relative paths from the configuration file's
/// directory): every reload goes through here, so a bad file fails the reload and the running
/// workers keep the certificates they have.
pub fn load_tls(path: &Path, config: &Config) -> Result<Option<Certificates>, ConfigError> {
    if config.tls.is_empty() {
        return Ok(None);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let pairs: Vec<(PathBuf, PathBuf)> =
        config.tls.iter().map(|t| (dir.join(&t.cert), dir.join(&t.key))).collect();
    let refuse = |e: worker::tls::TlsError| ConfigError {
        path: path.to_path_buf(),
        position: None,
        message: format!("[[tls]]: {e}"),
    };
    let mut certificates = Certificates::load(&pairs).map_err(refuse)?;
    // One TLS configuration serves every name: the first entry's client settings apply.
    let first = &config.tls[0];
    if let Some(ca) = &first.client_ca {
        let required = first.client_auth != Some(worker::config::ClientAuth::Optional);
        let crl = first.client_crl.as_ref().map(|c| dir.join(c));
        certificates.client = Some(
            worker::tls::ClientVerification::load(&dir.join(ca), crl.as_deref(), required)
                .map_err(refuse)?,
        );
    }
    Ok(Some(certificates))
}

/// What the supervisor runs with: the plain addresses, then the TLS ones, then the admin
/// address if any (the workers split the inherited sockets in that order).
pub fn supervisor_settings(config: &Config) -> supervisor::Settings {
    let s = &config.server;
    let mut listen = s.listen.clone();
    listen.extend(&s.listen_tls);
    listen.extend(config.admin.as_ref().map(|a| a.listen));
    supervisor::Settings {
        listen,
        workers: s.workers.resolve(),
        backlog: s.backlog,
        shutdown_timeout: s.shutdown_timeout,
        worker_timeout: s.worker_timeout,
        cpu_affinity: s.cpu_affinity,
        user: s.user.clone(),
        group: s.group.clone(),
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
