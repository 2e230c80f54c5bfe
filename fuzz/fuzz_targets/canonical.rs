//! Request paths as a hostile client spells them: the canonical form is a fixed point
//! (canonicalising it again changes nothing, under every setting), it always starts with '/'
//! and holds no dot-segment, and what the router forwards for a path it routes is the
//! canonical path itself — the reading every decision made is the one the instance receives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::config::{EscapedSlashes, HeaderRouting, PathParameters, PathRules, RouteRule};
use worker::http::router::Router;
use worker::http::target::canonical;

fuzz_target!(|input: &[u8]| {
    let Some((&setting, path)) = input.split_first() else { return };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let rules = PathRules {
        merge_slashes: setting & 1 == 0,
        escaped_slashes: [EscapedSlashes::Reject, EscapedSlashes::Keep, EscapedSlashes::Unescape]
            [usize::from(setting >> 1) % 3],
        path_parameters: [
            PathParameters::RejectAmbiguous,
            PathParameters::Reject,
            PathParameters::Strip,
            PathParameters::Keep,
        ][usize::from(setting >> 3) % 4],
    };
    let Ok(once) = canonical(path, &rules) else { return };
    assert!(once.starts_with('/'), "{path:?} -> {once:?}");
    let twice = canonical(&once, &rules).expect("a canonical path reads one way");
    assert_eq!(once, twice, "not a fixed point: {path:?}");
    // A '?' here is path data (a request's query never reaches `canonical`).
    for seg in once.split('/') {
        assert!(seg != "." && seg != "..", "dot-segment left in {once:?} from {path:?}");
    }
    if rules.merge_slashes {
        assert!(!once.contains("//"), "{once:?}");
    }
    let Ok(uri) = http::Uri::try_from(path) else { return };
    let rule = RouteRule::to("/", "a");
    let router = Router::new(&HeaderRouting::default(), &[rule]).with_paths(rules);
    if let Ok(target) = router.route(&uri, &http::HeaderMap::new()) {
        let canonical_uri = canonical(uri.path(), &rules).expect("routed, so readable");
        assert_eq!(target.path.path(), canonical_uri, "forwarded another reading of {path:?}");
    }
});
