//! The storage contract, run against every backend (SQLite, and PostgreSQL when reachable,
//! always in CI): claims and leases, monotonic updates, idempotent roll-call creation,
//! escalation of exactly the due and unconfirmed, receipts folding, progress, the call list.

use std::time::Duration;

use anpi::contacts::{synthetic, ContactKind};
use anpi::providers::{InboundEvent, InboundKind};
use anpi::rollcall::{self, CallOutcome, SendResult};
use anpi::store::{SharedStore, StoreError};

use crate::support::{all_backends as backends, scenario};

async fn seeded(store: &SharedStore, n: usize, key: Option<&str>) -> rollcall::RollCall {
    let contacts = synthetic::generate(n, 1).contacts;
    let (new, rec) = rollcall::compose(
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
async fn a_row_claimed_by_an_older_anpi_is_left_alone_until_its_lease_ends() {
    for (name, store, db) in backends().await {
        seeded(&store, 5, None).await;
        let lease = Duration::from_secs(60);
        let a = store
            .claim_due_deliveries("simulator", 2_000, lease, 5)
            .await
            .unwrap();
        assert_eq!(a.len(), 5, "{name}");
        // An anpi from before migration 0003, still running during a rolling upgrade, set
        // only lease_until when it claimed: its rows keep an old next_attempt_at.
        db.execute("UPDATE deliveries SET next_attempt_at = 0")
            .await;
        let b = store
            .claim_due_deliveries("simulator", 3_000, lease, 5)
            .await
            .unwrap();
        assert!(
            b.is_empty(),
            "{name}: taken while the older anpi's lease holds"
        );
        let c = store
            .claim_due_deliveries("simulator", 62_001, lease, 5)
            .await
            .unwrap();
        assert_eq!(c.len(), 5, "{name}: taken over once the lease ended");
    }
}

#[tokio::test]
async fn a_late_retry_does_not_take_back_a_row_another_worker_has_claimed_since() {
    for (name, store, _db) in backends().await {
        let rc = seeded(&store, 1, None).await;
        let lease = Duration::from_secs(60);
        let first = store
            .claim_due_deliveries("simulator", 2_000, lease, 1)
            .await
            .unwrap();
        assert_eq!(first[0].lease_until, 62_000, "{name}");
        // The first worker's lease ran out (its database writes stalled); another took over.
        let second = store
            .claim_due_deliveries("simulator", 62_001, lease, 1)
            .await
            .unwrap();
        assert_eq!(second.len(), 1, "{name}");
        // The first worker's "retry later" arrives now: it must not put the row back.
        let late = SendResult::Retry {
            id: first[0].id,
            next_attempt_at: 62_002,
            error: "503".into(),
            refund_attempt: false,
            lease_until: first[0].lease_until,
        };
        store.record_send_results(&[late], 62_002).await.unwrap();
        let p = store.progress(rc.id).await.unwrap().overall;
        assert_eq!((p.sending, p.pending), (1, 0), "{name}: {p:?}");
        assert!(
            store
                .claim_due_deliveries("simulator", 62_003, lease, 1)
                .await
                .unwrap()
                .is_empty(),
            "{name}: nobody else may take it while the second claim holds"
        );
        // The second worker's own retry is written.
        let own = SendResult::Retry {
            id: second[0].id,
            next_attempt_at: 62_004,
            error: "503".into(),
            refund_attempt: false,
            lease_until: second[0].lease_until,
        };
        store.record_send_results(&[own], 62_004).await.unwrap();
        let p = store.progress(rc.id).await.unwrap().overall;
        assert_eq!((p.sending, p.pending), (0, 1), "{name}: {p:?}");
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
                        lease_until: c[1].lease_until,
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

/// Escalates everyone of a fresh roll call of `n` at 302 s and returns it.
async fn all_on_the_call_list(store: &SharedStore, n: usize) -> rollcall::RollCall {
    let rc = seeded(store, n, None).await;
    let c = store
        .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), n)
        .await
        .unwrap();
    let sent: Vec<SendResult> = c
        .iter()
        .map(|d| SendResult::Sent {
            id: d.id,
            at: 2_000,
            deadline_at: 302_000,
            message_id: None,
        })
        .collect();
    store.record_send_results(&sent, 2_000).await.unwrap();
    store.escalate_due(302_000).await.unwrap();
    rc
}

#[tokio::test]
async fn an_outcome_never_undoes_another_callers_hold_or_a_person_reached() {
    for (name, store, _tmp) in backends().await {
        let rc = all_on_the_call_list(&store, 2).await;
        let hold = Duration::from_secs(180);
        let a = store
            .claim_next_call(rc.id, "desk-1", 310_000, hold)
            .await
            .unwrap()
            .unwrap();
        // Someone else records over desk-1's call while it is held: refused, with who holds it.
        let e = store
            .record_call_outcome(rc.id, &a.staff_id, CallOutcome::NoAnswer, "desk-2", 311_000)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(m) if m.contains("desk-1")),
            "{name}: {e}"
        );
        store
            .record_call_outcome(
                rc.id,
                &a.staff_id,
                CallOutcome::ReachedSafe,
                "desk-1",
                312_000,
            )
            .await
            .unwrap();
        // A late "no answer" from a stale screen does not put a reached person back on the list.
        let e = store
            .record_call_outcome(rc.id, &a.staff_id, CallOutcome::NoAnswer, "desk-2", 313_000)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict(m) if m.contains("reached_safe")),
            "{name}: {e}"
        );
        let e = store
            .record_call_outcome(
                rc.id,
                &a.staff_id,
                CallOutcome::Unreachable,
                "desk-2",
                313_000,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)), "{name}: {e}");
        // A correction between reached outcomes is allowed.
        let entry = store
            .record_call_outcome(
                rc.id,
                &a.staff_id,
                CallOutcome::ReachedInjured,
                "desk-2",
                314_000,
            )
            .await
            .unwrap();
        assert_eq!(entry.outcome, Some(CallOutcome::ReachedInjured), "{name}");
        let p = store.progress(rc.id).await.unwrap();
        assert_eq!((p.overall.reached, p.overall.injured), (1, 1), "{name}");
        assert_eq!(p.overall.to_call, 1, "{name}");
        // Nobody by that id: still "no such recipient", not a conflict.
        let nobody = anpi::ids::StaffId::parse("NOBODY").unwrap();
        let e = store
            .record_call_outcome(rc.id, &nobody, CallOutcome::NoAnswer, "desk-2", 315_000)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::NoSuchRecipient { .. }),
            "{name}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_claiming_at_the_same_moment_never_get_the_same_person() {
    for (name, store, _tmp) in backends().await {
        let rc = all_on_the_call_list(&store, 40).await;
        let claims = (0..60).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_next_call(
                        rc.id,
                        &format!("desk-{i}"),
                        310_000,
                        Duration::from_secs(180),
                    )
                    .await
                    .unwrap()
            })
        });
        let got: Vec<_> = futures::future::join_all(claims)
            .await
            .into_iter()
            .filter_map(|r| r.unwrap())
            .map(|e| e.staff_id)
            .collect();
        let distinct: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!(got.len(), 40, "{name}: everyone is given to someone");
        assert_eq!(distinct.len(), 40, "{name}: nobody is given to two callers");
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

/// Claims everything due at 2,000 and records it all sent at `2_000 + 10 * i`.
async fn send_all(store: &SharedStore, n: usize) -> Vec<rollcall::ClaimedDelivery> {
    let c = store
        .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), n)
        .await
        .unwrap();
    let results: Vec<SendResult> = c
        .iter()
        .enumerate()
        .map(|(i, d)| SendResult::Sent {
            id: d.id,
            at: 2_000 + 10 * i as i64,
            deadline_at: 302_000 + 10 * i as i64,
            message_id: None,
        })
        .collect();
    store.record_send_results(&results, 2_500).await.unwrap();
    c
}

fn event(
    id: &str,
    rc: Option<anpi::ids::RollCallId>,
    from: &anpi::ids::ChatHandle,
    kind: InboundKind,
    at_ms: i64,
) -> InboundEvent {
    InboundEvent {
        event_id: id.into(),
        roll_call_id: rc,
        from: from.clone(),
        kind,
        occurred_at: chrono::DateTime::from_timestamp_millis(at_ms).unwrap(),
    }
}

fn answer(v: &str) -> InboundKind {
    InboundKind::Answer { value: v.into() }
}

