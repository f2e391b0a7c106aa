//! Panics in spawned work: caught at the task's edge, logged and counted
//! (`toygres_actors_task_panics_total{task}`), so that the task's bookkeeping (a scheduled
//! check's slot, a queued reconcile's in-flight mark) is settled as for any failure and the
//! next interval runs. A panic is a bug of ours or an answer we did not expect from a target;
//! either way one instance must not go silently unchecked because of it.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// A panic caught at a task's edge, with its (redacted) message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Panicked(pub String);

/// Run `work`; a panic inside it becomes `Err` with its message.
pub async fn caught<F: Future>(task: &'static str, work: F) -> Result<F::Output, Panicked> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(out) => Ok(out),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let message = crate::redact::redact_error(&message);
            crate::metrics::task_panicked(task);
            tracing::error!(task, panic = %message, "a task panicked; its work is retried at its next turn");
            Err(Panicked(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_an_error_and_the_caller_goes_on() {
        let r: Result<(), Panicked> = caught("test", async { panic!("boom") }).await;
        assert_eq!(r, Err(Panicked("boom".to_string())));
        assert_eq!(caught("test", async { 7 }).await, Ok(7));
    }
}
