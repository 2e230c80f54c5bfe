//! `zkgate config rollout --canary K`: a release goes to K hosts first, bakes, and becomes
//! `stable` — or aborts by itself when its canaries answer worse than the other hosts over the
//! same window. The state lives in ZooKeeper's `rollout` node (see `worker::fleet::store`), so
//! this process deciding can die: the rollout then waits for `promote` or `abort`.

use std::time::Duration;

use anyhow::bail;
use worker::fleet::store::{Change, HostState, Rollout, Store};

/// How a staged rollout goes.
pub struct Plan {
    /// Canary hosts.
    pub k: usize,
    /// Only hosts with this `name=value` label are canaries.
    pub label: Option<String>,
    /// Bake time.
    pub bake: Duration,
    /// How much worse the canaries' 5xx share may be.
    pub max_5xx_increase: f64,
    /// How much worse their no-route (404) share may be.
    pub max_404_increase: f64,
    /// How many times the others' p99 theirs may be.
    pub max_p99_ratio: f64,
    /// Shares of the hosts (percent) the release extends to after the canaries, each baked
    /// in turn; 100 (or none left) ends in `stable`.
    pub stages: Vec<u32>,
}

/// Fewer requests than this on either side say nothing yet.
const MIN_REQUESTS: u64 = 20;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the rollout, watches it bake, then promotes or aborts it. Exit 0 promoted, 2
/// aborted on its own.
pub async fn staged(
    store: &Store,
    release: &str,
    plan: Plan,
    (who, why): (&str, &str),
) -> anyhow::Result<u8> {
    store.manifest(release).await?;
    let (current, version) = store.rollout().await?;
    if let Some(r) = current.filter(in_progress) {
        bail!("rollout of {} in progress ({}): promote or abort it first", r.release, r.state);
    }
    let hosts = store.hosts().await?;
    let wanted = plan.label.as_deref().and_then(|l| l.split_once('='));
    let mut eligible: Vec<&str> = hosts
        .iter()
        .filter(|(_, h)| wanted.is_none_or(|(k, v)| h.labels.get(k).map(String::as_str) == Some(v)))
        .map(|(name, _)| name.as_str())
        .collect();
    eligible.sort();
    if eligible.len() < plan.k || plan.k == 0 {
        bail!("--canary {}: {} eligible hosts", plan.k, eligible.len());
    }
    // The canaries of each stage: K hosts, then each stage's share of the eligible ones (at
    // least as many as before); a last stage of 100% is the flip of stable itself.
    let mut stages = vec![plan.k];
    for p in &plan.stages {
        let n = (eligible.len() * *p as usize).div_ceil(100).max(plan.k);
        if *p < 100 && n > *stages.last().unwrap_or(&0) && n < eligible.len() {
            stages.push(n);
        }
    }
    let (from, _) = store.channel("stable").await?;
    let mut version = version;
    for (i, n) in stages.iter().enumerate() {
        let canary: Vec<String> = eligible[..*n].iter().map(|h| h.to_string()).collect();
        let rollout = Rollout {
            release: release.to_string(),
            from: from.clone(),
            canary: canary.clone(),
            state: "canary".into(),
            started_ms: now_ms(),
            bake_ms: plan.bake.as_millis() as u64,
            max_5xx_increase: plan.max_5xx_increase,
            max_404_increase: plan.max_404_increase,
            max_p99_ratio: plan.max_p99_ratio,
        };
        let verb = if i == 0 {
            "canary".to_string()
        } else {
            format!("stage {n} of {} hosts", eligible.len())
        };
        store.set_rollout(&rollout, version, Change { who, verb: &verb, why }).await?;
        println!(
            "canary: {} serve {release} for {}",
            canary.join(" "),
            humantime::format_duration(plan.bake)
        );
        match bake(store, &rollout, plan.bake).await? {
            Baked::Passed => {}
            Baked::Regressed(why) => {
                finish(store, "aborted", Change { who, verb: "abort", why: &why }).await?;
                println!("aborted: {why}");
                return Ok(2);
            }
            Baked::Ended(state) => {
                println!("{state} by hand meanwhile");
                return Ok(if state == "promoted" { 0 } else { 2 });
            }
        }
        version = store.rollout().await?.1;
    }
    let (_, version) = store.channel("stable").await?;
    store
        .flip("stable", (release, version), Change { who, verb: "promote", why: "bake passed" })
        .await?;
    finish(store, "promoted", Change { who, verb: "promoted", why: "bake passed" }).await?;
    println!("promoted: stable -> {release}");
    Ok(0)
}

