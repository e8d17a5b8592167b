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

/// Four options: 1 safe, 2 can work, 3 cannot work, 4 injured.
fn four_options(deadline: &str) -> Scenario {
    Scenario::parse(
        &format!(
            r#"
name = "matrix-four"
title = "テスト 安否確認"
deadline = "{deadline}"
[message]
ja = "【安否確認】地震がありました。"
en = "Safety check: an earthquake."
[[buttons]]
label = "無事 / Safe"
value = "safe"
[[buttons]]
label = "出動可 / Can work"
value = "can_work"
[[buttons]]
label = "出動不可 / Cannot work"
value = "cannot_work"
[[buttons]]
label = "負傷 / Injured"
value = "injured"
"#
        ),
        "matrix-four.toml",
    )
    .expect("test scenario parses")
}

async fn entry_of(app: &MatrixApp, id: RollCallId, staff: &str) -> anpi::rollcall::CallListEntry {
    let staff = anpi::ids::StaffId::parse(staff).unwrap();
    app.hq
        .entry(id, &staff)
        .await
        .unwrap_or_else(|e| panic!("{staff} in roll call {id}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_whose_room_does_not_work_are_on_the_call_list_at_once_with_the_reason() {
    use anpi::ids::{ChatHandle, StaffId};
    use anpi::providers::matrix::Unreachable;
    let Some(mut w) = World::new(3, 14, Limits::Relaxed).await else {
        return;
    };
    // p00 leaves their room; p03 exists but will never accept; @nosuch is a typo.
    w.people[0].leave(&w.rooms[0]).await;
    let shy = w.hs.register("p03", false).await;
    let nosuch = format!("@nosuch:{SERVER_NAME}");
    let mut contacts = w.contacts.clone();
    for (i, handle) in [(3, shy.user_id.clone()), (4, nosuch.clone())] {
        let mut c = w.contacts[0].clone();
        c.id = StaffId::parse(&format!("X{i}")).unwrap();
        c.name = format!("追加 {i}");
        c.chat
            .insert("matrix".into(), ChatHandle::parse(&handle).unwrap());
        contacts.push(c);
    }
    w.app.hq.import_contacts(&contacts).await.unwrap();

    let report = anpi::cli::prepare_matrix_rooms(&w.app.config)
        .await
        .expect("prepare runs");
    assert_eq!(report.reinvited, vec![w.people[0].handle()], "{report:?}");
    assert_eq!(report.created, 1, "a room for p03, none for an unknown id");
    let mut unreachable: Vec<(String, Unreachable)> = report
        .unreachable
        .iter()
        .map(|(h, why)| (h.to_string(), *why))
        .collect();
    unreachable.sort();
    let mut want = vec![
        (w.people[0].user_id.clone(), Unreachable::Left),
        (shy.user_id.clone(), Unreachable::NeverAccepted),
        (nosuch.clone(), Unreachable::UnknownUser),
    ];
    want.sort();
    assert_eq!(unreachable, want);
    let table = anpi::cli::prepare_summary(&report);
    for line in [
        "left the room",
        "never accepted the invite",
        "unknown user",
        &nosuch,
    ] {
        assert!(table.contains(line), "{line:?} in:\n{table}");
    }

    let rc = w.app.hq.start(&scenario("5m"), None, None).await.unwrap().0;
    // Well before the 5-minute deadline: the three are on the list as not sent.
    let p = wait_for(
        &w.app,
        rc.id,
        "three send failures",
        Duration::from_secs(30),
        |p| p.overall.failed == 3 && p.overall.sent == 2,
    )
    .await;
    assert_eq!(p.overall.to_call, 3, "{:?}", p.overall);
    for (staff, why) in [
        (w.contacts[0].id.to_string(), "left the room"),
        ("X3".to_string(), "never accepted the invite"),
        ("X4".to_string(), "unknown user"),
    ] {
        let e = entry_of(&w.app, rc.id, &staff).await;
        assert!(e.to_call(), "{staff} is to be called: {e:?}");
        let error = e.last_error.clone().unwrap_or_default();
        assert!(error.contains(why), "{staff}: {error}");
    }
    // The one who left was invited again: they can come back.
    w.people[0].join(&w.rooms[0]).await;
    let again = anpi::cli::prepare_matrix_rooms(&w.app.config)
        .await
        .unwrap();
    assert!(
        !again
            .unreachable
            .iter()
            .any(|(h, _)| h.as_str() == w.people[0].user_id),
        "{again:?}"
    );
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_numbers_and_replies_after_a_newer_check_follow_the_answer_rules() {
    use anpi::answers::AnswerLevel;
    let Some(mut w) = World::new(3, 15, Limits::Relaxed).await else {
        return;
    };
    let (app, bot, contacts, people, rooms) = (&w.app, &w.bot, &w.contacts, &w.people, &w.rooms);
    let first = app
        .hq
        .start(&four_options("5m"), None, None)
        .await
        .unwrap()
        .0;
    wait_for(app, first.id, "sent", Duration::from_secs(30), |p| {
        p.overall.sent == 3
    })
    .await;
    let check = check_in(&people[0], &rooms[0], &bot.user_id).await;
    // The text asks for a number: Matrix shows no buttons.
    let text = people[0].messages_from(&rooms[0], &bot.user_id).await[0]["content"]["body"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("番号で返信"), "{text}");
    assert!(!text.contains("ボタン"), "{text}");
    assert!(text.contains("4 負傷"), "{text}");

    // p00 answers "1", then edits it to "4"; p01 answers "1 無事です"; p02 "①".
    let one = people[0].say(&rooms[0], "1").await;
    people[1].say(&rooms[1], "1 無事です").await;
    people[2].reply_to(&rooms[2], "$unknown", "①").await;
    wait_for(
        app,
        first.id,
        "three answers",
        Duration::from_secs(30),
        |p| p.overall.answered == 3,
    )
    .await;
    people[0].edit(&rooms[0], &one, "4").await;
    wait_for(app, first.id, "the edit", Duration::from_secs(30), |p| {
        p.overall.answered_urgent == 1
    })
    .await;
    let e0 = entry_of(app, first.id, contacts[0].id.as_str()).await;
    let standing = e0.standing.clone().expect("an answer");
    assert_eq!(standing.value, "injured", "{standing:?}");
    assert_eq!(standing.level, AnswerLevel::Urgent);
    for i in [1, 2] {
        let e = entry_of(app, first.id, contacts[i].id.as_str()).await;
        assert_eq!(
            e.standing.as_ref().map(|a| a.value.as_str()),
            Some("safe"),
            "{e:?}"
        );
    }

    // A newer check; the first is closed. A reply, and a reaction on the old check, count for
    // the newer one, and the closed one stays as it was.
    app.hq.close(first.id).await.unwrap();
    let answers = |id: RollCallId| async move {
        let mut out = Vec::new();
        for c in contacts {
            let e = entry_of(app, id, c.id.as_str()).await;
            out.push((e.staff_id.to_string(), e.standing, e.latest));
        }
        out
    };
    let before = answers(first.id).await;
    let second = app
        .hq
        .start(&four_options("5m"), None, None)
        .await
        .unwrap()
        .0;
    wait_for(app, second.id, "sent", Duration::from_secs(30), |p| {
        p.overall.sent == 3
    })
    .await;
    people[1].say(&rooms[1], "3").await;
    people[2]
        .react(
            &rooms[2],
            &check_of_room(&people[2], &rooms[2], &bot.user_id, 1).await,
            "👍",
        )
        .await;
    people[0].reply_to(&rooms[0], &check, "2").await;
    let p = wait_for(
        app,
        second.id,
        "answers on the newer check",
        Duration::from_secs(30),
        |p| p.overall.answered == 3,
    )
    .await;
    assert_eq!(p.overall.sent, 0, "{:?}", p.overall);
    let e1 = entry_of(app, second.id, contacts[1].id.as_str()).await;
    assert_eq!(
        e1.standing.as_ref().map(|a| a.value.as_str()),
        Some("cannot_work")
    );
    assert_eq!(
        answers(first.id).await,
        before,
        "the closed roll call never changes"
    );
    w.app.shutdown().await;
}

/// The `n`th-newest (from 0) check anpi posted in `room`.
async fn check_of_room(user: &MatrixUser, room: &str, bot: &str, n: usize) -> String {
    let msgs = user.messages_from(room, bot).await;
    msgs[n]["event_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_default_limits_429s_pause_every_send_and_the_pace_is_learned() {
    // Synapse's default message limit (0.2/s, burst 10) and anpi with no limit configured.
    let Some(mut w) = World::new(50, 16, Limits::DefaultMessages).await else {
        return;
    };
    let app = &w.app;
    let first_estimate = app.hq.estimate(&scenario("30m")).await.unwrap();
    let rc = app.hq.start(&scenario("30m"), None, None).await.unwrap().0;
    // HQ is warned while the sends are slower than estimated.
    let health_url = format!("{}/healthz", app.base_url);
    let mut warned = false;
    let end = Instant::now() + Duration::from_secs(900);
    loop {
        let p = app.hq.status(rc.id).await.unwrap().progress;
        if !warned {
            let body = reqwest::Client::new()
                .get(&health_url)
                .bearer_auth(crate::support::HQ_TOKEN)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            warned = body.contains("provider:pace");
        }
        if p.overall.sent == 50 {
            break;
        }
        assert!(Instant::now() < end, "not all sent: {:?}", p.overall);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(warned, "HQ saw the pace warning");
    let limited = app
        .metric(r#"anpi_sends_total{provider="matrix",result="rate_limited"}"#)
        .await;
    let sent = app
        .metric(r#"anpi_sends_total{provider="matrix",result="sent"}"#)
        .await;
    assert_eq!(sent, 50);
    assert!(
        (1..=2 * sent).contains(&limited),
        "refused {limited} times for {sent} accepted"
    );
    // The estimate now uses the pace the homeserver showed.
    let now = app.hq.estimate(&scenario("30m")).await.unwrap();
    assert!(
        now.seconds_to_all_sent > 2.0 * first_estimate.seconds_to_all_sent.max(1.0),
        "{} s before, {} s now",
        first_estimate.seconds_to_all_sent,
        now.seconds_to_all_sent
    );
    w.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_server_that_encrypts_rooms_replies_are_reported_unreadable() {
    let Some(mut w) = World::new_with(
        2,
        17,
        WorldOptions {
            limits: Limits::Relaxed,
            synapse_extra: "encryption_enabled_by_default_for_room_type: all",
            bot_unlimited: false,
        },
    )
    .await
    else {
        return;
    };
    let (app, bot, contacts, people, rooms) = (&w.app, &w.bot, &w.contacts, &w.people, &w.rooms);
    let report = prepare(app).await;
    assert_eq!(report.encrypted.len(), 2, "{report:?}");
    let summary = anpi::cli::prepare_summary(&report);
    assert!(summary.contains("cannot read"), "{summary}");
    // What `anpi serve` says at start.
    let provider = anpi::startup::matrix_provider(
        &app.config,
        &app.store,
        &(std::sync::Arc::new(anpi::clock::SystemClock) as anpi::clock::SharedClock),
    )
    .unwrap();
    let notes = provider.startup_notes().await;
    assert!(
        notes.len() == 1 && notes[0].contains(&rooms[0]) && notes[0].contains("cannot read"),
        "{notes:?}"
    );
    let rc = app.hq.start(&scenario("5m"), None, None).await.unwrap().0;
    wait_for(app, rc.id, "sent", Duration::from_secs(30), |p| {
        p.overall.sent == 2
    })
    .await;
    // p00 replies from a client that encrypts; p01 reacts (reactions are not encrypted).
    people[0]
        .send_event(
            &rooms[0],
            "m.room.encrypted",
            serde_json::json!({"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEn...",
                "device_id": "PHONE", "sender_key": "abc", "session_id": "s1"}),
        )
        .await;
    let check = check_in(&people[1], &rooms[1], &bot.user_id).await;
    people[1].react(&rooms[1], &check, "👍").await;
    wait_for(app, rc.id, "both answered", Duration::from_secs(30), |p| {
        p.overall.answered == 2
    })
    .await;
    let e = entry_of(app, rc.id, contacts[0].id.as_str()).await;
    let text = e.standing.and_then(|a| a.text).unwrap_or_default();
    assert_eq!(text, anpi::providers::matrix::UNREADABLE);
    w.app.shutdown().await;
}

/// The figure behind `max_in_flight`'s default (docs/BENCHMARKS.md): 500 people on one
/// Synapse, the bot's rate limit lifted, from the start of a roll call until every message is
/// out, for each in-flight window. A measurement, not a check: run it by hand with
/// `cargo test --release --test it -- --ignored --nocapture matrix::bench_`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes of set-up, prints a figure"]
async fn bench_500_people_by_max_in_flight() {
    let Some(mut w) = World::new_with(
        500,
        18,
        WorldOptions {
            limits: Limits::DefaultMessages,
            synapse_extra: "",
            bot_unlimited: true,
        },
    )
    .await
    else {
        return;
    };
    w.app.shutdown().await;
    for in_flight in [8usize, 16, 32] {
        let path = write_config(&w.hs, &w.bot, w.dir.path());
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&format!("max_in_flight = {in_flight}\n"));
        std::fs::write(&path, text).unwrap();
        let mut app = MatrixApp::spawn(path).await;
        let started = Instant::now();
        let rc = app.hq.start(&scenario("30m"), None, None).await.unwrap().0;
        wait_for(&app, rc.id, "all sent", Duration::from_secs(600), |p| {
            p.overall.sent + p.overall.read + p.overall.answered == 500
        })
        .await;
        println!(
            "max_in_flight = {in_flight}: 500 sent in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        app.hq.close(rc.id).await.unwrap();
        app.shutdown().await;
    }
}

/// A homeserver's `/sync` shows at most the filter's 100 newest events of a room; what a
/// person wrote before those, while anpi was down, is read back with `/messages`: from the
/// stored sync position, and with that position lost, down to the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_request_buried_under_later_messages_still_reaches_hq() {
    use anpi::answers::AnswerLevel;
    let Some(mut w) = World::new(2, 16, Limits::Relaxed).await else {
        return;
    };
    let rc = w.app.hq.start(&scenario("5m"), None, None).await.unwrap().0;
    wait_for(&w.app, rc.id, "sent", Duration::from_secs(30), |p| {
        p.overall.sent == 2
    })
    .await;
    let bury = |i: usize| {
        let (person, room) = (&w.people[i], &w.rooms[i]);
        async move {
            person.say(room, "閉じ込められた").await;
            for n in 0..110 {
                person.say(room, &format!("まだ中 {n}")).await;
            }
        }
    };

    // Down with its sync position stored.
    w.app.shutdown().await;
    bury(0).await;
    let mut app = MatrixApp::spawn(w.config_path.clone()).await;
    let p = wait_for(&app, rc.id, "p00's request", Duration::from_secs(60), |p| {
        p.overall.answered_urgent == 1
    })
    .await;
    assert_eq!(p.overall.answered, 1, "{:?}", p.overall);
    let e = entry_of(&app, rc.id, w.contacts[0].id.as_str()).await;
    let standing = e.standing.expect("an answer");
    assert_eq!(
        (standing.level, standing.text.as_deref()),
        (AnswerLevel::Urgent, Some("閉じ込められた"))
    );
    assert_no_gap_reported(&app).await;
    app.shutdown().await;

    // Down, and the position lost: the full sync shows only the newest 100.
    crate::support::forget_feed_cursors(&w.dir.path().join("anpi.db")).await;
    bury(1).await;
    let mut app = MatrixApp::spawn(w.config_path.clone()).await;
    wait_for(&app, rc.id, "p01's request", Duration::from_secs(60), |p| {
        p.overall.answered_urgent == 2
    })
    .await;
    assert_no_gap_reported(&app).await;
    app.shutdown().await;
}

/// What `/api/health` tells HQ.
async fn api_health(app: &MatrixApp) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/health", app.base_url))
        .bearer_auth(crate::support::HQ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// HQ was told of no gap in the event feed.
async fn assert_no_gap_reported(app: &MatrixApp) {
    let health = api_health(app).await;
    assert!(
        !health.to_string().contains("timeline limited"),
        "every gap was read back: {health}"
    );
}

/// The bot's token revoked (logged out) before a roll call: nobody is put on the call list
/// for it, HQ is told, and a new token written into the token file is used without a restart;
/// everyone then gets exactly one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_holds_the_sends_until_a_new_one_is_in_the_file() {
    let Some(mut w) = World::new(3, 17, Limits::Relaxed).await else {
        return;
    };
    // Two tries per person at most: a refused token must not use them up.
    let config = std::fs::read_to_string(&w.config_path).unwrap();
    std::fs::write(
        &w.config_path,
        config.replace("[dispatch]\n", "[dispatch]\nmax_attempts = 2\n"),
    )
    .unwrap();
    w.app.shutdown().await;
    w.app = MatrixApp::spawn(w.config_path.clone()).await;
    w.bot.logout().await;
    let rc = w.app.hq.start(&scenario("5m"), None, None).await.unwrap().0;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let h = api_health(&w.app).await;
        if h["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|c| c["component"] == "token"))
        {
            break;
        }
        assert!(Instant::now() < end, "HQ is told of the refused token: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for every person's send to be refused more than `max_attempts` times.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let p = w.app.hq.status(rc.id).await.unwrap().progress.overall;
    assert_eq!(
        (p.sent, p.failed),
        (0, 0),
        "nobody failed for the bot: {p:?}"
    );
    assert_eq!(
        staff_ids_to_call(&w.app, rc.id).await,
        Vec::<String>::new(),
        "nobody is on the call list for the bot's token"
    );

    let token = w.hs.login("anpi").await;
    std::fs::write(w.dir.path().join("matrix.token"), format!("{token}\n")).unwrap();
    wait_for(
        &w.app,
        rc.id,
        "sent with the new token",
        Duration::from_secs(90),
        |p| p.overall.sent == 3,
    )
    .await;
    for (p, room) in w.people.iter().zip(w.rooms.iter()) {
        check_in(p, room, &w.bot.user_id).await;
    }
    let h = api_health(&w.app).await;
    assert!(
        !h.to_string().contains("\"token\""),
        "the token works again: {h}"
    );
    w.app.shutdown().await;
}
