//! The adapter against a stand-in homeserver on loopback: sends, the event feed, and how
//! errors are classified.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query};
use axum::http::StatusCode as S;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};

use super::state::CheckRecord;
use super::*;
use crate::clock::ManualClock;
use crate::config::{MatrixConfig, Secret};
use crate::ids::{ChatHandle, RollCallId};
use crate::providers::{AnswerButton, InboundKind};

fn buttons() -> Vec<AnswerButton> {
    vec![
        AnswerButton {
            label: "無事 / Safe".into(),
            value: "safe".into(),
        },
        AnswerButton {
            label: "負傷 / Injured".into(),
            value: "injured".into(),
        },
    ]
}

fn message() -> OutboundMessage {
    OutboundMessage {
        delivery_id: 42,
        roll_call_id: RollCallId(7),
        to: ChatHandle::parse("@s001:hs.test").unwrap(),
        text: "【安否確認】地震がありました。".into(),
        buttons: buttons(),
        resend: false,
        asks: Default::default(),
    }
}

struct Fixture {
    provider: MatrixProvider,
    store: SharedStore,
    url: String,
    _tmp: tempfile::TempDir,
}

/// Serves `app` on loopback; its base URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The bot `@anpi:hs.test` on the homeserver at `url`, its state in `store`.
fn provider_on(url: String, store: SharedStore) -> MatrixProvider {
    let config = MatrixConfig {
        homeserver: url,
        user_id: "@anpi:hs.test".into(),
        access_token_file: None,
        access_token: Some(Secret::new("syt_s3cret")),
        sync_timeout: Duration::from_secs(1),
        rate_limit_per_minute: 0,
        max_in_flight: 4,
    };
    let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
    MatrixProvider::new(&config, &config.access_token().unwrap(), store, clock).unwrap()
}

async fn fixture(app: Router) -> Fixture {
    // Everyone is in their room unless a test says otherwise.
    let app = app
        .route(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}",
            get(|| async { Json(json!({"membership": "join"})) }),
        )
        .route(
            "/_matrix/client/v3/profile/{user}",
            get(|| async { Json(json!({"displayname": "someone"})) }),
        );
    let url = serve(app).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = crate::store::open(&format!("sqlite://{}", tmp.path().join("t.db").display()))
        .await
        .unwrap();
    let provider = provider_on(url.clone(), store.clone());
    Fixture {
        provider,
        store,
        url,
        _tmp: tmp,
    }
}

async fn with_room(f: &Fixture) {
    f.provider
        .set_dm_room("@s001:hs.test", "!dm:hs.test")
        .await
        .unwrap();
}

#[tokio::test]
async fn send_puts_an_m_text_with_options_under_a_delivery_txn_id() {
    let seen: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
        put(
            move |Path((room, txn)): Path<(String, String)>, Json(body): Json<Value>| {
                let s2 = s2.clone();
                async move {
                    s2.lock().unwrap().push((room, txn, body));
                    Json(json!({"event_id": "$ev1"}))
                }
            },
        ),
    );
    let f = fixture(app).await;
    with_room(&f).await;
    let sent = f.provider.send(&message()).await.unwrap();
    assert_eq!(sent.message_id.as_deref(), Some("$ev1"));
    f.provider.send(&message()).await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, "!dm:hs.test");
    assert_eq!(seen[0].1, "anpi-7-42");
    assert_eq!(seen[0].1, seen[1].1, "a retry reuses the transaction id");
    let body = &seen[0].2;
    assert_eq!(body["msgtype"], "m.text");
    assert_eq!(body[ROLL_CALL_KEY], 7);
    let text = body["body"].as_str().unwrap();
    assert!(text.starts_with("【安否確認】"), "{text}");
    assert!(text.contains("1 無事 / 2 負傷"), "{text}");
    assert!(text.contains("1 Safe / 2 Injured"), "{text}");
    // The check is remembered for the receipts that come back.
    let rec = f.provider.check_record("$ev1").await.unwrap().unwrap();
    assert_eq!(rec.rc, 7);
    assert_eq!(rec.values, ["safe", "injured"]);
    assert_eq!(
        f.provider
            .latest_check_event("!dm:hs.test")
            .await
            .unwrap()
            .map(|(event, _)| event)
            .as_deref(),
        Some("$ev1")
    );
}

