//! The storage contract, run against every backend: claims and leases, monotonic updates,
//! idempotent roll-call creation, escalation of exactly the due and unconfirmed.

use std::time::Duration;

use anpi::contacts::synthetic;
use anpi::rollcall::{self, SendResult};
use anpi::store::{self, SharedStore};

use crate::support::scenario;

async fn backends() -> Vec<(String, SharedStore, tempfile::TempDir)> {
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", tmp.path().join("c.db").display());
    vec![("sqlite".into(), store::open(&url).await.unwrap(), tmp)]
}

async fn seeded(store: &SharedStore, n: usize, key: Option<&str>) -> rollcall::RollCall {
    let contacts = synthetic::generate(n, 1).contacts;
    let (new, rec) = rollcall::plan(
        &scenario(),
        &contacts,
        "simulator",
        None,
        key.map(String::from),
    );
    store.create_roll_call(&new, &rec, 1_000).await.unwrap()
}

#[tokio::test]
async fn a_claim_hands_each_delivery_to_one_worker_until_its_lease_expires() {
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 30, None).await;
        let lease = Duration::from_secs(60);
        let a = store
            .claim_due_deliveries("simulator", 2_000, lease, 20)
            .await
            .unwrap();
        let b = store
            .claim_due_deliveries("simulator", 2_000, lease, 20)
            .await
            .unwrap();
        assert_eq!((a.len(), b.len()), (20, 10), "{name}");
        let c = store
            .claim_due_deliveries("simulator", 3_000, lease, 20)
            .await
            .unwrap();
        assert!(c.is_empty(), "{name}: nothing left while leases hold");
        // After the lease, the unfinished claims come back, with the attempt counted.
        let d = store
            .claim_due_deliveries("simulator", 62_001, lease, 100)
            .await
            .unwrap();
        assert_eq!(d.len(), 30, "{name}");
        assert!(d.iter().all(|x| x.attempts == 2));
        assert!(d.iter().all(|x| x.roll_call_id == rc.id));
    }
}

#[tokio::test]
async fn send_results_move_forward_only_and_failures_escalate_at_once() {
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 3, None).await;
        let c = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 10)
            .await
            .unwrap();
        store
            .record_send_results(
                &[
                    SendResult::Sent {
                        id: c[0].id,
                        at: 2_100,
                        deadline_at: 302_100,
                        message_id: Some("m1".into()),
                    },
                    SendResult::Retry {
                        id: c[1].id,
                        next_attempt_at: 5_000,
                        error: "503".into(),
                        refund_attempt: false,
                    },
                    SendResult::Failed {
                        id: c[2].id,
                        error: "unknown user".into(),
                    },
                ],
                2_200,
            )
            .await
            .unwrap();
        let p = store.progress(rc.id).await.unwrap();
        assert_eq!(
            (p.overall.sent, p.overall.pending, p.overall.failed),
            (1, 1, 1),
            "{name}"
        );
        assert_eq!(
            p.overall.to_call, 1,
            "{name}: the failed one is on the list at once"
        );
        // A stale "sent" for a row that was already failed changes nothing.
        store
            .record_send_results(
                &[SendResult::Sent {
                    id: c[2].id,
                    at: 9_000,
                    deadline_at: 309_000,
                    message_id: None,
                }],
                9_000,
            )
            .await
            .unwrap();
        assert_eq!(
            store.progress(rc.id).await.unwrap().overall.failed,
            1,
            "{name}"
        );
        // The retry is not due before its time.
        assert!(store
            .claim_due_deliveries("simulator", 4_999, Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .claim_due_deliveries("simulator", 5_000, Duration::from_secs(60), 10)
                .await
                .unwrap()
                .len(),
            1
        );
        // Deadlines: only the sent one, at its own deadline.
        assert_eq!(
            store.next_deadline().await.unwrap(),
            Some(302_100),
            "{name}"
        );
        assert_eq!(store.escalate_due(302_099).await.unwrap(), 0);
        assert_eq!(store.escalate_due(302_100).await.unwrap(), 1);
        assert_eq!(
            store.escalate_due(400_000).await.unwrap(),
            0,
            "{name}: never twice"
        );
    }
}

#[tokio::test]
async fn the_same_idempotency_key_creates_one_roll_call() {
    for (name, store, _tmp) in backends().await {
        let a = seeded(&store, 5, Some("k1")).await;
        let b = seeded(&store, 5, Some("k1")).await;
        assert_eq!(a.id, b.id, "{name}");
        assert_eq!(store.roll_calls().await.unwrap().len(), 1);
        let c = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 100)
            .await
            .unwrap();
        assert_eq!(c.len(), 5, "{name}: one delivery per recipient");
    }
}

