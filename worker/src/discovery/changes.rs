//! The most recent registry changes a worker applied, for the admin API and its dashboard: the
//! same lines the log gets, with the time they were applied.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Changes kept.
const KEPT: usize = 50;

/// A bounded, newest-last list of applied changes.
#[derive(Debug, Default)]
pub struct Changes(Mutex<VecDeque<(u64, String)>>);

impl Changes {
    /// Records one change line now.
    pub fn push(&self, line: &str) {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        if let Ok(mut q) = self.0.lock() {
            if q.len() == KEPT {
                q.pop_front();
            }
            q.push_back((ms, line.to_string()));
        }
    }

    /// The changes kept, oldest first: (Unix ms, line).
    pub fn recent(&self) -> Vec<(u64, String)> {
        self.0.lock().map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_changes_are_kept() {
        let c = Changes::default();
        for i in 0..KEPT + 5 {
            c.push(&format!("change {i}"));
        }
        let recent = c.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].1, "change 5");
        assert_eq!(recent.last().unwrap().1, format!("change {}", KEPT + 4));
    }
}