#[tokio::test]
async fn a_receipt_on_a_later_check_confirms_the_earlier_ones_in_the_room() {
    // A safety check (roll call 7), then an announcement (roll call 8) in the same DM
    // room; the person opens the chat and their client sends one receipt, on the newest.
    let next = Arc::new(Mutex::new(0u32));
    let n2 = next.clone();
    let sync = json!({
        "next_batch": "s2",
        "rooms": {"join": {"!dm:hs.test": {
            "ephemeral": {"events": [{"type": "m.receipt", "content": {
                "$ev2": {"m.read": {"@s001:hs.test": {"ts": 1_700_000_000_500_i64}}}
            }}]},
            "timeline": {"events": []}
        }}}
    });
    let app = Router::new()
        .route(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
            put(move || {
                let n2 = n2.clone();
                async move {
                    let mut n = n2.lock().unwrap();
                    *n += 1;
                    Json(json!({"event_id": format!("$ev{n}")}))
                }
            }),
        )
        .route(
            "/_matrix/client/v3/sync",
            get(move || {
                let sync = sync.clone();
                async move { Json(sync) }
            }),
        );
    let f = fixture(app).await;
    with_room(&f).await;
    // Two open roll calls, the check (first) and the announcement (second).
    let scenario = crate::scenario::Scenario::parse(
        include_str!("../../../scenarios/drill.toml"),
        "scenarios/drill.toml",
    )
    .unwrap();
    let contacts = crate::contacts::synthetic::generate(1, 1).contacts;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (new, recipients) = crate::rollcall::compose(&scenario, &contacts, NAME, None, None);
        ids.push(
            f.store
                .create_roll_call(&new, &recipients, 0)
                .await
                .unwrap()
                .id,
        );
    }
    let mut msg = message();
    msg.roll_call_id = ids[0];
    f.provider.send(&msg).await.unwrap();
    msg.roll_call_id = ids[1];
    msg.delivery_id = 43;
    f.provider.send(&msg).await.unwrap();
    let poll = || async {
        let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
        let mut got: Vec<(Option<RollCallId>, InboundKind)> = batch
            .events
            .iter()
            .map(|e| (e.roll_call_id, e.kind.clone()))
            .collect();
        got.sort_by_key(|g| g.0);
        got
    };
    assert_eq!(
        poll().await,
        vec![
            (Some(ids[0]), InboundKind::Read),
            (Some(ids[1]), InboundKind::Read),
        ]
    );
    assert_eq!(*next.lock().unwrap(), 2);
    // Once the check is closed, its record stays as it was.
    f.store.close_roll_call(ids[0], 1).await.unwrap();
    assert_eq!(poll().await, vec![(Some(ids[1]), InboundKind::Read)]);
}

