//! The simulator over real loopback HTTP, driven through its adapter
//! ([`SimulatorProvider`]) the way the dispatcher and the receipt watcher use it.

use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone;
use futures::StreamExt;

use super::*;
use crate::clock::ManualClock;
use crate::providers::simulator::SimulatorProvider;
use crate::providers::{ChatProvider, InboundKind, OutboundMessage, ProviderError};

const TOKEN: &str = "sim-token";

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 11, 5, 46, 0).unwrap()
}

fn handle(n: usize) -> ChatHandle {
    ChatHandle::parse(&format!("sim-S{n:05}")).unwrap()
}

fn message(roll_call: i64, to: &ChatHandle) -> OutboundMessage {
    OutboundMessage {
        asks: Default::default(),
        delivery_id: roll_call * 1_000_000 + 1,
        roll_call_id: RollCallId(roll_call),
        to: to.clone(),
        text: "【安否確認】地震がありました。".into(),
        buttons: vec![
            AnswerButton {
                label: "無事".into(),
                value: "safe".into(),
            },
            AnswerButton {
                label: "負傷".into(),
                value: "injured".into(),
            },
        ],
        resend: false,
    }
}

struct Fixture {
    sim: SimHandle,
    clock: ManualClock,
    provider: SimulatorProvider,
}

async fn start(config: SimConfig, script: Script) -> Fixture {
    let clock = ManualClock::new(start_time());
    let rate_limit = config.rate_limit;
    let sim = Simulator::start(config, script, Arc::new(clock.clone()))
        .await
        .unwrap();
    let provider = SimulatorProvider::new(sim.base_url(), TOKEN.into(), rate_limit, 64);
    Fixture {
        sim,
        clock,
        provider,
    }
}

async fn start_plain() -> Fixture {
    start(SimConfig::new(TOKEN), Script::new()).await
}

#[tokio::test]
async fn accepted_send_is_counted_and_kept_for_the_recipient() {
    let f = start_plain().await;
    let to = handle(1);
    let sent = f.provider.send(&message(7, &to)).await.unwrap();
    assert_eq!(sent.message_id.as_deref(), Some("m-1"));
    assert_eq!(f.sim.stats().accepted, 1);
    assert_eq!(f.sim.received(RollCallId(7), &to), 1);
    assert_eq!(f.sim.received(RollCallId(8), &to), 0);
    let got = f.sim.messages_for(&to);
    assert_eq!(got.len(), 1);
    // The message, then what the route asks for (the simulator shows reads and buttons).
    let m = message(7, &to);
    assert_eq!(
        got[0].text,
        m.asks.compose(
            &m.text,
            crate::scenario::RouteTraits::direct(&f.provider.capabilities()),
            &m.buttons
        )
    );
    assert!(got[0].text.starts_with(&m.text));
    assert_eq!(got[0].buttons[1].value, "injured");
    assert_eq!(got[0].at, start_time());
    f.sim.shutdown().await;
}

#[tokio::test]
async fn second_send_of_a_roll_call_to_the_same_person_is_a_duplicate() {
    let f = start_plain().await;
    let to = handle(1);
    f.provider.send(&message(7, &to)).await.unwrap();
    f.provider.send(&message(7, &to)).await.unwrap();
    f.provider.send(&message(8, &to)).await.unwrap();
    let s = f.sim.stats();
    assert_eq!((s.accepted, s.duplicates), (3, 1));
    assert_eq!(f.sim.received(RollCallId(7), &to), 2);
}

#[tokio::test]
async fn wrong_token_is_permanent_and_changes_nothing() {
    let f = start_plain().await;
    let bad = SimulatorProvider::new(f.sim.base_url(), "not-the-token".into(), None, 1);
    assert_eq!(
        bad.send(&message(7, &handle(1))).await,
        Err(ProviderError::Permanent(
            "simulator refused the token".into()
        ))
    );
    assert!(matches!(
        bad.poll_events(None, Duration::ZERO).await,
        Err(ProviderError::Permanent(_))
    ));
    assert_eq!(f.sim.stats(), SimStats::default());
}

