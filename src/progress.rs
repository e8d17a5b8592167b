//! Roll-call progress for readers that look again and again, computed once per change or
//! short tick and shared: every open HQ page's live stream and `/metrics` read the same value
//! instead of each running the counting queries (on SQLite those hold a pool connection the
//! dispatcher needs). A one-off read (`GET /api/rollcalls/{id}`, the CLI) reads the store.
//!
//! Invariants: a value is at most [`TICK`] old, and never older than a change made through
//! this process's [`Hq`](crate::hq::Hq) (which calls [`ProgressCache::invalidate`]); at most
//! one computation per roll call runs at a time, and everyone waiting for it gets its result.
//! The whole [`Progress`] is cached, so fields added to it come along unchanged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ids::RollCallId;
use crate::rollcall::Progress;
use crate::store::{SharedStore, StoreError};

/// How long a computed value is served before it is computed again.
pub const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct Slot {
    /// When it was computed, under which generation, and the value.
    value: Option<(Instant, u64, Arc<Progress>)>,
}

/// Shared, briefly cached progress per roll call.
#[derive(Debug)]
pub struct ProgressCache {
    store: SharedStore,
    tick: Duration,
    /// Bumped by every change this process knows of; a value from an older generation is
    /// computed again.
    generation: AtomicU64,
    slots: Mutex<HashMap<RollCallId, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl ProgressCache {
    pub fn new(store: SharedStore) -> Self {
        Self::with_tick(store, TICK)
    }

    pub fn with_tick(store: SharedStore, tick: Duration) -> Self {
        Self {
            store,
            tick,
            generation: AtomicU64::new(0),
            slots: Mutex::default(),
        }
    }

    /// Something changed: the next read computes afresh.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The roll call's progress, at most one tick old.
    pub async fn get(&self, id: RollCallId) -> Result<Arc<Progress>, StoreError> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone();
        // One computation at a time per roll call: the others wait here and take its result.
        let mut slot = slot.lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((at, g, p)) = &slot.value {
            if *g == generation && at.elapsed() < self.tick {
                return Ok(p.clone());
            }
        }
        let p = Arc::new(self.store.progress(id).await?);
        slot.value = Some((Instant::now(), generation, p.clone()));
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;

    #[tokio::test]
    async fn many_readers_share_one_computation_and_a_change_is_seen_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", tmp.path().join("p.db").display());
        let store = store::open(&url).await.unwrap();
        let cache = Arc::new(ProgressCache::with_tick(store, Duration::from_secs(3600)));
        let id = RollCallId(1);
        let first = cache.get(id).await.unwrap();
        let all = futures::future::join_all((0..20).map(|_| cache.get(id))).await;
        for p in all {
            assert!(Arc::ptr_eq(&p.unwrap(), &first), "served from the cache");
        }
        cache.invalidate();
        let again = cache.get(id).await.unwrap();
        assert!(
            !Arc::ptr_eq(&again, &first),
            "computed again after a change"
        );
    }
}