#[tokio::test]
async fn errors_are_classified_once() {
    let app = Router::new().route(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
            put(|Path((room, _)): Path<(String, String)>| async move {
                match room.as_str() {
                    "!busy:hs.test" => (
                        S::TOO_MANY_REQUESTS,
                        r#"{"errcode":"M_LIMIT_EXCEEDED","error":"Too Many Requests","retry_after_ms":2500}"#,
                    )
                        .into_response(),
                    "!down:hs.test" => (S::BAD_GATEWAY, "").into_response(),
                    _ => (
                        S::FORBIDDEN,
                        r#"{"errcode":"M_FORBIDDEN","error":"User not in room"}"#,
                    )
                        .into_response(),
                }
            }),
        );
    let f = fixture(app).await;
    let mut msg = message();
    // No DM room: permanent, with what to do about it.
    match f.provider.send(&msg).await {
        Err(ProviderError::Permanent(r)) => {
            assert!(r.contains("anpi matrix prepare"), "{r}")
        }
        other => panic!("{other:?}"),
    }
    for (user, room) in [
        ("@busy:hs.test", "!busy:hs.test"),
        ("@down:hs.test", "!down:hs.test"),
        ("@gone:hs.test", "!gone:hs.test"),
    ] {
        f.provider.set_dm_room(user, room).await.unwrap();
    }
    msg.to = ChatHandle::parse("@busy:hs.test").unwrap();
    assert_eq!(
        f.provider.send(&msg).await,
        Err(ProviderError::RateLimited {
            reset: Duration::from_millis(2500)
        })
    );
    msg.to = ChatHandle::parse("@down:hs.test").unwrap();
    assert!(matches!(
        f.provider.send(&msg).await,
        Err(ProviderError::Retryable { .. })
    ));
    msg.to = ChatHandle::parse("@gone:hs.test").unwrap();
    match f.provider.send(&msg).await {
        Err(ProviderError::Permanent(r)) => assert!(r.contains("M_FORBIDDEN"), "{r}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sync_maps_receipts_replies_and_reactions_to_their_roll_call() {
    let sync = json!({
        "next_batch": "s2",
        "rooms": {"join": {"!dm:hs.test": {
            "ephemeral": {"events": [{"type": "m.receipt", "content": {
                "$check": {"m.read": {
                    "@s001:hs.test": {"ts": 1_700_000_000_500i64},
                    "@anpi:hs.test": {"ts": 1_700_000_000_000i64}
                }},
                "$old": {"m.read": {"@s001:hs.test": {"ts": 1_600_000_000_000i64}}}
            }}]},
            "timeline": {"events": [
                {"type": "m.room.message", "event_id": "$r1", "sender": "@s001:hs.test",
                 "origin_server_ts": 1_700_000_001_000i64,
                 "content": {"msgtype": "m.text", "body": "２"}},
                {"type": "m.room.message", "event_id": "$r0", "sender": "@s001:hs.test",
                 "origin_server_ts": 1_600_000_000_000i64,
                 "content": {"msgtype": "m.text", "body": "old chat"}},
                {"type": "m.reaction", "event_id": "$x1", "sender": "@s001:hs.test",
                 "origin_server_ts": 1_700_000_002_000i64,
                 "content": {"m.relates_to": {"rel_type": "m.annotation",
                    "event_id": "$check", "key": "👍"}}}
            ]}
        }}}
    });
    let app = Router::new()
        .route(
            "/_matrix/client/v3/sync",
            get(move || {
                let sync = sync.clone();
                async move { Json(sync) }
            }),
        )
        .route(
            "/_matrix/client/v3/rooms/{room}/event/{event}",
            get(|Path((_, event)): Path<(String, String)>| async move {
                let ts: i64 = if event == "$old" {
                    1_600_000_000_000
                } else {
                    1_700_000_000_000
                };
                Json(json!({"event_id": event, "sender": "@someone:hs.test",
                        "origin_server_ts": ts, "content": {}}))
            }),
        );
    let f = fixture(app).await;
    with_room(&f).await;
    let rec = CheckRecord {
        rc: 7,
        to: Some("@s001:hs.test".into()),
        values: vec!["safe".into(), "injured".into()],
        ts: Some(1_700_000_000_000),
        prev: None,
    };
    f.provider
        .remember_sent_check("!dm:hs.test", "$check", rec)
        .await
        .unwrap();
    let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
    assert_eq!(batch.cursor.as_deref(), Some("s2"));
    let mut got: Vec<(String, InboundKind)> = batch
        .events
        .iter()
        .map(|e| {
            // A receipt names the check it is on; what the person wrote or reacted counts
            // for the newest open roll call they are in (roll call 7 is not open here).
            let named = e.kind == InboundKind::Read;
            assert_eq!(e.roll_call_id, named.then_some(RollCallId(7)), "{e:?}");
            assert_eq!(e.from.as_str(), "@s001:hs.test");
            (e.event_id.clone(), e.kind.clone())
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            (
                "$r1".into(),
                InboundKind::Answer {
                    value: "injured".into()
                }
            ),
            ("$x1".into(), InboundKind::Sticker { id: "👍".into() }),
            ("receipt:@s001:hs.test:$check".into(), InboundKind::Read),
        ],
        "the bot's own receipt, a receipt and a message from before the check are ignored"
    );
}

/// A stand-in whose `/sync` answers a full sync (no `since`) with `full` and an incremental
/// one with `incremental`, and whose `/messages` is `messages` (absent: 404).
fn gap_homeserver(full: Value, incremental: Value, messages: Option<Router>) -> Router {
    let app = Router::new().route(
        "/_matrix/client/v3/sync",
        get(
            move |Query(q): Query<std::collections::HashMap<String, String>>| {
                let body = if q.contains_key("since") {
                    incremental.clone()
                } else {
                    full.clone()
                };
                async move { Json(body) }
            },
        ),
    );
    match messages {
        Some(m) => app.merge(m),
        None => app,
    }
}

/// `@s001`'s room with check `$check` of roll call 7 in it, sent at `CHECK_TS`; the provider
/// reporting to a fresh `Health`.
async fn gap_fixture(app: Router) -> (MatrixProvider, Arc<crate::health::Health>, Fixture) {
    let f = fixture(app).await;
    with_room(&f).await;
    let rec = CheckRecord {
        rc: 7,
        to: Some("@s001:hs.test".into()),
        values: vec!["safe".into(), "injured".into()],
        ts: Some(CHECK_TS),
        prev: None,
    };
    f.provider
        .remember_sent_check("!dm:hs.test", "$check", rec)
        .await
        .unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
    let health = Arc::new(crate::health::Health::new(clock, Duration::from_secs(120)));
    let provider = provider_on(f.url.clone(), f.store.clone()).with_health(health.clone());
    (provider, health, f)
}

const CHECK_TS: i64 = 1_700_000_000_000;

/// A full sync with nothing in it (the reconciliation before the first incremental one).
fn no_rooms() -> Value {
    json!({"next_batch": "s2", "rooms": {"join": {}}})
}

/// A text message from `@s001` at `CHECK_TS + secs` seconds.
fn said(id: &str, secs: i64, body: &str) -> Value {
    json!({"type": "m.room.message", "event_id": id, "sender": "@s001:hs.test",
           "origin_server_ts": CHECK_TS + secs * 1000,
           "content": {"msgtype": "m.text", "body": body}})
}

#[tokio::test]
async fn events_a_sync_skipped_are_read_back_down_to_the_previous_position() {
    // The incremental sync shows only the last message; the two before it, the first of
    // which asks for rescue, come from /messages, newest first, over two pages.
    let full = no_rooms();
    let incremental = json!({
        "next_batch": "s3",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p3", "events": [
                said("$last", 30, "。")
            ]}}
        }}
    });
    let asked: Arc<Mutex<Vec<std::collections::HashMap<String, String>>>> = Arc::default();
    let a2 = asked.clone();
    let messages = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/messages",
        get(
            move |Path(room): Path<String>,
                  Query(q): Query<std::collections::HashMap<String, String>>| {
                a2.lock().unwrap().push(q.clone());
                async move {
                    assert_eq!(room, "!dm:hs.test");
                    match q["from"].as_str() {
                        "p3" => Json(json!({"start": "p3", "end": "p2",
                                            "chunk": [said("$mid", 20, "まだ"),
                                                      said("$hurt", 15, "足を挟まれた")]})),
                        "p2" => Json(json!({"start": "p2",
                                            "chunk": [said("$help", 10, "閉じ込められた")]})),
                        other => panic!("from {other}"),
                    }
                }
            },
        ),
    );
    let (provider, health, _f) =
        gap_fixture(gap_homeserver(full, incremental, Some(messages))).await;
    let batch = provider
        .poll_events(Some("s2"), Duration::ZERO)
        .await
        .unwrap();
    let got: Vec<(&str, &InboundKind)> = batch
        .events
        .iter()
        .map(|e| (e.event_id.as_str(), &e.kind))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "$help",
                &InboundKind::Reply {
                    text: "閉じ込められた".into()
                }
            ),
            (
                "$hurt",
                &InboundKind::Reply {
                    text: "足を挟まれた".into()
                }
            ),
            (
                "$mid",
                &InboundKind::Reply {
                    text: "まだ".into()
                }
            ),
            ("$last", &InboundKind::Reply { text: "。".into() }),
        ],
        "oldest first, the skipped ones before the page's own"
    );
    assert_eq!(health.degraded(), [], "the gap was read to its end");
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 2, "{asked:?}");
    for q in asked.iter() {
        assert_eq!(q["dir"], "b");
        assert_eq!(q["to"], "s2", "down to the previous sync's position");
        assert_eq!(q["limit"], "100");
        let filter: Value = serde_json::from_str(&q["filter"]).unwrap();
        assert_eq!(filter["not_senders"], json!(["@anpi:hs.test"]), "{filter}");
        assert!(
            filter["types"]
                .as_array()
                .unwrap()
                .contains(&json!("m.reaction")),
            "{filter}"
        );
    }
}

