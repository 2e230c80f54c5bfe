//! `zkgate config status [--wait REL]`: per host what it serves, what it should, the release
//! of each of its workers, when its last apply reached them all, its last refusal; with
//! `--wait`, exit 0 once every host and every worker serves the release.

use worker::fleet::store::{HostState, Rollout, Store};

/// Prints the fleet's state, once or (with `wait`) as soon as every host serves that release
/// or `timeout` passed: exit 0 done, 1 not within the timeout.
pub async fn status(
    store: &Store,
    wait: Option<String>,
    timeout: std::time::Duration,
) -> anyhow::Result<u8> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (stable, _) = store.channel("stable").await?;
        let (rollout, _) = store.rollout().await?;
        let hosts = store.hosts().await?;
        let done = wait
            .as_ref()
            .is_none_or(|w| !hosts.is_empty() && hosts.iter().all(|(_, h)| h.serves(w)));
        if done || tokio::time::Instant::now() >= deadline {
            println!("stable\t{}", stable.as_deref().unwrap_or("-"));
            for (name, h) in &hosts {
                let target = Rollout::target_for(rollout.as_ref(), name, stable.as_deref());
                println!("{}", host_line(name, h, target));
            }
            return Ok(if done { 0 } else { 1 });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// One host in `status`: what it serves, what it should, each worker's release, when its
/// last apply reached every worker, its last refusal.
fn host_line(name: &str, h: &HostState, target: Option<&str>) -> String {
    let file = |r: Option<&str>| r.unwrap_or("its file").to_string();
    let workers: Vec<String> = h.workers.iter().map(|w| file(w.as_deref())).collect();
    let applied = match h.applied_ms {
        0 => "-".to_string(),
        ms => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
    };
    let rejected = h.rejected.as_ref().map(|(id, why)| format!("\trejected {id}: {why}"));
    format!(
        "{name}\tserving {}\ttarget {}\tworkers {}\tapplied {applied}{}",
        file(h.serving.as_deref()),
        file(target),
        workers.join(","),
        rejected.unwrap_or_default()
    )
}
