//! HQ's side of the API: roles on every new endpoint (call queue, shelter acknowledgement,
//! announcements, the live stream, the web page), the call queue's exclusivity, and the
//! shelter token's binding to one phone.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

pub const SHELTER_TOKEN: &str = "shelter-token-P0001-0123456789";

pub fn with_shelter_token() -> Options {
    Options {
        extra_config: format!(
            "[[api.shelter_tokens]]\ntoken = \"{SHELTER_TOKEN}\"\nstaff_id = \"P0001\"\n"
        ),
        ..Options::default()
    }
}

/// (method, path, body, the least role that may use it)
fn endpoints(rc: i64) -> Vec<(Method, String, Value, &'static str)> {
    vec![
        (
            Method::POST,
            format!("/api/rollcalls/{rc}/calls/next"),
            json!({}),
            "caller",
        ),
        (
            Method::POST,
            format!("/api/rollcalls/{rc}/calls/S00001/release"),
            json!({}),
            "caller",
        ),
        (
            Method::POST,
            format!("/api/rollcalls/{rc}/calls/S00001"),
            json!({"outcome": "safe"}),
            "caller",
        ),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/stream"),
            Value::Null,
            "caller",
        ),
        (
            Method::POST,
            format!("/api/rollcalls/{rc}/ack"),
            json!({}),
            "shelter",
        ),
        (
            Method::POST,
            "/api/announcements".to_string(),
            json!({"text_ja": "第一配備に移行。各自持ち場へ。"}),
            "hq",
        ),
        (Method::GET, "/api/scenarios".into(), Value::Null, "hq"),
        (
            Method::POST,
            "/api/estimate".into(),
            json!({"scenario": "drill"}),
            "hq",
        ),
        (
            Method::POST,
            "/api/rollcalls".into(),
            json!({"scenario": "drill"}),
            "hq",
        ),
        (Method::GET, "/api/rollcalls".into(), Value::Null, "caller"),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}"),
            Value::Null,
            "caller",
        ),
        (
            Method::POST,
            format!("/api/rollcalls/{rc}/close"),
            json!({}),
            "hq",
        ),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/escalations"),
            Value::Null,
            "caller",
        ),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/events"),
            Value::Null,
            "hq",
        ),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/plan"),
            Value::Null,
            "caller",
        ),
        (Method::PUT, "/api/contacts".into(), json!([]), "hq"),
        (Method::GET, "/api/contacts".into(), Value::Null, "hq"),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/people?q=S0"),
            Value::Null,
            "caller",
        ),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/people/S00001"),
            Value::Null,
            "caller",
        ),
        (
            Method::GET,
            format!("/api/rollcalls/{rc}/answers"),
            Value::Null,
            "caller",
        ),
        (
            Method::GET,
            "/api/late-answers".into(),
            Value::Null,
            "caller",
        ),
        (
            Method::POST,
            "/api/late-answers/1/close".into(),
            json!({"note": "対応済み"}),
            "caller",
        ),
        (Method::GET, "/api/shelter".into(), Value::Null, "shelter"),
    ]
}

fn wrong_roles(least: &str) -> Vec<(&'static str, &'static str)> {
    let all = [
        ("hq", HQ_TOKEN),
        ("caller", CALLER_TOKEN),
        ("shelter", SHELTER_TOKEN),
    ];
    all.into_iter()
        .filter(|(role, _)| match least {
            "hq" => *role != "hq",
            "caller" => *role == "shelter",
            // Only the phone's own token acknowledges; HQ records call outcomes instead.
            "shelter" => *role != "shelter",
            _ => unreachable!(),
        })
        .collect()
}

#[tokio::test]
async fn every_endpoint_refuses_no_token_a_wrong_token_and_each_wrong_role() {
    let app = spawn_app_with(with_shelter_token()).await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    let before = app.call_list(rc.id).await;
    for (method, path, body, least) in endpoints(rc.id.0) {
        let url = format!("{}{path}", app.base_url);
        let mut attempts: Vec<(String, Option<&str>, StatusCode)> = vec![
            ("no token".into(), None, StatusCode::UNAUTHORIZED),
            (
                "unknown token".into(),
                Some("not-a-real-token-at-all"),
                StatusCode::UNAUTHORIZED,
            ),
        ];
        for (role, token) in wrong_roles(least) {
            attempts.push((format!("role {role}"), Some(token), StatusCode::FORBIDDEN));
        }
        for (what, token, expected) in attempts {
            let mut req = app.http.request(method.clone(), &url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if !body.is_null() {
                req = req.json(&body);
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), expected, "{method} {path} with {what}");
            let v: Value = res.json().await.unwrap();
            assert!(v["error"].is_string(), "{method} {path}: {v}");
        }
    }
    // The stream also takes ?token= (EventSource cannot send headers): same refusals.
    for (token, expected) in [
        ("nope-nope-nope-nope", StatusCode::UNAUTHORIZED),
        (SHELTER_TOKEN, StatusCode::FORBIDDEN),
    ] {
        let res = app
            .http
            .get(format!(
                "{}/api/rollcalls/{}/stream?token={token}",
                app.base_url, rc.id
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), expected);
    }
    assert_eq!(app.hq.list().await.unwrap().len(), 1, "nothing started");
    let after = app.call_list(rc.id).await;
    assert_eq!(
        serde_json::to_value(&before).unwrap(),
        serde_json::to_value(&after).unwrap(),
        "nobody claimed, released, reached or acknowledged"
    );
    assert_eq!(app.store.contacts().await.unwrap().len(), 50);
    app.shutdown().await;
}