#[tokio::test]
async fn after_a_lost_position_a_full_sync_reads_back_to_the_newest_check() {
    // No cursor: the full sync's page starts after the check, so /messages is read until a
    // page reaches back past the check (no `to`).
    let full = json!({
        "next_batch": "s9",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p9", "events": [
                said("$last", 30, "。")
            ]}}
        }}
    });
    let asked: Arc<Mutex<Vec<std::collections::HashMap<String, String>>>> = Arc::default();
    let a2 = asked.clone();
    let messages = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/messages",
        get(
            move |Query(q): Query<std::collections::HashMap<String, String>>| {
                a2.lock().unwrap().push(q.clone());
                async move {
                    // Endless history: the floor must end the paging.
                    Json(json!({"end": format!("{}x", q["from"]),
                                "chunk": [said("$help", 10, "助けて"), said("$old", -60, "前")]}))
                }
            },
        ),
    );
    let (provider, health, _f) = gap_fixture(gap_homeserver(full, json!({}), Some(messages))).await;
    let batch = provider.poll_events(None, Duration::ZERO).await.unwrap();
    let ids: Vec<&str> = batch.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["$help", "$last"], "{:?}", batch.events);
    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 1, "stops at the page that reaches the check");
    assert!(!asked[0].contains_key("to"), "{asked:?}");
    assert_eq!(health.degraded(), []);
}

