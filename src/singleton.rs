//! Singleton workers across replicas: the deadline timer, the receipt watcher and the mail
//! run on one process at a time, the one holding their lease in the database
//! (`Store::try_lease`).
//!
//! A lease is tied to its process: it names the process (pid, a random part, and the
//! machine), is handed back when the process shuts down, and is renewed every third of its
//! time to live. A replica without it looks again when the lease runs out (it knows when), so
//! a killed holder is replaced within one time to live; a process restarted on the same
//! machine finds the lease's holder dead there (no such process) and takes it over at once.
//!
//! Invariants: a process runs a singleton only while its lease is unexpired by the process's
//! own reckoning; when renewal is refused or the lease runs out unrenewed (the database
//! unreachable), the worker is stopped and the process competes again. The workers
//! themselves are idempotent (escalation and receipt application are set-based and move rows
//! forward only; mail is claimed one row at a time), so the moment of overlap a takeover can
//! bring is harmless: the lease keeps the work on one replica, correctness does not hang on it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{Millis, SharedClock};
use crate::metrics::Metrics;
use crate::store::SharedStore;

/// A random id for this process, so leases name who holds them:
/// `pid<pid>-<random>@<machine>`.
pub fn instance_id() -> String {
    let id = format!(
        "pid{}-{:08x}@{}",
        std::process::id(),
        rand::random::<u32>(),
        machine()
    );
    live_here().insert(id.clone());
    id
}

/// The instance ids running in this process (several applications in one process: tests,
/// benchmarks). A holder with this process's pid is alive exactly when it is one of them.
fn live_here() -> std::sync::MutexGuard<'static, std::collections::HashSet<String>> {
    static LIVE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The instance `id` of this process has stopped: a lease it still holds may be taken over.
pub fn retire(id: &str) {
    live_here().remove(id);
}

/// This machine (and boot): the host name and the start of the kernel's boot id. Empty where
/// neither can be read, which disables the same-machine check.
fn machine() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let host = read("/proc/sys/kernel/hostname");
    let boot: String = read("/proc/sys/kernel/random/boot_id")
        .chars()
        .take(8)
        .collect();
    if host.is_empty() || boot.is_empty() {
        return String::new();
    }
    format!("{host}.{boot}")
}

/// True when `holder` names a process of this machine that no longer runs: its pid is gone,
/// or is this very process under an instance id that is not running here (a restart that drew
/// the same pid, or an application of this process that stopped). Unknown machines, and any
/// doubt, count as alive: then the lease is simply waited out.
fn is_dead_here(holder: &str, me: &str) -> bool {
    let Some((id, at)) = holder.rsplit_once('@') else {
        return false;
    };
    let here = machine();
    if here.is_empty() || at != here || holder == me {
        return false;
    }
    let Some(pid) = id
        .strip_prefix("pid")
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return false;
    };
    if pid == std::process::id() {
        return !live_here().contains(holder);
    }
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
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
            // Not holding it: when the other holder's lease ends (wait until then), or
            // whether that holder is a dead process of this machine (take it at once).
            let mut wait = renew;
            let mut got = self
                .store
                .try_lease(&self.name, &self.holder, now, self.ttl)
                .await;
            if matches!(got, Ok(false)) {
                match self.store.lease(&self.name).await {
                    Ok(Some((other, _))) if is_dead_here(&other, &self.holder) => {
                        info!(lease = %self.name, dead = %other, "the holder died on this machine; taking over");
                        got = self
                            .store
                            .take_lease(&self.name, &other, &self.holder, now, self.ttl)
                            .await;
                    }
                    Ok(Some((_, until))) => {
                        let left = Duration::from_millis((until - now).max(0) as u64);
                        wait = left.min(renew) + Duration::from_millis(5);
                    }
                    _ => {}
                }
            }
            match got {
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
            if running.is_some() {
                wait = renew;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.clock.sleep(wait) => {}
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

    #[test]
    fn a_holder_is_dead_here_only_when_its_process_is_gone_from_this_machine() {
        let me = instance_id();
        if machine().is_empty() {
            return; // not Linux: the check is off and every holder counts as alive
        }
        let here = machine();
        // A pid that cannot exist (above the kernel's pid_max).
        assert!(is_dead_here(&format!("pid4294967295-00000000@{here}"), &me));
        // This process, under another instance id: a restart that drew the same pid.
        let again = format!("pid{}-ffffffff@{here}", std::process::id());
        assert!(is_dead_here(&again, &me));
        assert!(!is_dead_here(&me, &me), "never oneself");
        // Another application running in this same process is alive, until it stops.
        let other = instance_id();
        assert!(!is_dead_here(&other, &me));
        retire(&other);
        assert!(is_dead_here(&other, &me));
        // Process 1 runs; another machine, or an old-style id, is waited out.
        assert!(!is_dead_here(&format!("pid1-00000000@{here}"), &me));
        assert!(!is_dead_here(
            "pid4294967295-00000000@elsewhere.12345678",
            &me
        ));
        assert!(!is_dead_here("pid4294967295-00000000", &me));
    }

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
