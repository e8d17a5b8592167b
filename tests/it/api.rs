//! The HTTP API: roles, refusals that change nothing, idempotent start, the call list formats.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_wrong_token_and_changes_nothing() {
    let app = spawn_app().await;
    let u = &app.base_url;
    let endpoints: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (reqwest::Method::GET, format!("{u}/api/scenarios"), None),
        (
            reqwest::Method::POST,
            format!("{u}/api/estimate"),
            Some(json!({"scenario": "earthquake"})),
        ),
        (
            reqwest::Method::POST,
            format!("{u}/api/rollcalls"),
            Some(json!({"scenario": "earthquake"})),
        ),
        (reqwest::Method::GET, format!("{u}/api/rollcalls"), None),
        (reqwest::Method::GET, format!("{u}/api/rollcalls/1"), None),
        (
            reqwest::Method::POST,
            format!("{u}/api/rollcalls/1/close"),
            Some(json!({})),
        ),
        (
            reqwest::Method::GET,
            format!("{u}/api/rollcalls/1/escalations"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("{u}/api/rollcalls/1/events"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{u}/api/rollcalls/1/calls/S00001"),
            Some(json!({"outcome": "safe"})),
        ),
        (
            reqwest::Method::PUT,
            format!("{u}/api/contacts"),
            Some(json!([])),
        ),
        (reqwest::Method::GET, format!("{u}/api/contacts"), None),
    ];
    for (method, url, body) in &endpoints {
        for token in [None, Some("not-a-real-token-at-all")] {
            let mut req = app.http.request(method.clone(), url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req.send().await.unwrap();
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {url} with {token:?}"
            );
            let v: Value = res.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("token"), "{v}");
        }
    }
    assert!(
        app.hq.list().await.unwrap().is_empty(),
        "nothing was started"
    );
    assert_eq!(
        app.store.contacts().await.unwrap().len(),
        50,
        "contacts untouched"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_caller_may_read_the_list_and_record_outcomes_but_not_start_or_close() {
    let app = spawn_app().await;
    let u = &app.base_url;
    let forbidden = [
        (
            reqwest::Method::POST,
            format!("{u}/api/rollcalls"),
            json!({"scenario": "earthquake"}),
        ),
        (
            reqwest::Method::POST,
            format!("{u}/api/rollcalls/1/close"),
            json!({}),
        ),
        (reqwest::Method::PUT, format!("{u}/api/contacts"), json!([])),
    ];
    for (m, url, body) in &forbidden {
        let res = app
            .http
            .request(m.clone(), url)
            .bearer_auth(CALLER_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{m} {url}");
    }
    assert!(app.hq.list().await.unwrap().is_empty());
    let rc = app.start(&scenario()).await;
    let res = app
        .http
        .get(format!("{u}/api/rollcalls/{}/escalations", rc.id))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn a_double_clicked_start_makes_one_roll_call() {
    let app = spawn_app().await;
    let send = || {
        app.http
            .post(format!("{}/api/rollcalls", app.base_url))
            .bearer_auth(HQ_TOKEN)
            .header("Idempotency-Key", "click-1")
            .json(&json!({"scenario": "earthquake"}))
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.status(), StatusCode::CREATED);
    assert_eq!(b.status(), StatusCode::CREATED);
    let a: Value = a.json().await.unwrap();
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["roll_call"]["id"], b["roll_call"]["id"]);
    assert_eq!(app.hq.list().await.unwrap().len(), 1);
    let rc = app.hq.list().await.unwrap()[0].clone();
    app.all_sent(rc.id).await;
    assert_eq!(app.sim.stats().accepted, 50, "each person got one message");
    // The same key for another scenario is a mistake, not a replay: refused, nothing started.
    let other = app
        .http
        .post(format!("{}/api/rollcalls", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .header("Idempotency-Key", "click-1")
        .json(&json!({"scenario": "flood"}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let msg = other.text().await.unwrap();
    assert!(msg.contains("#1") && msg.contains("earthquake"), "{msg}");
    assert_eq!(app.hq.list().await.unwrap().len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_clear_errors() {
    let app = spawn_app().await;
    let u = &app.base_url;
    let post = |path: &str, body: &str| {
        app.http
            .post(format!("{u}{path}"))
            .bearer_auth(HQ_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let res = post("/api/rollcalls", "{not json").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = post("/api/rollcalls", r#"{"scenario": 5}"#).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let res = post("/api/rollcalls", r#"{"scenario": "volcano"}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let v: Value = res.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("earthquake"),
        "lists what exists: {v}"
    );
    let res = post("/api/rollcalls", r#"{"scenario": "../etc/passwd"}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let big = format!(r#"{{"scenario_toml": "{}"}}"#, "x".repeat(40 * 1024 * 1024));
    let res = post("/api/rollcalls", &big).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let res = post("/api/rollcalls/999/calls/S00001", r#"{"outcome": "safe"}"#)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = post("/api/rollcalls/abc/close", "{}").await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let rc = app.start(&scenario()).await;
    let res = post(
        &format!("/api/rollcalls/{}/calls/S00001", rc.id),
        r#"{"outcome": "fine"}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = res.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("no-answer"), "{v}");
    let res = post(
        &format!("/api/rollcalls/{}/calls/NOBODY", rc.id),
        r#"{"outcome": "safe"}"#,
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.hq.list().await.unwrap().len(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn call_list_csv_has_a_bom_and_healthz_and_metrics_answer() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    let res = app
        .http
        .get(format!(
            "{}/api/rollcalls/{}/escalations?format=csv",
            app.base_url, rc.id
        ))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.bytes().await.unwrap();
    assert_eq!(&bytes[..3], &[0xEF, 0xBB, 0xBF]);
    let text = String::from_utf8(bytes[3..].to_vec()).unwrap();
    assert_eq!(text.lines().count(), 51, "header and 50 people");
    let res = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let m = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("anpi_sends_total{provider=\"simulator\",result=\"sent\"} 50"),
        "{m}"
    );
    assert!(m.contains("anpi_call_list{status=\"to_call\"} 50"), "{m}");
    assert!(m.contains("anpi_call_list{status=\"escalated\"} 50"), "{m}");
    assert!(m.contains("anpi_roll_calls{state=\"open\",drill=\""), "{m}");
    app.shutdown().await;
}

/// HQ's `PUT /api/contacts` with `contacts`.
async fn put_contacts(app: &TestApp, contacts: &Value) -> reqwest::Response {
    app.http
        .put(format!("{}/api/contacts", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .json(contacts)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn contacts_with_a_control_character_are_refused_and_nothing_is_replaced() {
    let app = spawn_app().await;
    let before = app.store.contacts().await.unwrap();
    let mut contacts = serde_json::to_value(&before).unwrap();
    contacts[1]["name"] = json!("佐藤\u{0}花子");
    let res = put_contacts(&app, &contacts).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    let id = before[1].id.as_str();
    assert!(
        error.contains(&format!("{id}.name: ")) && error.contains("NUL"),
        "{body}"
    );
    assert_eq!(app.store.contacts().await.unwrap(), before);
    app.shutdown().await;
}

#[tokio::test]
async fn contacts_put_by_any_client_have_their_typed_ids_folded() {
    let app = spawn_app().await;
    let before = app.store.contacts().await.unwrap();
    let mut contacts = serde_json::to_value(&before).unwrap();
    // An HR script sends one id as typed with the IME on, and another as its duplicate.
    contacts[0]["id"] = json!("Ｓ９００１");
    let res = put_contacts(&app, &contacts).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "{}",
        res.text().await.unwrap()
    );
    let stored = app.store.contacts().await.unwrap();
    assert!(stored.iter().any(|c| c.id.as_str() == "S9001"), "folded");
    assert!(!stored.iter().any(|c| c.id.as_str() == "Ｓ９００１"));

    contacts[1]["id"] = json!("S9001");
    let res = put_contacts(&app, &contacts).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.store.contacts().await.unwrap(),
        stored,
        "nothing replaced"
    );
    app.shutdown().await;
}
