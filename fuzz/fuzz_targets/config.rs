//! gateway.toml as an operator (or a typo) may write it: the typed configuration either loads
//! or is refused with an error, never a panic, and what loads respects its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = toml::from_str::<worker::config::Config>(text) {
        assert!(config.server.worker_timeout.as_secs() >= 2);
        assert!(config.server.shutdown_timeout.as_secs() <= 3600);
        assert!((1..=65535).contains(&config.server.backlog));
        for (name, _) in &config.services {
            let _ = config.is_own_address(name);
        }
    }
});
