//! Authentication at the edge on the real binary: `[auth.NAME]` JWT sections over a JWKS the
//! test writes (ES256 and EdDSA keys it generates), and htpasswd basic auth with bcrypt
//! entries. Every case asserts what the client got (status, `WWW-Authenticate`, the gateway's
//! JSON) and what the instance received (`X-Auth-*` from the gateway only), and the refusals
//! counted per route in `/metrics`.

mod support;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::http::{request, Response};
use support::jwt::{b64url, claims, Key};
use support::{write_file, Backend, Gateway, Toml};

/// A gateway with `/jwt` behind a JWT section (the two keys' JWKS), `/basic` behind an
/// htpasswd section, and everything else open; with the admin API for `/metrics`.
fn gateway(backend: &Backend, keys: &[&Key], htpasswd: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let jwks = write_file(dir.path(), "jwks.json", &support::jwt::jwks(keys).to_string());
    let htpasswd = write_file(dir.path(), "htpasswd", htpasswd);
    let toml = Toml::new()
        .backends("web", &[backend])
        .proxy("debug_headers = true")
        .section("[[route]]", "path_prefix = \"/jwt\"\nservice = \"web\"\nauth = \"staff\"")
        .section("[[route]]", "path_prefix = \"/basic\"\nservice = \"web\"\nauth = \"ops\"")
        .route_all("web")
        .section(
            "[auth.staff]",
            &format!(
                "type = \"jwt\"\njwks = {jwks:?}\nissuer = \"https://issuer.test/\"\naudience = [\"api\"]\nalgorithms = [\"ES256\", \"EdDSA\"]\ncookie = \"session\"\nleeway = \"5s\"\nclaims_to_headers = {{ email = \"X-Auth-Email\" }}"
            ),
        )
        .section("[auth.ops]", &format!("type = \"basic\"\nhtpasswd = {htpasswd:?}\nrealm = \"ops\""));
    (Gateway::with(toml).workers(2).admin().start(), dir)
}

fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Response {
    request(gw.port, "GET", path, headers, b"").unwrap()
}

/// `claims` without `name`.
fn without(mut claims: serde_json::Value, name: &str) -> serde_json::Value {
    claims.as_object_mut().unwrap().remove(name);
    claims
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn jwt_routes_take_valid_tokens_only_and_the_instance_gets_the_gateways_identity() {
    let backend = Backend::start("web");
    let (es, ed) = (Key::es256("es-1"), Key::ed25519("ed-1"));
    let (gw, _dir) = gateway(&backend, &[&es, &ed], "");

    // Valid, from either key; the client's own X-Auth-* lines never reach the instance.
    for key in [&es, &ed] {
        let token = key.sign(&claims("alice", "api", 300));
        let auth = bearer(&token);
        let r = get(
            &gw,
            "/jwt/x",
            &[("authorization", &auth), ("x-auth-subject", "admin"), ("X-Auth-Role", "root")],
        );
        assert_eq!(r.status, 200, "{}", r.body_text());
        let seen = &r.json()["headers"];
        assert_eq!(seen["x-auth-subject"], "alice", "{seen}");
        assert_eq!(seen["x-auth-email"], "alice@example.test", "{seen}");
        assert!(seen.get("x-auth-role").is_none(), "{seen}");
    }
    let last = backend.heads.lock().unwrap().last().cloned().unwrap().to_ascii_lowercase();
    assert_eq!(last.matches("x-auth-subject:").count(), 1, "{last}");
    assert!(!last.contains("admin") && !last.contains("root"), "{last}");
    // The token in the route's cookie works too.
    let cookie = format!("other=1; session={}", es.sign(&claims("carol", "api", 300)));
    let r = get(&gw, "/jwt/c", &[("cookie", &cookie)]);
    assert_eq!((r.status, r.json()["headers"]["x-auth-subject"].as_str()), (200, Some("carol")));

    let hits = backend.hits.load(Ordering::Relaxed);
    let mut refused_401 = 0;
    // What must be refused, and with what.
    let other = Key::es256("es-1"); // same kid, another key: a forged signature
    let hmac = {
        // The classic: HS256 "signed" with the public key as the secret.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("es-1".into());
        let secret = es.jwk.to_string();
        jsonwebtoken::encode(
            &h,
            &claims("mallory", "api", 300),
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims("mallory", "api", 300).to_string().as_bytes())
    );
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token", None, 401, ""),
        ("expired", Some(es.sign(&claims("alice", "api", -60))), 401, "token expired"),
        ("bad signature", Some(other.sign(&claims("alice", "api", 300))), 401, "bad signature"),
        ("alg none", Some(none), 401, ""),
        ("HMAC with the public key", Some(hmac), 401, ""),
        ("garbage", Some("not.a.token".into()), 401, ""),
        ("wrong audience", Some(es.sign(&claims("alice", "billing", 300))), 403, "audience"),
        ("no audience", Some(es.sign(&without(claims("alice", "api", 300), "aud"))), 401, "aud"),
        ("no issuer", Some(es.sign(&without(claims("alice", "api", 300), "iss"))), 401, "iss"),
    ];
    for (what, token, status, reason) in &cases {
        let auth = token.as_deref().map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let r = get(&gw, "/jwt/secret", &headers);
        assert_eq!(r.status, *status, "{what}: {}", r.body_text());
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        assert!(r.json()["error"].as_str().unwrap().contains(reason), "{what}: {}", r.body_text());
        if *status == 401 {
            refused_401 += 1;
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer realm="), "{what}: {challenge:?}");
        }
    }
    assert_eq!(
        backend.hits.load(Ordering::Relaxed),
        hits,
        "a refused request reached the instance"
    );
    // The open route needs nothing; a token there changes nothing either.
    assert_eq!(get(&gw, "/open", &[]).status, 200);
    assert_eq!(gw.metric("zkgate_auth_refusals_total", "route=\"/jwt\",code=\"401\""), refused_401);
    assert_eq!(gw.metric("zkgate_auth_refusals_total", "route=\"/jwt\",code=\"403\""), 1);
}