#[tokio::test]
async fn a_gap_that_cannot_be_read_back_is_reported_as_the_feed_failing() {
    // Both rooms' timelines left events out; only the DM room has checks in it. The full
    // sync's page reaches back past the check, so it has no gap to read.
    let full = json!({
        "next_batch": "s2",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p1", "events": [
                said("$before", -5, "前"), said("$after", 5, "1")
            ]}}
        }}
    });
    let incremental = json!({
        "next_batch": "s3",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p2", "events": [
                said("$late", 9, "1")
            ]}},
            "!other:hs.test": {"timeline": {"limited": true, "events": []}}
        }}
    });
    // No /messages at all: the homeserver answers 404.
    let (provider, health, _f) = gap_fixture(gap_homeserver(full, incremental, None)).await;

    provider.poll_events(None, Duration::ZERO).await.unwrap();
    assert_eq!(health.degraded(), []);

    let batch = provider
        .poll_events(Some("s2"), Duration::ZERO)
        .await
        .unwrap();
    assert!(
        batch.events.iter().any(|e| e.event_id == "$late"),
        "what the page has is still read: {:?}",
        batch.events
    );
    let degraded = health.degraded();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert_eq!(degraded[0].component, crate::health::Component::Feed);
    assert!(
        degraded[0].reason.contains("!dm:hs.test"),
        "{}",
        degraded[0].reason
    );
    assert!(
        !degraded[0].reason.contains("!other"),
        "{}",
        degraded[0].reason
    );
}

