//! `zkgate config push` refuses what a host could not serve: 50 releases mutated from the
//! dynamic sections of the project's own `gateway.toml` (a value of the wrong type, a key no
//! section has, a route without its service, broken TOML) are each refused with the key named, and
//! nothing of them is stored: the history holds the one valid push.

mod support;

use support::fleet::{config, host, push};
use support::zk::Zk;
use support::{write_file, Backend};

/// A step into a TOML document.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The dynamic sections of gateway.toml, with the `[services.demo]` keys it shows commented
/// out taken in (the policies an operator would release).
fn base_release() -> toml::Table {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    let keys = ["load_balance", "health_check", "max_requests", "slow_start"];
    let mut out = String::new();
    let mut in_demo = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_demo = line.trim() == "[services.demo]";
        }
        let taken = line
            .strip_prefix("# ")
            .filter(|l| in_demo && keys.iter().any(|k| l.starts_with(&format!("{k} ="))));
        out += taken.unwrap_or(line);
        out += "\n";
    }
    let table: toml::Table = toml::from_str(&out).unwrap();
    let dynamic = ["services", "route", "rate_limit", "auth", "header_routing", "tracing"];
    table.into_iter().filter(|(k, _)| dynamic.contains(&k.as_str())).collect()
}

/// Every scalar's path.
fn leaves(v: &toml::Value, at: Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let mut p = at.clone();
                p.push(Seg::Key(k.clone()));
                leaves(v, p, out);
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let mut p = at.clone();
                p.push(Seg::Index(i));
                leaves(v, p, out);
            }
        }
        _ => out.push(at),
    }
}

fn get_mut<'a>(v: &'a mut toml::Value, path: &[Seg]) -> &'a mut toml::Value {
    path.iter().fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()).unwrap(),
        Seg::Index(i) => v.get_mut(*i).unwrap(),
    })
}

/// Mutation `k` of `base`: the release's text, and what was done.
fn mutate(base: &toml::Table, paths: &[Vec<Seg>], k: usize) -> (String, String) {
    let mut doc = toml::Value::Table(base.clone());
    let path = &paths[k % paths.len()];
    let name = |p: &[Seg]| {
        p.iter()
            .map(|s| match s {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".")
    };
    let what = match k % 4 {
        0 | 1 => {
            let leaf = get_mut(&mut doc, path);
            *leaf = match (leaf.clone(), k % 8 < 4) {
                (toml::Value::String(_), true) => toml::Value::Integer(7),
                (toml::Value::String(_), false) => toml::Value::Boolean(true),
                (toml::Value::Boolean(_), _) => toml::Value::String("yes".into()),
                (_, true) => toml::Value::String("seven".into()),
                (_, false) => toml::Value::Array(vec![]),
            };
            format!("{} of the wrong type", name(path))
        }
        2 => {
            // A key no section has, beside the leaf (in the nearest table).
            let table_at =
                (0..=path.len()).rev().find(|n| get_mut(&mut doc, &path[..*n]).is_table()).unwrap();
            let table = get_mut(&mut doc, &path[..table_at]).as_table_mut().unwrap();
            table.insert(format!("bogus_{k}"), toml::Value::Integer(1));
            format!("bogus_{k} in {}", name(&path[..table_at]))
        }
        _ if k % 8 == 3 => {
            // (A route to a service no section names is no error: it may be discovered.)
            let route = doc["route"][0].as_table_mut().unwrap();
            route.remove("service");
            "a route without its service".to_string()
        }
        _ => {
            let text = toml::to_string(&doc).unwrap();
            return (format!("{text}\nbroken_{k} = = =\n"), "broken TOML".into());
        }
    };
    (toml::to_string(&doc).unwrap(), what)
}

#[test]
fn fifty_releases_mutated_from_gateway_toml_are_refused_at_push_and_none_is_stored() {
    let zk = Zk::standalone();
    let good = Backend::start("good");
    let gw = host(&zk, "h1", &good);
    assert_eq!(config(&gw, &["init"]).0, 0);
    let dir = tempfile::tempdir().unwrap();
    let base = base_release();
    let text = toml::to_string(&base).unwrap();
    let valid = push(&gw, &write_file(dir.path(), "base.toml", &text), "the file's own sections");
    let mut paths = Vec::new();
    leaves(&toml::Value::Table(base.clone()), Vec::new(), &mut paths);
    assert!(paths.len() >= 12, "{} leaves in {text}", paths.len());
    for k in 0..50 {
        let (release, what) = mutate(&base, &paths, k);
        let file = write_file(dir.path(), &format!("m{k}.toml"), &release);
        let (code, out, err) = config(&gw, &["push", file.to_str().unwrap(), "-m", "fuzz"]);
        assert_eq!(code, 1, "mutation {k} ({what}) was stored: {out}\n{release}");
        assert!(err.contains("refused"), "mutation {k} ({what}): {err}");
    }
    let (_, history, _) = config(&gw, &["history"]);
    let pushes: Vec<&str> = history.lines().filter(|l| l.contains("\tpush\t")).collect();
    assert_eq!(pushes.len(), 1, "{history}");
    assert!(pushes[0].contains(&valid), "{history}");
}