#[test]
fn basic_auth_checks_bcrypt_entries_and_a_flood_of_wrong_passwords_stalls_nothing() {
    let backend = Backend::start("web");
    // Cost 9: tens of milliseconds a check (more in a debug build), so the flood below lasts
    // a few seconds, while the open route is used.
    let hash = bcrypt::hash("s3cret", 9).unwrap();
    let (gw, _dir) = gateway(&backend, &[&Key::es256("k")], &format!("# ops\nalice:{hash}\n"));
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };

    let ok = basic("alice", "s3cret");
    let r = get(&gw, "/basic/x", &[("authorization", &ok), ("x-auth-subject", "root")]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.json()["headers"]["x-auth-subject"], "alice");
    // Each worker remembers what it verified: until both have seen the right password once.
    let mut workers = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = get(&gw, "/basic/x", &[("authorization", &ok)]);
        assert_eq!(r.status, 200);
        workers.insert(r.header("x-zkgate-worker").unwrap().to_string());
        if workers.len() == 2 {
            break;
        }
    }
    assert_eq!(workers.len(), 2, "200 requests never reached the second worker");
    let hits_before_flood = backend.requests_to("GET /basic/x");
    for (what, value) in [
        ("wrong password", Some(basic("alice", "guess"))),
        ("unknown user", Some(basic("bob", "s3cret"))),
        ("no credentials", None),
        ("a bearer token", Some("Bearer abc".to_string())),
    ] {
        let headers: Vec<(&str, &str)> =
            value.iter().map(|v| ("authorization", v.as_str())).collect();
        let r = get(&gw, "/basic/x", &headers);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"ops\", charset=\"UTF-8\""),
            "{what}"
        );
    }
    assert_eq!(gw.metric("zkgate_auth_refusals_total", "route=\"/basic\",code=\"401\""), 4);

    // A flood of wrong passwords on many connections at once: the open route and the right
    // password are answered while it runs, and what cannot wait is refused at once (503).
    let flood = 160;
    let done = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..flood)
        .map(|i| {
            let (port, done, statuses) = (gw.port, done.clone(), statuses.clone());
            let wrong = basic("alice", &format!("guess-{i}"));
            std::thread::spawn(move || {
                let r = request(port, "GET", "/basic/x", &[("authorization", &wrong)], b"");
                statuses.lock().unwrap().push(r.map_or(0, |r| r.status));
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    // Wait until the flood is under way (some answered), then use the gateway.
    assert_eventually!(20, done.load(Ordering::SeqCst) >= 1, "no flood request answered");
    assert_eq!(get(&gw, "/open", &[]).status, 200);
    let r = get(&gw, "/basic/x", &[("authorization", &ok)]);
    assert_eq!(r.status, 200, "the right password (remembered) waits behind no bcrypt");
    let answered_meanwhile = done.load(Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert!(answered_meanwhile < flood, "the flood was over before the open route was tried");
    let statuses = statuses.lock().unwrap();
    let (refused, busy) = (
        statuses.iter().filter(|s| **s == 401).count(),
        statuses.iter().filter(|s| **s == 503).count(),
    );
    assert_eq!(refused + busy, flood, "{statuses:?}");
    assert!(
        busy > 0,
        "more than 2 workers x 66 wrong passwords at once: some must be refused at once"
    );
    assert_eq!(
        backend.requests_to("GET /basic/x"),
        hits_before_flood + 1,
        "only the right password reached the instance"
    );
}

#[test]
fn a_jwks_url_is_fetched_and_htpasswd_changes_apply_on_hup() {
    // A JWKS served over HTTP with a max-age, as an identity provider serves it.
    let key = Key::es256("url-1");
    let jwks = serde_json::json!({ "keys": [key.jwk.clone()] }).to_string();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let jwks_port = listener.local_addr().unwrap().port();
    let fetched = Arc::new(AtomicUsize::new(0));
    let count = fetched.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = [0u8; 2048];
            let _ = std::io::Read::read(&mut conn, &mut head);
            count.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = std::io::Write::write_all(&mut conn, answer.as_bytes());
        }
    });
    let backend = Backend::start("web");
    let dir = tempfile::tempdir().unwrap();
    let pw = |p: &str| format!("alice:{}\n", bcrypt::hash(p, 4).unwrap());
    let htpasswd = write_file(dir.path(), "htpasswd", &pw("first"));
    let toml = Toml::new()
        .backends("web", &[&backend])
        .section("[[route]]", "path_prefix = \"/jwt\"\nservice = \"web\"\nauth = \"idp\"")
        .section("[[route]]", "path_prefix = \"/basic\"\nservice = \"web\"\nauth = \"ops\"")
        .section(
            "[auth.idp]",
            &format!("type = \"jwt\"\njwks_url = \"http://127.0.0.1:{jwks_port}/.well-known/jwks.json\"\ninsecure_jwks_url = true\nalgorithms = [\"ES256\"]"),
        )
        .section("[auth.ops]", &format!("type = \"basic\"\nhtpasswd = {htpasswd:?}"));
    let gw = Gateway::with(toml).workers(2).admin().start();
    let token = bearer(&key.sign(&claims("dana", "any", 300)));
    assert_eventually!(
        10,
        get(&gw, "/jwt/x", &[("authorization", &token)]).status == 200,
        "the fetched JWKS never verified"
    );
    let r = get(&gw, "/jwt/x", &[("authorization", &token)]);
    assert_eq!(r.json()["headers"]["x-auth-subject"], "dana");
    assert!(fetched.load(Ordering::SeqCst) >= 2, "each worker fetches its set");

    let basic = |p: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("alice:{p}")))
    };
    assert_eq!(get(&gw, "/basic/x", &[("authorization", &basic("first"))]).status, 200);
    std::fs::write(&htpasswd, pw("second")).unwrap();
    let old = gw.workers();
    gw.signal(nix::sys::signal::Signal::SIGHUP);
    assert_eventually!(
        15,
        gw.workers().iter().all(|w| !old.contains(w)) && gw.workers().len() == 2,
        "not reloaded"
    );
    assert_eq!(get(&gw, "/basic/x", &[("authorization", &basic("second"))]).status, 200);
    assert_eq!(get(&gw, "/basic/x", &[("authorization", &basic("first"))]).status, 401);
}

