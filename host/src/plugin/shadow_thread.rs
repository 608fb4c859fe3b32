//! The thread shadow calls run on: a candidate in shadow costs the request path a copy of
//! what the candidate reads and a push onto a queue, never its calls.
//!
//! One thread for the process, started at the first shadowed request, with a runtime of
//! its own. Requests push their shadow jobs onto a queue under a mutex: a closure holding
//! the job's inputs, which makes the job's future on the shadow thread (so the future,
//! larger than its inputs, is neither allocated nor copied on the request's path). The
//! thread takes the whole queue at once and runs the jobs as tasks. While jobs keep
//! coming it looks again every [`BATCH`] and nobody wakes it; when it finds the queue
//! empty it sleeps until the next push wakes it (the only push that makes a system
//! call). Its CPU time is the shadow's alone: the requests' threads never poll a shadow
//! call.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// A job: spawns its task on the shadow thread's runtime.
type Job = Box<dyn FnOnce() + Send>;

/// How long the thread lets jobs gather while they keep coming.
const BATCH: Duration = Duration::from_millis(1);

/// The thread's name, as `/proc/<pid>/task/*/comm` shows it.
pub const NAME: &str = "weir-shadow";

struct Queue {
    jobs: Mutex<Vec<Job>>,
    /// The thread sleeps until woken: the next push wakes it.
    asleep: AtomicBool,
    wake: tokio::sync::Notify,
}

fn queue() -> &'static Queue {
    static QUEUE: OnceLock<&'static Queue> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let queue: &'static Queue = Box::leak(Box::new(Queue {
            jobs: Mutex::new(Vec::new()),
            asleep: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }));
        let started = std::thread::Builder::new()
            .name(NAME.into())
            .spawn(move || run(queue));
        if let Err(e) = started {
            // Without its thread nothing takes the jobs: they stay queued, bounded by
            // the candidates' own limit on calls in flight, and are counted as skipped.
            tracing::error!("cannot start the shadow thread: {e}");
        }
        queue
    })
}

/// Runs the future `job` makes on the shadow thread (`job` is called there).
pub fn push<F>(job: impl FnOnce() -> F + Send + 'static)
where
    F: Future<Output = ()> + Send + 'static,
{
    let queue = queue();
    let job: Job = Box::new(move || {
        tokio::spawn(job());
    });
    queue
        .jobs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(job);
    if queue.asleep.swap(false, Ordering::SeqCst) {
        queue.wake.notify_one();
    }
}

fn run(queue: &'static Queue) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the shadow thread's runtime: {e}");
            return;
        }
    };
    runtime.block_on(async {
        let mut batch = Vec::new();
        loop {
            std::mem::swap(
                &mut batch,
                &mut *queue.jobs.lock().unwrap_or_else(|p| p.into_inner()),
            );
            if batch.is_empty() {
                queue.asleep.store(true, Ordering::SeqCst);
                // A push between the swap above and the store is seen here; one after
                // the store finds `asleep` and wakes (Notify keeps the permit).
                if queue
                    .jobs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                {
                    queue.wake.notified().await;
                } else {
                    queue.asleep.store(false, Ordering::SeqCst);
                }
                continue;
            }
            for job in batch.drain(..) {
                job();
            }
            tokio::time::sleep(BATCH).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn jobs_run_on_the_shadow_thread_whether_it_slept_or_not() {
        let ran = Arc::new(AtomicUsize::new(0));
        for round in 0..3 {
            for _ in 0..50 {
                let ran = Arc::clone(&ran);
                push(move || {
                    // The future is made on the shadow thread, too.
                    assert_eq!(std::thread::current().name(), Some(NAME));
                    async move {
                        assert_eq!(std::thread::current().name(), Some(NAME));
                        ran.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            let want = 50 * (round + 1);
            for _ in 0..500 {
                if ran.load(Ordering::SeqCst) == want {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(ran.load(Ordering::SeqCst), want, "round {round}");
            // Long enough for the thread to find the queue empty and sleep.
            std::thread::sleep(Duration::from_millis(20));
            assert!(queue().asleep.load(Ordering::SeqCst), "round {round}");
        }
    }
}
