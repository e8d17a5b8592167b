//! Singleton workers across replicas: the deadline timer and the receipt watcher run on one
//! process at a time, the one holding their lease in the database (`Store::try_lease`).
//!
//! Invariants: a process runs a singleton only while its lease, renewed every third of its
//! time to live, is unexpired by the process's own reckoning; when renewal is refused or the
//! lease runs out unrenewed (the database unreachable), the worker is stopped and the process
//! competes again. When the holder dies, another replica takes over within about one time to
//! live. The workers themselves are idempotent (escalation and receipt application are
//! set-based and move rows forward only), so the moment of overlap a takeover can bring is
//! harmless: the lease keeps the work on one replica, correctness does not hang on it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{Millis, SharedClock};
use crate::metrics::Metrics;
use crate::store::SharedStore;

/// A random id for this process, so leases name who holds them.
pub fn instance_id() -> String {
    format!("pid{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Runs one singleton worker while this process holds its lease.
#[derive(Debug, Clone)]
pub struct Singleton {
    pub store: SharedStore,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    /// The lease's name, one per singleton ("deadlines", "receipts:simulator").
    pub name: String,
    /// This process's instance id.
    pub holder: String,
    pub ttl: Duration,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl Singleton {
    /// Competes for the lease until `cancel` fires; while it is held, runs the worker that
    /// `start` makes (handing it a token that stops it when the lease is lost).
    pub async fn run<F, Fut>(self, cancel: CancellationToken, start: F)
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let renew = (self.ttl / 3).max(Duration::from_millis(50));
        let mut held_until: Option<Millis> = None;
        let mut running: Option<Running> = None;
        while !cancel.is_cancelled() {
            let now = self.clock.now_millis();
            match self
                .store
                .try_lease(&self.name, &self.holder, now, self.ttl)
                .await
            {
                Ok(true) => {
                    held_until = Some(now + self.ttl.as_millis() as i64);
                    if running.is_none() {
                        info!(lease = %self.name, holder = %self.holder, "took the lease: this replica runs it");
                        let stop = cancel.child_token();
                        let task = tokio::spawn(start(stop.clone()));
                        running = Some(Running { stop, task });
                    }
                }
                Ok(false) => {
                    held_until = None;
                    if let Some(r) = running.take() {
                        warn!(lease = %self.name, "lease taken by another replica; stopping here");
                        r.stop().await;
                    }
                }
                Err(e) => {
                    self.metrics.store_error();
                    warn!(lease = %self.name, error = %e, "could not renew the lease; retrying");
                    let expired = held_until.is_none_or(|t| self.clock.now_millis() >= t);
                    if expired {
                        held_until = None;
                        if let Some(r) = running.take() {
                            warn!(lease = %self.name, "lease ran out unrenewed; stopping here");
                            r.stop().await;
                        }
                    }
                }
            }
            // Renewal runs on the application's clock; the wall-clock sleep keeps it going
            // when that clock stands still (a test's manual clock).
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.clock.sleep(renew) => {}
                _ = tokio::time::sleep(renew) => {}
            }
        }
        if let Some(r) = running.take() {
            r.stop().await;
            // Hand the lease back so another replica need not wait for it to expire.
            let _ = self
                .store
                .try_lease(
                    &self.name,
                    &self.holder,
                    self.clock.now_millis(),
                    Duration::ZERO,
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn only_the_lease_holder_runs_the_worker_and_the_other_takes_over_when_it_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("l.db").display());
        let store = store::open(&url).await.unwrap();
        let manual = ManualClock::new(chrono::Utc::now());
        let clock: SharedClock = Arc::new(manual.clone());
        let started = Arc::new(AtomicUsize::new(0));
        let replica = |holder: &str| Singleton {
            store: store.clone(),
            clock: clock.clone(),
            metrics: Arc::new(Metrics::default()),
            name: "deadlines".into(),
            holder: holder.into(),
            ttl: Duration::from_millis(300),
        };
        let worker = |started: Arc<AtomicUsize>| {
            move |stop: CancellationToken| {
                let started = started.clone();
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    stop.cancelled().await;
                    started.fetch_sub(1, Ordering::SeqCst);
                }
            }
        };
        let cancel_a = CancellationToken::new();
        let a = tokio::spawn(replica("a").run(cancel_a.clone(), worker(started.clone())));
        while started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cancel_b = CancellationToken::new();
        let b = tokio::spawn(replica("b").run(cancel_b.clone(), worker(started.clone())));
        // b competes several times while a renews: the worker never runs twice.
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(started.load(Ordering::SeqCst), 1);
        }
        cancel_a.cancel();
        a.await.unwrap();
        // a stopped its worker and handed the lease back; b takes it on its next try.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while started.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < end, "b never took over");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel_b.cancel();
        b.await.unwrap();
        assert_eq!(started.load(Ordering::SeqCst), 0);
    }
}
