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
            if let Ok(worker::discovery::formats::Node::Accepted(instance)) =
                format.parse(name, data, endpoint, tls)
            {
                match instance.address.parse::<std::net::SocketAddr>() {
                    Ok(addr) => {
                        let ip = addr.ip().to_canonical();
                        assert!(
                            addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast(),
                            "{addr}"
                        );
                    }
                    Err(_) => {
                        let (host, port) = instance.address.rsplit_once(':').expect("host:port");
                        assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "{}", instance.address);
                        assert!(
                            host.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                            "{}",
                            instance.address
                        );
                        assert!(host.parse::<std::net::IpAddr>().is_err(), "{}", instance.address);
                    }
                }
            }
        }
    }
});