#[tokio::test]
async fn raw_http_refusals_have_the_documented_statuses() {
    let f = start_plain().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/messages", f.sim.base_url());
    let post = |body: &'static str, token: Option<&'static str>| {
        let mut r = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let ok = r#"{"delivery_id":1,"roll_call_id":7,"to":"sim-S00001","text":"x","buttons":[]}"#;
    assert_eq!(post(ok, None).await.unwrap().status(), 401);
    assert_eq!(post("{nope", Some(TOKEN)).await.unwrap().status(), 400);
    assert_eq!(
        post(r#"{"delivery_id":1}"#, Some(TOKEN))
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(post(ok, Some(TOKEN)).await.unwrap().status(), 201);
    let unknown_route = http
        .get(format!("{}/v2/whatever", f.sim.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_route.status(), 404);
    assert_eq!(f.sim.stats().accepted, 1);
}

#[tokio::test]
async fn unknown_user_is_permanent() {
    let f = start_plain().await;
    f.sim.set_behaviour(handle(9), Behaviour::unknown_user());
    assert_eq!(
        f.provider.send(&message(7, &handle(9))).await,
        Err(ProviderError::Permanent(
            "unknown user on the chat platform".into()
        ))
    );
    let s = f.sim.stats();
    assert_eq!((s.unknown_user, s.accepted), (1, 0));
}

#[tokio::test]
async fn injected_server_error_is_retryable() {
    let f = start_plain().await;
    f.sim.set_faults(Faults {
        server_error_share: 1.0,
        ..Faults::default()
    });
    let mut with_after = 0;
    for _ in 0..40 {
        match f.provider.send(&message(7, &handle(1))).await {
            Err(ProviderError::Retryable { after, .. }) => {
                if after == Some(Duration::from_secs(1)) {
                    with_after += 1;
                } else {
                    assert_eq!(after, None);
                }
            }
            other => panic!("{other:?}"),
        }
    }
    // Half carry Retry-After: 1 (seeded, so this count is stable).
    assert!((10..=30).contains(&with_after), "{with_after}");
    let s = f.sim.stats();
    assert_eq!((s.server_errors, s.accepted), (40, 0));
}

#[tokio::test]
async fn forced_429_is_rate_limited_with_its_retry_after() {
    let f = start_plain().await;
    f.sim.set_faults(Faults {
        forced_429_share: 1.0,
        ..Faults::default()
    });
    assert_eq!(
        f.provider.send(&message(7, &handle(1))).await,
        Err(ProviderError::RateLimited {
            reset: Duration::from_secs(2)
        })
    );
    let s = f.sim.stats();
    assert_eq!((s.forced_429, s.limit_exceeded, s.accepted), (1, 0, 0));
}

#[tokio::test]
async fn rate_limit_is_enforced_on_the_shared_clock() {
    let mut config = SimConfig::new(TOKEN);
    config.rate_limit = Some(RateLimit {
        requests: 5,
        per: Duration::from_secs(1),
    });
    let f = start(config, Script::new()).await;
    for i in 0..5 {
        f.provider.send(&message(7, &handle(i))).await.unwrap();
    }
    assert_eq!(
        f.provider.send(&message(7, &handle(5))).await,
        Err(ProviderError::RateLimited {
            reset: Duration::from_secs(1)
        })
    );
    let s = f.sim.stats();
    assert_eq!((s.accepted, s.limit_exceeded, s.max_in_window), (5, 1, 5));

    f.clock.advance(Duration::from_secs(1));
    for i in 5..10 {
        f.provider.send(&message(7, &handle(i))).await.unwrap();
    }
    let s = f.sim.stats();
    assert_eq!((s.accepted, s.limit_exceeded, s.max_in_window), (10, 1, 5));
}

#[tokio::test]
async fn retry_after_is_when_the_oldest_send_leaves_the_window_rounded_up() {
    let mut config = SimConfig::new(TOKEN);
    config.rate_limit = Some(RateLimit {
        requests: 2,
        per: Duration::from_secs(10),
    });
    let f = start(config, Script::new()).await;
    f.provider.send(&message(7, &handle(1))).await.unwrap();
    f.clock.advance(Duration::from_millis(1_500));
    f.provider.send(&message(7, &handle(2))).await.unwrap();
    // The oldest leaves at 10 s; now is 1.5 s: 8.5 s, rounded up.
    assert_eq!(
        f.provider.send(&message(7, &handle(3))).await,
        Err(ProviderError::RateLimited {
            reset: Duration::from_secs(9)
        })
    );
    f.clock.advance(Duration::from_millis(8_400));
    assert_eq!(
        f.provider.send(&message(7, &handle(3))).await,
        Err(ProviderError::RateLimited {
            reset: Duration::from_secs(1)
        })
    );
    f.clock.advance(Duration::from_millis(100));
    f.provider.send(&message(7, &handle(3))).await.unwrap();
    let s = f.sim.stats();
    assert_eq!((s.accepted, s.limit_exceeded, s.max_in_window), (3, 2, 2));
}

/// The `seq` part of a `<feed>:<seq>` cursor.
fn seq_of(cursor: &Option<String>) -> &str {
    let c = cursor.as_deref().unwrap_or_default();
    c.rsplit(':').next().unwrap_or(c)
}

#[tokio::test]
async fn read_receipt_appears_only_when_the_clock_reaches_it() {
    let f = start_plain().await;
    let reader = handle(1);
    f.sim.set_behaviour(
        reader.clone(),
        Behaviour::reads_after(Duration::from_secs(60)),
    );
    f.provider.send(&message(7, &reader)).await.unwrap();
    // A duplicate schedules nothing more.
    f.provider.send(&message(7, &reader)).await.unwrap();

    let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
    assert!(batch.events.is_empty());
    assert_eq!(seq_of(&batch.cursor), "0");

    f.clock.advance(Duration::from_secs(59));
    let batch = f
        .provider
        .poll_events(Some("0"), Duration::ZERO)
        .await
        .unwrap();
    assert!(batch.events.is_empty());

    f.clock.advance(Duration::from_secs(1));
    let batch = f
        .provider
        .poll_events(Some("0"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(batch.events.len(), 1);
    let e = &batch.events[0];
    assert_eq!(e.kind, InboundKind::Read);
    assert_eq!(e.roll_call_id, Some(RollCallId(7)));
    assert_eq!(e.from, reader);
    assert_eq!(e.occurred_at, start_time() + chrono::Duration::seconds(60));
    assert_eq!(seq_of(&batch.cursor), "1");

    f.clock.advance(Duration::from_secs(3600));
    let again = f
        .provider
        .poll_events(batch.cursor.as_deref(), Duration::ZERO)
        .await
        .unwrap();
    assert!(again.events.is_empty(), "{:?}", again.events);
    assert_eq!(again.cursor, batch.cursor);
    assert_eq!(f.sim.stats().events_emitted, 1);
}

#[tokio::test]
async fn button_answer_arrives_as_answer_with_a_read_before_it() {
    let f = start_plain().await;
    let tapper = handle(2);
    f.sim.set_behaviour(
        tapper.clone(),
        Behaviour::never_reads()
            .answering(Duration::from_secs(30), SimAnswer::Button("safe".into())),
    );
    f.provider.send(&message(7, &tapper)).await.unwrap();
    f.clock.advance(Duration::from_secs(30));
    let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
    let kinds: Vec<&InboundKind> = batch.events.iter().map(|e| &e.kind).collect();
    assert_eq!(
        kinds,
        [
            &InboundKind::Read,
            &InboundKind::Answer {
                value: "safe".into()
            }
        ]
    );
    assert_ne!(batch.events[0].event_id, batch.events[1].event_id);
    assert!(batch.events.iter().all(|e| e.from == tapper));
}

#[tokio::test]
async fn a_read_due_after_the_answer_is_not_sent_twice() {
    let f = start_plain().await;
    let h = handle(3);
    f.sim.set_behaviour(
        h.clone(),
        Behaviour::reads_after(Duration::from_secs(100))
            .answering(Duration::from_secs(40), SimAnswer::Sticker("ok".into())),
    );
    f.provider.send(&message(7, &h)).await.unwrap();
    f.clock.advance(Duration::from_secs(500));
    let batch = f.provider.poll_events(None, Duration::ZERO).await.unwrap();
    let kinds: Vec<InboundKind> = batch.events.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [InboundKind::Read, InboundKind::Sticker { id: "ok".into() }]
    );
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_the_clock_makes_an_event_due() {
    let f = start_plain().await;
    let h = handle(4);
    f.sim
        .set_behaviour(h.clone(), Behaviour::reads_after(Duration::from_secs(10)));
    f.provider.send(&message(7, &h)).await.unwrap();
    let provider = Arc::new(f.provider);
    let p = provider.clone();
    let poll = tokio::spawn(async move { p.poll_events(None, Duration::from_secs(5)).await });
    tokio::task::yield_now().await;
    f.clock.advance(Duration::from_secs(10));
    let batch = tokio::time::timeout(Duration::from_secs(3), poll)
        .await
        .expect("long poll woke before its wait ran out")
        .unwrap()
        .unwrap();
    assert_eq!(batch.events.len(), 1);
}

#[tokio::test]
async fn events_come_in_pages_in_seq_order() {
    let f = start_plain().await;
    let mut script = Script::new();
    for i in 0..30 {
        script.insert(
            handle(i),
            Behaviour::reads_after(Duration::from_secs(30 - i as u64)),
        );
    }
    f.sim.set_script(script);
    for i in 0..30 {
        f.provider.send(&message(7, &handle(i))).await.unwrap();
    }
    f.clock.advance(Duration::from_secs(60));
    let http = reqwest::Client::new();
    let mut after = "0".to_string();
    let mut seen = Vec::new();
    loop {
        let page: serde_json::Value = http
            .get(format!(
                "{}/v1/events?after={after}&limit=7",
                f.sim.base_url()
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        assert!(events.len() <= 7);
        for e in events {
            seen.push((
                e["seq"].as_u64().unwrap(),
                e["from"].as_str().unwrap().to_string(),
                e["occurred_at"].as_str().unwrap().to_string(),
            ));
        }
        after = page["next"].as_str().unwrap().to_string();
    }
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<u64>>());
    // Earliest due first: the last person read soonest.
    assert_eq!(seen[0].1, "sim-S00029");
    assert!(seen[0].2.ends_with('Z'), "{}", seen[0].2);
}

#[tokio::test]
async fn generated_script_drives_the_feed() {
    let hs: Vec<ChatHandle> = (0..200).map(handle).collect();
    let spec = PopulationSpec {
        never_read: 0.0,
        unknown_users: 0.0,
        ..PopulationSpec::default()
    };
    let script = Script::generate(&hs, &spec, &["safe".into()], 3);
    let f = start(SimConfig::new(TOKEN), script).await;
    for h in &hs {
        f.provider.send(&message(7, h)).await.unwrap();
    }
    f.clock.advance(Duration::from_secs(7 * 3600));
    let mut reads = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let b = f
            .provider
            .poll_events(cursor.as_deref(), Duration::ZERO)
            .await
            .unwrap();
        if b.events.is_empty() {
            break;
        }
        for e in &b.events {
            if e.kind == InboundKind::Read {
                assert!(reads.insert(e.from.clone()), "two reads from {}", e.from);
            }
        }
        cursor = b.cursor;
    }
    assert_eq!(reads.len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_sends_are_all_counted() {
    let f = start_plain().await;
    let provider = &f.provider;
    let failures = futures::stream::iter(0..10_000)
        .map(|i| async move { provider.send(&message(7, &handle(i))).await })
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    assert_eq!(failures, 0);
    let s = f.sim.stats();
    assert_eq!((s.accepted, s.duplicates), (10_000, 0));
    assert_eq!(f.sim.received(RollCallId(7), &handle(9_999)), 1);
}

#[tokio::test]
async fn slow_responses_still_deliver() {
    let f = start_plain().await;
    f.sim.set_faults(Faults {
        slow_share: 1.0,
        slow_delay: Duration::from_millis(50),
        ..Faults::default()
    });
    let before = tokio::time::Instant::now();
    f.provider.send(&message(7, &handle(1))).await.unwrap();
    assert!(before.elapsed() >= Duration::from_millis(50));
    assert_eq!(f.sim.stats().accepted, 1);
}
