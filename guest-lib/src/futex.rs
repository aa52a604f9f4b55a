//! Sleeping on a word of memory until another thread or process changes it: Linux futexes,
//! the one home of vamp's futex calls (the KVM remote's doorbell, the bench's floors).
//!
//! The calls leave out `FUTEX_PRIVATE_FLAG`, so a word works whether the waker is a thread of
//! this process or another process that maps the same memory. The word is an [`AtomicU32`]:
//! the kernel compares and wakes by its address, and both sides only touch it atomically.

use core::sync::atomic::AtomicU32;
use core::time::Duration;

/// Sleeps while `word` holds `expected`, at most `timeout`; returns early when woken, on a
/// signal, or at once if the word already differs. A caller loops on its own condition: a
/// return says nothing about why it woke.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        // A timeout beyond what the kernel takes is the longest it does take.
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the word is a live, aligned AtomicU32 and `ts` a valid timespec for the call; the
    // kernel only reads the word to compare it with `expected`, then sleeps.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// Wakes at most `waiters` threads sleeping on `word`.
pub fn futex_wake(word: &AtomicU32, waiters: i32) {
    // SAFETY: FUTEX_WAKE only uses the address of a live AtomicU32; no memory is written.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, waiters) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_word_that_differs_does_not_wait() {
        let word = AtomicU32::new(1);
        let start = Instant::now();
        futex_wait(&word, 0, Duration::from_secs(60));
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn a_wake_ends_the_wait_of_another_thread() {
        let word = Arc::new(AtomicU32::new(0));
        let sleeper = {
            let word = word.clone();
            std::thread::spawn(move || {
                // Loop on the condition, as callers do: a wait may return before the store.
                while word.load(Ordering::Acquire) == 0 {
                    // The longest wait there is: only the wake ends it.
                    futex_wait(&word, 0, Duration::MAX);
                }
            })
        };
        word.store(1, Ordering::Release);
        futex_wake(&word, 1);
        let start = Instant::now();
        while !sleeper.is_finished() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the wake was lost"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        sleeper.join().unwrap();
    }
}
