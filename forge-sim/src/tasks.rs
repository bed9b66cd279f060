//! Every task one simulator runs, so that stopping it stops them all.
//!
//! Connections and the routes' work run on tasks of their own (see [`crate::exchange`] for
//! why the routes do). Shutdown must end all of them at once, hung requests and generations
//! that still have a minute to sleep included, and then know that they are gone.

use std::future::Future;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A handle on one simulator's tasks; clones share them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `work` until it ends or the simulator stops, whichever comes first.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                // Checked first, so that nothing starts once stopping has begun.
                biased;
                () = stop.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// Runs `work` on a task of its own and waits for its result, which therefore arrives
    /// even if the caller is dropped meanwhile. `None` when the simulator stopped first.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        self.spawn(async move {
            // A caller that went away no longer wants the result: nothing to do about it.
            let _ = done.send(work.await);
        });
        result.await.ok()
    }

    /// Ends every task (dropping it where it waits) without waiting for them.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Ends every task and waits until all are gone.
    pub async fn stop_and_wait(&self) {
        self.stop();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn run_gives_the_result_and_stop_ends_what_waits() {
        let tasks = Tasks::default();
        assert_eq!(tasks.run(async { 7 }).await, Some(7));
        let forever = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.run(std::future::pending::<()>()).await }
        });
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::from_secs(5), tasks.stop_and_wait())
            .await
            .expect("stopping does not wait for work that never ends");
        assert_eq!(forever.await.ok(), Some(None));
        assert_eq!(
            tasks.run(async { 8 }).await,
            None,
            "nothing runs after stop"
        );
    }
}