#[tokio::test]
async fn a_gap_longer_than_the_read_back_limit_is_reported_with_what_was_read() {
    let incremental = json!({
        "next_batch": "s3",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p", "events": []}}
        }}
    });
    let pages = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p2 = pages.clone();
    let messages = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/messages",
        get(
            move |Query(q): Query<std::collections::HashMap<String, String>>| {
                let n = p2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    Json(json!({"end": format!("{}x", q["from"]),
                                "chunk": [said(&format!("$m{n}"), 100 - n as i64, "。")]}))
                }
            },
        ),
    );
    let (provider, health, _f) =
        gap_fixture(gap_homeserver(no_rooms(), incremental, Some(messages))).await;
    let batch = provider
        .poll_events(Some("s2"), Duration::ZERO)
        .await
        .unwrap();
    let pages = pages.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(pages, super::sync::READ_BACK_PAGES);
    assert_eq!(batch.events.len(), pages, "what was read is used");
    assert_eq!(health.degraded().len(), 1, "and the rest is reported");
}

#[tokio::test]
async fn a_page_that_keeps_failing_is_reported_with_what_was_read_and_the_feed_goes_on() {
    let incremental = json!({
        "next_batch": "s3",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p", "events": [
                said("$last", 30, "。")
            ]}}
        }}
    });
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let a2 = asked.clone();
    let messages = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/messages",
        get(
            move |Query(q): Query<std::collections::HashMap<String, String>>| {
                a2.lock().unwrap().push(q["from"].clone());
                async move {
                    if q["from"] == "p" {
                        Json(json!({"end": "p1", "chunk": [said("$help", 20, "助けて")]}))
                            .into_response()
                    } else {
                        (
                            S::TOO_MANY_REQUESTS,
                            Json(json!({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 10})),
                        )
                            .into_response()
                    }
                }
            },
        ),
    );
    let (provider, health, _f) =
        gap_fixture(gap_homeserver(no_rooms(), incremental, Some(messages))).await;
    let batch = provider
        .poll_events(Some("s2"), Duration::ZERO)
        .await
        .expect("the feed goes on");
    let ids: Vec<&str> = batch.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["$help", "$last"], "what was read is used");
    let tries = super::sync::READ_BACK_TRIES as usize;
    assert_eq!(
        asked.lock().unwrap().len(),
        1 + tries,
        "the failing page is tried {tries} times"
    );
    assert_eq!(health.degraded().len(), 1, "and the rest is reported");
}

