//! One reading of a request's path: the canonical form every decision reads (routes, auth,
//! header rules, canary, mirror) and the only one an instance receives.
//!
//! A gateway that matches `/admin` on the bytes a client sent, while the instance behind it
//! decodes `%61dmin` or resolves `/x/../admin`, protects nothing: Envoy's CVE-2019-9901 and
//! Tomcat's `..;/` are this shape. So the path is put in RFC 3986 §6.2.2 normal form once,
//! before routing:
//! - percent-encoded unreserved characters decoded (`%61` → `a`, `%2E` → `.`), the hex of every
//!   other escape upper-cased, a `%` not followed by two hex digits refused, `%00` refused;
//! - repeated slashes merged (`merge_slashes`, nginx's and Envoy's name; on by default);
//! - dot-segments removed (§5.2.4), encoded ones too (they were decoded first);
//! - encoded slashes and backslashes (`%2F`, `%5C`, a raw `\`), which servers read differently
//!   (a separator to Tomcat with `ALLOW_ENCODED_SLASH`, IIS and some frameworks, a character to
//!   others): refused by default (`escaped_slashes = "reject"`), or kept, or decoded into `/`
//!   (Envoy's `path_with_escaped_slashes_action`);
//! - path parameters (`;x=1` in a segment), which Tomcat and Jetty strip before they resolve
//!   the path and Go or Python keep: by default (`path_parameters = "reject_ambiguous"`) the
//!   request is routed on both readings and refused when they disagree — which route, which
//!   service, which `auth` — else forwarded with its parameters; or refused whenever present,
//!   or stripped before routing and forwarding, or kept as a plain character.
//!
//! A target that cannot be read one way only is answered 400. The query is never touched.

use std::borrow::Cow;

pub use crate::config::{EscapedSlashes, PathParameters, PathRules};

/// Why a path has no one reading (the 400's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// `%` without two hex digits.
    #[error("the path has a '%' not followed by two hex digits")]
    BadEscape,
    /// `%00`.
    #[error("the path encodes a NUL byte")]
    Nul,
    /// `%2F`, `%5C` or `\` with `escaped_slashes = "reject"`.
    #[error("the path has an encoded slash or a backslash (path_normalization.escaped_slashes)")]
    EscapedSlash,
    /// `;` with `path_parameters = "reject"`, or readings that disagree.
    #[error("the path has parameters (';') that change where it goes (path_normalization.path_parameters)")]
    Parameters,
    /// Not origin-form.
    #[error("the path does not start with '/'")]
    NotAbsolute,
}

/// Whether `b` is an RFC 3986 unreserved character.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` may need work: the fast path returns it as it is otherwise.
fn needs_work(path: &[u8], merge: bool) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' | b';' => return true,
            b'/' if prev == b'/' && merge => return true,
            b'.' if prev == b'/' => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// The canonical form of `path` (no query), borrowed when it already is. With
/// `path_parameters = "strip"` the parameters are gone; with the other settings they stay
/// (the caller routes the [`without_parameters`] reading too where asked).
pub fn canonical<'p>(path: &'p str, rules: &PathRules) -> Result<Cow<'p, str>, Unreadable> {
    if !path.starts_with('/') {
        return Err(Unreadable::NotAbsolute);
    }
    if !needs_work(path.as_bytes(), rules.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    if path.contains(';') {
        match rules.path_parameters {
            PathParameters::Reject => return Err(Unreadable::Parameters),
            PathParameters::Strip => {
                let decoded = decode(path.as_bytes(), rules.escaped_slashes)?;
                let stripped = strip_parameters(&decoded);
                return Ok(Cow::Owned(resolve(&stripped, rules.merge_slashes)));
            }
            _ => {}
        }
    }
    let decoded = decode(path.as_bytes(), rules.escaped_slashes)?;
    Ok(Cow::Owned(resolve(&decoded, rules.merge_slashes)))
}

/// The reading of a canonical path by servers that drop path parameters (Tomcat, Jetty):
/// parameters removed from every segment, then dot-segments resolved again (`/a/..;x/b` is
/// `/b` to them). `None` when the path has none.
pub fn without_parameters(canonical: &str, rules: &PathRules) -> Option<String> {
    if !canonical.contains(';') {
        return None;
    }
    Some(resolve(&strip_parameters(canonical.as_bytes()), rules.merge_slashes))
}

/// Percent-decodes unreserved characters, upper-cases other escapes, applies the escaped
/// slashes rule.
fn decode(path: &[u8], slashes: EscapedSlashes) -> Result<Vec<u8>, Unreadable> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'\\' {
            match slashes {
                EscapedSlashes::Reject => return Err(Unreadable::EscapedSlash),
                EscapedSlashes::Keep => out.extend_from_slice(b"%5C"),
                EscapedSlashes::Unescape => out.push(b'/'),
            }
            i += 1;
            continue;
        }
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = |at: usize| path.get(at).and_then(|h| (*h as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
            return Err(Unreadable::BadEscape);
        };
        let v = (hi * 16 + lo) as u8;
        match v {
            0 => return Err(Unreadable::Nul),
            b'/' | b'\\' => match slashes {
                EscapedSlashes::Reject => return Err(Unreadable::EscapedSlash),
                EscapedSlashes::Keep => {
                    out.extend_from_slice(if v == b'/' { b"%2F" } else { b"%5C" })
                }
                EscapedSlashes::Unescape => out.push(b'/'),
            },
            v if unreserved(v) => out.push(v),
            v => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 15)]]);
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Removes `;…` from every segment.
fn strip_parameters(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut in_params = false;
    for &b in path {
        match b {
            b'/' => {
                in_params = false;
                out.push(b);
            }
            b';' => in_params = true,
            _ if in_params => {}
            _ => out.push(b),
        }
    }
    out
}