#[tokio::test]
async fn receipts_fold_per_person_keep_the_first_read_and_latest_answer_and_replays_change_nothing()
{
    for (name, store, _db) in backends().await {
        let contacts = synthetic::generate(5, 1).contacts;
        let rc = seeded(&store, 5, None).await;
        let c = send_all(&store, 5).await;
        let staff_of = |h: &anpi::ids::ChatHandle| {
            contacts
                .iter()
                .find(|x| x.chat.get("simulator") == Some(h))
                .unwrap()
                .id
                .clone()
        };
        let (p0, p1, p2) = (&c[0].chat_handle, &c[1].chat_handle, &c[2].chat_handle);
        let batch = vec![
            event("e1", Some(rc.id), p0, InboundKind::Read, 3_000),
            event("e2", Some(rc.id), p0, InboundKind::Read, 2_500),
            event("e3", Some(rc.id), p1, answer("safe"), 4_000),
            event("e4", Some(rc.id), p1, InboundKind::Read, 3_500),
            event("e5", Some(rc.id), p1, answer("injured"), 5_000),
            // No roll call named: it belongs to the newest one this person was sent.
            event(
                "e6",
                None,
                p2,
                InboundKind::Sticker { id: "s1".into() },
                4_200,
            ),
        ];
        let s = store
            .apply_events("simulator", &batch, Some("c1"), 6_000)
            .await
            .unwrap();
        assert_eq!((s.logged, s.read, s.answered), (6, 3, 2), "{name}");
        assert_eq!(
            store.cursor("simulator").await.unwrap().as_deref(),
            Some("c1")
        );
        // The same batch again: logged once, nothing moves.
        let again = store
            .apply_events("simulator", &batch, Some("c2"), 7_000)
            .await
            .unwrap();
        assert_eq!(
            (again.logged, again.read, again.answered),
            (0, 0, 0),
            "{name}"
        );
        // An older answer arriving late does not replace the latest one.
        store
            .apply_events(
                "simulator",
                &[event("e7", Some(rc.id), p1, answer("safe"), 4_500)],
                None,
                8_000,
            )
            .await
            .unwrap();
        let p = store.progress(rc.id).await.unwrap();
        assert_eq!(
            (p.overall.sent, p.overall.read, p.overall.answered),
            (2, 1, 2),
            "{name}: {:?}",
            p.overall
        );
        assert_eq!(
            p.answers.get("injured"),
            Some(&1),
            "{name}: {:?}",
            p.answers
        );
        assert_eq!(
            p.answers.get("sticker"),
            Some(&1),
            "{name}: {:?}",
            p.answers
        );
        assert_eq!(p.answers.get("safe"), None, "{name}: {:?}", p.answers);
        let logged = store.events(rc.id, 100).await.unwrap();
        assert_eq!(logged.len(), 7, "{name}");
        assert!(logged.iter().all(|e| e.delivery_id.is_some()), "{name}");
        // The earliest read wins; the record of a call shows it.
        let e = store
            .record_call_outcome(
                rc.id,
                &staff_of(p0),
                CallOutcome::ReachedSafe,
                "caller#1",
                9_000,
            )
            .await
            .unwrap();
        assert_eq!(e.read_at, Some(2_500), "{name}");
        assert_eq!(e.outcome, Some(CallOutcome::ReachedSafe));
        assert_eq!(store.events(rc.id, 100).await.unwrap().len(), 8, "{name}");
    }
}

