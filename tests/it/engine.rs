//! The roll call end to end, in process, on a manual clock: who lands on the call list, who
//! leaves it, and when.

use std::collections::BTreeSet;
use std::time::Duration;

use anpi::contacts::synthetic;
use anpi::rollcall::{CallOutcome, DeliveryState, EscalationReason};
use anpi::simulator::{Behaviour, Script, SimAnswer};

use crate::support::*;

#[tokio::test]
async fn call_list_is_exactly_the_unread_at_their_deadline_and_late_readers_leave_it() {
    call_list_is_exactly_the_unread(TestDatabase::SqliteFile).await;
}

#[tokio::test]
async fn on_postgres_call_list_is_exactly_the_unread_at_their_deadline_and_late_readers_leave_it() {
    let Some(pg) = pg_url_or_skip().await else {
        return;
    };
    call_list_is_exactly_the_unread(TestDatabase::Postgres(pg)).await;
}

async fn call_list_is_exactly_the_unread(database: TestDatabase) {
    let contacts = synthetic::generate(200, 7).contacts;
    let hs = handles(&contacts);
    let mut script = Script::default();
    let mut early = BTreeSet::new();
    let mut late = BTreeSet::new();
    let mut never = BTreeSet::new();
    for (i, (c, h)) in contacts.iter().zip(&hs).enumerate() {
        let id = c.id.to_string();
        match i % 5 {
            // Read at 2 min, well before the deadline.
            0 | 1 => {
                script.insert(h.clone(), read_after(mins(2)));
                early.insert(id);
            }
            // Read at 4m59s: just in time.
            2 => {
                script.insert(h.clone(), read_after(Duration::from_secs(299)));
                early.insert(id);
            }
            // Read at 7 min: late, after escalation.
            3 if i % 2 == 0 => {
                script.insert(h.clone(), read_after(mins(7)));
                late.insert(id);
            }
            // Never read.
            _ => {
                never.insert(id);
            }
        }
    }
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        script,
        database,
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    assert_eq!(rc.recipients, 200);
    let p = app.all_sent(rc.id).await;
    assert_eq!(p.overall.sent, 200, "{:?}", p.overall);
    assert_eq!(app.sim.stats().accepted, 200);

    app.advance(Duration::from_secs(299));
    let n_early = early.len() as i64;
    app.wait_for(rc.id, "early readers", |p| p.overall.read == n_early)
        .await;
    assert!(
        app.to_call_ids(rc.id).await.is_empty(),
        "nobody escalated before the deadline"
    );

    // One second past the deadline: exactly the late and the never readers.
    app.advance(Duration::from_secs(2));
    let expected: Vec<String> = late.union(&never).cloned().collect();
    let n_expected = expected.len() as i64;
    app.wait_for(rc.id, "escalation", |p| p.overall.escalated == n_expected)
        .await;
    assert_eq!(app.to_call_ids(rc.id).await, expected);
    for e in app.call_list(rc.id).await {
        assert_eq!(e.reason, Some(EscalationReason::NeverRead));
        assert!(!e.phones.is_empty(), "the call list carries phone numbers");
    }

    // The late readers read at 7 min and leave the list; the rest stay.
    app.advance(mins(2));
    let n_never = never.len() as i64;
    app.wait_for(rc.id, "late reads", |p| p.overall.to_call == n_never)
        .await;
    assert_eq!(
        app.to_call_ids(rc.id).await,
        never.iter().cloned().collect::<Vec<_>>()
    );
    // They stay visible as escalated-then-read.
    let all = app.call_list(rc.id).await;
    let late_entries: Vec<_> = all
        .iter()
        .filter(|e| late.contains(e.staff_id.as_str()))
        .collect();
    assert_eq!(late_entries.len(), late.len());
    assert!(late_entries.iter().all(|e| e.state == DeliveryState::Read));

    // A call outcome closes the entry; "no answer" keeps it.
    let mut it = never.iter();
    let reached = it.next().unwrap().parse().unwrap();
    let no_answer = it.next().unwrap().parse().unwrap();
    app.hq
        .record_outcome(rc.id, &reached, CallOutcome::ReachedSafe, "caller#1")
        .await
        .unwrap();
    let e = app
        .hq
        .record_outcome(rc.id, &no_answer, CallOutcome::NoAnswer, "caller#1")
        .await
        .unwrap();
    assert!(e.to_call());
    let to_call = app.to_call_ids(rc.id).await;
    assert_eq!(to_call.len(), never.len() - 1);
    assert!(!to_call.contains(&reached.to_string()));
    assert!(to_call.contains(&no_answer.to_string()));
    assert_eq!(app.sim.stats().duplicates, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn answers_and_stickers_confirm_and_are_logged() {
    let contacts = synthetic::generate(30, 3).contacts;
    let hs = handles(&contacts);
    let mut script = Script::default();
    script.insert(
        hs[0].clone(),
        Behaviour {
            answer: Some((mins(1), SimAnswer::Button("injured".into()))),
            ..Behaviour::default()
        },
    );
    script.insert(
        hs[1].clone(),
        Behaviour {
            answer: Some((mins(1), SimAnswer::Sticker("sticker-42".into()))),
            ..Behaviour::default()
        },
    );
    script.insert(
        hs[2].clone(),
        Behaviour {
            read_after: Some(mins(1)),
            answer: Some((mins(2), SimAnswer::Reply("家族も無事です".into()))),
            ..Behaviour::default()
        },
    );
    let app = spawn_app_with(Options {
        contacts,
        script,
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(3));
    let p = app
        .wait_for(rc.id, "three answers", |p| p.overall.answered == 3)
        .await;
    assert_eq!(p.answers.get("injured"), Some(&1));
    assert_eq!(p.answers.get("sticker"), Some(&1));
    // Free text is counted as "text"; its words are on the entry, verbatim.
    assert_eq!(p.answers.get("text"), Some(&1));
    let events = app.store.events(rc.id, 100).await.unwrap();
    let kinds: BTreeSet<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains("answer") && kinds.contains("sticker") && kinds.contains("reply"));
    assert!(events
        .iter()
        .any(|e| e.value.as_deref() == Some("家族も無事です")));
    // Past the deadline, the three are not called.
    app.advance(mins(3));
    app.wait_for(rc.id, "escalation", |p| p.overall.escalated == 27)
        .await;
    app.shutdown().await;
}

#[tokio::test]
async fn each_deadline_counts_from_when_that_message_went_out() {
    // A platform allowing 6 sends a minute: the second message goes out about 11 s after the
    // first, and its deadline is 11 s later too.
    let contacts = synthetic::generate(2, 11).contacts;
    let app = spawn_app_with(Options {
        contacts,
        provider_rate_limit_per_minute: 6,
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    app.wait_for(rc.id, "first send", |p| p.overall.sent == 1)
        .await;
    for _ in 0..4 {
        app.advance(Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = app.all_sent(rc.id).await;
    assert_eq!(p.overall.sent, 2);
    let list =
        anpi::store::sqlite::SqliteStore::connect(&format!("sqlite://{}", app.db_path.display()))
            .await
            .unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT sent_at, deadline_at FROM deliveries WHERE roll_call_id = $1 ORDER BY sent_at",
    )
    .bind(rc.id.0)
    .fetch_all(list.pool())
    .await
    .unwrap();
    let (first_sent, first_deadline) = rows[0];
    let (second_sent, second_deadline) = rows[1];
    assert!(second_sent - first_sent >= 10_000, "{rows:?}");
    assert_eq!(first_deadline - first_sent, 300_000);
    assert_eq!(second_deadline - second_sent, 300_000);

    // At the first deadline only the first person is escalated.
    let start = rc.created_at;
    let now = app.now().timestamp_millis();
    app.advance(Duration::from_millis((first_deadline - now + 1) as u64));
    app.wait_for(rc.id, "first escalation", |p| p.overall.escalated == 1)
        .await;
    assert!(second_deadline > app.now().timestamp_millis());
    app.advance(Duration::from_millis(
        (second_deadline - first_deadline) as u64,
    ));
    app.wait_for(rc.id, "second escalation", |p| p.overall.escalated == 2)
        .await;
    assert!(first_sent >= start);
    app.shutdown().await;
}

#[tokio::test]
async fn unknown_user_and_missing_chat_id_are_on_the_list_at_once_with_the_reason() {
    let mut contacts = synthetic::generate(10, 5).contacts;
    // No chat id on this platform, but a phone.
    contacts[0].chat.clear();
    let hs = handles(&contacts[1..]);
    let mut script = Script::default();
    script.insert(
        hs[0].clone(),
        Behaviour {
            unknown: true,
            ..Behaviour::default()
        },
    );
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        script,
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    let p = app.all_sent(rc.id).await;
    assert_eq!(p.overall.failed, 2);
    assert_eq!(p.overall.to_call, 2, "no waiting 5 minutes for them");
    let list = app.call_list(rc.id).await;
    let reasons: BTreeSet<_> = list.iter().filter_map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        BTreeSet::from([EscalationReason::NoChatId, EscalationReason::SendFailed])
    );
    let failed = list
        .iter()
        .find(|e| e.reason == Some(EscalationReason::SendFailed))
        .unwrap();
    assert_eq!(failed.staff_id, contacts[1].id);
    assert!(failed
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("unknown"));
    // Nobody without a chat id was sent anything; everyone else exactly once.
    assert_eq!(app.sim.stats().accepted, 8);
    app.shutdown().await;
}

#[tokio::test]
async fn duplicate_and_out_of_order_events_change_nothing() {
    use anpi::providers::{InboundEvent, InboundKind};
    let contacts = synthetic::generate(3, 9).contacts;
    let hs = handles(&contacts);
    let app = spawn_app_with(Options {
        contacts,
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    let t = app.now();
    let ev = |id: &str, kind: InboundKind, secs: i64| InboundEvent {
        event_id: id.into(),
        roll_call_id: Some(rc.id),
        from: hs[0].clone(),
        kind,
        occurred_at: t + chrono::Duration::seconds(secs),
    };
    let answer = ev(
        "a1",
        InboundKind::Answer {
            value: "safe".into(),
        },
        30,
    );
    let read = ev("r1", InboundKind::Read, 10);
    // The answer arrives first, the earlier read after it, then both again; all of them a
    // minute after they happened (a stored time is never later than its receipt).
    let s = app.store.clone();
    let now = app.now().timestamp_millis() + 60_000;
    s.apply_events("simulator", std::slice::from_ref(&answer), None, now)
        .await
        .unwrap();
    s.apply_events("simulator", std::slice::from_ref(&read), None, now)
        .await
        .unwrap();
    let again = s
        .apply_events("simulator", &[answer.clone(), read.clone()], None, now)
        .await
        .unwrap();
    assert_eq!(again.logged, 0, "replays are not logged twice");
    let p = app.progress(rc.id).await;
    assert_eq!(p.overall.answered, 1);
    assert_eq!(p.overall.read, 0, "an answer is never demoted to read");
    assert_eq!(p.answers.get("safe"), Some(&1));
    // An older answer arriving late does not overwrite the newer one as the latest; being
    // more severe, it is the answer that stands.
    let older = ev(
        "a0",
        InboundKind::Answer {
            value: "injured".into(),
        },
        20,
    );
    s.apply_events("simulator", &[older], None, now)
        .await
        .unwrap();
    let p = app.progress(rc.id).await;
    assert_eq!(p.answers.get("injured"), Some(&1));
    assert_eq!(p.answers.get("safe"), None);
    let list = app.store.call_list(rc.id).await.unwrap();
    assert_eq!(list.len(), 1, "an urgent answer is on the action list");
    assert_eq!(list[0].answer.as_deref(), Some("safe"), "the latest answer");
    assert_eq!(
        list[0].standing.as_ref().map(|a| a.value.as_str()),
        Some("injured")
    );
    let older_safe = ev(
        "a00",
        InboundKind::Answer {
            value: "safe".into(),
        },
        10,
    );
    s.apply_events("simulator", &[older_safe], None, now)
        .await
        .unwrap();
    let list = app.store.call_list(rc.id).await.unwrap();
    assert_eq!(list[0].answer.as_deref(), Some("safe"));
    assert_eq!(app.store.events(rc.id, 10).await.unwrap().len(), 4);
    app.shutdown().await;
}