#[tokio::test]
async fn closing_stops_sending_and_escalating() {
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 4, None).await;
        let c = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 2)
            .await
            .unwrap();
        store
            .record_send_results(
                &c.iter()
                    .map(|d| SendResult::Sent {
                        id: d.id,
                        at: 2_000,
                        deadline_at: 302_000,
                        message_id: None,
                    })
                    .collect::<Vec<_>>(),
                2_000,
            )
            .await
            .unwrap();
        assert!(store.close_roll_call(rc.id, 3_000).await.unwrap());
        assert!(
            !store.close_roll_call(rc.id, 3_000).await.unwrap(),
            "{name}"
        );
        assert!(store
            .claim_due_deliveries("simulator", 4_000, Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(store.next_deadline().await.unwrap(), None);
        assert_eq!(store.escalate_due(999_999).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn two_callers_never_get_the_same_person_and_a_lapsed_hold_returns() {
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 3, None).await;
        let c = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 10)
            .await
            .unwrap();
        store
            .record_send_results(
                &c.iter()
                    .map(|d| SendResult::Sent {
                        id: d.id,
                        at: 2_000,
                        deadline_at: 302_000,
                        message_id: None,
                    })
                    .collect::<Vec<_>>(),
                2_000,
            )
            .await
            .unwrap();
        store.escalate_due(302_000).await.unwrap();
        let hold = Duration::from_secs(180);
        let a = store
            .claim_next_call(rc.id, "caller#1", 310_000, hold)
            .await
            .unwrap()
            .unwrap();
        let a_again = store
            .claim_next_call(rc.id, "caller#1", 311_000, hold)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            a.staff_id, a_again.staff_id,
            "{name}: a caller keeps their entry"
        );
        let b = store
            .claim_next_call(rc.id, "caller#2", 311_000, hold)
            .await
            .unwrap()
            .unwrap();
        let c3 = store
            .claim_next_call(rc.id, "caller#3", 311_000, hold)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(a.staff_id, b.staff_id);
        assert_ne!(b.staff_id, c3.staff_id);
        assert_ne!(a.staff_id, c3.staff_id);
        assert!(store
            .claim_next_call(rc.id, "caller#4", 311_000, hold)
            .await
            .unwrap()
            .is_none());
        // caller#1's hold lapses: the person goes back to the queue.
        let d = store
            .claim_next_call(rc.id, "caller#4", 491_001, hold)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.staff_id, a.staff_id, "{name}");
        // An outcome closes the entry and frees the hold.
        store
            .record_call_outcome(
                rc.id,
                &d.staff_id,
                anpi::rollcall::CallOutcome::ReachedSafe,
                "caller#4",
                492_000,
            )
            .await
            .unwrap();
        assert!(store
            .release_call(rc.id, &b.staff_id, "caller#2")
            .await
            .unwrap());
        assert!(!store
            .release_call(rc.id, &b.staff_id, "caller#9")
            .await
            .unwrap());
    }
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires_and_provider_state_round_trips() {
    for (name, store, _tmp) in backends().await {
        let ttl = Duration::from_secs(10);
        assert!(
            store.try_lease("deadlines", "a", 0, ttl).await.unwrap(),
            "{name}"
        );
        assert!(!store.try_lease("deadlines", "b", 5_000, ttl).await.unwrap());
        assert!(
            store.try_lease("deadlines", "a", 5_000, ttl).await.unwrap(),
            "renewal"
        );
        assert!(!store
            .try_lease("deadlines", "b", 14_999, ttl)
            .await
            .unwrap());
        assert!(
            store
                .try_lease("deadlines", "b", 15_000, ttl)
                .await
                .unwrap(),
            "takeover"
        );
        assert_eq!(
            store.provider_state("matrix", "room:@a:x").await.unwrap(),
            None
        );
        store
            .set_provider_state("matrix", "room:@a:x", "!r1:x", 1)
            .await
            .unwrap();
        store
            .set_provider_state("matrix", "room:@a:x", "!r2:x", 2)
            .await
            .unwrap();
        assert_eq!(
            store
                .provider_state("matrix", "room:@a:x")
                .await
                .unwrap()
                .as_deref(),
            Some("!r2:x")
        );
    }
}