/// Merges slashes (when asked) and removes dot-segments (RFC 3986 §5.2.4: `..` above the root
/// stays at the root). `path` starts with `/` and holds ASCII only (escapes are `%XX`).
fn resolve(path: &[u8], merge: bool) -> String {
    let mut segments: Vec<&[u8]> = Vec::new();
    let parts: Vec<&[u8]> = path[1..].split(|b| *b == b'/').collect();
    let last = parts.len() - 1;
    // Whether the path ends in a directory (`/a/`, `/a/.`, `/a/..`).
    let mut trailing = false;
    for (i, seg) in parts.into_iter().enumerate() {
        trailing = false;
        match seg {
            b"." => trailing = true,
            b".." => {
                segments.pop();
                trailing = true;
            }
            b"" if merge && i != last => {}
            b"" if i == last => trailing = true,
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        // ASCII: what decode produced from a valid (ASCII) request target.
        out.push_str(std::str::from_utf8(s).unwrap_or(""));
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(path: &str) -> Result<String, Unreadable> {
        canonical(path, &PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn spellings_of_one_path_read_as_one() {
        for spelling in [
            "/admin/secret",
            "/%61dmin/secret",
            "/%61%64%6D%69%6E/secret",
            "/x/../admin/secret",
            "/./admin/secret",
            "/admin/./secret",
            "//admin//secret",
            "/%2e/admin/secret",
            "/%2E%2E/admin/secret",
            "/x/%2e%2e/admin/secret",
            "/x/.%2E/admin/secret",
            "/../../admin/secret",
            "/admin/secret/x/..",
        ] {
            let want = if spelling.ends_with("..") { "/admin/secret/" } else { "/admin/secret" };
            assert_eq!(c(spelling).as_deref(), Ok(want), "{spelling}");
        }
    }

    #[test]
    fn escapes_of_reserved_characters_are_kept_upper_cased() {
        assert_eq!(c("/a%3fb%20c").as_deref(), Ok("/a%3Fb%20c"));
        assert_eq!(c("/caf%c3%a9").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(c("/"), Ok("/".into()));
        assert_eq!(c("/a/"), Ok("/a/".into()));
        assert_eq!(c("/a/b/../"), Ok("/a/".into()));
        assert_eq!(c("/..."), Ok("/...".into()), "three dots are a name");
        assert_eq!(c("/.well-known/x"), Ok("/.well-known/x".into()));
    }

    #[test]
    fn what_servers_read_differently_is_refused_by_default() {
        assert_eq!(c("/a%zz"), Err(Unreadable::BadEscape));
        assert_eq!(c("/a%2"), Err(Unreadable::BadEscape));
        assert_eq!(c("/a%00b"), Err(Unreadable::Nul));
        assert_eq!(c("/public%2F..%2Fadmin"), Err(Unreadable::EscapedSlash));
        assert_eq!(c("/public%5c..%5cadmin"), Err(Unreadable::EscapedSlash));
        assert_eq!(c("/public\\..\\admin"), Err(Unreadable::EscapedSlash));
        assert_eq!(c("x"), Err(Unreadable::NotAbsolute));
        let keep = PathRules { escaped_slashes: EscapedSlashes::Keep, ..Default::default() };
        assert_eq!(canonical("/a%2fb/../c", &keep).as_deref(), Ok("/c"));
        assert_eq!(canonical("/a%2fb", &keep).as_deref(), Ok("/a%2Fb"));
        let unescape =
            PathRules { escaped_slashes: EscapedSlashes::Unescape, ..Default::default() };
        assert_eq!(canonical("/public%2F..%2Fadmin", &unescape).as_deref(), Ok("/admin"));
        let literal = PathRules { merge_slashes: false, ..Default::default() };
        assert_eq!(canonical("//a//b", &literal).as_deref(), Ok("//a//b"));
    }

    #[test]
    fn path_parameters_are_read_both_ways() {
        let rules = PathRules::default();
        assert_eq!(c("/admin;x=1/secret").as_deref(), Ok("/admin;x=1/secret"));
        assert_eq!(
            without_parameters("/admin;x=1/secret", &rules).as_deref(),
            Some("/admin/secret")
        );
        assert_eq!(without_parameters("/public/..;x/admin", &rules).as_deref(), Some("/admin"));
        assert_eq!(without_parameters("/a/b", &rules), None);
        let reject = PathRules { path_parameters: PathParameters::Reject, ..rules };
        assert_eq!(canonical("/a;x", &reject), Err(Unreadable::Parameters));
        let strip = PathRules { path_parameters: PathParameters::Strip, ..rules };
        assert_eq!(canonical("/public/..;x/admin;jsessionid=1", &strip).as_deref(), Ok("/admin"));
    }

    #[test]
    fn the_canonical_form_is_a_fixed_point() {
        for p in ["/a/./b/../c//d/", "/%7e%41/%2e%2e/x", "/a;b/../c", "/a%2Fb", "/%C3%A9/"] {
            for rules in [
                PathRules::default(),
                PathRules { escaped_slashes: EscapedSlashes::Keep, ..Default::default() },
                PathRules { path_parameters: PathParameters::Strip, ..Default::default() },
            ] {
                let Ok(once) = canonical(p, &rules) else { continue };
                assert_eq!(canonical(&once, &rules).as_deref(), Ok(&*once), "{p} {rules:?}");
            }
        }
    }
}