#[test]
fn one_credential_is_verified_then_hidden_and_two_are_refused() {
    let backend = Backend::start("web");
    let es = Key::es256("es-1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = write_file(dir.path(), "jwks.json", &support::jwt::jwks(&[&es]).to_string());
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let htpasswd = write_file(dir.path(), "htpasswd", &format!("ops:{hash}\n"));
    // `audience` as the single string the documentation shows; both sections hide what they
    // verified.
    let toml = Toml::new()
        .backends("web", &[&backend])
        .section("[[route]]", "path_prefix = \"/jwt\"\nservice = \"web\"\nauth = \"staff\"")
        .section("[[route]]", "path_prefix = \"/basic\"\nservice = \"web\"\nauth = \"ops\"")
        .section(
            "[auth.staff]",
            &format!("type = \"jwt\"\njwks = {jwks:?}\naudience = \"api\"\nalgorithms = [\"ES256\"]\ncookie = \"session\"\nhide_credentials = true"),
        )
        .section(
            "[auth.ops]",
            &format!("type = \"basic\"\nhtpasswd = {htpasswd:?}\nhide_credentials = true"),
        );
    let gw = Gateway::with(toml).workers(1).admin().start();
    let token = es.sign(&claims("alice", "api", 300));
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("ops:s3cret"));
    // Verified, then hidden: the instance gets the gateway's identity, not the credential.
    let r = get(&gw, "/jwt/a", &[("authorization", &bearer(&token))]);
    assert_eq!(r.status, 200, "{}", r.body_text());
    let cookie = format!("theme=dark; session={token}");
    assert_eq!(get(&gw, "/jwt/b", &[("cookie", &cookie)]).status, 200);
    assert_eq!(get(&gw, "/basic/c", &[("authorization", &basic)]).status, 200);
    let heads = backend.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        assert!(!lower.contains("authorization") && !head.contains(&token), "{head}");
        assert!(lower.contains("x-auth-subject:"), "{head}");
    }
    assert!(heads[1].to_ascii_lowercase().contains("cookie: theme=dark\r\n"), "{}", heads[1]);
    // Two credentials: the gateway would verify one, the instance might read the other.
    let none = format!("Bearer {}.{}.", b64url(br#"{"alg":"none"}"#), b64url(b"{}"));
    for (path, headers) in [
        ("/jwt/x", vec![("authorization", bearer(&token)), ("authorization", none.clone())]),
        ("/basic/x", vec![("authorization", basic.clone()), ("authorization", basic.clone())]),
        ("/jwt/x", vec![("cookie", format!("session={token}; session=forged"))]),
        ("/jwt/x", vec![("cookie", format!("session={token}")), ("cookie", "session=x".into())]),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = get(&gw, path, &headers);
        assert_eq!(r.status, 400, "{path} {headers:?}: {}", r.body_text());
    }
    assert_eq!(backend.heads.lock().unwrap().len(), 3, "a request with two credentials passed");
    assert_eq!(gw.metric("zkgate_auth_refusals_total", "code=\"400\""), 4);
}

#[test]
fn a_rate_limit_per_identity_counts_each_verified_user_and_no_anonymous_client_spends_theirs() {
    let backend = Backend::start("web");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (bcrypt::hash("pa", 4).unwrap(), bcrypt::hash("pb", 4).unwrap());
    let htpasswd = write_file(dir.path(), "htpasswd", &format!("alice:{a}\nbob:{b}\n"));
    // /basic needs a user; /open reaches the same service without one.
    let toml = Toml::new()
        .backends("web", &[&backend])
        .section("[[route]]", "path_prefix = \"/basic\"\nservice = \"web\"\nauth = \"ops\"")
        .route_all("web")
        .section("[auth.ops]", &format!("type = \"basic\"\nhtpasswd = {htpasswd:?}"))
        .section(
            "[[rate_limit]]",
            "service = \"web\"\nper = \"identity\"\nrate = \"1/m\"\nburst = 3",
        );
    let gw = Gateway::with(toml).workers(2).admin().start();
    let basic = |user: &str, pass: &str| {
        let creds = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {creds}")
    };
    let (alice, bob) = (basic("alice", "pa"), basic("bob", "pb"));
    // Anonymous clients share one bucket of their own: they use it up…
    let open: Vec<u16> = (0..5).map(|_| get(&gw, "/open", &[]).status).collect();
    assert_eq!(open, [200, 200, 200, 429, 429]);
    // …and each user still has a whole burst, whatever worker answers.
    let statuses = |auth: &str| -> Vec<u16> {
        (0..4).map(|_| get(&gw, "/basic/x", &[("authorization", auth)]).status).collect()
    };
    assert_eq!(statuses(&alice), [200, 200, 200, 429]);
    assert_eq!(statuses(&bob), [200, 200, 200, 429]);
    // A wrong password is refused by auth before any bucket is spent.
    assert_eq!(get(&gw, "/basic/x", &[("authorization", &basic("bob", "x"))]).status, 401);
}
