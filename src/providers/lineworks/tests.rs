//! The adapter against the LINE WORKS stand-in ([`crate::simulator::lineworks`]), which
//! enforces the documented request shapes, auth and limits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::auth::expires_in;
use super::*;
use crate::clock::{Clock, ManualClock};
use crate::ids::ChatHandle;
use crate::providers::{AnswerButton, InboundKind};
use crate::simulator::lineworks::{self as lws, LwSimConfig, LwSimHandle, TEST_PRIVATE_KEY_PEM};
use crate::simulator::Script;

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 11, 5, 46, 0).unwrap())
}

fn handle(s: &str) -> ChatHandle {
    ChatHandle::parse(s).unwrap()
}

async fn stand(config: LwSimConfig, c: &ManualClock) -> LwSimHandle {
    lws::start(config, Script::new(), Arc::new(c.clone()))
        .await
        .unwrap()
}

fn provider(lw: &LwSimHandle, c: &ManualClock) -> LineWorksProvider {
    provider_with_api(lw, c, lw.api_base())
}

/// A provider that logs in at `lw` and sends its API requests to `api_base`.
fn provider_with_api(lw: &LwSimHandle, c: &ManualClock, api_base: String) -> LineWorksProvider {
    let cfg = lw.config();
    LineWorksProvider::new(
        LineWorksSettings {
            api_base,
            token_url: lw.token_url(),
            client_id: cfg.client_id.clone(),
            client_secret: Secret::new(cfg.client_secret.clone()),
            service_account: cfg.service_account.clone(),
            private_key_pem: Secret::new(TEST_PRIVATE_KEY_PEM),
            scope: "bot bot.message board".into(),
            bot_id: cfg.bot_id.clone(),
            board_id: Some(cfg.board_id.clone()),
            rooms: BTreeMap::new(),
            rate_limit: cfg.rate_limit,
            board_rate_limit: cfg.board_rate_limit,
            room_push_limit: 500,
            max_in_flight: 4,
            readers_poll_for: Duration::from_secs(3600),
        },
        Arc::new(c.clone()),
    )
    .unwrap()
}

fn message(to: &str) -> OutboundMessage {
    OutboundMessage {
        asks: Default::default(),
        delivery_id: 1,
        roll_call_id: RollCallId(7),
        to: handle(to),
        text: "【訓練】安否確認です。".into(),
        buttons: vec![AnswerButton {
            label: "無事".into(),
            value: "safe".into(),
        }],
        resend: false,
    }
}