#[tokio::test]
async fn progress_counts_by_group_and_the_call_list_puts_shelters_then_priority_then_longest_waiting_first(
) {
    for (name, store, _db) in backends().await {
        let rc = seeded(&store, 40, None).await;
        send_all(&store, 40).await;
        assert_eq!(store.escalate_due(400_000).await.unwrap(), 40, "{name}");
        let p = store.progress(rc.id).await.unwrap();
        assert_eq!((p.overall.total, p.overall.to_call), (40, 40), "{name}");
        let dept: i64 = p.by_department.values().map(|c| c.total).sum();
        let phones: i64 = p.by_shelter.values().map(|c| c.shelter_phones).sum();
        assert_eq!((dept, phones), (38, 2), "{name}");
        // Staff assigned to a shelter count under it as well as under their department.
        let assigned = synthetic::generate(40, 1)
            .contacts
            .iter()
            .filter(|c| c.kind == ContactKind::Staff && c.shelter.is_some())
            .count() as i64;
        let shelters: i64 = p.by_shelter.values().map(|c| c.total).sum();
        assert_eq!(shelters, 2 + assigned, "{name}");
        // Both shelter phones are silent past their deadline.
        let silent: i64 = p.by_shelter.values().map(|c| c.shelter_phones_silent).sum();
        assert_eq!(silent, 2, "{name}");
        assert_eq!(p.last_sent_at, Some(2_000 + 39 * 10), "{name}");

        let list = store.call_list(rc.id).await.unwrap();
        assert_eq!(list.len(), 40, "{name}");
        let key = |e: &anpi::rollcall::CallListEntry| {
            (
                e.kind != ContactKind::ShelterPhone,
                e.call_priority,
                e.sent_at,
                e.staff_id.to_string(),
            )
        };
        let mut sorted = list.clone();
        sorted.sort_by_key(key);
        assert_eq!(
            list.iter().map(key).collect::<Vec<_>>(),
            sorted.iter().map(key).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(list[0].kind, ContactKind::ShelterPhone, "{name}");

        // A reached person leaves the list; "no answer" keeps them on it.
        store
            .record_call_outcome(
                rc.id,
                &list[0].staff_id,
                CallOutcome::ReachedSafe,
                "c1",
                500_000,
            )
            .await
            .unwrap();
        store
            .record_call_outcome(
                rc.id,
                &list[1].staff_id,
                CallOutcome::NoAnswer,
                "c1",
                500_001,
            )
            .await
            .unwrap();
        let p = store.progress(rc.id).await.unwrap();
        assert_eq!((p.overall.to_call, p.overall.reached), (39, 1), "{name}");
        let err = store
            .record_call_outcome(
                rc.id,
                &"Z9999".parse().unwrap(),
                CallOutcome::NoAnswer,
                "c1",
                500_002,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NoSuchRecipient { .. }),
            "{name}: {err}"
        );
        let err = store
            .record_call_outcome(
                anpi::ids::RollCallId(999),
                &list[0].staff_id,
                CallOutcome::NoAnswer,
                "c1",
                500_003,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NoSuchRollCall(_)),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn workers_claiming_at_the_same_time_get_disjoint_batches() {
    for (name, store, _db) in backends().await {
        seeded(&store, 400, None).await;
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let c = store
                            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 30)
                            .await
                            .unwrap();
                        if c.is_empty() {
                            return mine;
                        }
                        mine.extend(c.into_iter().map(|d| d.id));
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: std::collections::HashSet<i64> = all.iter().copied().collect();
        assert_eq!(all.len(), 400, "{name}: every delivery claimed");
        assert_eq!(distinct.len(), 400, "{name}: none claimed twice");
    }
}

#[tokio::test]
async fn contacts_are_replaced_whole_and_the_next_due_attempt_follows_retries_and_leases() {
    for (name, store, _db) in backends().await {
        let thirty = synthetic::generate(30, 5).contacts;
        assert_eq!(store.replace_contacts(&thirty, 1).await.unwrap(), 30);
        let mut ids: Vec<String> = thirty.iter().map(|c| c.id.to_string()).collect();
        ids.sort();
        let back: Vec<String> = store
            .contacts()
            .await
            .unwrap()
            .iter()
            .map(|c| c.id.to_string())
            .collect();
        assert_eq!(back, ids, "{name}: all of them, in id order");
        store
            .replace_contacts(&synthetic::generate(10, 6).contacts, 2)
            .await
            .unwrap();
        assert_eq!(store.contacts().await.unwrap().len(), 10, "{name}");

        seeded(&store, 3, None).await;
        assert_eq!(
            store.next_due_attempt("simulator").await.unwrap(),
            Some(1_000),
            "{name}"
        );
        let c = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(
            store.next_due_attempt("simulator").await.unwrap(),
            Some(62_000),
            "{name}: the lease's end"
        );
        store
            .record_send_results(
                &[
                    SendResult::Retry {
                        id: c[0].id,
                        next_attempt_at: 5_000,
                        error: "503".into(),
                        refund_attempt: false,
                        lease_until: c[0].lease_until,
                    },
                    SendResult::Sent {
                        id: c[1].id,
                        at: 2_100,
                        deadline_at: 302_100,
                        message_id: None,
                    },
                    SendResult::Sent {
                        id: c[2].id,
                        at: 2_100,
                        deadline_at: 302_100,
                        message_id: None,
                    },
                ],
                2_200,
            )
            .await
            .unwrap();
        assert_eq!(
            store.next_due_attempt("simulator").await.unwrap(),
            Some(5_000),
            "{name}"
        );
        assert_eq!(store.next_due_attempt("matrix").await.unwrap(), None);
    }
}

/// Text people really type, and text that breaks naive code: every one must come back from
/// every backend exactly as it went in.
const ODD_TEXT: [&str; 14] = [
    "e\u{301}か\u{3099}",                   // combining marks (decomposed é and が)
    "👩\u{200d}👩\u{200d}👧\u{200d}👦🇯🇵👍🏽", // ZWJ sequence, flag, skin tone
    "שלום مرحبا \u{202e}abc\u{202c}",       // right to left, and an override
    "ｶﾀｶﾅ ﾊﾟﾋﾟﾌﾟ",                             // half-width katakana with semi-voiced marks
    "line\u{2028}para\u{2029}end",          // Unicode line and paragraph separators
    "in\u{feff}side",                       // a BOM inside a field
    "𠮷野家 髙橋 﨑",                       // outside the BMP, and 異体字 used in names
    "葛\u{e0100}城",                        // an ideographic variation selector
    "zero\u{200b}width",                    // zero-width space
    "ＡＢＣ１２３　全角",                   // full width, ideographic space
    "\u{10ffff}\u{fffd}",                   // the last code point, the replacement char
    "'; DROP TABLE contacts; --",           // quotes and SQL
    "\\N \\0 %s {} $1",                     // backslashes and placeholders
    "長い名前長い名前長い名前長い名前長い名前長い名前長い名前長い名前長い名前長い名前長い名前", // long
];

#[tokio::test]
async fn odd_unicode_goes_through_every_store_unchanged() {
    for (name, store, _db) in backends().await {
        let mut dir = synthetic::generate(ODD_TEXT.len(), 3);
        for (c, text) in dir.contacts.iter_mut().zip(ODD_TEXT) {
            c.name = text.to_string();
            c.kana = Some(text.to_string());
            c.department = Some(format!("課 {text}"));
            c.role = Some(text.to_string());
            c.shelter = Some(text.to_string());
        }
        dir.validate("odd").unwrap_or_else(|e| panic!("{e}"));
        store.replace_contacts(&dir.contacts, 1_000).await.unwrap();
        assert_eq!(store.contacts().await.unwrap(), dir.contacts, "{name}");

        let (mut new, rec) = rollcall::compose(&scenario(), &dir.contacts, "simulator", None, None);
        new.title = ODD_TEXT.concat();
        new.message = ODD_TEXT.join("\n");
        let rc = store.create_roll_call(&new, &rec, 1_000).await.unwrap();
        let back = store.roll_call(rc.id).await.unwrap().unwrap();
        assert_eq!(
            (back.title, back.message),
            (new.title, new.message),
            "{name}"
        );
        let departments: Vec<String> = store
            .progress(rc.id)
            .await
            .unwrap()
            .by_department
            .into_keys()
            .collect();
        let mut want: Vec<String> = ODD_TEXT.iter().map(|t| format!("課 {t}")).collect();
        want.sort();
        assert_eq!(departments, want, "{name}");

        let events: Vec<InboundEvent> = dir
            .contacts
            .iter()
            .zip(ODD_TEXT)
            .enumerate()
            .map(|(i, (c, text))| InboundEvent {
                event_id: format!("odd-{i}"),
                roll_call_id: Some(rc.id),
                from: c.chat_handle("simulator").unwrap().clone(),
                kind: InboundKind::Reply {
                    text: text.to_string(),
                },
                occurred_at: chrono::DateTime::from_timestamp_millis(2_000).unwrap(),
            })
            .collect();
        store
            .apply_events("simulator", &events, None, 2_000)
            .await
            .unwrap();
        let mut got: Vec<String> = store
            .events(rc.id, 100)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|e| e.value)
            .collect();
        let mut want: Vec<String> = ODD_TEXT.iter().map(|t| t.to_string()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test]
async fn a_roll_call_keeps_what_its_message_asks_per_route() {
    for (name, store, db) in backends().await {
        let contacts = synthetic::generate(3, 1).contacts;
        let (mut new, rec) = rollcall::compose(&scenario(), &contacts, "simulator", None, None);
        new.asks.reply = anpi::scenario::Sentence {
            ja: "一言返信してください。".into(),
            en: "Reply, please.".into(),
        };
        let rc = store.create_roll_call(&new, &rec, 1_000).await.unwrap();
        assert_eq!(rc.asks, new.asks, "{name}");
        let again = store.roll_call(rc.id).await.unwrap().unwrap();
        assert_eq!(again.asks.reply.en, "Reply, please.", "{name}");
        assert_eq!(
            store.roll_calls().await.unwrap()[0].asks,
            new.asks,
            "{name}"
        );
        // A roll call from before the column existed reads as the defaults.
        db.execute("UPDATE roll_calls SET asks = NULL").await;
        let old = store.roll_call(rc.id).await.unwrap().unwrap();
        assert_eq!(old.asks, anpi::scenario::Asks::default(), "{name}");
    }
}

#[tokio::test]
async fn chat_recipients_come_shelter_phones_first_then_by_call_priority_with_their_state() {
    for (name, store, _tmp) in backends().await {
        let mut contacts = synthetic::generate(60, 4).contacts;
        // One person without a chat id: not a chat recipient.
        contacts[5].chat.clear();
        let (new, rec) = rollcall::compose(&scenario(), &contacts, "simulator", None, None);
        let rc = store.create_roll_call(&new, &rec, 1_000).await.unwrap();
        let sent = send_all(&store, 100).await;
        let who = sent[0].chat_handle.clone();
        store
            .apply_events(
                "simulator",
                &[event("e1", Some(rc.id), &who, answer("safe"), 3_000)],
                None,
                3_000,
            )
            .await
            .unwrap();
        let list = store.chat_recipients(rc.id).await.unwrap();
        assert_eq!(list.len(), 59, "{name}");
        assert!(list.iter().all(|r| r.staff_id != contacts[5].id), "{name}");
        let shelters = list
            .iter()
            .take_while(|r| r.kind == ContactKind::ShelterPhone)
            .count();
        assert!(shelters > 0, "{name}: the population has shelter phones");
        assert!(
            list[shelters..]
                .iter()
                .all(|r| r.kind == ContactKind::Staff),
            "{name}: shelter phones first"
        );
        assert!(
            list[shelters..]
                .windows(2)
                .all(|w| w[0].call_priority <= w[1].call_priority),
            "{name}: then by call priority"
        );
        let answered = list.iter().find(|r| r.chat_handle == who).unwrap();
        assert_eq!(answered.state, rollcall::DeliveryState::Answered, "{name}");
        assert!(list
            .iter()
            .filter(|r| r.chat_handle != who)
            .all(|r| r.state == rollcall::DeliveryState::Sent));
    }
}

fn jma_record(scope: &str, key: &str, roll_call: Option<i64>) -> anpi::jma::JmaRecord {
    anpi::jma::JmaRecord {
        id: 0,
        scope: scope.into(),
        dedupe_key: key.into(),
        source: "x_VXSE53_010000.xml".into(),
        code: "VXSE53".into(),
        kind: "震源・震度に関する情報".into(),
        status: "通常".into(),
        info_type: "発表".into(),
        event_ids: "E1".into(),
        serial: "1".into(),
        head_title: "震源・震度情報".into(),
        headline: "地震がありました。".into(),
        sent_at: 1_000,
        reported_at: 1_000,
        received_at: 2_000,
        action: "start".into(),
        rule: Some("q".into()),
        reason: "reaches".into(),
        roll_call_id: roll_call,
        related_roll_call_id: None,
        decisions: "[]".into(),
    }
}

#[tokio::test]
async fn jma_telegrams_are_recorded_once_per_scope_with_the_state_they_changed() {
    use anpi::jma::decide::EventState;
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 3, None).await;
        let started = EventState {
            rule: "q".into(),
            key: "E1".into(),
            level: 5,
            roll_call_id: Some(rc.id.0),
            started_at: Some(1_000),
            acting: vec!["震源・震度に関する情報".into()],
            reported_at: 1_000,
            ..EventState::default()
        };
        let below = EventState {
            rule: "q".into(),
            key: "E0".into(),
            notified_level: 3,
            reported_at: 500,
            ..EventState::default()
        };
        let rec = jma_record("live", "k1", Some(rc.id.0));
        let id = store
            .jma_record(&rec, &[started.clone(), below.clone()], 2_000)
            .await
            .unwrap();
        assert!(id.is_some(), "{name}");
        // The same telegram again writes nothing, not even its state.
        let changed = EventState {
            level: 9,
            ..started.clone()
        };
        assert_eq!(
            store.jma_record(&rec, &[changed], 3_000).await.unwrap(),
            None,
            "{name}"
        );
        assert!(store
            .jma_telegram_seen("live", "k1")
            .await
            .unwrap()
            .unwrap()
            .starts_with("start"));
        assert_eq!(
            store.jma_telegram_seen("replay", "k1").await.unwrap(),
            None,
            "{name}: scopes apart"
        );
        let got = store
            .jma_events("live", "q", &["E9".into(), "E1".into()])
            .await
            .unwrap();
        assert_eq!(got, vec![started.clone()], "{name}");
        assert!(store
            .jma_events("replay", "q", &["E1".into()])
            .await
            .unwrap()
            .is_empty());
        // The latest start is the one with a roll call, not the later notice.
        for real_only in [false, true] {
            assert_eq!(
                store.jma_last_start("live", "q", real_only).await.unwrap(),
                Some(started.clone()),
                "{name}"
            );
        }
        assert_eq!(
            store.jma_last_start("live", "other", false).await.unwrap(),
            None
        );
        let log = store.jma_log(Some("live"), None, 10).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].headline, "地震がありました。");
        assert_eq!(
            store.jma_log(None, Some(rc.id), 10).await.unwrap().len(),
            1,
            "{name}"
        );
        assert!(store
            .jma_log(Some("replay"), None, 10)
            .await
            .unwrap()
            .is_empty());

        assert!(!store.jma_fetched("https://x/data/a.xml").await.unwrap());
        store
            .jma_mark_fetched("https://x/data/a.xml", 5_000)
            .await
            .unwrap();
        store
            .jma_mark_fetched("https://x/data/a.xml", 6_000)
            .await
            .unwrap();
        assert!(
            store.jma_fetched("https://x/data/a.xml").await.unwrap(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_real_telegrams_last_start_leaves_out_drill_starts_old_and_new() {
    use anpi::jma::decide::EventState;
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 3, None).await;
        let start = |key: &str, at: i64, drill: bool| EventState {
            rule: "q".into(),
            key: key.into(),
            level: 5,
            roll_call_id: Some(rc.id.0),
            drill,
            started_at: Some(at),
            reported_at: at,
            ..EventState::default()
        };
        let real = start("E1", 1_000, false);
        // A drill start under today's key, and one stored before drill keys were apart.
        let drill = start("drill:E2", 2_000, true);
        let legacy = start("E3", 3_000, true);
        for (i, s) in [&real, &drill, &legacy].into_iter().enumerate() {
            store
                .jma_record(
                    &jma_record("live", &format!("k{i}"), None),
                    std::slice::from_ref(s),
                    4_000,
                )
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(
            store.jma_last_start("live", "q", true).await.unwrap(),
            Some(real),
            "{name}"
        );
        assert_eq!(
            store.jma_last_start("live", "q", false).await.unwrap(),
            Some(legacy),
            "{name}"
        );
    }
}

#[tokio::test]
async fn notified_staff_and_drill_rows_come_from_the_deliveries() {
    for (name, store, _tmp) in backends().await {
        let rc = seeded(&store, 4, None).await;
        let c = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 10)
            .await
            .unwrap();
        assert_eq!(
            store.notified_staff(rc.id).await.unwrap().len(),
            0,
            "{name}"
        );
        store
            .record_send_results(
                &[SendResult::Sent {
                    id: c[0].id,
                    at: 2_100,
                    deadline_at: 302_100,
                    message_id: None,
                }],
                2_200,
            )
            .await
            .unwrap();
        let sent = store.notified_staff(rc.id).await.unwrap();
        assert_eq!(sent.len(), 1, "{name}");
        let rows = store.drill_rows(rc.id).await.unwrap();
        assert_eq!(rows.len(), 4, "{name}");
        let r = rows
            .iter()
            .find(|r| r.staff_id == sent[0].to_string())
            .unwrap();
        assert_eq!(r.sent_at, Some(2_100));
        assert_eq!(r.read_at, None);
        assert!(r.has_chat_id);
    }
}

