//! One scrape's view of the region: the slots that have had a worker and the services the name
//! table holds, with what every family of series is made of (sums over the slots, a counter
//! or a histogram per service), so each family's renderer is a few lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Metrics, BUCKETS, OTHER};
use crate::host::region::{ServiceStats, WorkerStats};

/// A family of series: its name and its help (empty: the header was written already).
pub(super) type Family = (&'static str, &'static str);

/// What a per-service counter reads in one slot.
pub(super) type Count = fn(&ServiceStats) -> u64;

/// A per-service histogram's cells in one slot: buckets, count, sum in microseconds.
pub(super) type Cells<'a> = (&'a [AtomicU64; BUCKETS.len()], &'a AtomicU64, &'a AtomicU64);

/// The slots and services one scrape reads.
pub(super) struct Scrape {
    /// Slots that have had a worker (retired ones too: their counts still add to totals).
    pub workers: Vec<(usize, &'static WorkerStats)>,
    /// Claimed service rows with their names, then `_other`.
    pub names: Vec<(usize, String)>,
}

impl Scrape {
    pub fn new(m: &Metrics) -> Scrape {
        let workers = m
            .region
            .workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.pid.load(Ordering::Relaxed) != 0)
            .collect();
        Scrape { workers, names: m.host.service_names(OTHER) }
    }

    /// A counter summed over every slot.
    pub fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|(_, w)| f(w)).sum()
    }

    /// Slots still in service (per-slot series list only these).
    pub fn live(&self) -> impl Iterator<Item = &(usize, &'static WorkerStats)> {
        self.workers.iter().filter(|(_, w)| !w.is_retired())
    }

    /// One line per service whose count is not zero; `help` empty: the family's header was
    /// written already, `outcome` non-empty: an `outcome` label.
    pub fn service_counter(
        &self,
        out: &mut String,
        (metric, help): Family,
        outcome: &str,
        read: Count,
    ) {
        if !help.is_empty() {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        }
        for (i, name) in &self.names {
            let n = self.sum(|w| read(&w.services[*i]));
            if n == 0 {
                continue;
            }
            let name = escape(name);
            let _ = match outcome {
                "" => writeln!(out, "{metric}{{service=\"{name}\"}} {n}"),
                o => writeln!(out, "{metric}{{service=\"{name}\",outcome=\"{o}\"}} {n}"),
            };
        }
    }

    /// A histogram per service that has observations.
    pub fn service_histogram(
        &self,
        out: &mut String,
        (metric, help): Family,
        cells: fn(&ServiceStats) -> Cells<'_>,
    ) {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} histogram");
        for (i, name) in &self.names {
            let count = self.sum(|w| cells(&w.services[*i]).1.load(Ordering::Relaxed));
            if count == 0 {
                continue;
            }
            let name = escape(name);
            let mut cumulative = 0;
            for (b, le) in BUCKETS.iter().enumerate() {
                cumulative += self.sum(|w| cells(&w.services[*i]).0[b].load(Ordering::Relaxed));
                let _ =
                    writeln!(out, "{metric}_bucket{{service=\"{name}\",le=\"{le}\"}} {cumulative}");
            }
            let micros = self.sum(|w| cells(&w.services[*i]).2.load(Ordering::Relaxed));
            let _ = writeln!(
                out,
                "{metric}_bucket{{service=\"{name}\",le=\"+Inf\"}} {count}\n{metric}_sum{{service=\"{name}\"}} {}\n{metric}_count{{service=\"{name}\"}} {count}",
                micros as f64 / 1e6
            );
        }
    }
}

/// A label value as Prometheus' text format wants it.
pub(super) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
