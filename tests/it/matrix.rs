//! The Matrix provider against a real Synapse: a roll call whose call list is exactly the people
//! with no visible confirmation, receipts posted while anpi is down picked up after a restart
//! (with its sync position, and with it lost), and a roll call under Synapse's default rate limits with no message posted twice.
//!
//! Each test starts its own Synapse (see `synapse_support`); without one installed they are
//! skipped outside CI and fail in CI.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anpi::ids::RollCallId;
use anpi::providers::{ChatProvider, OutboundMessage, ProviderError, Sent};
use anpi::rollcall::Progress;
use anpi::scenario::Scenario;

use crate::synapse_support::*;

/// The shortest deadline a scenario may have, so the real clock passes it in the test.
fn scenario(deadline: &str) -> Scenario {
    Scenario::parse(
        &format!(
            r#"
name = "matrix-test"
title = "テスト 安否確認"
deadline = "{deadline}"
[message]
ja = "【安否確認】地震がありました。"
en = "Safety check: an earthquake."
[[buttons]]
label = "無事 / Safe"
value = "safe"
[[buttons]]
label = "負傷 / Injured"
value = "injured"
"#
        ),
        "matrix-test.toml",
    )
    .expect("test scenario parses")
}

/// Polls `cond` on the roll call's progress until it holds (a hang guard of `limit`).
async fn wait_for(
    app: &MatrixApp,
    id: RollCallId,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Progress) -> bool,
) -> Progress {
    let end = Instant::now() + limit;
    loop {
        let p = app.hq.status(id).await.expect("status").progress;
        if cond(&p) {
            return p;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; progress: {:?}",
            p.overall
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The check anpi posted in `room`, as the person's phone sees it.
async fn check_in(user: &MatrixUser, room: &str, bot: &str) -> String {
    let msgs = user.messages_from(room, bot).await;
    assert_eq!(msgs.len(), 1, "one check in {room}: {msgs:?}");
    msgs[0]["event_id"].as_str().unwrap().to_string()
}

/// Sends as the dispatcher would retry it: after each 429, when the homeserver says.
async fn send_waiting_out_429(provider: &impl ChatProvider, msg: &OutboundMessage) -> Sent {
    loop {
        match provider.send(msg).await {
            Ok(s) => return s,
            Err(ProviderError::RateLimited { reset }) => tokio::time::sleep(reset).await,
            Err(e) => panic!("{e}"),
        }
    }
}

async fn staff_ids_to_call(app: &MatrixApp, id: RollCallId) -> Vec<String> {
    let mut v: Vec<String> = app
        .hq
        .call_list(id)
        .await
        .expect("call list")
        .into_iter()
        .filter(|e| e.to_call())
        .map(|e| e.staff_id.to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_list_is_exactly_those_with_no_visible_confirmation() {
    let Some(mut w) = World::new(20, 11, Limits::Relaxed).await else {
        return;
    };
    let (app, bot, contacts, people, rooms) = (&w.app, &w.bot, &w.contacts, &w.people, &w.rooms);
    // Running prepare again creates nothing new.
    assert_eq!(prepare(app).await.existing, 20);

    let rc = app.hq.start(&scenario("30s"), None, None).await.unwrap().0;
    assert_eq!(rc.recipients, 20);
    wait_for(app, rc.id, "everyone sent", Duration::from_secs(30), |p| {
        p.overall.sent + p.overall.read + p.overall.answered == 20
    })
    .await;

    let mut confirmed = BTreeSet::new();
    let mut unconfirmed = BTreeSet::new();
    for (i, ((c, p), room)) in contacts
        .iter()
        .zip(people.iter())
        .zip(rooms.iter())
        .enumerate()
    {
        let check = check_in(p, room, &bot.user_id).await;
        let id = c.id.to_string();
        match i % 6 {
            // A public receipt on the check, with or without a thread id.
            0 => {
                let thread = (i % 12 == 0).then_some("main");
                p.receipt(room, &check, "m.read", thread).await;
                confirmed.insert(id);
            }
            // A private receipt: the bot cannot see it, so this person is called.
            1 => {
                p.receipt(room, &check, "m.read.private", None).await;
                unconfirmed.insert(id);
            }
            // Only a reaction.
            2 => {
                p.react(room, &check, "👍").await;
                confirmed.insert(id);
            }
            // Only a reply (no receipt).
            3 => {
                p.say(
                    room,
                    if i % 12 == 3 {
                        "1"
                    } else {
                        "家族も無事です"
                    },
                )
                .await;
                confirmed.insert(id);
            }
            // A receipt on a later message in the room: receipts name the newest event read.
            4 => {
                let later = bot.say(room, "追伸: 集合場所は市役所です。").await;
                p.receipt(room, &later, "m.read", None).await;
                confirmed.insert(id);
            }
            // Nothing at all.
            _ => {
                unconfirmed.insert(id);
            }
        }
    }
    let n_confirmed = confirmed.len() as i64;
    wait_for(
        app,
        rc.id,
        "every visible confirmation",
        Duration::from_secs(30),
        |p| p.overall.read + p.overall.answered == n_confirmed,
    )
    .await;

    // The 30 s deadline passes on the real clock.
    let n_unconfirmed = unconfirmed.len() as i64;
    let p = wait_for(
        app,
        rc.id,
        "escalation at the deadline",
        Duration::from_secs(60),
        |p| p.overall.escalated == n_unconfirmed,
    )
    .await;
    assert_eq!(p.overall.read + p.overall.answered, n_confirmed);
    assert_eq!(
        staff_ids_to_call(app, rc.id).await,
        unconfirmed.iter().cloned().collect::<Vec<_>>()
    );
    // Replies with an option number are recorded as that answer.
    let events = app.store.events(rc.id, 1000).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "answer" && e.value.as_deref() == Some("safe")),
        "a reply \"1\" is the answer \"safe\": {events:?}"
    );
    assert!(events.iter().any(|e| e.kind == "sticker"));
    assert!(events.iter().any(|e| e.kind == "reply"));
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_posted_while_anpi_is_down_are_picked_up_after_restart() {
    let Some(mut w) = World::new(7, 12, Limits::Relaxed).await else {
        return;
    };
    let (bot, people, rooms) = (&w.bot, &w.people, &w.rooms);
    // From here the real daemon runs, as a process that is killed with SIGKILL; the test
    // keeps its in-process HQ only to write the roll call and read progress from the file.
    w.app.shutdown().await;
    let rc = w.app.hq.start(&scenario("5m"), None, None).await.unwrap().0;
    let log = w.dir.path().join("anpi.log");
    let mut daemon = crate::crash::spawn_daemon(&w.config_path, &log);
    wait_for(
        &w.app,
        rc.id,
        "everyone sent",
        Duration::from_secs(30),
        |p| p.overall.sent == 7,
    )
    .await;
    let mut checks = Vec::new();
    for (p, room) in people.iter().zip(rooms.iter()) {
        checks.push(check_in(p, room, &bot.user_id).await);
    }
    // Two read while anpi watches.
    for i in 0..2 {
        people[i]
            .receipt(&rooms[i], &checks[i], "m.read", None)
            .await;
    }
    wait_for(
        &w.app,
        rc.id,
        "reads while up",
        Duration::from_secs(30),
        |p| p.overall.read == 2,
    )
    .await;

    crate::crash::kill(&mut daemon);
    // While anpi is down: two read, one reacts, one replies.
    for i in 2..4 {
        people[i]
            .receipt(&rooms[i], &checks[i], "m.read", None)
            .await;
    }
    people[4].react(&rooms[4], &checks[4], "🙆").await;
    people[5].say(&rooms[5], "2").await;

    let mut daemon = crate::crash::spawn_daemon(&w.config_path, &log);
    let p = wait_for(
        &w.app,
        rc.id,
        "reads after restart",
        Duration::from_secs(30),
        |p| p.overall.read == 4 && p.overall.answered == 2,
    )
    .await;
    assert_eq!(p.overall.sent, 1, "{:?}", p.overall);
    crate::crash::kill(&mut daemon);

    // Down again, and this time the stored sync position is lost too: the restart rebuilds
    // from a full /sync, which carries every room's current receipts.
    crate::support::forget_feed_cursors(&w.dir.path().join("anpi.db")).await;
    people[6]
        .receipt(&rooms[6], &checks[6], "m.read", None)
        .await;
    let mut app = MatrixApp::spawn(w.config_path.clone()).await;
    let p = wait_for(
        &app,
        rc.id,
        "reconciled reads",
        Duration::from_secs(30),
        |p| p.overall.read == 5,
    )
    .await;
    assert_eq!(
        (p.overall.sent, p.overall.answered),
        (0, 2),
        "{:?}",
        p.overall
    );
    // Nothing was sent twice across the restarts.
    for (p, room) in people.iter().zip(rooms.iter()) {
        check_in(p, room, &bot.user_id).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_rate_limits_delay_but_never_duplicate() {
    // 14 messages against a burst of 10 at 0.2/s: at least four must wait out a 429.
    let Some(mut w) = World::new(14, 13, Limits::DefaultMessages).await else {
        return;
    };
    let (app, bot, people, rooms) = (&w.app, &w.bot, &w.people, &w.rooms);
    let admin = w.admin.as_ref().unwrap();
    // One more person outside the roll call, for the retry check below.
    let spare = w.hs.register("spare", false).await;
    admin.override_ratelimit(&bot.user_id, true).await;
    let provider = anpi::startup::matrix_provider(
        &app.config,
        &app.store,
        &(std::sync::Arc::new(anpi::clock::SystemClock) as anpi::clock::SharedClock),
    )
    .unwrap();
    assert_eq!(
        provider.prepare(&[spare.handle()]).await.unwrap().created,
        1
    );
    let spare_room = app.room_of(&spare).await;
    spare.join(&spare_room).await;
    admin.override_ratelimit(&bot.user_id, false).await;

    let rc = app.hq.start(&scenario("5m"), None, None).await.unwrap().0;
    wait_for(
        app,
        rc.id,
        "everyone sent despite 429s",
        Duration::from_secs(120),
        |p| p.overall.sent == 14,
    )
    .await;
    let limited = app
        .metric(r#"anpi_sends_total{provider="matrix",result="rate_limited"}"#)
        .await;
    // Hit, and waited out per retry_after_ms: a sender retrying without waiting would be
    // refused hundreds of times over the half minute the last messages wait.
    assert!(
        (1..=40).contains(&limited),
        "the homeserver's limit was hit and waited out ({limited} refusals)"
    );
    assert_eq!(
        app.metric(r#"anpi_sends_total{provider="matrix",result="sent"}"#)
            .await,
        14
    );
    for (p, room) in people.iter().zip(rooms.iter()) {
        check_in(p, room, &bot.user_id).await;
    }

    // A retry of the same delivery (a lost answer, say) is the same Matrix transaction.
    let msg = OutboundMessage {
        delivery_id: 999_999,
        roll_call_id: rc.id,
        to: spare.handle(),
        text: "【安否確認】再送テスト".into(),
        buttons: Vec::new(),
        resend: false,
        asks: Default::default(),
    };
    let first = send_waiting_out_429(&provider, &msg).await;
    let again = send_waiting_out_429(&provider, &msg).await;
    assert_eq!(first.message_id, again.message_id);
    check_in(&spare, &spare_room, &bot.user_id).await;
    w.app.shutdown().await;
}