#[tokio::test]
async fn a_renewed_claim_keeps_its_rows_and_a_row_taken_over_is_not_renewed() {
    for (name, store, _db) in backends().await {
        seeded(&store, 4, None).await;
        let lease = Duration::from_secs(5);
        let mine = store
            .claim_due_deliveries("simulator", 2_000, lease, 4)
            .await
            .unwrap();
        assert_eq!(mine.len(), 4, "{name}");
        let held: Vec<(i64, i64)> = mine.iter().map(|d| (d.id, d.lease_until)).collect();
        // Renewed before it ran out: nobody else can claim them after the first lease's end.
        let renewed = store.renew_claims(&held, 11_000).await.unwrap();
        assert_eq!(renewed.len(), 4, "{name}");
        let other = store
            .claim_due_deliveries("simulator", 8_000, lease, 10)
            .await
            .unwrap();
        assert!(other.is_empty(), "{name}: renewed claims hold");
        // A renewal naming the old lease no longer matches: the row is not this claim's.
        assert!(store.renew_claims(&held, 20_000).await.unwrap().is_empty());
        // Let two lapse: another worker takes them; renewing the rest leaves those alone.
        let now_held: Vec<(i64, i64)> = mine.iter().map(|d| (d.id, 11_000)).collect();
        let taken = store
            .claim_due_deliveries("simulator", 11_000, lease, 2)
            .await
            .unwrap();
        assert_eq!(taken.len(), 2, "{name}");
        let renewed = store.renew_claims(&now_held, 30_000).await.unwrap();
        assert_eq!(renewed.len(), 2, "{name}: only the rows still ours");
        assert!(taken.iter().all(|t| !renewed.contains(&t.id)), "{name}");
        assert!(store.renew_claims(&[], 1).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn the_feed_position_only_moves_forward() {
    for (name, store, _db) in backends().await {
        assert_eq!(store.caught_up("simulator").await.unwrap(), None, "{name}");
        store
            .set_caught_up("simulator", 5_000, 5_001)
            .await
            .unwrap();
        store
            .set_caught_up("simulator", 4_000, 5_002)
            .await
            .unwrap();
        assert_eq!(store.caught_up("simulator").await.unwrap(), Some(5_000));
        store
            .set_caught_up("simulator", 9_000, 9_001)
            .await
            .unwrap();
        assert_eq!(store.caught_up("simulator").await.unwrap(), Some(9_000));
        assert_eq!(store.caught_up("matrix").await.unwrap(), None, "{name}");
    }
}

fn mail(key: &str, rc: Option<i64>) -> anpi::email::NewMail {
    anpi::email::NewMail {
        kind: anpi::email::kind::REMINDER.into(),
        dedupe_key: key.into(),
        roll_call_id: rc.map(anpi::ids::RollCallId),
        to: vec!["tanaka@city.example.jp".into()],
        subject: "【安否確認】未確認です".into(),
        body: "本文 ☃ \u{1F600}".into(),
        csv: Some(("list.csv".into(), vec![0xEF, 0xBB, 0xBF, b'a', 0, 0xFF])),
        meta: Some("{\"true_at\":1}".into()),
    }
}

#[tokio::test]
async fn the_outbox_writes_a_mail_once_and_hands_it_to_one_sender_at_a_time() {
    use anpi::email::{MailOutcome, MailState};
    for (name, store, _db) in backends().await {
        let rc = seeded(&store, 2, None).await;
        let run = [mail("r:1", Some(rc.id.0)), mail("r:2", Some(rc.id.0))];
        assert_eq!(
            store.enqueue_mails(&run, 10, 100).await.unwrap(),
            2,
            "{name}"
        );
        // Deciding again writes nothing.
        assert_eq!(
            store.enqueue_mails(&run, 11, 101).await.unwrap(),
            0,
            "{name}"
        );
        let all = store.mails(Some(rc.id)).await.unwrap();
        assert_eq!(all.len(), 2, "{name}");
        assert_eq!(
            all[0].mail, run[0],
            "{name}: round trip, attachment bytes and all"
        );
        assert_eq!(all[0].state, MailState::Pending);
        assert_eq!(store.next_mail_due().await.unwrap(), Some(100), "{name}");
        assert!(
            store.claim_mail(99, 1_000).await.unwrap().is_none(),
            "not yet due"
        );

        let a = store.claim_mail(100, 1_000).await.unwrap().unwrap();
        let b = store.claim_mail(100, 1_000).await.unwrap().unwrap();
        assert_eq!(
            (a.mail.dedupe_key.as_str(), b.mail.dedupe_key.as_str()),
            ("r:1", "r:2")
        );
        assert!(
            store.claim_mail(500, 1_000).await.unwrap().is_none(),
            "{name}: both held"
        );
        assert_eq!(a.attempts, 1);

        // a is sent and marked; b's sender dies: after its lease b is handed out again.
        assert!(store
            .finish_mail(a.id, 1_000, &MailOutcome::Sent, 20)
            .await
            .unwrap());
        let b2 = store.claim_mail(1_000, 2_000).await.unwrap().unwrap();
        assert_eq!(b2.id, b.id, "{name}");
        assert_eq!(b2.attempts, 2);
        // The dead sender's late report is ignored: its claim is gone.
        assert!(!store
            .finish_mail(b.id, 1_000, &MailOutcome::Sent, 21)
            .await
            .unwrap());
        let retry = MailOutcome::Retry {
            at: 5_000,
            error: "421 busy".into(),
        };
        assert!(store.finish_mail(b.id, 2_000, &retry, 22).await.unwrap());
        assert!(
            store.claim_mail(4_999, 9_000).await.unwrap().is_none(),
            "{name}"
        );
        let b3 = store.claim_mail(5_000, 9_000).await.unwrap().unwrap();
        let failed = MailOutcome::Failed {
            error: "550 no such user".into(),
        };
        assert!(store.finish_mail(b3.id, 9_000, &failed, 23).await.unwrap());

        let by_key = store.mail_by_key("r:1").await.unwrap().unwrap();
        assert_eq!(by_key.state, MailState::Sent, "{name}");
        assert_eq!(by_key.sent_at, Some(20));
        let b = store.mail_by_key("r:2").await.unwrap().unwrap();
        assert_eq!(b.state, MailState::Failed);
        assert_eq!(b.attempts, 3);
        assert_eq!(b.last_error.as_deref(), Some("550 no such user"));
        assert_eq!(store.next_mail_due().await.unwrap(), None, "{name}");
        assert!(store.mail_by_key("nope").await.unwrap().is_none());
        // A mail about no roll call (a platform failing) sits beside them.
        store
            .enqueue_mails(&[mail("x", None)], 30, 30)
            .await
            .unwrap();
        assert_eq!(store.mails(None).await.unwrap().len(), 3, "{name}");
        assert_eq!(store.mails(Some(rc.id)).await.unwrap().len(), 2, "{name}");
    }
}

/// The action list's order is written twice: in Rust (`CallListEntry::call_order`, which
/// every view sorts by) and in SQL (PostgreSQL's list, and the call queue on both backends).
/// On a population with every kind of entry, ties in priority and in waiting time, staff ids
/// whose byte order is not a dictionary's, closed entries and a "no answer" in each group,
/// the two agree.
#[tokio::test]
async fn the_sql_action_order_is_the_rust_order_on_a_varied_population() {
    use anpi::rollcall::Action;
    for (name, store, _db) in backends().await {
        let mut contacts = synthetic::generate(60, 3).contacts;
        for (i, c) in contacts.iter_mut().enumerate() {
            c.call_priority = (i % 3) as u8 + 1;
            if i % 4 == 1 {
                c.id = c.id.as_str().to_lowercase().parse().unwrap();
            }
        }
        for i in [7, 19, 42] {
            contacts[i].chat.clear();
        }
        let (new, rec) = rollcall::compose(&scenario(), &contacts, "simulator", None, None);
        let rc = store.create_roll_call(&new, &rec, 1_000).await.unwrap();
        let claimed = store
            .claim_due_deliveries("simulator", 2_000, Duration::from_secs(60), 100)
            .await
            .unwrap();
        let results: Vec<SendResult> = claimed
            .iter()
            .enumerate()
            .map(|(i, d)| match i % 11 {
                5 => SendResult::Failed {
                    id: d.id,
                    error: "unknown user".into(),
                },
                // Four send times: many people wait exactly as long as others.
                _ => SendResult::Sent {
                    id: d.id,
                    at: 2_000 + 1_000 * (i % 4) as i64,
                    deadline_at: 302_000 + 1_000 * (i % 4) as i64,
                    message_id: None,
                },
            })
            .collect();
        store.record_send_results(&results, 6_000).await.unwrap();
        let sent: Vec<_> = claimed
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 11 != 5)
            .map(|(_, d)| d.chat_handle.clone())
            .collect();
        // Urgent answers (two at the same moment), reads, and an ordinary answer.
        let help = |s: &str| InboundKind::Reply { text: s.into() };
        let events = vec![
            event("u1", Some(rc.id), &sent[3], help("助けて"), 10_000),
            event("u2", Some(rc.id), &sent[8], help("助けて"), 10_000),
            event("u3", Some(rc.id), &sent[13], answer("injured"), 12_000),
            event("u4", None, &sent[21], help("助けて"), 9_000),
            event("r1", Some(rc.id), &sent[1], InboundKind::Read, 20_000),
            event("r2", Some(rc.id), &sent[2], InboundKind::Read, 21_000),
            event("a1", Some(rc.id), &sent[4], answer("safe"), 22_000),
        ];
        store
            .apply_events("simulator", &events, None, 30_000)
            .await
            .unwrap();
        store.escalate_due(400_000).await.unwrap();

        // A "no answer" in each group, a person reached, a note on someone who read.
        let list = store.call_list(rc.id).await.unwrap();
        for action in [
            Action::Urgent,
            Action::SilentShelter,
            Action::NeverRead,
            Action::NotSent,
        ] {
            let e = list
                .iter()
                .find(|e| e.action() == Some(action))
                .unwrap_or_else(|| panic!("{name}: no {action:?} entry"));
            store
                .record_call_outcome(rc.id, &e.staff_id, CallOutcome::NoAnswer, "c1", 405_000)
                .await
                .unwrap();
        }
        let reached = list
            .iter()
            .rev()
            .find(|e| e.action() == Some(Action::NeverRead) && e.outcome.is_none())
            .unwrap();
        store
            .record_call_outcome(
                rc.id,
                &reached.staff_id,
                CallOutcome::ReachedSafe,
                "c1",
                405_001,
            )
            .await
            .unwrap();
        let reader = contacts
            .iter()
            .find(|c| c.chat.get("simulator") == Some(&sent[1]))
            .map(|c| c.id.clone())
            .unwrap();
        store
            .record_call(
                rc.id,
                &reader,
                None,
                Some("本人から電話"),
                "c1",
                405_002,
                false,
            )
            .await
            .unwrap();

        let ids = |l: &[rollcall::CallListEntry]| {
            l.iter().map(|e| e.staff_id.to_string()).collect::<Vec<_>>()
        };
        let list = store.call_list(rc.id).await.unwrap();
        assert!(
            list.iter().any(|e| e.action().is_none()),
            "{name}: closed entries are on the list too"
        );
        let mut sorted = list.clone();
        sorted.sort_by(rollcall::CallListEntry::call_order);
        assert_eq!(ids(&list), ids(&sorted), "{name}: the list in Rust's order");

        // The queue: the same order, but within each group "no answer" goes to the back.
        let mut want: Vec<_> = list.iter().filter(|e| e.to_call()).cloned().collect();
        want.sort_by_key(|e| {
            (
                e.action().map(Action::rank),
                e.outcome == Some(CallOutcome::NoAnswer),
            )
        });
        let mut queue = Vec::new();
        while let Some(e) = store
            .claim_next_call(
                rc.id,
                &format!("desk{}", queue.len()),
                410_000,
                Duration::from_secs(60),
            )
            .await
            .unwrap()
        {
            queue.push(e);
        }
        assert_eq!(
            ids(&queue),
            ids(&want),
            "{name}: the queue in the list's order"
        );
    }
}

/// The store on `db` opened again, by this version (running its migrations).
pub(crate) async fn reopen(db: &crate::support::DbGuard) -> SharedStore {
    let url = match db {
        crate::support::DbGuard::Sqlite(tmp) => {
            format!("sqlite://{}", tmp.path().join("c.db").display())
        }
        crate::support::DbGuard::Postgres(pg) => pg.url.clone(),
    };
    anpi::store::open(&url).await.unwrap()
}

#[tokio::test]
async fn a_roll_call_is_written_with_its_plans_and_older_databases_keep_theirs() {
    for (name, store, db) in backends().await {
        // Written with the roll call, in its transaction: there is no moment it has none.
        let contacts = synthetic::generate(10, 1).contacts;
        let (mut new, rec) = rollcall::compose(&scenario(), &contacts, "simulator", None, None);
        new.dispatch_plan = Some(r#"{"route":"direct"}"#.into());
        let rc = store.create_roll_call(&new, &rec, 1_000).await.unwrap();
        assert_eq!(rc.dispatch_plan, new.dispatch_plan, "{name}");
        assert!(rc.mail_plan.is_some(), "{name}");
        let read = store.roll_call(rc.id).await.unwrap().unwrap();
        assert_eq!(
            (read.dispatch_plan.as_deref(), read.mail_plan.as_deref()),
            (new.dispatch_plan.as_deref(), new.mail_plan.as_deref()),
            "{name}"
        );
        store
            .set_dispatch_plan(rc.id, r#"{"route":"broadcast"}"#)
            .await
            .unwrap();
        let read = store.roll_call(rc.id).await.unwrap().unwrap();
        assert_eq!(
            read.dispatch_plan.as_deref(),
            Some(r#"{"route":"broadcast"}"#)
        );
        drop(store);

        // A database from before the plan columns: the plans were provider state. Opening it
        // with this version carries them over to the roll call and drops the old rows.
        db.execute(&format!(
            "INSERT INTO provider_state (provider, key, value, updated_at) VALUES \
             ('email', 'plan:{id}', '{{\"email_hq\":true,\"email_unconfirmed\":false}}', 1), \
             ('simulator', 'plan/{id}', '{{\"route\":\"rooms\"}}', 1)",
            id = rc.id
        ))
        .await;
        db.execute("ALTER TABLE roll_calls DROP COLUMN dispatch_plan")
            .await;
        db.execute("ALTER TABLE roll_calls DROP COLUMN mail_plan")
            .await;
        db.execute("DELETE FROM _sqlx_migrations WHERE version = 10")
            .await;
        let store = reopen(&db).await;
        let read = store.roll_call(rc.id).await.unwrap().unwrap();
        assert_eq!(
            read.dispatch_plan.as_deref(),
            Some(r#"{"route":"rooms"}"#),
            "{name}"
        );
        assert_eq!(
            read.mail_plan.as_deref(),
            Some(r#"{"email_hq":true,"email_unconfirmed":false}"#),
            "{name}"
        );
        assert_eq!(
            store
                .provider_state("email", &format!("plan:{}", rc.id))
                .await
                .unwrap(),
            None,
            "{name}"
        );
    }
}

/// Every delivery state meets every event, on every backend, and ends where the one table
/// of transitions (`rollcall::TRANSITIONS`) says.
#[tokio::test]
async fn every_state_meets_every_event_as_the_transition_table_says() {
    use anpi::rollcall::{DeliveryEvent, DeliveryState};
    for (name, store, _db) in backends().await {
        let contacts = synthetic::generate(6, 1).contacts;
        for (k, ev) in DeliveryEvent::ALL.into_iter().enumerate() {
            let t0 = 1_000_000 * (k as i64 + 1);
            let rc = seeded(&store, 6, None).await;
            let c = store
                .claim_due_deliveries("simulator", t0, Duration::from_secs(60), 6)
                .await
                .unwrap();
            assert_eq!(
                c.len(),
                6,
                "{name} {ev:?}: the earlier roll calls left nothing due"
            );
            let sent = |i: usize| SendResult::Sent {
                id: c[i].id,
                at: t0 + 100,
                deadline_at: t0 + 300_100,
                message_id: None,
            };
            let retry = |i: usize, lease: i64| SendResult::Retry {
                id: c[i].id,
                next_attempt_at: t0 + 10_000,
                error: "503".into(),
                refund_attempt: false,
                lease_until: lease,
            };
            // One delivery in each state: pending, sending, sent, read, answered, failed.
            store
                .record_send_results(
                    &[
                        retry(0, c[0].lease_until),
                        sent(2),
                        sent(3),
                        sent(4),
                        SendResult::Failed {
                            id: c[5].id,
                            error: "unknown user".into(),
                        },
                    ],
                    t0 + 100,
                )
                .await
                .unwrap();
            let tag = format!("{ev:?}");
            store
                .apply_events(
                    "simulator",
                    &[
                        event(
                            &format!("{tag}-r3"),
                            Some(rc.id),
                            &c[3].chat_handle,
                            InboundKind::Read,
                            t0 + 150,
                        ),
                        event(
                            &format!("{tag}-a4"),
                            Some(rc.id),
                            &c[4].chat_handle,
                            answer("safe"),
                            t0 + 150,
                        ),
                    ],
                    None,
                    t0 + 200,
                )
                .await
                .unwrap();
            let states = || async {
                let all = store.recipients(rc.id).await.unwrap();
                c.iter()
                    .map(|d| {
                        let staff = &contacts
                            .iter()
                            .find(|x| x.chat.get("simulator") == Some(&d.chat_handle))
                            .unwrap()
                            .id;
                        all.iter().find(|r| &r.staff_id == staff).unwrap().state
                    })
                    .collect::<Vec<_>>()
            };
            use DeliveryState as S;
            let before = vec![
                S::Pending,
                S::Sending,
                S::Sent,
                S::Read,
                S::Answered,
                S::Failed,
            ];
            assert_eq!(states().await, before, "{name} {ev:?}: the starting states");

            let now = t0 + 70_000; // past the retry's time and the first claim's lease
            match ev {
                DeliveryEvent::Claimed => {
                    let again = store
                        .claim_due_deliveries("simulator", now, Duration::from_secs(60), 10)
                        .await
                        .unwrap();
                    assert_eq!(
                        again.len(),
                        2,
                        "{name}: the pending one and the lapsed claim"
                    );
                }
                DeliveryEvent::Accepted => {
                    let all: Vec<_> = (0..6).map(sent).collect();
                    store.record_send_results(&all, now).await.unwrap();
                }
                DeliveryEvent::Retried => {
                    let all: Vec<_> = (0..6).map(|i| retry(i, c[1].lease_until)).collect();
                    store.record_send_results(&all, now).await.unwrap();
                }
                DeliveryEvent::Refused => {
                    let all: Vec<_> = c
                        .iter()
                        .map(|d| SendResult::Failed {
                            id: d.id,
                            error: "refused".into(),
                        })
                        .collect();
                    store.record_send_results(&all, now).await.unwrap();
                }
                DeliveryEvent::Read | DeliveryEvent::Answered => {
                    let evs: Vec<_> = c
                        .iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let kind = if ev == DeliveryEvent::Read {
                                InboundKind::Read
                            } else {
                                answer("safe")
                            };
                            event(
                                &format!("{tag}-{i}"),
                                Some(rc.id),
                                &d.chat_handle,
                                kind,
                                now,
                            )
                        })
                        .collect();
                    store
                        .apply_events("simulator", &evs, None, now)
                        .await
                        .unwrap();
                }
                DeliveryEvent::Closed => {
                    assert!(store.close_roll_call(rc.id, now).await.unwrap());
                }
            }
            let want: Vec<_> = before.iter().map(|s| s.after(ev)).collect();
            assert_eq!(states().await, want, "{name} {ev:?}: as the table says");
            if ev != DeliveryEvent::Closed {
                store.close_roll_call(rc.id, now).await.unwrap();
            }
        }
    }
}

#[tokio::test]
async fn a_broadcast_is_recorded_once_and_its_first_record_stays() {
    use anpi::store::Broadcast;
    for (name, store, _db) in backends().await {
        let rc = seeded(&store, 5, None).await;
        assert_eq!(
            store
                .broadcast_done(rc.id, "lineworks", None)
                .await
                .unwrap(),
            None,
            "{name}"
        );
        let post = Broadcast {
            posted_at: 2_000,
            post_id: Some("post-1".into()),
        };
        assert!(store
            .record_broadcast(rc.id, "lineworks", None, &post)
            .await
            .unwrap());
        let room = Broadcast {
            posted_at: 2_500,
            post_id: None,
        };
        assert!(store
            .record_broadcast(rc.id, "lineworks", Some("総務課"), &room)
            .await
            .unwrap());
        // Recorded again (after a crash, or by a second worker): the first record stays.
        let again = Broadcast {
            posted_at: 9_000,
            post_id: Some("post-2".into()),
        };
        assert!(!store
            .record_broadcast(rc.id, "lineworks", None, &again)
            .await
            .unwrap());
        assert_eq!(
            store
                .broadcast_done(rc.id, "lineworks", None)
                .await
                .unwrap(),
            Some(post),
            "{name}"
        );
        assert_eq!(
            store
                .broadcast_done(rc.id, "lineworks", Some("総務課"))
                .await
                .unwrap(),
            Some(room),
            "{name}"
        );
        // Each post and room is its own: another room, or another provider, has none.
        assert_eq!(
            store
                .broadcast_done(rc.id, "lineworks", Some("消防"))
                .await
                .unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            store.broadcast_done(rc.id, "matrix", None).await.unwrap(),
            None,
            "{name}"
        );
    }
}

#[tokio::test]
async fn matrix_rooms_and_checks_round_trip_and_the_newest_check_is_the_last_sent() {
    use anpi::store::{MatrixCheck, MatrixRoom};
    for (name, store, _db) in backends().await {
        assert_eq!(store.matrix_room("@a:x").await.unwrap(), None, "{name}");
        store.set_matrix_room("@a:x", "!r1:x", 1).await.unwrap();
        store.set_matrix_room("@a:x", "!r2:x", 2).await.unwrap();
        store.set_matrix_left("@a:x", 3).await.unwrap();
        store.set_matrix_left("@b:x", 4).await.unwrap();
        assert_eq!(
            store.matrix_room("@a:x").await.unwrap(),
            Some(MatrixRoom {
                room_id: Some("!r2:x".into()),
                left_at: Some(3),
                encrypted_room: None,
            }),
            "{name}"
        );
        assert_eq!(
            store.matrix_room("@b:x").await.unwrap(),
            Some(MatrixRoom {
                room_id: None,
                left_at: Some(4),
                encrypted_room: None,
            }),
            "{name}: left is known without a room"
        );

        // Encrypted rooms: added one at a time, or replaced all at once.
        store
            .add_matrix_encrypted_room("@c:x", "!r3:x", 5)
            .await
            .unwrap();
        store
            .replace_matrix_encrypted_rooms(&[("@a:x".into(), "!r2:x".into())], 6)
            .await
            .unwrap();
        store
            .add_matrix_encrypted_room("@b:x", "!r4:x", 7)
            .await
            .unwrap();
        assert_eq!(
            store.matrix_encrypted_rooms().await.unwrap(),
            vec![
                ("@a:x".to_string(), "!r2:x".to_string()),
                ("@b:x".to_string(), "!r4:x".to_string()),
            ],
            "{name}"
        );
        assert_eq!(
            store
                .matrix_room("@a:x")
                .await
                .unwrap()
                .and_then(|r| r.room_id),
            Some("!r2:x".into()),
            "{name}: the DM room stays"
        );

        // Checks: recorded once, read by event id; the newest in a room is the last sent.
        let check = |event: &str, rc: i64, prev: Option<&str>, sent_at: Option<i64>| MatrixCheck {
            event_id: event.into(),
            room_id: Some("!r2:x".into()),
            roll_call_id: rc,
            to: sent_at.map(|_| "@a:x".to_string()),
            values: vec!["safe".into(), "injured".into()],
            origin_ts: None,
            prev: prev.map(String::from),
            sent_at,
        };
        assert_eq!(store.newest_matrix_check("!r2:x").await.unwrap(), None);
        let first = check("$1", 1, None, Some(10));
        assert!(store.record_matrix_check(&first).await.unwrap(), "{name}");
        let second = check("$2", 2, Some("$1"), Some(10));
        assert!(store.record_matrix_check(&second).await.unwrap());
        // A retried send names the same event: the record stays as it was.
        assert!(!store
            .record_matrix_check(&check("$1", 9, None, Some(11)))
            .await
            .unwrap());
        // A check learnt from the homeserver later is never the room's newest.
        let looked_up = check("$0", 3, None, None);
        assert!(store.record_matrix_check(&looked_up).await.unwrap());
        assert_eq!(
            store.matrix_check("$1").await.unwrap(),
            Some(first),
            "{name}"
        );
        assert_eq!(store.matrix_check("$0").await.unwrap(), Some(looked_up));
        assert_eq!(store.matrix_check("$9").await.unwrap(), None);
        assert_eq!(
            store.newest_matrix_check("!r2:x").await.unwrap(),
            Some(second.clone()),
            "{name}"
        );
        assert_eq!(store.newest_matrix_check("!other:x").await.unwrap(), None);
        store.set_matrix_check_ts("$2", 12_345).await.unwrap();
        assert_eq!(
            store
                .matrix_check("$2")
                .await
                .unwrap()
                .and_then(|c| c.origin_ts),
            Some(12_345),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_database_at_schema_0010_keeps_its_broadcasts_and_matrix_state() {
    use anpi::store::{Broadcast, MatrixRoom};
    for (name, store, db) in backends().await {
        let rc = seeded(&store, 5, None).await;
        drop(store);

        // Before migration 0011 these were provider state: set that up and open the database
        // with this version.
        db.execute("DROP TABLE broadcasts").await;
        db.execute("DROP TABLE matrix_checks").await;
        db.execute("DROP TABLE matrix_rooms").await;
        db.execute("DELETE FROM _sqlx_migrations WHERE version = 11")
            .await;
        db.execute(&format!(
            "INSERT INTO provider_state (provider, key, value, updated_at) VALUES \
             ('lineworks', 'broadcast/{id}', '{{\"at\":2000,\"post_id\":\"post-1\"}}', 2000), \
             ('lineworks', 'room/{id}/総務課', '{{\"at\":2500,\"post_id\":null}}', 2500), \
             ('lineworks', 'room/{id}/避難所:第一/小', '{{\"at\":2600}}', 2600), \
             ('simulator', 'broadcast/{id}', 'not a record', 1), \
             ('lineworks', 'buttons/{id}', '{{\"next\":3}}', 3000), \
             ('lineworks', 'observed_pace', '{{\"interval_ms\":250}}', 1), \
             ('matrix', 'room:@a:x', '!ra:x', 10), \
             ('matrix', 'room:@b:x', '!rb:x', 11), \
             ('matrix', 'left:@b:x', '1', 12), \
             ('matrix', 'encrypted_rooms', '{{\"@a:x\":\"!ra:x\",\"@d:x\":\"!rd:x\"}}', 13), \
             ('matrix', 'event:$1', \
              '{{\"rc\":{id},\"to\":\"@a:x\",\"values\":[\"safe\",\"injured\"],\"ts\":null,\"prev\":null}}', 20), \
             ('matrix', 'event:$2', \
              '{{\"rc\":{id},\"to\":\"@a:x\",\"values\":[],\"ts\":123,\"prev\":\"$1\"}}', 21), \
             ('matrix', 'event:$3', '{{\"rc\":{id}}}', 30), \
             ('matrix', 'latest:!ra:x', '$2', 21)",
            id = rc.id
        ))
        .await;
        let store = reopen(&db).await;

        assert_eq!(
            store
                .broadcast_done(rc.id, "lineworks", None)
                .await
                .unwrap(),
            Some(Broadcast {
                posted_at: 2_000,
                post_id: Some("post-1".into())
            }),
            "{name}"
        );
        for (group, at) in [("総務課", 2_500), ("避難所:第一/小", 2_600)] {
            assert_eq!(
                store
                    .broadcast_done(rc.id, "lineworks", Some(group))
                    .await
                    .unwrap(),
                Some(Broadcast {
                    posted_at: at,
                    post_id: None
                }),
                "{name}: {group}"
            );
        }
        assert_eq!(
            store
                .broadcast_done(rc.id, "simulator", None)
                .await
                .unwrap(),
            None,
            "{name}: what never counted as a record stays none"
        );
        assert_eq!(
            store.matrix_room("@b:x").await.unwrap(),
            Some(MatrixRoom {
                room_id: Some("!rb:x".into()),
                left_at: Some(12),
                encrypted_room: None,
            }),
            "{name}"
        );
        assert_eq!(
            store.matrix_encrypted_rooms().await.unwrap(),
            vec![
                ("@a:x".to_string(), "!ra:x".to_string()),
                ("@d:x".to_string(), "!rd:x".to_string()),
            ],
            "{name}"
        );
        let newest = store.newest_matrix_check("!ra:x").await.unwrap().unwrap();
        assert_eq!(
            (
                newest.event_id.as_str(),
                newest.origin_ts,
                newest.prev.as_deref()
            ),
            ("$2", Some(123), Some("$1")),
            "{name}: the room's latest check is still its newest"
        );
        let first = store.matrix_check("$1").await.unwrap().unwrap();
        assert_eq!(
            (
                first.roll_call_id,
                first.to.as_deref(),
                first.values.clone()
            ),
            (
                rc.id.0,
                Some("@a:x"),
                vec!["safe".to_string(), "injured".to_string()]
            ),
            "{name}"
        );
        assert_eq!(first.room_id.as_deref(), Some("!ra:x"), "{name}");
        let looked_up = store.matrix_check("$3").await.unwrap().unwrap();
        assert_eq!(
            (looked_up.room_id, looked_up.sent_at),
            (None, None),
            "{name}: a check learnt from the homeserver is never a room's newest"
        );

        // Moved keys are gone; what is provider-wide stays, and so does a wave's progress
        // here (migration 0012 moves it, and this database is recorded as having run it).
        for (provider, key) in [
            ("lineworks", format!("broadcast/{}", rc.id)),
            ("lineworks", format!("room/{}/総務課", rc.id)),
            ("simulator", format!("broadcast/{}", rc.id)),
            ("matrix", "room:@a:x".to_string()),
            ("matrix", "left:@b:x".to_string()),
            ("matrix", "encrypted_rooms".to_string()),
            ("matrix", "event:$1".to_string()),
            ("matrix", "latest:!ra:x".to_string()),
        ] {
            assert_eq!(
                store.provider_state(provider, &key).await.unwrap(),
                None,
                "{name}: {provider} {key}"
            );
        }
        for (provider, key) in [
            ("lineworks", format!("buttons/{}", rc.id)),
            ("lineworks", "observed_pace".to_string()),
        ] {
            assert!(
                store
                    .provider_state(provider, &key)
                    .await
                    .unwrap()
                    .is_some(),
                "{name}: {provider} {key}"
            );
        }
    }
}

#[tokio::test]
async fn a_database_at_schema_0011_keeps_its_button_waves_and_mail_decisions() {
    for (name, store, db) in backends().await {
        let rc = seeded(&store, 5, None).await;
        let other = seeded(&store, 3, Some("another")).await;
        drop(store);

        // Before migration 0012 these were provider state: set that up and open the database
        // with this version.
        db.execute("DROP TABLE roll_call_work").await;
        db.execute("DELETE FROM _sqlx_migrations WHERE version = 12")
            .await;
        db.execute(&format!(
            "INSERT INTO provider_state (provider, key, value, updated_at) VALUES \
             ('simulator', 'buttons/{id}', '{{\"next\":3,\"sent\":3}}', 3000), \
             ('email', 'rollcall:{id}', 'decided: 4 mails, list true at 9000', 9000), \
             ('simulator', 'observed_pace', '{{\"interval_ms\":250}}', 1)",
            id = rc.id
        ))
        .await;
        let store = reopen(&db).await;

        let wave: anpi::dispatch::WaveState =
            serde_json::from_str(&store.button_wave(rc.id).await.unwrap().unwrap()).unwrap();
        assert_eq!((wave.next, wave.sent, wave.done), (3, 3, false), "{name}");
        assert_eq!(
            store.mail_decided(rc.id).await.unwrap().as_deref(),
            Some("decided: 4 mails, list true at 9000"),
            "{name}"
        );
        assert_eq!(store.button_wave(other.id).await.unwrap(), None, "{name}");
        assert_eq!(store.mail_decided(other.id).await.unwrap(), None, "{name}");
        for (provider, key) in [
            ("simulator", format!("buttons/{}", rc.id)),
            ("email", format!("rollcall:{}", rc.id)),
        ] {
            assert_eq!(
                store.provider_state(provider, &key).await.unwrap(),
                None,
                "{name}: {provider} {key} moved"
            );
        }
        assert!(
            store
                .provider_state("simulator", "observed_pace")
                .await
                .unwrap()
                .is_some(),
            "{name}: provider-wide state stays"
        );
    }
}

#[tokio::test]
async fn deadline_mails_and_their_decision_are_written_together() {
    for (name, store, _db) in backends().await {
        let rc = seeded(&store, 3, None).await;
        assert_eq!(store.mail_decided(rc.id).await.unwrap(), None, "{name}");
        let mail = anpi::email::NewMail {
            kind: "deadline_hq".into(),
            dedupe_key: format!("deadline_hq:{}", rc.id),
            roll_call_id: Some(rc.id),
            to: vec!["hq@city.example.jp".into()],
            subject: "要対応 3名".into(),
            body: "本文".into(),
            csv: None,
            meta: None,
        };
        let new = store
            .decide_mails(
                rc.id,
                std::slice::from_ref(&mail),
                "decided: 1 mails",
                10,
                20,
            )
            .await
            .unwrap();
        assert_eq!(new, 1, "{name}");
        assert_eq!(
            store.mail_decided(rc.id).await.unwrap().as_deref(),
            Some("decided: 1 mails"),
            "{name}"
        );
        // Deciding again (another replica, a restart) writes no second mail, and the first
        // decision's note stays.
        let again = store
            .decide_mails(rc.id, &[mail], "decided again", 30, 40)
            .await
            .unwrap();
        assert_eq!(again, 0, "{name}");
        assert_eq!(
            store.mail_decided(rc.id).await.unwrap().as_deref(),
            Some("decided: 1 mails"),
            "{name}"
        );
        // A button wave's progress is its own value beside the decision.
        assert_eq!(store.button_wave(rc.id).await.unwrap(), None, "{name}");
        store
            .set_button_wave(rc.id, r#"{"next":50}"#)
            .await
            .unwrap();
        store
            .set_button_wave(rc.id, r#"{"next":100}"#)
            .await
            .unwrap();
        assert_eq!(
            store.button_wave(rc.id).await.unwrap().as_deref(),
            Some(r#"{"next":100}"#),
            "{name}"
        );
        assert_eq!(
            store.mail_decided(rc.id).await.unwrap().as_deref(),
            Some("decided: 1 mails"),
            "{name}"
        );
        assert_eq!(store.mails(Some(rc.id)).await.unwrap().len(), 1, "{name}");
    }
}

#[tokio::test]
async fn a_roll_call_of_many_chunks_is_written_whole_or_not_at_all() {
    for (name, store, _db) in backends().await {
        // More rows than one insert statement takes on either backend.
        let contacts = synthetic::generate(25_000, 3).contacts;
        let (new, mut rec) = rollcall::compose(&scenario(), &contacts, "simulator", None, None);
        let whole = store.create_roll_call(&new, &rec, 1_000).await.unwrap();
        assert_eq!(
            store.recipients(whole.id).await.unwrap().len(),
            25_000,
            "{name}"
        );

        // The same person twice, in the last chunk: the whole roll call is refused and
        // nothing of it stays, not even the chunks written before.
        let before = store.roll_calls().await.unwrap().len();
        rec.push(rec[0].clone());
        let (again, _) = rollcall::compose(
            &scenario(),
            &contacts,
            "simulator",
            None,
            Some("twice".into()),
        );
        assert!(
            store.create_roll_call(&again, &rec, 2_000).await.is_err(),
            "{name}"
        );
        assert_eq!(store.roll_calls().await.unwrap().len(), before, "{name}");
        assert_eq!(
            store
                .claim_due_deliveries("simulator", 3_000, Duration::from_secs(60), 100_000)
                .await
                .unwrap()
                .len(),
            25_000,
            "{name}: only the first roll call's rows are there"
        );
    }
}

/// Makes deliveries of whoever `keep` picks, counting what it was given.
struct Picker {
    keep: fn(&anpi::contacts::Contact) -> bool,
    seen: Vec<String>,
    pages: usize,
    finished: bool,
    write: bool,
}

impl Picker {
    fn new(keep: fn(&anpi::contacts::Contact) -> bool, write: bool) -> Self {
        Self {
            keep,
            seen: Vec::new(),
            pages: 0,
            finished: false,
            write,
        }
    }
}

impl rollcall::DeliveryComposer for Picker {
    fn page(&mut self, contacts: Vec<anpi::contacts::Contact>) -> Vec<rollcall::NewDelivery> {
        self.pages += 1;
        self.seen.extend(contacts.iter().map(|c| c.id.to_string()));
        contacts
            .iter()
            .filter(|c| (self.keep)(c))
            .map(|c| rollcall::NewDelivery::from_contact(c, "simulator"))
            .collect()
    }

    fn finish(&mut self) -> Option<rollcall::Composed> {
        self.finished = true;
        self.write.then(|| rollcall::Composed {
            dispatch_plan: Some(r#"{"route":"direct"}"#.into()),
        })
    }
}

#[tokio::test]
async fn a_roll_call_made_from_the_directory_page_by_page_has_everyone_once_in_id_order() {
    for (name, store, _db) in backends().await {
        // More than two pages of the directory, and more rows than one insert takes.
        let contacts = synthetic::generate(25_000, 4).contacts;
        store.replace_contacts(&contacts, 500).await.unwrap();
        let mut ids: Vec<String> = contacts.iter().map(|c| c.id.to_string()).collect();
        ids.sort();
        let staff = |c: &anpi::contacts::Contact| c.kind == ContactKind::Staff;
        let expected: Vec<String> = {
            let mut e: Vec<_> = contacts
                .iter()
                .filter(|c| staff(c))
                .map(|c| c.id.to_string())
                .collect();
            e.sort();
            e
        };
        assert!(
            expected.len() < ids.len(),
            "{name}: the test needs some left out"
        );

        let (new, _) =
            rollcall::compose(&scenario(), &contacts, "simulator", None, Some("k".into()));
        let mut picker = Picker::new(staff, true);
        let rc = store
            .start_roll_call(&new, &mut picker, 1_000)
            .await
            .unwrap()
            .expect("written");
        assert_eq!(picker.seen, ids, "{name}: every contact once, in id order");
        assert_eq!(picker.pages, 3, "{name}");
        assert!(picker.finished, "{name}");
        assert_eq!(rc.recipients as usize, expected.len(), "{name}");
        assert_eq!(
            rc.dispatch_plan.as_deref(),
            Some(r#"{"route":"direct"}"#),
            "{name}"
        );
        let mut written: Vec<String> = store
            .recipients(rc.id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.staff_id.to_string())
            .collect();
        written.sort();
        assert_eq!(written, expected, "{name}: the audience, each once");
        let mut by_row = store.chat_recipients(rc.id).await.unwrap();
        assert!(by_row.len() > expected.len() / 2, "{name}");
        by_row.sort_by_key(|r| r.delivery_id);
        assert!(
            by_row.windows(2).all(|w| w[0].staff_id < w[1].staff_id),
            "{name}: rows written in the directory's order"
        );

        // The same key again: the first roll call, and the directory is not read.
        let mut again = Picker::new(staff, true);
        let same = store
            .start_roll_call(&new, &mut again, 3_000)
            .await
            .unwrap()
            .expect("the first one");
        assert_eq!(same.id, rc.id, "{name}");
        assert!(again.seen.is_empty() && !again.finished, "{name}");

        // A composer that decides, after the last page, to write nothing: nothing is written.
        let before = store.roll_calls().await.unwrap().len();
        let (other, _) = rollcall::compose(&scenario(), &contacts, "simulator", None, None);
        let mut declines = Picker::new(staff, false);
        assert!(store
            .start_roll_call(&other, &mut declines, 4_000)
            .await
            .unwrap()
            .is_none());
        assert_eq!(declines.seen.len(), ids.len(), "{name}");
        assert_eq!(store.roll_calls().await.unwrap().len(), before, "{name}");
    }
}