async fn claim(app: &TestApp, rc: i64, token: &str, desk: &str) -> Value {
    let res = app
        .http
        .post(format!("{}/api/rollcalls/{rc}/calls/next", app.base_url))
        .bearer_auth(token)
        .json(&json!({ "desk": desk }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[tokio::test]
async fn callers_claiming_at_once_never_get_the_same_person_and_shelters_come_first() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    let desks: Vec<String> = (0..12).map(|i| format!("desk-{i}")).collect();
    let claims = futures::future::join_all(desks.iter().enumerate().map(|(i, d)| {
        let token = if i % 2 == 0 { HQ_TOKEN } else { CALLER_TOKEN };
        claim(&app, rc.id.0, token, d)
    }))
    .await;
    let mut people: Vec<String> = claims
        .iter()
        .map(|c| c["entry"]["staff_id"].as_str().unwrap().to_string())
        .collect();
    let shelters_first: Vec<&String> = people.iter().filter(|p| p.starts_with('P')).collect();
    assert_eq!(
        shelters_first.len(),
        2,
        "both shelter phones were handed out"
    );
    people.sort();
    let n = people.len();
    people.dedup();
    assert_eq!(
        people.len(),
        n,
        "someone was given to two callers: {people:?}"
    );

    // The same desk asking again keeps its person; a release puts them back in the queue.
    let again = claim(&app, rc.id.0, HQ_TOKEN, "desk-0").await;
    assert_eq!(again["entry"]["staff_id"], claims[0]["entry"]["staff_id"]);
    let held = claims[0]["entry"]["staff_id"].as_str().unwrap();
    let res = app
        .http
        .post(format!(
            "{}/api/rollcalls/{}/calls/{held}/release",
            app.base_url, rc.id
        ))
        .bearer_auth(HQ_TOKEN)
        .json(&json!({"desk": "desk-0"}))
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["released"], true);
    let fresh = claim(&app, rc.id.0, CALLER_TOKEN, "desk-new").await;
    assert_eq!(
        fresh["entry"]["staff_id"], held,
        "released person is next again"
    );

    // An outcome closes the entry and records who called.
    let res = app
        .http
        .post(format!(
            "{}/api/rollcalls/{}/calls/{held}",
            app.base_url, rc.id
        ))
        .bearer_auth(CALLER_TOKEN)
        .json(&json!({"outcome": "injured", "desk": "desk-new"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let entry = app
        .call_list(rc.id)
        .await
        .into_iter()
        .find(|e| e.staff_id.as_str() == held)
        .unwrap();
    assert_eq!(entry.outcome_by.as_deref(), Some("caller#1/desk-new"));
    assert!(!entry.to_call());
    app.shutdown().await;
}

#[tokio::test]
async fn a_claim_that_is_not_resolved_returns_to_the_queue_after_the_hold() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    let first = claim(&app, rc.id.0, CALLER_TOKEN, "a").await;
    let other = claim(&app, rc.id.0, HQ_TOKEN, "b").await;
    assert_ne!(first["entry"]["staff_id"], other["entry"]["staff_id"]);
    // Default hold is 5 minutes; after it, "a"'s person goes to the next caller.
    app.advance(mins(6));
    let later = claim(&app, rc.id.0, HQ_TOKEN, "c").await;
    assert_eq!(later["entry"]["staff_id"], first["entry"]["staff_id"]);
    app.shutdown().await;
}

#[tokio::test]
async fn a_shelter_token_acknowledges_for_its_own_phone_only() {
    let app = spawn_app_with(with_shelter_token()).await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    let ack = |body: &'static str| {
        app.http
            .post(format!("{}/api/rollcalls/{}/ack", app.base_url, rc.id))
            .bearer_auth(SHELTER_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // A shelter token cannot name another phone: the body takes no fields.
    let res = ack(r#"{"staff_id": "P0002"}"#).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = ack("{nope").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(app.progress(rc.id).await.overall.answered, 0);
    // Not one of the shelter's answers: refused, naming them.
    let res = ack(r#"{"value": "safe"}"#).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(res.text().await.unwrap().contains("need_support"));
    // An empty body is the shelter's first "ok" answer: open, nothing wrong.
    let res = ack("").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let p = app.progress(rc.id).await;
    assert_eq!(p.overall.answered, 1);
    assert_eq!(p.answers.get("opened"), Some(&1));
    // Past the deadline, the acknowledged shelter is not on the list; the other one is.
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 49)
        .await;
    let to_call = app.to_call_ids(rc.id).await;
    assert!(!to_call.contains(&"P0001".to_string()));
    assert!(to_call.contains(&"P0002".to_string()));
    // The acknowledgement is in the event log, like a button tap.
    let events = app.store.events(rc.id, 100).await.unwrap();
    assert!(events
        .iter()
        .any(|e| e.kind == "answer" && e.value.as_deref() == Some("opened")));
    // A closed roll call takes no more acknowledgements.
    app.hq.close(rc.id).await.unwrap();
    assert_eq!(ack("{}").await.unwrap().status(), StatusCode::CONFLICT);
    app.shutdown().await;
}

#[tokio::test]
async fn a_shelter_phone_without_a_chat_id_is_told_it_is_on_the_call_list() {
    let mut opts = with_shelter_token();
    let phone = opts
        .contacts
        .iter_mut()
        .find(|c| c.id.as_str() == "P0001")
        .expect("the synthetic population has shelter phone P0001");
    phone.chat.clear();
    let app = spawn_app_with(opts).await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    let res = app
        .http
        .post(format!("{}/api/rollcalls/{}/ack", app.base_url, rc.id))
        .bearer_auth(SHELTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body = res.text().await.unwrap();
    assert!(
        body.contains("P0001") && body.contains("call list"),
        "{body}"
    );
    assert_eq!(app.progress(rc.id).await.overall.answered, 0);
    app.shutdown().await;
}

#[tokio::test]
async fn an_announcement_goes_to_everyone_once_with_one_ok_button() {
    let app = spawn_app().await;
    let send = || {
        app.http
            .post(format!("{}/api/announcements", app.base_url))
            .bearer_auth(HQ_TOKEN)
            .header("Idempotency-Key", "announce-1")
            .json(&json!({"text_ja": "第一配備に移行します。各自の持ち場へ向かってください。"}))
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status(), StatusCode::CREATED);
    assert_eq!(b.status(), StatusCode::CREATED);
    let a: Value = a.json().await.unwrap();
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["roll_call"]["id"], b["roll_call"]["id"]);
    let list = app.hq.list().await.unwrap();
    assert_eq!(list.len(), 1);
    let rc = &list[0];
    assert_eq!(rc.scenario, "announcement");
    assert_eq!(rc.buttons.len(), 1);
    assert_eq!(rc.deadline().as_secs(), 24 * 3600);
    app.all_sent(rc.id).await;
    assert_eq!(app.sim.stats().accepted, 50);
    // Greetings are refused like in a scenario file.
    let res = app
        .http
        .post(format!("{}/api/announcements", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .json(&json!({"text_ja": "お疲れ様です。集合してください。"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    app.shutdown().await;
}

#[tokio::test]
async fn the_stream_sends_progress_as_server_sent_events() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    let mut res = app
        .http
        .get(format!(
            "{}/api/rollcalls/{}/stream?token={CALLER_TOKEN}",
            app.base_url, rc.id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = res.chunk().await.unwrap().expect("stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("event: progress\n"), "{text}");
    assert!(text.contains("\"to_call\":0"), "{text}");
    app.advance(mins(6));
    while !text.contains("\"to_call\":50") {
        let chunk = res.chunk().await.unwrap().expect("stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);
    app.shutdown().await;
}

#[tokio::test]
async fn the_web_page_and_its_assets_are_served_without_a_token() {
    let app = spawn_app().await;
    for (path, ct, needle) in [
        ("/", "text/html", "安否確認"),
        ("/app.js", "text/javascript", "EventSource"),
        ("/app.css", "text/css", "@media print"),
    ] {
        let res = app
            .http
            .get(format!("{}{path}", app.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ct));
        assert!(res.text().await.unwrap().contains(needle), "{path}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn call_queue_requests_that_are_malformed_get_clear_errors() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    let post = |path: String, body: String| {
        app.http
            .post(format!("{}{path}", app.base_url))
            .bearer_auth(CALLER_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let next = format!("/api/rollcalls/{}/calls/next", rc.id);
    let cases = [
        (next.clone(), "{nope".to_string(), StatusCode::BAD_REQUEST),
        (
            next.clone(),
            r#"{"desk": "a b/c"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            next.clone(),
            r#"{"who": "me"}"#.into(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            next.clone(),
            format!(r#"{{"desk": "{}"}}"#, "x".repeat(40 * 1024 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/api/rollcalls/abc/calls/next".into(),
            "{}".into(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/rollcalls/999/calls/next".into(),
            "{}".into(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/rollcalls/999/calls/S00001/release".into(),
            "{}".into(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (path, body, expected) in cases {
        let res = post(path.clone(), body).await.unwrap();
        assert_eq!(res.status(), expected, "{path}");
        assert!(!res.text().await.unwrap().is_empty(), "{path}: says why");
    }
    let nobody_claimed = app
        .call_list(rc.id)
        .await
        .iter()
        .all(|e| e.claimed_by.is_none());
    assert!(nobody_claimed);
    app.shutdown().await;
}
