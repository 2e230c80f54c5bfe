//! Unit tests of `fleet.rs`.
use super::*;

#[test]
fn a_diff_speaks_in_services_routes_and_sections() {
    let a = "[services.web]\ninstances = [\"10.0.0.1:80\"]\n[services.old]\ninstances = []\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n";
    let b = "[services.web]\ninstances = [\"10.0.0.2:80\"]\nload_balance = \"random\"\n[[route]]\npath_prefix = \"/\"\nservice = \"web\"\n[[route]]\nhost = \"api.example\"\npath_prefix = \"/v1\"\nservice = \"web\"\n[tracing]\nsample = 0.5\n";
    assert_eq!(
        diff(a, b).unwrap(),
        [
            "~ service web: instances, load_balance",
            "- service old",
            "+ route api.example/v1",
            "+ tracing"
        ]
    );
    assert!(diff(a, a).unwrap().is_empty());
}

#[test]
fn a_release_replaces_the_dynamic_sections_only() {
    let local = "[server]\nlisten = [\"127.0.0.1:1\"]\n[services.old]\ninstances = [\"127.0.0.1:2\"]\n[[route]]\npath_prefix = \"/\"\nservice = \"old\"\n";
    let release = "[services.new]\ninstances = [\"127.0.0.1:3\"]\n[[route]]\npath_prefix = \"/\"\nservice = \"new\"\n";
    let merged: toml::Table = toml::from_str(&overlay(local, release).unwrap()).unwrap();
    assert!(merged["server"].get("listen").is_some(), "the host's own section stays");
    let services = merged["services"].as_table().unwrap();
    assert!(services.contains_key("new") && !services.contains_key("old"));
    assert_eq!(merged["route"].as_array().unwrap().len(), 1);
    let e = overlay(local, "[admin]\nlisten = \"0.0.0.0:1\"\n").unwrap_err();
    assert!(e.contains("admin is not a section a release may hold"), "{e}");
    assert!(overlay(local, "[[route]\n").is_err());
}
