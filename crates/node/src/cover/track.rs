//! The state cover traffic shares with the packet shell: the loops in
//! flight (registered by cover when it sends one, answered by the shell
//! when one comes back). Nothing else flows from the shell to cover: what
//! peers send never steers cover's classes or rates.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mixnn_sphinx::ReplayTag;

/// Loops in flight at most (the table must not grow without bound when
/// loops are lost faster than they expire).
pub const MAX_LOOPS: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The loops this node sent, by the replay tag their last hop (this node)
/// will see: a returning loop is recognised by it.
#[derive(Debug)]
pub struct LoopTracker {
    sent: Mutex<HashMap<[u8; 16], Instant>>,
    max: usize,
}

/// The tracker holds [`MAX_LOOPS`] loops already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyLoops;

impl Default for LoopTracker {
    fn default() -> Self {
        LoopTracker::new(MAX_LOOPS)
    }
}

impl LoopTracker {
    /// A tracker of at most `max` loops in flight.
    pub fn new(max: usize) -> Self {
        LoopTracker {
            sent: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Records a loop sent at `now`. Done before sending: the loop can be
    /// back before the send returns.
    pub fn register(&self, tag: &ReplayTag, now: Instant) -> Result<(), TooManyLoops> {
        let mut sent = lock(&self.sent);
        if sent.len() >= self.max {
            return Err(TooManyLoops);
        }
        sent.insert(tag.0, now);
        Ok(())
    }

    /// Forgets a loop that could not be sent.
    pub fn forget(&self, tag: &ReplayTag) {
        lock(&self.sent).remove(&tag.0);
    }

    /// A loop with `tag` came back: true (and forgotten) if it is one of
    /// ours still in flight.
    pub fn returned(&self, tag: &ReplayTag) -> bool {
        lock(&self.sent).remove(&tag.0).is_some()
    }

    /// Forgets loops sent `timeout` or longer before `now`; returns how many
    /// (they are lost).
    pub fn expire(&self, now: Instant, timeout: Duration) -> usize {
        let mut sent = lock(&self.sent);
        let before = sent.len();
        sent.retain(|_, at| now.saturating_duration_since(*at) < timeout);
        before - sent.len()
    }

    /// Loops in flight.
    pub fn len(&self) -> usize {
        lock(&self.sent).len()
    }

    /// No loop in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_returns_once_and_a_full_tracker_refuses() {
        let t = LoopTracker::new(2);
        let now = Instant::now();
        let (a, b, c) = (ReplayTag([1; 16]), ReplayTag([2; 16]), ReplayTag([3; 16]));
        t.register(&a, now).unwrap();
        t.register(&b, now).unwrap();
        assert_eq!(t.register(&c, now), Err(TooManyLoops));
        assert!(t.returned(&a));
        assert!(!t.returned(&a), "a loop is counted back once");
        assert!(!t.returned(&c), "a loop never sent is not ours");
        t.forget(&b);
        assert!(t.is_empty());
    }

    #[test]
    fn lost_loops_expire() {
        let t = LoopTracker::default();
        let start = Instant::now();
        t.register(&ReplayTag([1; 16]), start).unwrap();
        assert_eq!(
            t.expire(start + Duration::from_secs(1), Duration::from_secs(30)),
            0
        );
        assert_eq!(
            t.expire(start + Duration::from_secs(30), Duration::from_secs(30)),
            1
        );
        assert!(t.is_empty());
    }
}
