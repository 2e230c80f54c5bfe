//! What the proxy needs to know of gRPC: which requests are gRPC (their errors are answered
//! with `grpc-status`, see `error.rs`) and the deadline a client set with `grpc-timeout`.

use std::time::Duration;

use http::HeaderMap;

/// Whether a request is gRPC (`content-type: application/grpc[+proto|+json|…]`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && !v.starts_with(b"application/grpc-web")
    })
}

/// The client's deadline from `grpc-timeout` (`1..=8` digits and a unit: H, M, S, m, u, n).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        let t = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", v.parse().unwrap());
            timeout(&h)
        };
        assert_eq!(t("100m"), Some(Duration::from_millis(100)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, "application/grpc+proto".parse().unwrap());
        assert!(is_grpc(&h));
        h.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_grpc(&h));
    }
}
