//! Registry node names and data, as any registrator (or an attacker with write access to the
//! registry) may write them, through every format's parser: never a panic, and whatever is
//! accepted is an instance a worker can use (an IP literal and a port 1-65535).
#![no_main]

use libfuzzer_sys::fuzz_target;
use worker::config::Format;

fuzz_target!(|input: &[u8]| {
    // name \0 data: the node name, then its data.
    let (name, data) = match input.iter().position(|b| *b == 0) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[][..]),
    };
    let Ok(name) = std::str::from_utf8(name) else { return };
    for format in [Format::Registrator, Format::Curator, Format::Serverset, Format::Nerve] {
        for (endpoint, tls) in [(None, false), (Some("http"), false), (None, true)] {
            if let Ok(Some(instance)) = format.parse(name, data, endpoint, tls) {
                let addr: std::net::SocketAddr =
                    instance.address.parse().expect("an accepted instance is ip:port");
                assert!(addr.port() != 0 && !addr.ip().is_unspecified(), "{addr}");
            }
        }
    }
});