/// How a stage's bake ended.
enum Baked {
    /// It baked its time without a regression.
    Passed,
    /// Its canaries answered worse than the other hosts: why.
    Regressed(String),
    /// Someone promoted or aborted it by hand meanwhile.
    Ended(String),
}

/// Watches one stage bake for `bake` of unpaused time, judging it each second (a paused
/// stage is neither judged nor timed, nor is one while ZooKeeper cannot be reached: the bake
/// goes on where it was once it is back). Each host's counts are taken from its first report
/// after the stage started (a report published before it would date the window wrong), and
/// again after the host restarted (its counts start over).
async fn bake(store: &Store, rollout: &Rollout, bake: Duration) -> anyhow::Result<Baked> {
    let mut baseline: Vec<(String, HostState)> = Vec::new();
    let mut left = bake;
    let mut outage = false;
    while !left.is_zero() {
        let step = left.min(Duration::from_secs(1));
        tokio::time::sleep(step).await;
        let Some((state, now)) = look(store).await else {
            if !outage {
                println!("zookeeper unreachable: the bake waits, untimed, until it is back");
                outage = true;
            }
            continue;
        };
        if std::mem::take(&mut outage) {
            println!(
                "zookeeper back: the bake goes on ({} left)",
                humantime::format_duration(left)
            );
        }
        match state.map(|r| r.state) {
            Some(state) if state == "paused" => continue,
            Some(state) if state != "canary" => return Ok(Baked::Ended(state)),
            _ => {}
        }
        left -= step;
        if let Some(why) = refused(&now, rollout) {
            return Ok(Baked::Regressed(why));
        }
        for (name, h) in &now {
            let restarted = |b: &HostState| (0..5).any(|c| h.answered[c] < b.answered[c]);
            match baseline.iter_mut().find(|(n, _)| n == name) {
                Some((_, b)) if restarted(b) => *b = h.clone(),
                Some(_) => {}
                None if h.at_ms >= rollout.started_ms => baseline.push((name.clone(), h.clone())),
                None => {}
            }
        }
        let judged: Vec<(String, HostState)> =
            now.into_iter().filter(|(n, _)| baseline.iter().any(|(b, _)| b == n)).collect();
        if let Some(why) = regression(&baseline, &judged, &rollout.canary, rollout) {
            return Ok(Baked::Regressed(why));
        }
    }
    Ok(Baked::Passed)
}

/// How long one look at the tree may take before ZooKeeper counts as unreachable.
const LOOK_TIMEOUT: Duration = Duration::from_secs(3);

/// The rollout's state and every host's report, or `None` while ZooKeeper cannot be reached
/// (a new session is opened for the next look).
async fn look(store: &Store) -> Option<(Option<Rollout>, Vec<(String, HostState)>)> {
    let read = async { anyhow::Ok((store.rollout().await?.0, store.hosts().await?)) };
    match tokio::time::timeout(LOOK_TIMEOUT, read).await {
        Ok(Ok(seen)) => Some(seen),
        _ => {
            let _ = tokio::time::timeout(LOOK_TIMEOUT, store.reconnect()).await;
            None
        }
    }
}

/// A canary that refused the release (its checks failed there) or reverted it (its workers
/// crash-looped): why, for the abort.
fn refused(now: &[(String, HostState)], rollout: &Rollout) -> Option<String> {
    now.iter().find_map(|(name, h)| match &h.rejected {
        Some((id, why)) if *id == rollout.release && rollout.canary.contains(name) => {
            Some(format!("canary {name} refused {id}: {why}"))
        }
        _ => None,
    })
}

