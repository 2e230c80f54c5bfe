//! Fetching a `jwks_url`: one GET (see `outbound`), its `Cache-Control: max-age` deciding
//! when the next one is due.

use std::time::Duration;

/// How long a failed fetch waits before the next try.
pub const RETRY: Duration = Duration::from_secs(30);
/// Bounds on how long a fetched set is kept before fetching again.
const MIN_AGE: Duration = Duration::from_secs(60);
const MAX_AGE: Duration = Duration::from_secs(86_400);
/// Without `max-age`.
const DEFAULT_AGE: Duration = Duration::from_secs(300);
/// A JWKS larger than this is refused.
const MAX_BYTES: usize = 1 << 20;
/// The whole fetch (connect, TLS, answer).
const TIMEOUT: Duration = Duration::from_secs(10);

/// GETs `url`; the body and how long it may be kept.
pub async fn jwks(url: &str) -> Result<(String, Duration), String> {
    let accept = (http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
    let (status, headers, body) = crate::outbound::request(
        http::Method::GET,
        url,
        &[accept],
        bytes::Bytes::new(),
        (TIMEOUT, MAX_BYTES),
    )
    .await?;
    if !status.is_success() {
        return Err(format!("answered {status}"));
    }
    let age = max_age(headers.get(http::header::CACHE_CONTROL));
    Ok((String::from_utf8_lossy(&body).into_owned(), age))
}

/// `max-age` of a `Cache-Control` value, within [1 min, 1 day]; 5 min without one.
pub fn max_age(value: Option<&http::HeaderValue>) -> Duration {
    let age = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|d| d.trim().strip_prefix("max-age=")?.trim_matches('"').parse().ok())
        })
        .map_or(DEFAULT_AGE, Duration::from_secs);
    age.clamp(MIN_AGE, MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_and_bounded() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert_eq!(max_age(Some(&v("public, max-age=600"))), Duration::from_secs(600));
        assert_eq!(max_age(Some(&v("max-age=5"))), MIN_AGE);
        assert_eq!(max_age(Some(&v("max-age=99999999"))), MAX_AGE);
        assert_eq!(max_age(Some(&v("no-cache"))), DEFAULT_AGE);
        assert_eq!(max_age(None), DEFAULT_AGE);
    }
}
