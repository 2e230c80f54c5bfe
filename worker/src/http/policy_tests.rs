//! Unit tests of `policy.rs`.

use super::*;
use crate::config::TrustedProxies;
use crate::http::headers::via_entry;
use http::HeaderMap;

fn policy(trusted: &[&str]) -> Policy {
    let trusted = TrustedProxies::parse(trusted.iter().copied()).unwrap();
    Policy::new(via_entry("gw"), Underscores::Only(vec![]), trusted, None)
}

fn request(p: &Policy, raw: &[(&str, &str)], actions: Option<&HeaderActions>) -> String {
    let lines = raw.iter().map(|(n, v)| Line::new(n.as_bytes(), v.as_bytes()));
    let origin = Origin {
        peer: "192.0.2.1".parse().unwrap(),
        peer_text: "192.0.2.1",
        scheme: "http",
        port: 8080,
        host: Some("api.example"),
        identity: None,
        client_cert: None,
        traceparent: None,
    };
    let mut out = Vec::new();
    p.request(lines, &origin, actions, &mut out);
    String::from_utf8(out).unwrap().replace("\r\n", "|")
}

fn without_id(s: &str) -> String {
    s.split('|').filter(|l| !l.starts_with("x-request-id")).collect::<Vec<_>>().join("|")
}

#[test]
fn an_untrusted_client_cannot_set_any_forwarding_header() {
    let p = policy(&[]);
    let got = request(
        &p,
        &[
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Host", "evil.example"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Port", "1"),
            ("Forwarded", "for=6.6.6.6"),
            ("Accept", "*/*"),
        ],
        None,
    );
    assert_eq!(
        without_id(&got),
        "Accept: */*|x-forwarded-for: 192.0.2.1|x-forwarded-proto: http|\
         x-forwarded-host: api.example|x-forwarded-port: 8080|via: 1.1 gw|"
    );
}

#[test]
fn a_trusted_peer_keeps_its_forwarding_headers_and_this_hop_is_appended() {
    let p = policy(&["192.0.2.0/24"]);
    let got = request(
        &p,
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-For", "198.51.100.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "shop.example"),
        ],
        None,
    );
    assert_eq!(
        without_id(&got),
        "X-Forwarded-Proto: https|X-Forwarded-Host: shop.example|\
         x-forwarded-for: 203.0.113.9, 198.51.100.7, 192.0.2.1|x-forwarded-port: 8080|\
         via: 1.1 gw|"
    );
}

#[test]
fn headers_named_by_connection_go_before_the_gateway_adds_its_own() {
    let p = policy(&["192.0.2.1"]);
    let got = request(
        &p,
        &[
            ("Connection", "X-Request-Id, x-forwarded-for, X-Secret"),
            ("X-Request-Id", "client-chosen"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Expect", "100-continue"),
            ("Transfer-Encoding", "chunked"),
            ("Host", "api.example"),
        ],
        None,
    );
    assert!(!got.contains("client-chosen") && !got.contains("6.6.6.6"), "{got}");
    assert!(!got.contains("X-Secret") && !got.contains("Keep-Alive"), "{got}");
    assert!(!got.contains("TE:") && !got.contains("Expect") && !got.contains("Host:"));
    assert!(got.contains("x-forwarded-for: 192.0.2.1|"), "{got}");
    let id = got.split('|').find_map(|l| l.strip_prefix("x-request-id: ")).unwrap();
    assert_eq!(id.len(), 32, "a fresh id replaces the named one");
}

#[test]
fn route_rules_remove_set_and_add() {
    let mut rules =
        crate::config::HeaderRules { remove: vec!["x-user-id".into()], ..Default::default() };
    rules.set.insert("x-tier".into(), "gold".into());
    rules.add.insert("x-added".into(), "1".into());
    let actions = HeaderActions::new(&rules);
    let got = request(
        &policy(&[]),
        &[("X-User-Id", "admin"), ("X-Tier", "free"), ("X-Kept", "1")],
        Some(&actions),
    );
    assert!(!got.contains("admin") && !got.contains("free"), "{got}");
    assert!(got.contains("X-Kept: 1|") && got.ends_with("x-tier: gold|x-added: 1|"), "{got}");
}

#[test]
fn answers_lose_hop_by_hop_and_named_lines_and_gain_via() {
    let p = policy(&[]);
    let raw = [
        ("Connection", "close, X-Internal"),
        ("X-Internal", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "3"),
        ("Keep-Alive", "timeout=1"),
        ("Content-Type", "text/plain"),
    ];
    let lines = raw.iter().map(|(n, v)| Line::new(n.as_bytes(), v.as_bytes()));
    let mut out = HeaderMap::new();
    p.response(lines, false, (None, "10.0.0.1:80"), &mut out);
    let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["content-type", "via"]);
    assert!(!status_allows_length(204) && !status_allows_length(101));
    assert!(status_allows_length(200) && status_allows_length(304));
}

#[test]
fn a_loop_is_seen_in_any_via_line() {
    let p = policy(&[]);
    let lines = [("Via", "1.0 a"), ("via", "1.1 b, 1.1 gw")];
    let it = lines.iter().map(|(n, v)| Line::new(n.as_bytes(), v.as_bytes()));
    assert!(p.looped(it));
    let other = [("Via", "1.1 gw2")];
    assert!(!p.looped(other.iter().map(|(n, v)| Line::new(n.as_bytes(), v.as_bytes()))));
}