/// What one side (the canaries, or the other hosts) answered in the window.
#[derive(Default)]
struct Side {
    total: u64,
    errors: u64,
    unrouted: u64,
    durations: Vec<u64>,
    timed: u64,
}

impl Side {
    /// Adds what `h` answered since `before`.
    fn add(&mut self, h: &HostState, before: Option<&HostState>) {
        let zero = HostState::default();
        let b = before.unwrap_or(&zero);
        self.total += (0..5).map(|c| h.answered[c].saturating_sub(b.answered[c])).sum::<u64>();
        self.errors += h.answered[4].saturating_sub(b.answered[4]);
        self.unrouted += h.unrouted.saturating_sub(b.unrouted);
        self.timed += h.timed.saturating_sub(b.timed);
        self.durations.resize(h.durations.len().max(self.durations.len()), 0);
        for (i, n) in h.durations.iter().enumerate() {
            self.durations[i] += n.saturating_sub(b.durations.get(i).copied().unwrap_or(0));
        }
    }

    fn share(&self, n: u64) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            n as f64 / self.total as f64
        }
    }

    /// The upper bound of the bucket holding the 99th percentile (seconds), with enough
    /// timed requests to say (beyond the last bucket: its bound).
    fn p99(&self) -> Option<f64> {
        if self.timed < MIN_TIMED {
            return None;
        }
        let want = (self.timed as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.durations.iter().enumerate() {
            seen += n;
            if seen >= want {
                return worker::metrics::BUCKETS.get(i).copied();
            }
        }
        worker::metrics::BUCKETS.last().copied()
    }
}

/// Fewer timed requests than this on either side give no p99 to compare.
const MIN_TIMED: u64 = 100;

/// The canaries' answers against the other hosts' since `baseline`: `Some(why)` when their
/// 5xx share or no-route share is worse by more than the rollout allows, or their p99 more
/// than `max_p99_ratio` times the others' (and above 100 ms) — with enough requests to say.
fn regression(
    baseline: &[(String, HostState)],
    now: &[(String, HostState)],
    canary: &[String],
    rollout: &Rollout,
) -> Option<String> {
    let (mut c, mut o) = (Side::default(), Side::default());
    for (name, h) in now {
        let before = baseline.iter().find(|(n, _)| n == name).map(|(_, b)| b);
        match canary.contains(name) {
            true => c.add(h, before),
            false => o.add(h, before),
        }
    }
    if c.total < MIN_REQUESTS {
        return None;
    }
    let (totals, max) = ((c.total, o.total), rollout.max_5xx_increase);
    let (cs, os) = (c.share(c.errors), o.share(o.errors));
    if cs - os > max {
        return Some(format!(
            "canary 5xx share {cs:.3} over {} requests vs {os:.3} over {} on the other hosts (allowed +{max})",
            totals.0, totals.1
        ));
    }
    let (cu, ou, max) = (c.share(c.unrouted), o.share(o.unrouted), rollout.max_404_increase);
    if cu - ou > max {
        return Some(format!(
            "canary no-route share {cu:.3} over {} requests vs {ou:.3} over {} on the other hosts (allowed +{max})",
            totals.0, totals.1
        ));
    }
    let (cp, op) = (c.p99()?, o.p99()?);
    (cp > 0.1 && cp > op * rollout.max_p99_ratio).then(|| {
        format!(
            "canary p99 under {cp}s vs under {op}s on the other hosts (allowed {}x)",
            rollout.max_p99_ratio
        )
    })
}

/// Ends the rollout in progress with `state`, its audit entry recording why.
async fn finish(store: &Store, state: &str, audit: Change<'_>) -> anyhow::Result<()> {
    let (current, version) = store.rollout().await?;
    let Some(mut r) = current.filter(in_progress) else {
        bail!("no rollout in progress");
    };
    r.state = state.to_string();
    store.set_rollout(&r, version, audit).await?;
    Ok(())
}

