//! A platform that fails: 503s, 429s with Retry-After, slow answers, unknown users, and a
//! rate limit. Everyone still ends sent or on the call list with the reason, and the limit is
//! never exceeded by anpi.

use std::collections::BTreeSet;
use std::time::Duration;

use anpi::contacts::synthetic;
use anpi::rollcall::EscalationReason;
use anpi::simulator::{Behaviour, Faults, Script};

use crate::support::*;

#[tokio::test]
async fn with_5xx_429_and_slow_answers_everyone_ends_sent_or_on_the_list() {
    let contacts = synthetic::generate(300, 21).contacts;
    let hs = handles(&contacts);
    let mut script = Script::default();
    let mut unknown = BTreeSet::new();
    for (c, h) in contacts.iter().zip(&hs).step_by(50) {
        script.insert(
            h.clone(),
            Behaviour {
                unknown: true,
                ..Behaviour::default()
            },
        );
        unknown.insert(c.id.to_string());
    }
    // A 600-a-minute platform at 60x: 600 sends a real second at most.
    let app = spawn_app_with(Options {
        contacts,
        script,
        faults: Faults {
            server_error_share: 0.15,
            forced_429_share: 0.05,
            slow_share: 0.05,
            slow_delay: Duration::from_millis(300),
            seed: 5,
        },
        sim_rate_limit_per_minute: 600,
        provider_rate_limit_per_minute: 600,
        clock: TestClock::Scaled(60.0),
        extra_config: String::new(),
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    let p = app.all_sent(rc.id).await;
    assert_eq!(p.overall.total, 300);
    assert_eq!(p.overall.sent + p.overall.failed, 300, "{:?}", p.overall);
    assert_eq!(p.overall.failed as usize, unknown.len());
    let failed: BTreeSet<String> = app
        .call_list(rc.id)
        .await
        .into_iter()
        .filter(|e| e.reason == Some(EscalationReason::SendFailed))
        .map(|e| e.staff_id.to_string())
        .collect();
    assert_eq!(failed, unknown);
    let stats = app.sim.stats();
    assert!(
        stats.server_errors > 0 && stats.forced_429 > 0,
        "faults were injected: {stats:?}"
    );
    assert_eq!(
        stats.limit_exceeded, 0,
        "anpi exceeded the rate limit: {stats:?}"
    );
    assert!(stats.max_in_window <= 600);
    assert_eq!(stats.duplicates, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_platform_that_never_recovers_puts_everyone_on_the_list_as_send_failed() {
    let contacts = synthetic::generate(5, 2).contacts;
    let app = spawn_app_with(Options {
        contacts,
        faults: Faults {
            server_error_share: 1.0,
            ..Faults::default()
        },
        clock: TestClock::Scaled(600.0),
        extra_config: "[dispatch]\nmax_attempts = 3\nretry_schedule = [\"1s\", \"2s\"]\n".into(),
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    let p = app
        .wait_for(rc.id, "give up", |p| p.overall.failed == 5)
        .await;
    assert_eq!(p.overall.to_call, 5);
    for e in app.call_list(rc.id).await {
        assert_eq!(e.reason, Some(EscalationReason::SendFailed));
        assert!(
            e.last_error
                .as_deref()
                .unwrap_or("")
                .contains("gave up after 3 attempts"),
            "{:?}",
            e.last_error
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn stopping_mid_dispatch_records_what_went_out_and_hands_back_the_rest() {
    // Every answer takes 150 ms: the stop comes with sends in flight and claimed deliveries
    // queued behind them.
    let mut app = spawn_app_with(Options {
        contacts: synthetic::generate(400, 9).contacts,
        faults: Faults {
            slow_share: 1.0,
            slow_delay: Duration::from_millis(150),
            ..Faults::default()
        },
        clock: TestClock::Scaled(1.0),
        extra_config: "[dispatch]\nbatch_size = 100\n".into(),
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    app.wait_for(rc.id, "some sent", |p| p.overall.sent >= 20)
        .await;
    app.stop().await;
    let p = app.store.progress(rc.id).await.unwrap().overall;
    assert_eq!(p.sending, 0, "deliveries left claimed after a stop: {p:?}");
    assert!(
        p.pending > 0,
        "the stop came after everything was sent: {p:?}"
    );
    assert_eq!(
        p.sent,
        app.sim.stats().accepted as i64,
        "every message that went out is recorded as sent: {p:?}"
    );
    assert_eq!(p.sent + p.pending, 400, "{p:?}");
}

#[tokio::test]
async fn what_is_claimed_is_sent_while_the_database_keeps_a_recording_waiting() {
    // Another process takes SQLite's write lock right after the first claim, before any
    // message has been recorded: every recording waits for it. The messages already claimed
    // must still go out meanwhile, none held back behind a recording.
    use sqlx::{Connection, Executor};
    let app = spawn_app_with(Options {
        contacts: synthetic::generate(600, 11).contacts,
        faults: Faults {
            slow_share: 1.0,
            slow_delay: Duration::from_millis(200),
            ..Faults::default()
        },
        clock: TestClock::Scaled(1.0),
        extra_config: "[dispatch]\nbatch_size = 400\n".into(),
        ..Options::default()
    })
    .await;
    let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.db_path.display()))
        .await
        .unwrap();
    let rc = app.start(&scenario()).await;
    let claimed =
        || sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM deliveries WHERE attempts > 0");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // Each answer takes 200 ms, so nothing can have been recorded this soon after the claim.
    while claimed().fetch_one(&mut other).await.unwrap() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was claimed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    let sent = app.store.progress(rc.id).await.unwrap().overall.sent;
    assert_eq!(
        sent, 0,
        "a group was recorded before the database was locked"
    );
    let claimed = claimed().fetch_one(&mut other).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while (app.sim.stats().accepted as i64) < claimed {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of the {claimed} claimed messages went out while the recording waited",
            app.sim.stats().accepted
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    other.execute("ROLLBACK").await.unwrap();
    let p = app.all_sent(rc.id).await.overall;
    assert_eq!(p.sent, 600, "{p:?}");
    assert_eq!(app.sim.stats().duplicates, 0);
    app.shutdown().await;
}