#[test]
fn identity_lines_come_from_the_gateway_only() {
    let p = policy(&[]);
    let raw = [
        ("X-Auth-Subject", "admin"),
        ("x-auth-role", "root"),
        ("X-Client-Cert-Subject", "CN=forged"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("Accept", "*/*"),
    ];
    // No verified identity: every such line is dropped; traceparent passes untouched.
    let got = without_id(&request(&p, &raw, None));
    assert!(!got.to_ascii_lowercase().contains("x-auth"), "{got}");
    assert!(!got.to_ascii_lowercase().contains("x-client-cert"), "{got}");
    assert!(got.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
    assert!(got.contains("Accept: */*"));
    // Verified: the gateway's own lines, once each, and its traceparent instead of the client's.
    let identity =
        Identity { headers: vec![(b"x-auth-subject".to_vec(), b"alice".to_vec())], hide: None };
    let lines = raw.iter().map(|(n, v)| Line::new(n.as_bytes(), v.as_bytes()));
    let origin = Origin {
        peer: "192.0.2.1".parse().unwrap(),
        peer_text: "192.0.2.1",
        scheme: "https",
        port: 8443,
        host: None,
        identity: Some(&identity),
        client_cert: Some(b"CN=client,O=Example"),
        traceparent: Some(b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"),
    };
    let mut out = Vec::new();
    p.request(lines, &origin, None, &mut out);
    let got = String::from_utf8(out).unwrap();
    assert_eq!(got.matches("x-auth-subject: alice\r\n").count(), 1, "{got}");
    assert!(!got.contains("admin") && !got.contains("root") && !got.contains("forged"), "{got}");
    assert!(got.contains("x-client-cert-subject: CN=client,O=Example\r\n"), "{got}");
    assert_eq!(got.matches("traceparent").count(), 1, "{got}");
    assert!(got.contains("traceparent: 00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"));
}

#[test]
fn client_address_headers_pass_only_from_trusted_proxies() {
    let raw = [
        ("X-Real-IP", "6.6.6.6"),
        ("True-Client-IP", "6.6.6.6"),
        ("X-Client-IP", "6.6.6.6"),
        ("HTTP2-Settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
    ];
    let untrusted = request(&policy(&[]), &raw, None);
    assert!(!untrusted.contains("6.6.6.6") && !untrusted.contains("AAMA"), "{untrusted}");
    let trusted = request(&policy(&["192.0.2.0/24"]), &raw, None);
    assert_eq!(trusted.matches("6.6.6.6").count(), 3, "{trusted}");
    assert!(!trusted.contains("AAMA"), "HTTP2-Settings is hop-by-hop: {trusted}");
}

#[test]
fn upgrades_pass_by_the_allow_list_and_h2c_never() {
    let allowed = vec!["websocket".to_string()];
    assert!(upgrade_allowed(b"websocket", &allowed));
    assert!(upgrade_allowed(b"WebSocket", &allowed));
    assert!(!upgrade_allowed(b"h2c", &allowed));
    assert!(!upgrade_allowed(b"websocket, h2c", &allowed));
    assert!(!upgrade_allowed(b"h2c", &["h2c".to_string()]), "h2c is never forwarded");
    assert!(!upgrade_allowed(b"", &allowed));
    assert!(!upgrade_allowed(b"TLS/1.2", &allowed));
}

#[test]
fn request_trailers_pass_by_an_allow_list_answers_by_a_deny_list() {
    for owned in ["x-auth-subject", "x-client-cert-subject", "x-forwarded-for", "x-real-ip"] {
        assert!(!request_trailer_allowed(owned.as_bytes()), "{owned}");
    }
    assert!(!request_trailer_allowed(b"x-checksum"));
    assert!(request_trailer_allowed(b"grpc-status"));
    let mut map = HeaderMap::new();
    map.insert("x-auth-subject", HeaderValue::from_static("admin"));
    map.insert("grpc-message", HeaderValue::from_static("ok"));
    filter_request_trailers(&mut map);
    assert_eq!(map.len(), 1);
    assert!(response_trailer_allowed(b"grpc-status") && !response_trailer_allowed(b"set-cookie"));
}

#[test]
fn hide_credentials_strips_the_verified_credential_only() {
    let identity = Identity {
        headers: vec![(b"x-auth-subject".to_vec(), b"alice".to_vec())],
        hide: Some(Hide { cookie: Some("session".into()), header: None }),
    };
    let lines = [
        ("Authorization", "Bearer t"),
        ("Cookie", "a=1; session=t; b=2"),
        ("Cookie", "session=t"),
        ("Accept", "*/*"),
    ];
    let lines = lines.iter().map(|(n, v)| Line::new(n.as_bytes(), v.as_bytes()));
    let origin = Origin {
        peer: "192.0.2.1".parse().unwrap(),
        peer_text: "192.0.2.1",
        scheme: "http",
        port: 8080,
        host: None,
        identity: Some(&identity),
        client_cert: None,
        traceparent: None,
    };
    let mut out = Vec::new();
    policy(&[]).request(lines, &origin, None, &mut out);
    let got = String::from_utf8(out).unwrap();
    assert!(!got.contains("Bearer") && !got.contains("session"), "{got}");
    assert!(got.contains("Cookie: a=1; b=2\r\n") && got.contains("Accept: */*"), "{got}");
    assert!(got.contains("x-auth-subject: alice"), "{got}");
}