#[tokio::test]
async fn a_homeserver_that_does_not_stop_at_the_position_is_read_back_only_to_the_check() {
    // Some homeservers return `end` past `to`: the pages stop at the one that reaches back
    // before the room's check, since nothing older answers it, and the gap is whole.
    let incremental = json!({
        "next_batch": "s3",
        "rooms": {"join": {
            "!dm:hs.test": {"timeline": {"limited": true, "prev_batch": "p", "events": [
                said("$last", 30, "。")
            ]}}
        }}
    });
    let pages = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p2 = pages.clone();
    let messages = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/messages",
        get(
            move |Query(q): Query<std::collections::HashMap<String, String>>| {
                let n = p2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as i64;
                async move {
                    // +20 s after the check, then +5 s, then -10 s: before it.
                    Json(json!({"end": format!("{}x", q["from"]),
                                "chunk": [said(&format!("$m{n}"), 20 - 15 * n, "。")]}))
                }
            },
        ),
    );
    let (provider, health, _f) =
        gap_fixture(gap_homeserver(no_rooms(), incremental, Some(messages))).await;
    provider
        .poll_events(Some("s2"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(pages.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(health.degraded(), [], "read to the check: no gap");
}

#[tokio::test]
async fn a_person_not_in_their_room_is_a_permanent_failure_naming_why() {
    let app = Router::new()
        .route(
            "/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}",
            get(|Path((room, _)): Path<(String, String)>| async move {
                match room.as_str() {
                    "!left:hs.test" => Json(json!({"membership": "leave"})).into_response(),
                    "!invited:hs.test" | "!nosuch:hs.test" => {
                        Json(json!({"membership": "invite"})).into_response()
                    }
                    _ => (S::NOT_FOUND, r#"{"errcode":"M_NOT_FOUND"}"#).into_response(),
                }
            }),
        )
        .route(
            "/_matrix/client/v3/profile/{user}",
            get(|Path(user): Path<String>| async move {
                if user.starts_with("@nosuch") {
                    (S::NOT_FOUND, r#"{"errcode":"M_NOT_FOUND"}"#).into_response()
                } else {
                    Json(json!({"displayname": "x"})).into_response()
                }
            }),
        )
        .route(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
            put(|| async { Json(json!({"event_id": "$never"})) }),
        );
    // Built without `fixture`'s "everyone joined" route.
    let url = serve(app).await;
    let f = fixture(Router::new()).await;
    let provider = provider_on(url, f.store.clone());
    let mut msg = message();
    for (who, want) in [
        ("left", "left the room"),
        ("invited", "never accepted the invite"),
        ("nosuch", "unknown user"),
        ("stranger", "not invited"),
    ] {
        let user = format!("@{who}:hs.test");
        provider
            .set_dm_room(&user, &format!("!{who}:hs.test"))
            .await
            .unwrap();
        msg.to = ChatHandle::parse(&user).unwrap();
        match provider.send(&msg).await {
            Err(ProviderError::Permanent(r)) => assert!(r.contains(want), "{who}: {r}"),
            other => panic!("{who}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn capabilities_and_debug_do_not_leak_the_token() {
    let f = fixture(Router::new()).await;
    let c = f.provider.capabilities();
    assert!(c.read_receipts && c.idempotent_sends && !c.buttons);
    assert_eq!(f.provider.name(), "matrix");
    assert!(!format!("{:?}", f.provider).contains("s3cret"));
    assert_eq!(
        f.provider.url(&["rooms", "!a:b", "event", "$e/1"]).path(),
        "/_matrix/client/v3/rooms/!a:b/event/$e%2F1"
    );
}

#[tokio::test]
async fn a_refused_token_is_tried_again_and_a_new_one_in_the_file_is_used_without_a_restart() {
    // The homeserver takes only the token "new"; anpi starts with "old" from its file.
    let app = Router::new().route(
        "/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
        put(|headers: axum::http::HeaderMap| async move {
            if headers["authorization"] == "Bearer new" {
                Json(json!({"event_id": "$sent"})).into_response()
            } else {
                (
                    S::UNAUTHORIZED,
                    r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}"#,
                )
                    .into_response()
            }
        }),
    );
    let f = fixture(app).await;
    with_room(&f).await;
    let file = f._tmp.path().join("matrix.token");
    std::fs::write(&file, "old\n").unwrap();
    let config = MatrixConfig {
        homeserver: f.url.clone(),
        user_id: "@anpi:hs.test".into(),
        access_token_file: Some(file.clone()),
        access_token: None,
        sync_timeout: Duration::from_secs(1),
        rate_limit_per_minute: 0,
        max_in_flight: 4,
    };
    let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
    let health = Arc::new(crate::health::Health::new(
        clock.clone(),
        Duration::from_secs(120),
    ));
    let provider = MatrixProvider::new(
        &config,
        &config.access_token().unwrap(),
        f.store.clone(),
        clock,
    )
    .unwrap()
    .with_health(health.clone());

    // Refused: not the person's failure, so tried again later, and HQ is told at once.
    match provider.send(&message()).await {
        Err(ProviderError::Unauthorized { after, reason }) => {
            assert_eq!(after, Duration::from_secs(10));
            assert!(
                reason.contains("refused the bot's access token"),
                "{reason}"
            );
            assert!(reason.contains("M_UNKNOWN_TOKEN"), "{reason}");
            assert!(
                reason.contains(&file.display().to_string()),
                "names the file to fix: {reason}"
            );
            assert!(
                !reason.contains("Bearer"),
                "the token is never shown: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    let degraded = health.degraded();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert_eq!(degraded[0].component, crate::health::Component::Token);

    // An admin puts a new token in the file: the next refusal reads it, the try after works.
    std::fs::write(&file, "new\n").unwrap();
    assert!(matches!(
        provider.send(&message()).await,
        Err(ProviderError::Unauthorized { .. })
    ));
    let sent = provider
        .send(&message())
        .await
        .expect("sent with the new token");
    assert_eq!(sent.message_id.as_deref(), Some("$sent"));
    assert_eq!(health.degraded(), [], "the token works again");
}
