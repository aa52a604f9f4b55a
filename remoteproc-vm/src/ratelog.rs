//! Rate-limited logging, the one idiom for every log line a remote (its firmware, resource
//! table, proxy requests, crashes) can trigger: each call site of `warn_limited!` logs at
//! most [`LOG_BURST`] lines per [`LOG_WINDOW`], and says how many it suppressed when it
//! speaks again, so a hostile remote cannot flood the host's log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may log per window.
pub const LOG_BURST: u32 = 10;
/// The window over which [`LOG_BURST`] lines are allowed.
pub const LOG_WINDOW: Duration = Duration::from_secs(1);

/// The budget of one call site: when its window began, lines logged in it, lines suppressed
/// since the last one logged.
#[derive(Debug)]
pub struct LogBudget(Mutex<Option<(Instant, u32, u64)>>);

impl LogBudget {
    /// A fresh budget (usable in a `static`).
    pub const fn new() -> Self {
        LogBudget(Mutex::new(None))
    }

    /// `Some(suppressed)` when a line may be logged now (with the count suppressed before it),
    /// `None` when it must be dropped.
    pub fn take(&self, now: Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used, suppressed) = state.get_or_insert((now, 0, 0));
        if now.saturating_duration_since(*start) >= LOG_WINDOW {
            *start = now;
            *used = 0;
        }
        if *used < LOG_BURST {
            *used += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

/// `log::warn!`, limited per call site (see the module docs).
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static BUDGET: $crate::ratelog::LogBudget = $crate::ratelog::LogBudget::new();
        match BUDGET.take(std::time::Instant::now()) {
            Some(0) => log::warn!($($arg)*),
            Some(n) => log::warn!("{} ({n} similar lines suppressed)", format_args!($($arg)*)),
            None => {}
        }
    }};
}
pub(crate) use warn_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_and_the_suppressed_counted() {
        let budget = LogBudget::new();
        let t0 = Instant::now();
        for _ in 0..LOG_BURST {
            assert_eq!(budget.take(t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(budget.take(t0), None);
        }
        assert_eq!(budget.take(t0 + LOG_WINDOW), Some(1000));
        assert_eq!(budget.take(t0 + LOG_WINDOW), Some(0));
    }
}