#[tokio::test]
async fn the_stand_in_checks_the_jwt_claims_and_signature() {
    let c = clock();
    let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
    let p = provider(&lw, &c);
    assert_eq!(p.send(&message("u1")).await, Ok(Sent { message_id: None }));
    let a = lw.assertions();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].claims.iss, "test-client-id");
    assert_eq!(a[0].claims.sub, "test.serviceaccount@anpi-test");
    assert_eq!(a[0].claims.iat, c.now().timestamp());
    assert_eq!(a[0].claims.exp - a[0].claims.iat, 3600);
    // The postback data carries the roll call and the answer.
    assert_eq!(
        lw.inbox(&handle("u1")),
        vec![vec!["anpi:7:safe".to_string()]]
    );

    // A stand-in that knows another key refuses the same provider's JWT for good.
    let mut other = LwSimConfig::new(vec![handle("u1")]);
    other.public_key_pem =
        include_str!("../../../tests/fixtures/lineworks-other-public-key.TEST-ONLY.pem").into();
    let lw2 = stand(other, &c).await;
    let health = std::sync::Arc::new(crate::health::Health::new(
        std::sync::Arc::new(ManualClock::new(c.now())),
        Duration::from_secs(120),
    ));
    let p2 = provider(&lw2, &c).with_health(health.clone());
    // The bot's login, not the person: no one is failed for it, and the sends in the next
    // 30 s get the same answer without asking again.
    for _ in 0..3 {
        match p2.send(&message("u1")).await {
            Err(ProviderError::Unauthorized { after, reason }) => {
                assert_eq!(after, Duration::from_secs(30));
                assert!(reason.contains("service-account"), "{reason}");
                assert!(reason.contains("restart anpi"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(lw2.stats().token_refused, 1);
    let degraded = health.degraded();
    assert!(
        degraded
            .iter()
            .any(|d| d.component == crate::health::Component::Token),
        "HQ is told at once: {degraded:?}"
    );
    c.advance(Duration::from_secs(31));
    assert!(matches!(
        p2.send(&message("u1")).await,
        Err(ProviderError::Unauthorized { .. })
    ));
    assert_eq!(lw2.stats().token_refused, 2, "asked again after the wait");
    assert_eq!(lw2.stats().user_messages, 0);
}

#[tokio::test]
async fn the_token_is_cached_and_reminted_before_it_expires() {
    let c = clock();
    let mut cfg = LwSimConfig::new(vec![handle("u1")]);
    cfg.token_lifetime = Duration::from_secs(600);
    let lw = stand(cfg, &c).await;
    let p = provider(&lw, &c);
    p.send(&message("u1")).await.unwrap();
    p.send(&message("u1")).await.unwrap();
    assert_eq!(lw.stats().tokens_issued, 1, "cached");
    // 600 s lifetime: re-minted 300 s before the end.
    c.advance(Duration::from_secs(310));
    p.send(&message("u1")).await.unwrap();
    assert_eq!(lw.stats().tokens_issued, 2);
    assert_eq!(lw.stats().unauthorized, 0, "never used an expired token");
}

#[tokio::test]
async fn a_401_leads_to_exactly_one_refresh_and_one_retry() {
    let c = clock();
    let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
    let p = provider(&lw, &c);
    p.send(&message("u1")).await.unwrap();
    lw.revoke_tokens();
    p.send(&message("u1")).await.unwrap();
    let st = lw.stats();
    assert_eq!(
        (st.unauthorized, st.tokens_issued, st.user_messages),
        (1, 2, 2)
    );
}

#[tokio::test]
async fn an_api_that_refuses_even_a_fresh_token_is_unauthorized_without_minting_again_and_again() {
    // Logins work, but the API refuses every token (a scope the app lacks).
    let c = clock();
    let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = refused.clone();
    let api = axum::Router::new().fallback(move || {
        r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { (axum::http::StatusCode::UNAUTHORIZED, "{}") }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });
    let health = Arc::new(crate::health::Health::new(
        Arc::new(ManualClock::new(c.now())),
        Duration::from_secs(120),
    ));
    let p = provider_with_api(&lw, &c, base).with_health(health.clone());
    for _ in 0..3 {
        match p.send(&message("u1")).await {
            Err(ProviderError::Unauthorized { reason, .. }) => {
                assert!(reason.contains("scopes"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        lw.stats().tokens_issued,
        2,
        "one login, one more after the first refusal, then no more for a while"
    );
    assert_eq!(health.incidents()[&crate::health::Component::Token], 1);
    c.advance(Duration::from_secs(31));
    assert!(p.send(&message("u1")).await.is_err());
    assert_eq!(lw.stats().tokens_issued, 3, "tried again after the wait");
    assert_eq!(
        health.incidents()[&crate::health::Component::Token],
        1,
        "one incident, not one per try"
    );
}

#[tokio::test]
async fn a_429_is_rate_limited_for_the_reset_the_platform_gave() {
    let c = clock();
    let lw = stand(LwSimConfig::new(vec![handle("u1")]), &c).await;
    let p = provider(&lw, &c);
    lw.force_429(1, Duration::from_secs(7));
    assert_eq!(
        p.send(&message("u1")).await,
        Err(ProviderError::RateLimited {
            reset: Duration::from_secs(7)
        })
    );
    assert_eq!(lw.stats().limit_exceeded, 0);
}

#[tokio::test]
async fn unknown_user_is_permanent_and_more_than_13_buttons_are_cut() {
    let c = clock();
    let mut script = Script::new();
    script.insert(handle("gone"), crate::simulator::Behaviour::unknown_user());
    let lw = lws::start(
        LwSimConfig::new(vec![handle("u1")]),
        script,
        Arc::new(c.clone()),
    )
    .await
    .unwrap();
    let p = provider(&lw, &c);
    assert!(matches!(
        p.send(&message("gone")).await,
        Err(ProviderError::Permanent(r)) if r.contains("unknown user")
    ));
    let mut m = message("u1");
    m.buttons = (0..20)
        .map(|i| AnswerButton {
            label: format!("とても長いラベルの選択肢その{i}番目です"),
            value: format!("v{i}"),
        })
        .collect();
    // The stand-in refuses more than 13 items with 400: this passing means they were cut.
    p.send(&m).await.unwrap();
    assert_eq!(lw.inbox(&handle("u1"))[0].len(), MAX_QUICK_REPLIES);
}

#[tokio::test]
async fn readers_are_paged_and_each_read_is_reported_once() {
    let c = clock();
    let members: Vec<ChatHandle> = (0..12_000).map(|i| handle(&format!("u{i}"))).collect();
    let mut script = Script::new();
    for m in members.iter().step_by(2) {
        script.insert(
            m.clone(),
            crate::simulator::Behaviour::reads_after(Duration::from_secs(10)),
        );
    }
    let lw = lws::start(LwSimConfig::new(members), script, Arc::new(c.clone()))
        .await
        .unwrap();
    let p = provider(&lw, &c);
    let posted = post_for(&p, &c, 3).await;
    let none = p.poll_events(None, Duration::ZERO).await.unwrap();
    assert!(none.events.is_empty(), "nobody has read yet");
    c.advance(Duration::from_secs(11));
    let batch = p
        .poll_events(none.cursor.as_deref(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(batch.events.len(), 6_000);
    assert!(batch
        .events
        .iter()
        .all(|e| e.kind == InboundKind::Read && e.roll_call_id == Some(RollCallId(3))));
    // 12,000 members at 5,000 a page: 3 pages a poll, 2 polls.
    assert_eq!(lw.stats().readers_requests, 6);
    // The watcher could not store that batch (it never said `events_stored`), so it polls
    // again: the same reads come again rather than being lost.
    c.advance(Duration::from_secs(10));
    let retried = p
        .poll_events(none.cursor.as_deref(), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        retried.events.len(),
        6_000,
        "reads not yet stored are reported again"
    );
    // Stored this time: polling on from its cursor reports nothing new.
    p.events_stored();
    c.advance(Duration::from_secs(10));
    let again = p
        .poll_events(retried.cursor.as_deref(), Duration::ZERO)
        .await
        .unwrap();
    assert!(again.events.is_empty(), "reads are reported once");
    // A new process (no memory of what was reported) following the stored post, as after
    // a restart or on another replica, reports them again; the event log drops replays.
    let fresh = provider(&lw, &c);
    fresh.follow_broadcast(RollCallId(3), &posted, c.now_millis());
    c.advance(Duration::from_secs(10));
    let rebuilt = fresh.poll_events(None, Duration::ZERO).await.unwrap();
    assert_eq!(rebuilt.events.len(), 6_000);
    assert_eq!(lw.stats().limit_exceeded, 0);
}

/// Posts a must-read roll call post for roll call `rc` and returns its id.
async fn post_for(p: &LineWorksProvider, c: &ManualClock, rc: i64) -> String {
    p.broadcast(&BroadcastRequest {
        roll_call_id: RollCallId(rc),
        kind: RouteKind::Broadcast,
        group: None,
        title: "安否確認".into(),
        text: "無事なら既読に".into(),
        buttons: vec![],
        asks: Default::default(),
        until: c.now() + chrono::Duration::days(1),
    })
    .await
    .unwrap()
    .post_id
    .unwrap()
}

#[tokio::test]
async fn a_post_moved_to_the_trash_stops_only_its_own_reads() {
    let c = clock();
    let members: Vec<ChatHandle> = (0..4).map(|i| handle(&format!("u{i}"))).collect();
    let mut script = Script::new();
    for m in &members {
        script.insert(
            m.clone(),
            crate::simulator::Behaviour::reads_after(Duration::from_secs(10)),
        );
    }
    let lw = lws::start(LwSimConfig::new(members), script, Arc::new(c.clone()))
        .await
        .unwrap();
    let p = provider(&lw, &c);
    let first = post_for(&p, &c, 1).await;
    let second = post_for(&p, &c, 2).await;
    c.advance(Duration::from_secs(11));
    // An administrator deletes the first roll call's post: the second's reads still count.
    lw.trash_post(first.parse().unwrap());
    let batch = p.poll_events(None, Duration::ZERO).await.unwrap();
    assert_eq!(batch.events.len(), 4, "{:?}", batch.events);
    assert!(batch
        .events
        .iter()
        .all(|e| e.roll_call_id == Some(RollCallId(2))));
    // Both are still followed: a post restored from the Trash counts again.
    let cursor = batch.cursor.unwrap();
    assert!(cursor.contains(&format!("\"{first}\"")), "{cursor}");
    assert!(cursor.contains(&format!("\"{second}\"")), "{cursor}");
    p.events_stored();
    let before = lw.stats().readers_requests;
    c.advance(Duration::from_secs(10));
    let next = p.poll_events(Some(&cursor), Duration::ZERO).await.unwrap();
    assert!(next.events.is_empty());
    assert_eq!(
        lw.stats().readers_requests,
        before + 2,
        "both posts asked again"
    );
    // With only the post that is gone to read, the round fails and says which post.
    let only = provider(&lw, &c);
    only.follow_broadcast(RollCallId(1), &first, c.now_millis());
    let e = only.poll_events(None, Duration::ZERO).await.unwrap_err();
    let expected = format!("board post {first} of roll call 1 is not found");
    assert!(e.to_string().contains(&expected), "{e}");
}

#[tokio::test]
async fn a_readers_cursor_given_twice_ends_the_paging() {
    let c = clock();
    let members: Vec<ChatHandle> = (0..6_000).map(|i| handle(&format!("u{i}"))).collect();
    let mut script = Script::new();
    script.insert(
        members[0].clone(),
        crate::simulator::Behaviour::reads_after(Duration::from_secs(10)),
    );
    let lw = lws::start(LwSimConfig::new(members), script, Arc::new(c.clone()))
        .await
        .unwrap();
    lw.repeat_readers_cursor();
    let p = provider(&lw, &c);
    post_for(&p, &c, 1).await;
    c.advance(Duration::from_secs(11));
    let batch = tokio::time::timeout(Duration::from_secs(30), p.poll_events(None, Duration::ZERO))
        .await
        .expect("the readers paging must end")
        .unwrap();
    assert_eq!(batch.events.len(), 1);
    // The first page, the second (the same again), and no more.
    assert_eq!(lw.stats().readers_requests, 2);
}

#[test]
fn ids_in_a_path_are_percent_encoded() {
    assert_eq!(
        super::api_url(
            "https://www.worksapis.com/v1.0/",
            &[
                "bots",
                "2000001",
                "users",
                "taro+1@city.example",
                "messages"
            ]
        ),
        "https://www.worksapis.com/v1.0/bots/2000001/users/taro%2B1%40city.example/messages"
    );
    assert_eq!(
        super::api_url("http://127.0.0.1:1/v1.0", &["users", "a?b#c/d", "x"]),
        "http://127.0.0.1:1/v1.0/users/a%3Fb%23c%2Fd/x"
    );
}

#[tokio::test]
async fn every_request_the_adapter_makes_passes_the_documented_schema() {
    let c = clock();
    let mut cfg = LwSimConfig::new(vec![handle("u1"), handle("u2")]);
    cfg.rooms.insert("ch-1".into(), vec![handle("u2")]);
    let lw = stand(cfg, &c).await;
    let mut settings = provider(&lw, &c).settings.clone();
    settings.rooms.insert("総務課".into(), "ch-1".into());
    let p = LineWorksProvider::new(settings, Arc::new(c.clone())).unwrap();
    let mut m = message("u1");
    m.buttons = (0..13)
        .map(|i| AnswerButton {
            label: format!("選択肢{i}"),
            value: format!("v{i}"),
        })
        .collect();
    m.text = "安".repeat(2500);
    p.send(&m).await.unwrap();
    let req = BroadcastRequest {
        roll_call_id: RollCallId(4),
        kind: RouteKind::Rooms,
        group: Some("総務課".into()),
        title: "安否確認".into(),
        text: "<地震> & 津波".into(),
        buttons: m.buttons.clone(),
        asks: Default::default(),
        // Further than the platform allows: kept to 30 days.
        until: c.now() + chrono::Duration::days(45),
    };
    p.broadcast(&req).await.unwrap();
    let posted = p
        .broadcast(&BroadcastRequest {
            kind: RouteKind::Broadcast,
            group: None,
            ..req
        })
        .await
        .unwrap();
    assert!(posted.post_id.is_some());
    p.poll_events(None, Duration::ZERO).await.unwrap();
    assert_eq!(
        lw.refusals(),
        vec![],
        "a request broke the documented shape"
    );
    let post = &lw.posts()[0];
    let today = c.now().with_timezone(&chrono_tz::Asia::Tokyo).date_naive();
    assert_eq!(post.must_read_end, Some(today + chrono::Duration::days(30)));
    // The post counts reads but has no buttons: it says so, and HTML-escaped.
    assert!(
        post.body.starts_with("&lt;地震&gt; &amp; 津波<br><br>"),
        "{}",
        post.body
    );
    assert!(post.body.contains("読むだけで構いません") && !post.body.contains("下のボタン"));
    // Talk shows no reads: the 1:1 text never says reading is enough.
    let talk = &lw.received(&handle("u2"))[0].text;
    assert!(
        talk.contains("返信") && !talk.contains("読むだけ"),
        "{talk}"
    );
    assert!(post.send_notifications && !post.enable_comment);
    assert_eq!(lw.received(&handle("u1"))[0].text.chars().count(), 2000);
    assert_eq!(lw.inbox(&handle("u2"))[0].len(), 13);
    let st = lw.stats();
    assert_eq!(
        (
            st.user_messages,
            st.channel_messages,
            st.board_posts,
            st.readers_requests
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn expires_in_may_be_a_string_and_debug_hides_secrets() {
    assert_eq!(expires_in(&json!("86400")), Some(86_400));
    assert_eq!(expires_in(&json!(3600)), Some(3600));
    assert_eq!(expires_in(&json!(null)), None);
    let c = clock();
    let s = LineWorksSettings {
        api_base: "http://x".into(),
        token_url: "http://x/t".into(),
        client_id: "id".into(),
        client_secret: Secret::new("client-s3cret"),
        service_account: "sa".into(),
        private_key_pem: Secret::new(TEST_PRIVATE_KEY_PEM),
        scope: "bot".into(),
        bot_id: "b".into(),
        board_id: None,
        rooms: BTreeMap::new(),
        rate_limit: RateLimit {
            requests: 240,
            per: Duration::from_secs(60),
        },
        board_rate_limit: RateLimit {
            requests: 60,
            per: Duration::from_secs(60),
        },
        room_push_limit: 500,
        max_in_flight: 4,
        readers_poll_for: Duration::from_secs(60),
    };
    let p = LineWorksProvider::new(s, Arc::new(c)).unwrap();
    let dbg = format!("{p:?}");
    assert!(
        !dbg.contains("client-s3cret") && !dbg.contains("PRIVATE KEY"),
        "{dbg}"
    );
    assert!(p.routes().is_empty(), "no board, no rooms: 1:1 only");
    assert!(!p.capabilities().read_receipts, "talk has no read receipts");
}
