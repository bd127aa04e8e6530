//! Blocking work (a synced write, `nft`, `ip`) kept off the async workers.

/// The runtime shut down before blocking work it was given could run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the agent is shutting down: the work was not done")]
pub struct ShuttingDown;

/// Runs `f` on tokio's blocking pool and returns what it returns, so a
/// system call that may take long (an fsync, a process run to completion)
/// never stalls the tasks that share an async worker with the caller.
///
/// A panic in `f` resumes in the caller, as if `f` had been called in
/// place. Hold no `std::sync::Mutex` guard across the `.await`: readers on
/// the async workers would wait on it for as long as `f` runs.
pub async fn blocking<T, F>(f: F) -> Result<T, ShuttingDown>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => Ok(v),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ShuttingDown),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_another_thread_and_returns_its_result() {
        let caller = std::thread::current().id();
        let ran_on = blocking(|| std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, caller);
    }

    #[tokio::test]
    async fn a_panic_resumes_in_the_caller() {
        let task = tokio::spawn(blocking(|| -> u8 { panic!("in the pool") }));
        let err = task.await.unwrap_err();
        assert!(err.is_panic());
        let payload = err.into_panic();
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"in the pool"));
    }
}
