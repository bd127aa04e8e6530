//! Waiting for a condition with a deadline, instead of sleeping a guess.

use std::time::Duration;

use anyhow::bail;

/// The first pause between two checks; it doubles up to [`MAX_PAUSE`], so a
/// condition that holds at once costs little and a slow one is not hammered
/// (some checks start a process).
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Checks `cond` until it returns `Ok(true)`; fails after `timeout`, naming
/// `what` and the last error `cond` returned.
pub fn wait_until<F>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> anyhow::Result<bool>,
{
    let mut poll = Poll::new(timeout);
    loop {
        match poll.check(cond()) {
            Some(pause) => std::thread::sleep(pause),
            None => return poll.outcome(what),
        }
    }
}

/// [`wait_until`] for async tests: pauses with `tokio::time::sleep`, so the
/// tasks under test keep running on a current-thread runtime (a blocking
/// sleep there would stop them).
pub async fn wait_until_async<F>(what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> anyhow::Result<bool>,
{
    let mut poll = Poll::new(timeout);
    loop {
        match poll.check(cond()) {
            Some(pause) => tokio::time::sleep(pause).await,
            None => return poll.outcome(what),
        }
    }
}

/// The schedule and the verdict shared by both waits.
struct Poll {
    deadline: std::time::Instant,
    timeout: Duration,
    pause: Duration,
    done: bool,
    last_err: Option<anyhow::Error>,
}

impl Poll {
    fn new(timeout: Duration) -> Poll {
        Poll {
            deadline: std::time::Instant::now() + timeout,
            timeout,
            pause: FIRST_PAUSE,
            done: false,
            last_err: None,
        }
    }

    /// Takes one check's result: the pause before the next check, or `None`
    /// when waiting is over (the condition held or the deadline passed).
    fn check(&mut self, r: anyhow::Result<bool>) -> Option<Duration> {
        match r {
            Ok(true) => {
                self.done = true;
                return None;
            }
            Ok(false) => {}
            Err(e) => self.last_err = Some(e),
        }
        let now = std::time::Instant::now();
        if now >= self.deadline {
            return None;
        }
        let pause = self.pause.min(self.deadline - now);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Some(pause)
    }

    fn outcome(self, what: &str) -> anyhow::Result<()> {
        if self.done {
            return Ok(());
        }
        let timeout = self.timeout;
        match self.last_err {
            Some(e) => bail!("timed out after {timeout:?} waiting for {what}; last error: {e:#}"),
            None => bail!("timed out after {timeout:?} waiting for {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_once_the_condition_holds() {
        let n = Cell::new(0);
        wait_until("the third check", Duration::from_secs(10), || {
            n.set(n.get() + 1);
            Ok(n.get() == 3)
        })
        .unwrap();
        assert_eq!(n.get(), 3);
    }

    #[test]
    fn a_timeout_names_what_and_the_last_error() {
        let n = Cell::new(0);
        let err = wait_until("the impossible", Duration::from_millis(30), || {
            n.set(n.get() + 1);
            if n.get() == 1 {
                bail!("first failure")
            }
            Ok(false)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting for the impossible"), "{err}");
        assert!(err.contains("last error: first failure"), "{err}");
        assert!(n.get() > 1, "checked again after the error");
    }

    #[test]
    fn the_async_wait_lets_other_tasks_run() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let f = flag.clone();
            // Only runs when the wait yields to the runtime.
            tokio::spawn(async move { f.store(true, std::sync::atomic::Ordering::SeqCst) });
            wait_until_async("the other task", Duration::from_secs(10), || {
                Ok(flag.load(std::sync::atomic::Ordering::SeqCst))
            })
            .await
            .unwrap();
        });
    }
}
