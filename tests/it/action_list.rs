//! HQ's action list end to end, through the real application on a manual clock with a
//! scripted population: an urgent answer tops the list at once and stays until HQ closes it
//! with a note; a caller records a call for a person who phoned in; the re-send goes once.

use std::time::Duration;

use anpi::contacts::{synthetic, ContactKind};
use anpi::scenario::Scenario;
use anpi::simulator::{Behaviour, Script, SimAnswer};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{handles, mins, spawn_app_with, Options, TestClock, CALLER_TOKEN, HQ_TOKEN};

pub fn quake(extra: &str) -> Scenario {
    Scenario::parse(
        &format!(
            r#"
name = "quake"
title = "地震 安否確認"
deadline = "5m"
[message]
ja = "【安否確認】下のボタンを押してください。"
en = "Safety check: tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
level = "ok"
[[buttons]]
label = "負傷 / Injured"
value = "injured"
level = "urgent"
[[buttons]]
label = "救助要請 / Need help"
value = "need_help"
level = "urgent"
{extra}"#
        ),
        "quake.toml",
    )
    .unwrap()
}

async fn get(app: &crate::support::TestApp, path: &str, token: &str) -> Value {
    let res = app
        .http
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{path}");
    res.json().await.unwrap()
}

async fn post(
    app: &crate::support::TestApp,
    path: &str,
    token: &str,
    body: Value,
) -> (StatusCode, Value) {
    let res = app
        .http
        .post(format!("{}{path}", app.base_url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_person_who_asks_for_help_tops_the_list_before_the_deadline_until_hq_closes_it() {
    let contacts = synthetic::generate(30, 4).contacts;
    let staff: Vec<usize> = (0..contacts.len())
        .filter(|&i| contacts[i].kind == ContactKind::Staff)
        .collect();
    let hs = handles(&contacts);
    let (helper, silent) = (staff[3], staff[7]);
    let mut script = Script::default();
    for (i, h) in hs.iter().enumerate() {
        if i != silent {
            script.insert(h.clone(), Behaviour::reads_after(Duration::from_secs(20)));
        }
    }
    script.insert(
        hs[helper].clone(),
        Behaviour::reads_after(Duration::from_secs(20))
            .answering(
                Duration::from_secs(30),
                SimAnswer::Button("need_help".into()),
            )
            .then_answering(Duration::from_secs(40), SimAnswer::Sticker("ok".into()))
            .then_answering(
                Duration::from_secs(50),
                SimAnswer::Reply("足を怪我、家から出られない".into()),
            ),
    );
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        script,
        ..Options::default()
    })
    .await;
    let rc = app.start(&quake("")).await;
    app.all_sent(rc.id).await;
    app.advance(mins(1));
    app.wait_for(rc.id, "the urgent answer", |p| p.overall.urgent_open == 1)
        .await;

    // One minute in, four before the deadline: at the top, by name, with what they said.
    let path = format!("/api/rollcalls/{}/escalations", rc.id);
    let d = get(&app, &path, CALLER_TOKEN).await;
    let top = &d["entries"][0];
    assert_eq!(top["action"], "urgent", "{d}");
    assert_eq!(top["entry"]["staff_id"], contacts[helper].id.as_str());
    assert_eq!(top["entry"]["name"], contacts[helper].name.as_str());
    assert_eq!(top["entry"]["standing"]["label"], "救助要請 / Need help");
    assert_eq!(top["entry"]["latest"]["text"], "足を怪我、家から出られない");
    assert_eq!(d["counts"]["urgent"], 1);
    assert_eq!(d["counts"]["never_read"], 0, "nobody is late yet");
    let table = app
        .http
        .get(format!("{}{path}?format=table", app.base_url))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(table.contains(&contacts[helper].name), "{table}");
    assert!(
        table.contains("救助要請") && table.contains("足を怪我、家から出られない"),
        "{table}"
    );
    let p = app.progress(rc.id).await;
    assert_eq!(p.answers.get("need_help"), Some(&1), "{:?}", p.answers);

    // Past the deadline the silent person joins, below the urgent answer.
    app.advance(mins(5));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 1)
        .await;
    let d = get(&app, &path, CALLER_TOKEN).await;
    assert_eq!(
        d["entries"][0]["entry"]["staff_id"],
        contacts[helper].id.as_str()
    );
    assert_eq!(d["entries"][1]["action"], "never_read");
    assert_eq!(
        d["entries"][1]["entry"]["staff_id"],
        contacts[silent].id.as_str()
    );

    // Closing it needs a note saying what was done; then it leaves the open list.
    let call = format!("/api/rollcalls/{}/calls/{}", rc.id, contacts[helper].id);
    let (status, body) = post(&app, &call, CALLER_TOKEN, json!({"outcome": "needs-help"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("note"), "{body}");
    let (status, body) = post(
        &app,
        &call,
        CALLER_TOKEN,
        json!({"outcome": "needs-help", "note": "消防に救助依頼済み 03:20", "desk": "受付2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["to_call"], false);
    assert_eq!(body["entry"]["notes"][0]["by"], "caller#1/受付2");
    let p = app.progress(rc.id).await;
    assert_eq!(p.overall.urgent_open, 0);
    assert_eq!(p.overall.needs_help, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_caller_records_a_call_with_a_note_for_someone_who_phoned_in() {
    let contacts = synthetic::generate(30, 5).contacts;
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        ..Options::default()
    })
    .await;
    let rc = app.start(&quake("")).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "everyone escalated", |p| p.overall.to_call == 30)
        .await;
    // The person who phoned in is far down the queue: found by their kana, recorded by name.
    let who = &contacts[25];
    let kana = who.kana.clone().expect("synthetic people have kana");
    let first_word = kana.split_whitespace().next().unwrap().to_string();
    let found = get(
        &app,
        &format!(
            "/api/rollcalls/{}/people?q={}",
            rc.id,
            urlencode(&first_word)
        ),
        CALLER_TOKEN,
    )
    .await;
    let ids: Vec<&str> = found["people"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["staff_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&who.id.as_str()), "{found}");
    let phone = who.phones[0].national();
    let by_phone = get(
        &app,
        &format!("/api/rollcalls/{}/people?q={}", rc.id, urlencode(&phone)),
        CALLER_TOKEN,
    )
    .await;
    assert_eq!(
        by_phone["people"][0]["staff_id"],
        who.id.as_str(),
        "{by_phone}"
    );
    let (status, body) = post(
        &app,
        &format!("/api/rollcalls/{}/calls/{}", rc.id, who.id),
        CALLER_TOKEN,
        json!({"outcome": "safe", "note": "本人から電話。第一中学校に避難中", "desk": "受付 1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["to_call"], false);
    let e = get(
        &app,
        &format!("/api/rollcalls/{}/people/{}", rc.id, who.id),
        CALLER_TOKEN,
    )
    .await;
    assert_eq!(
        e["entry"]["notes"][0]["text"],
        "本人から電話。第一中学校に避難中"
    );
    assert_eq!(e["entry"]["outcome"], "reached_safe");
    assert_eq!(e["entry"]["kana"], kana.as_str());
    // A note alone keeps them as they are; an empty body is refused with what to send.
    let (status, body) = post(
        &app,
        &format!("/api/rollcalls/{}/calls/{}", rc.id, contacts[3].id),
        HQ_TOKEN,
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.shutdown().await;
}

#[tokio::test]
async fn the_resend_goes_once_to_the_unread_within_the_rate_limit_and_keeps_deadlines() {
    let contacts = synthetic::generate(40, 6).contacts;
    let hs = handles(&contacts);
    let mut script = Script::default();
    // Half read after 30 s; the rest never do.
    for h in hs.iter().take(20) {
        script.insert(h.clone(), Behaviour::reads_after(Duration::from_secs(30)));
    }
    // A clock 60 times real time: the platform's limit is paced on it.
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        script,
        sim_rate_limit_per_minute: 30,
        provider_rate_limit_per_minute: 30,
        clock: TestClock::Scaled(60.0),
        ..Options::default()
    })
    .await;
    let rc = app
        .start(&quake("[escalation]\nresend_after = \"1m\"\n"))
        .await;
    let first_deadline = app
        .wait_for(rc.id, "the first send", |p| p.next_deadline_at.is_some())
        .await
        .next_deadline_at;
    let p = app
        .wait_for(rc.id, "the re-send", |p| {
            p.overall.pending == 0 && p.overall.resent == 20
        })
        .await;
    // The earliest deadline is still the first send's plus five minutes.
    assert!(p.next_deadline_at.is_none() || p.next_deadline_at >= first_deadline);
    let stats = app.sim.stats();
    assert_eq!(
        stats.accepted, 60,
        "40 first sends and 20 re-sends: {stats:?}"
    );
    assert_eq!(stats.limit_exceeded, 0, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "{stats:?}");
    // Nothing is sent a third time; past the deadline the unread are on the list.
    app.wait_for(rc.id, "the deadline", |p| p.overall.to_call == 20)
        .await;
    assert_eq!(app.sim.stats().accepted, 60);
    let inbox = app.sim.messages_for(&hs[30]);
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert!(inbox[1].text.starts_with("【再送】"), "{}", inbox[1].text);
    // Deadlines count from the first send: the unread are on the list at 5 minutes.
    let list = app.call_list(rc.id).await;
    assert_eq!(list.iter().filter(|e| e.to_call()).count(), 20);
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("anpi_resends_total{result=\"sent\"} 20"),
        "{metrics}"
    );
    app.shutdown().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