/// `promote`: the rollout's release becomes stable now.
pub async fn promote(store: &Store, who: &str) -> anyhow::Result<()> {
    let (current, _) = store.rollout().await?;
    let Some(r) = current.filter(in_progress) else {
        bail!("no rollout in progress");
    };
    let (_, version) = store.channel("stable").await?;
    store
        .flip("stable", (&r.release, version), Change { who, verb: "promote", why: "by hand" })
        .await?;
    finish(store, "promoted", Change { who, verb: "promoted", why: "by hand" }).await?;
    println!("promoted: stable -> {}", r.release);
    Ok(())
}

/// Whether a rollout is still under way (baking, or paused).
fn in_progress(r: &Rollout) -> bool {
    r.state == "canary" || r.state == "paused"
}

/// `pause` (from `canary`) or `resume` (from `paused`): the canaries keep the release while
/// paused, and the deciding command neither judges nor times the bake.
pub async fn hold(store: &Store, (from, to): (&str, &str), who: &str) -> anyhow::Result<()> {
    let (current, version) = store.rollout().await?;
    let Some(mut r) = current.filter(|r| r.state == from) else {
        bail!("no rollout is {from}");
    };
    r.state = to.to_string();
    let verb = if to == "paused" { "pause" } else { "resume" };
    store.set_rollout(&r, version, Change { who, verb, why: "by hand" }).await?;
    println!("{verb}d: {}", r.release);
    Ok(())
}

/// `abort`: the canaries go back to stable.
pub async fn abort(store: &Store, (who, why): (&str, &str)) -> anyhow::Result<()> {
    finish(store, "aborted", Change { who, verb: "abort", why }).await?;
    println!("aborted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, answered: [u64; 5]) -> (String, HostState) {
        (name.to_string(), HostState { answered, ..Default::default() })
    }

    #[test]
    fn canaries_regress_only_on_enough_requests_and_a_worse_share() {
        let rollout = Rollout {
            release: "r".into(),
            from: None,
            canary: vec![],
            state: "canary".into(),
            started_ms: 0,
            bake_ms: 0,
            max_5xx_increase: 0.05,
            max_404_increase: 0.05,
            max_p99_ratio: 3.0,
        };
        let base = vec![host("a", [0; 5]), host("b", [0; 5])];
        let canary = vec!["a".to_string()];
        let bad = vec![host("a", [0, 50, 0, 0, 50]), host("b", [0, 100, 0, 0, 0])];
        let why = regression(&base, &bad, &canary, &rollout).unwrap();
        assert!(why.contains("0.500 over 100 requests"), "{why}");
        let few = vec![host("a", [0, 5, 0, 0, 5]), host("b", [0, 100, 0, 0, 0])];
        assert!(regression(&base, &few, &canary, &rollout).is_none(), "too few to say");
        let even = vec![host("a", [0, 90, 0, 0, 10]), host("b", [0, 90, 0, 0, 10])];
        assert!(regression(&base, &even, &canary, &rollout).is_none(), "as bad as the others");
        // No route for a fifth of the canary's requests.
        let mut lost = host("a", [0, 80, 0, 20, 0]);
        lost.1.unrouted = 20;
        let why = regression(&base, &[lost, host("b", [0, 100, 0, 0, 0])], &canary, &rollout);
        assert!(why.unwrap().contains("no-route share 0.200"));
        // Slow: the canary's p99 in the 1 s bucket, the others' in 25 ms.
        let timed = |bucket: usize| {
            let mut h = host("x", [0, 200, 0, 0, 0]).1;
            h.durations = vec![0; worker::metrics::BUCKETS.len()];
            h.durations[bucket] = 200;
            h.timed = 200;
            h
        };
        let slow = vec![("a".to_string(), timed(9)), ("b".to_string(), timed(4))];
        let why = regression(&base, &slow, &canary, &rollout).unwrap();
        assert!(why.contains("p99 under 1s vs under 0.025s"), "{why}");
        let alike = vec![("a".to_string(), timed(4)), ("b".to_string(), timed(4))];
        assert!(regression(&base, &alike, &canary, &rollout).is_none());
    }
}
