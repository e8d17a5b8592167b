//! The LINE WORKS provider end to end: the real adapter and the real `Application` against
//! the LINE WORKS-compatible stand-in, which enforces the platform's rules and counts every
//! breach.

use std::sync::Arc;
use std::time::Duration;

use anpi::clock::{ScaledClock, SharedClock};
use anpi::config::Config;
use anpi::contacts::{synthetic, Contact};
use anpi::demo::{self, DemoArgs};
use anpi::hq::Hq;
use anpi::ids::{ChatHandle, RollCallId};
use anpi::providers::RouteKind;
use anpi::scenario::Scenario;
use anpi::simulator::lineworks::{self as lws, LwSimConfig, LwSimHandle, TEST_PRIVATE_KEY_PEM};
use anpi::simulator::{Behaviour, Script, SimAnswer};
use anpi::startup::Application;
use chrono::Utc;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{init_logs, HQ_TOKEN};

pub(crate) struct LwApp {
    pub(crate) base_url: String,
    pub(crate) hq: Arc<Hq>,
    pub(crate) lw: LwSimHandle,
    pub(crate) http: reqwest::Client,
    cancel: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub(crate) contacts: Vec<Contact>,
    config: Config,
    clock: SharedClock,
    _tmp: tempfile::TempDir,
}

impl Drop for LwApp {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.lw.shutdown();
        if let Some(r) = self.running.take() {
            r.abort();
        }
    }
}

/// `n` synthetic contacts known to LINE WORKS by their simulator handle.
fn contacts(n: usize) -> Vec<Contact> {
    let mut cs = synthetic::generate(n, 3).contacts;
    for c in &mut cs {
        let h = c.chat["simulator"].clone();
        c.chat.clear();
        c.chat.insert("lineworks".into(), h);
    }
    cs
}

pub(crate) fn handle(c: &Contact) -> ChatHandle {
    c.chat["lineworks"].clone()
}

/// A running anpi on LINE WORKS (board on unless `board` is false) on a clock `speed` times
/// faster than the wall.
async fn spawn(n: usize, script: Script, board: bool, speed: f64) -> LwApp {
    spawn_with(n, script, board, speed, "").await
}

/// [`spawn`] with more configuration (`[health]`, `[email]` ...) appended.
pub(crate) async fn spawn_with(
    n: usize,
    script: Script,
    board: bool,
    speed: f64,
    extra: &str,
) -> LwApp {
    spawn_full(n, script, board, false, speed, extra).await
}

/// [`spawn_with`], and with `rooms` a bot room per department (`room-<department>`).
async fn spawn_full(
    n: usize,
    script: Script,
    board: bool,
    rooms: bool,
    speed: f64,
    extra: &str,
) -> LwApp {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let cs = contacts(n);
    let epoch = Utc::now();
    let clock: SharedClock = Arc::new(ScaledClock::new(epoch, speed));
    let mut sim = LwSimConfig::new(cs.iter().map(handle).collect());
    let mut room_table = String::new();
    if rooms {
        room_table.push_str("[providers.lineworks.rooms]\n");
        let mut depts: Vec<&str> = cs.iter().filter_map(|c| c.department.as_deref()).collect();
        depts.sort();
        depts.dedup();
        for d in depts {
            sim.rooms.insert(
                format!("room-{d}"),
                cs.iter()
                    .filter(|c| c.department.as_deref() == Some(d))
                    .map(handle)
                    .collect(),
            );
            room_table.push_str(&format!("\"{d}\" = \"room-{d}\"\n"));
        }
    }
    let lw = lws::start(sim, script, clock.clone()).await.unwrap();
    let key = tmp.path().join("key.pem");
    std::fs::write(&key, TEST_PRIVATE_KEY_PEM).unwrap();
    let c = lw.config().clone();
    let config = Config::from_toml(
        &(format!(
            r#"
provider = "lineworks"
[time]
speed = {speed}
epoch = "{}"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{}"
[api]
hq_tokens = ["{HQ_TOKEN}"]
[scenarios]
dir = "{}"
[providers.lineworks]
api_url = "{}"
token_url = "{}"
client_id = "{}"
client_secret = "{}"
service_account = "{}"
private_key_file = "{}"
bot_id = "{}"
bot_secret = "{}"
{}
"#,
            epoch.to_rfc3339(),
            tmp.path().join("anpi.db").display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
            lw.api_base(),
            lw.token_url(),
            c.client_id,
            c.client_secret,
            c.service_account,
            key.display(),
            c.bot_id,
            c.bot_secret,
            if board {
                format!("board_id = \"{}\"", c.board_id)
            } else {
                String::new()
            },
        ) + &room_table
            + extra),
    )
    .unwrap();
    let app = Application::build_with_clock(config.clone(), clock.clone())
        .await
        .unwrap();
    let base_url = format!("http://{}", app.local_addr());
    lw.set_callback_url(format!("{base_url}/callbacks/lineworks"));
    let hq = app.hq();
    hq.import_contacts(&cs).await.unwrap();
    let cancel = CancellationToken::new();
    let running = Some(tokio::spawn(app.run_until_stopped(cancel.clone())));
    LwApp {
        base_url,
        hq,
        lw,
        http: reqwest::Client::new(),
        cancel,
        running,
        contacts: cs,
        config,
        clock,
        _tmp: tmp,
    }
}

impl LwApp {
    /// Stops anpi (the stand-in keeps running) and starts it again on the same database.
    async fn restart(&mut self) {
        self.cancel.cancel();
        if let Some(r) = self.running.take() {
            r.await.unwrap().unwrap();
        }
        let app = Application::build_with_clock(self.config.clone(), self.clock.clone())
            .await
            .unwrap();
        self.base_url = format!("http://{}", app.local_addr());
        self.lw
            .set_callback_url(format!("{}/callbacks/lineworks", self.base_url));
        self.hq = app.hq();
        self.cancel = CancellationToken::new();
        self.running = Some(tokio::spawn(app.run_until_stopped(self.cancel.clone())));
    }
}

pub(crate) fn drill() -> Scenario {
    Scenario::find(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios")),
        "drill",
    )
    .unwrap()
}

/// Polls (wall time, bounded) until `f` holds.
pub(crate) async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

impl LwApp {
    async fn callback(&self, bot: &str, sig: &str, body: Vec<u8>) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/callbacks/lineworks", self.base_url))
            .header("X-WORKS-BotId", bot)
            .header("X-WORKS-Signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub(crate) async fn all_sent(&self, id: RollCallId) {
        let hq = self.hq.clone();
        until("all sent", || {
            let hq = hq.clone();
            async move {
                let o = hq.status(id).await.unwrap().progress.overall;
                o.pending + o.sending == 0
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_thousand_one_to_one_on_240_per_minute_never_break_the_limit_and_429_waits_for_reset() {
    // Without a board the planner can only use 1:1 talk: ~285 s of clock time for 1,000 at
    // 228/min (anpi keeps 5% under the platform's 240).
    let app = spawn(1_000, Script::default(), false, 30.0).await;
    let (rc, est) = app.hq.start(&drill(), None, None).await.unwrap();
    assert_eq!(est.plan.route, RouteKind::Direct);
    // The platform refuses 3 requests anyway, asking for 20 s.
    app.lw.force_429(3, Duration::from_secs(20));
    app.all_sent(rc.id).await;
    let st = app.lw.stats();
    assert_eq!(
        app.lw.refusals(),
        vec![],
        "a request broke the documented shape"
    );
    assert_eq!(st.limit_exceeded, 0, "{st:?}");
    assert_eq!(st.forced_429, 3);
    assert_eq!(st.user_messages, 1_000);
    assert!(st.max_in_window <= 240, "{st:?}");
    // The 429's reset was honoured: nothing was accepted from 1 s after it until 20 s after.
    let (forced, accepted) = app.lw.request_log();
    let t = forced[0];
    let early = accepted
        .iter()
        .filter(|a| **a > t + 1_000 && **a < t + 19_000)
        .count();
    assert_eq!(early, 0, "sends during the platform's pause");
    // One token for the whole run: it is cached, not minted per request.
    assert_eq!(st.tokens_issued, 1);
}

#[tokio::test]
async fn a_tap_is_recorded_and_forged_wrong_bot_malformed_and_replayed_callbacks_change_nothing() {
    let app = spawn(20, Script::default(), true, 1.0).await;
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    let c = app.lw.config().clone();
    let who = handle(&app.contacts[0]);
    let body = json!({"type": "postback", "source": {"userId": who.as_str(), "domainId": 1},
                      "issuedTime": "2026-03-11T05:47:00.000Z",
                      "data": format!("anpi:{}:safe", rc.id.0)});
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &body);
    let answered = || async {
        app.hq
            .status(rc.id)
            .await
            .unwrap()
            .progress
            .overall
            .answered
    };

    // Forged: signed with another secret.
    let (_, forged) = lws::signed_callback("not-the-bot-secret", &body);
    assert_eq!(app.callback(&c.bot_id, &forged, raw.clone()).await.0, 401);
    // Right signature, wrong bot.
    assert_eq!(app.callback("999", &sig, raw.clone()).await.0, 401);
    // Body changed after signing.
    let mut tampered = raw.clone();
    tampered.extend_from_slice(b" ");
    assert_eq!(app.callback(&c.bot_id, &sig, tampered).await.0, 401);
    assert_eq!(answered().await, 0, "a refused callback changed something");

    // Signed but not JSON.
    let junk = b"{not json".to_vec();
    let junk_sig = anpi::providers::lineworks::sign(&c.bot_secret, &junk);
    let (status, text) = app.callback(&c.bot_id, &junk_sig, junk).await;
    assert_eq!(status, 400, "{text}");

    // The real tap.
    let (status, text) = app.callback(&c.bot_id, &sig, raw.clone()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(answered().await, 1);
    // The same callback again: logged once, nothing moves.
    let (status, text) = app.callback(&c.bot_id, &sig, raw).await;
    assert_eq!(status, 200);
    assert!(text.contains("\"logged\":0"), "{text}");
    assert_eq!(answered().await, 1);
    let events = app.hq.store().events(rc.id, 100).await.unwrap();
    assert_eq!(events.iter().filter(|e| e.kind == "answer").count(), 1);

    // A join event is not an answer, and is accepted.
    let join = json!({"type": "join", "source": {"userId": who.as_str()}, "issuedTime": "2026-03-11T05:47:00Z"});
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &join);
    assert_eq!(app.callback(&c.bot_id, &sig, raw).await.0, 200);

    let metrics = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("lineworks_bad_signature"), "{metrics}");
    assert!(metrics.contains("lineworks_wrong_bot"), "{metrics}");
    assert!(metrics.contains("lineworks_malformed"), "{metrics}");
}

#[tokio::test]
async fn readers_of_the_board_post_leave_the_call_list_and_the_rest_are_on_it_at_their_deadline() {
    let cs = contacts(30);
    let mut script = Script::new();
    for c in &cs[..10] {
        script.insert(handle(c), Behaviour::reads_after(Duration::from_secs(40)));
    }
    for c in &cs[10..12] {
        script.insert(
            handle(c),
            Behaviour::never_reads()
                .answering(Duration::from_secs(60), SimAnswer::Sticker("fine".into())),
        );
    }
    // Five minutes of clock time pass in five seconds.
    let app = spawn(30, script, true, 60.0).await;
    let (rc, est) = app.hq.start(&drill(), None, None).await.unwrap();
    assert_eq!(est.plan.route, RouteKind::Broadcast);
    assert_eq!(est.plan.requests, 1);
    app.all_sent(rc.id).await;
    let hq = app.hq.clone();
    until("deadline passed and escalated", || {
        let hq = hq.clone();
        async move {
            let p = hq.status(rc.id).await.unwrap().progress;
            p.overall.pending + p.overall.sending == 0
                && p.next_deadline_at.is_none()
                && p.overall.escalated > 0
        }
    })
    .await;
    let list = app.hq.call_list(rc.id).await.unwrap();
    let to_call: Vec<_> = list
        .iter()
        .filter(|e| e.to_call())
        .map(|e| e.staff_id.clone())
        .collect();
    assert_eq!(to_call.len(), 18, "{to_call:?}");
    for c in &cs[..12] {
        assert!(
            !to_call.contains(&c.id),
            "{} read or answered but is to be called",
            c.id
        );
    }
    let st = app.lw.stats();
    assert_eq!(
        app.lw.refusals(),
        vec![],
        "a request broke the documented shape"
    );
    assert_eq!(st.board_posts, 1);
    // The board post notified everyone; the buttons followed 1:1.
    assert!(st.user_messages >= 28, "{st:?}");
    assert_eq!(st.callbacks_refused, 0);
    assert_eq!(st.limit_exceeded, 0);
    let p = app.hq.status(rc.id).await.unwrap().progress.overall;
    assert_eq!(p.answered, 2);
    // The plan is visible during dispatch too.
    let plan: serde_json::Value = app
        .http
        .get(format!("{}/api/rollcalls/{}/plan", app.base_url, rc.id.0))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan["plan"]["route"], "broadcast");
    assert_eq!(plan["unsent"], 0);
}

#[tokio::test]
async fn on_the_board_route_reads_confirm_the_buttons_follow_one_to_one_and_a_tap_is_an_answer() {
    let n = 300;
    let cs = contacts(n);
    let mut script = Script::new();
    // The first 100 only read the post; the next 50 tap 無事 on the buttons that follow.
    for c in &cs[..100] {
        script.insert(handle(c), Behaviour::reads_after(Duration::from_secs(30)));
    }
    for c in &cs[100..150] {
        script.insert(
            handle(c),
            Behaviour::never_reads()
                .answering(Duration::from_secs(20), SimAnswer::Button("safe".into())),
        );
    }
    let app = spawn(n, script, true, 60.0).await;
    let (rc, est) = app.hq.start(&drill(), None, None).await.unwrap();
    assert_eq!(est.plan.route, RouteKind::Broadcast);
    let b = est.plan.buttons.as_ref().expect("buttons follow the post");
    assert_eq!(b.requests, n);
    // Notified at once; able to answer once 300 messages have gone at 228/min.
    assert!(est.plan.seconds_to_all_notified < 1.0, "{est:?}");
    assert!(
        est.plan.seconds_to_all_able_to_answer > 60.0,
        "{:?}",
        est.plan
    );
    let lw = app.lw.clone();
    until("the buttons reached everyone", || {
        let lw = lw.clone();
        async move { lw.stats().user_messages >= n as u64 - 50 }
    })
    .await;
    let hq = app.hq.clone();
    until("reads and taps are in", || {
        let hq = hq.clone();
        async move {
            let o = hq.status(rc.id).await.unwrap().progress.overall;
            o.read >= 100 && o.answered >= 50
        }
    })
    .await;
    let p = app.hq.status(rc.id).await.unwrap().progress;
    assert_eq!(
        p.overall.read, 100,
        "readers confirmed without a tap: {p:?}"
    );
    assert_eq!(p.overall.answered, 50, "{p:?}");
    assert_eq!(p.answers.get("safe"), Some(&50), "{:?}", p.answers);

    let posts = app.lw.posts();
    assert_eq!(posts.len(), 1);
    assert!(posts[0].must_read_end.is_some(), "the post is must-read");
    assert!(!posts[0].body.contains("下のボタン"), "{}", posts[0].body);
    // Everyone got the buttons 1:1, once; the text asks for a tap or a reply.
    let mut firsts = Vec::new();
    for c in &cs {
        let got = app.lw.received(&handle(c));
        if got.is_empty() {
            // Only someone who answered before their turn is skipped.
            continue;
        }
        assert_eq!(got.len(), 1, "{}", c.id);
        // Shelter phones get the shelter's buttons, staff the staff's.
        assert_eq!(got[0].postbacks.len(), rc.choices_for(c.kind).len());
        assert!(got[0].channel.is_none());
        assert!(!got[0].text.contains("読むだけ"), "{}", got[0].text);
        firsts.push((got[0].at, c.kind));
    }
    assert!(firsts.len() >= n - 50);
    // Shelter phones first. They are sent first, paced one after another; on a loaded machine
    // a request can overtake one still in flight (the clock runs 60x), so a few staff may
    // arrive before the last shelter phone, never more.
    firsts.sort_by_key(|(t, _)| *t);
    let last_shelter = firsts
        .iter()
        .rposition(|(_, k)| *k == anpi::contacts::ContactKind::ShelterPhone)
        .expect("the population has shelter phones");
    let staff_before = firsts[..last_shelter]
        .iter()
        .filter(|(_, k)| *k == anpi::contacts::ContactKind::Staff)
        .count();
    assert!(
        staff_before <= 3,
        "{staff_before} staff got their buttons before the last shelter phone"
    );
    // Within both limits, and every request in the documented shape.
    let st = app.lw.stats();
    assert_eq!(
        app.lw.refusals(),
        vec![],
        "a request broke the documented shape"
    );
    assert_eq!(st.limit_exceeded, 0, "{st:?}");
    assert!(st.max_in_window_by_op["user_messages"] <= 240, "{st:?}");
    assert!(st.max_in_window_by_op["board_posts"] <= 60, "{st:?}");
    assert!(
        st.max_in_window_by_op
            .get("board_readers")
            .copied()
            .unwrap_or(0)
            <= 60
    );
    assert_eq!(st.callbacks_refused, 0);
}

#[tokio::test]
async fn an_unreadable_button_wave_record_stops_only_its_own_wave() {
    let n = 20;
    let app = spawn(n, Script::new(), true, 60.0).await;
    let (first, _) = app.hq.start(&drill(), None, None).await.unwrap();
    // The first roll call's wave record is damaged (a disk, a hand edit) while it runs.
    app.hq
        .store()
        .set_button_wave(first.id, "not a wave")
        .await
        .unwrap();
    let (second, _) = app.hq.start(&drill(), None, None).await.unwrap();
    let tapped = |c: &Contact, rc: RollCallId| {
        app.lw.received(&handle(c)).iter().any(|m| {
            m.postbacks
                .iter()
                .any(|p| p.starts_with(&format!("anpi:{}:", rc.0)))
        })
    };
    // The second roll call's buttons reach everyone all the same.
    until("the second roll call's buttons reached everyone", || {
        let all = app.contacts.iter().all(|c| tapped(c, second.id));
        async move { all }
    })
    .await;
    assert_eq!(app.lw.posts().len(), 2, "both board posts went");
}

#[tokio::test]
async fn a_board_post_made_before_a_restart_is_still_followed_without_a_stored_cursor() {
    let cs = contacts(20);
    let mut script = Script::new();
    for c in &cs[..10] {
        script.insert(handle(c), Behaviour::reads_after(Duration::from_secs(120)));
    }
    let mut app = spawn(20, script, true, 60.0).await;
    let (rc, est) = app.hq.start(&drill(), None, None).await.unwrap();
    assert_eq!(est.plan.route, RouteKind::Broadcast);
    app.all_sent(rc.id).await;
    // Stopped before anyone has read; the readers feed's cursor is lost too (as when another
    // replica made the post): only the stored record of the post is left.
    app.cancel.cancel();
    if let Some(r) = app.running.take() {
        r.await.unwrap().unwrap();
    }
    crate::support::forget_feed_cursors(&app._tmp.path().join("anpi.db")).await;
    app.restart().await;
    let hq = app.hq.clone();
    until("deadline passed and escalated", || {
        let hq = hq.clone();
        async move {
            let p = hq.status(rc.id).await.unwrap().progress;
            p.next_deadline_at.is_none() && p.overall.escalated > 0
        }
    })
    .await;
    let p = app.hq.status(rc.id).await.unwrap().progress.overall;
    assert_eq!(p.read, 10, "{p:?}");
    assert_eq!(p.to_call, 10, "{p:?}");
    assert_eq!(app.lw.stats().board_posts, 1);
}

#[tokio::test]
async fn a_board_post_refused_with_429_is_posted_once_after_the_reset() {
    // More than one claim chunk (5,000) of deliveries: a refused post must not be asked
    // again for every chunk, and must wait for rateLimit-reset.
    let app = spawn(6_000, Script::new(), true, 60.0).await;
    app.lw.force_429(1, Duration::from_secs(60));
    let (rc, est) = app.hq.start(&drill(), None, None).await.unwrap();
    assert_eq!(est.plan.route, RouteKind::Broadcast);
    app.all_sent(rc.id).await;
    let st = app.lw.stats();
    assert_eq!(
        app.lw.refusals(),
        vec![],
        "a request broke the documented shape"
    );
    assert_eq!(st.forced_429, 1);
    assert_eq!(st.board_posts, 1, "one post accepted");
    // The post stayed the route (only the buttons that follow it go 1:1).
    let plan = app.hq.plan_status(rc.id).await.unwrap().plan.unwrap();
    assert_eq!(plan.route, RouteKind::Broadcast);
    let p = app.hq.status(rc.id).await.unwrap().progress;
    let waited = p.last_sent_at.unwrap() - rc.created_at;
    assert!(
        waited >= 60_000,
        "the post went out {waited} ms after start, before the 60 s reset"
    );
    assert_eq!(p.overall.sent + p.overall.read + p.overall.answered, 6_000);
}

#[tokio::test]
async fn lost_callbacks_and_reads_after_the_deadline_are_made_up_by_the_readers_list() {
    let cs = contacts(20);
    let mut script = Script::new();
    // Five read the board and tap a sticker, but every callback is lost on the way.
    for c in &cs[..5] {
        script.insert(
            handle(c),
            Behaviour::reads_after(Duration::from_secs(40))
                .answering(Duration::from_secs(50), SimAnswer::Sticker("ok".into())),
        );
    }
    // Three read only after their deadline has put them on the call list.
    for c in &cs[5..8] {
        script.insert(handle(c), Behaviour::reads_after(Duration::from_secs(400)));
    }
    let app = spawn(20, script, true, 60.0).await;
    app.lw
        .set_callback_url("http://127.0.0.1:9/callbacks/lineworks".into());
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    let hq = app.hq.clone();
    until("late readers off the call list", || {
        let hq = hq.clone();
        async move {
            let p = hq.status(rc.id).await.unwrap().progress;
            p.next_deadline_at.is_none() && p.overall.read == 8
        }
    })
    .await;
    let p = app.hq.status(rc.id).await.unwrap().progress.overall;
    assert_eq!(p.answered, 0, "no callback arrived");
    assert_eq!(
        p.escalated, 15,
        "the five who read in time were never escalated"
    );
    assert_eq!(p.to_call, 12, "{p:?}");
    let to_call: Vec<_> = app
        .hq
        .call_list(rc.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.to_call())
        .map(|e| e.staff_id)
        .collect();
    for c in &cs[..8] {
        assert!(
            !to_call.contains(&c.id),
            "{} read but is to be called",
            c.id
        );
    }
}

fn demo_args(size: usize, speed: f64) -> DemoArgs {
    DemoArgs {
        size,
        speed,
        seed: 5,
        scenario: None,
        rate_limit_per_minute: 0,
        database: None,
        plain: true,
        provider: "lineworks".into(),
        no_board: false,
        rooms: false,
        answers: None,
        texts: Vec::new(),
    }
}

#[tokio::test]
async fn demo_on_one_to_one_takes_what_the_planner_said_within_ten_percent() {
    init_logs();
    // 15x, not faster: the stand-in counts the limit in clock time, so scheduling jitter on a
    // busy machine is multiplied by the speed-up and could bunch requests in its window.
    let mut args = demo_args(1_000, 15.0);
    args.no_board = true;
    let r = demo::run_measured(args).await.unwrap();
    assert_eq!(r.route, RouteKind::Direct);
    // 22 at once, then 978 at 0.9 x 228/min: about 286 s.
    assert!((r.estimate_seconds - 286.0).abs() < 1.0, "{r:?}");
    let measured = r.measured_seconds.expect("all sent");
    assert!(
        (measured - r.estimate_seconds).abs() <= r.estimate_seconds * 0.1,
        "measured {measured:.1}s vs estimate {:.1}s",
        r.estimate_seconds
    );
    assert_eq!(r.limit_exceeded, 0);
}

#[tokio::test]
async fn demo_with_a_board_notifies_ten_thousand_within_two_minutes() {
    init_logs();
    let speed = 20.0;
    let r = demo::run_measured(demo_args(10_000, speed)).await.unwrap();
    assert_eq!(r.route, RouteKind::Broadcast);
    // Writing 10,000 deliveries, then one post.
    assert_eq!(r.estimate_seconds, 0.1);
    let measured = r.measured_seconds.expect("all sent");
    assert!(measured < 120.0, "measured {measured:.1}s");
    // Nothing here waits for the platform's limit: all of it is anpi's own work, which the
    // sped-up clock multiplies; how long that takes is measured in a release build by the
    // benchmark (docs/BENCHMARKS.md), not asserted on a shared machine here.
    assert_eq!(r.limit_exceeded, 0);
    // The drill population reads: the board's readers list brought their reads in.
    assert!(r.confirmed > 5_000, "{r:?}");
}

#[tokio::test]
async fn demo_with_department_rooms_uses_one_message_per_room() {
    init_logs();
    let mut args = demo_args(1_000, 10.0);
    args.no_board = true;
    args.rooms = true;
    let r = demo::run_measured(args).await.unwrap();
    assert_eq!(r.route, RouteKind::Rooms);
    // Twelve department rooms and 50 shelter phones 1:1: 62 requests, 22 in the first burst,
    // 40 at 0.9 x 228/min.
    assert!((r.estimate_seconds - 11.7).abs() < 0.05, "{r:?}");
    let measured = r.measured_seconds.expect("all sent");
    assert!(
        (measured - r.estimate_seconds).abs() <= r.estimate_seconds * 0.1,
        "measured {measured:.1}s vs estimate {:.1}s",
        r.estimate_seconds
    );
    assert_eq!(r.limit_exceeded, 0);
}

#[tokio::test]
async fn a_callback_over_the_body_limit_gets_413_and_nothing_is_stored() {
    let app = spawn(5, Script::default(), true, 1.0).await;
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    let c = app.lw.config().clone();
    let who = handle(&app.contacts[0]);
    let logged = || async { app.hq.store().events(rc.id, 1000).await.unwrap().len() };
    let before = logged().await;
    // A signed, well-formed reply padded past the limit.
    let huge = json!({"type": "message", "source": {"userId": who.as_str(), "domainId": 1},
                      "issuedTime": "2026-03-11T05:47:00.000Z",
                      "content": {"type": "text", "text": "無事".repeat(40_000)}});
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &huge);
    assert!(raw.len() > anpi::providers::lineworks::CALLBACK_BODY_LIMIT);
    let (status, text) = app.callback(&c.bot_id, &sig, raw).await;
    assert_eq!(status, 413, "{text}");
    assert_eq!(logged().await, before, "an over-limit body was stored");
    let p = app.hq.status(rc.id).await.unwrap().progress.overall;
    assert_eq!(p.answered, 0);
    // The longest text the platform sends (2,000 characters) is well within it.
    let longest = json!({"type": "message", "source": {"userId": who.as_str(), "domainId": 1},
                         "issuedTime": "2026-03-11T05:47:00.000Z",
                         "content": {"type": "text", "text": "😀".repeat(2_000)}});
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &longest);
    let (status, text) = app.callback(&c.bot_id, &sig, raw).await;
    assert_eq!(status, 200, "{text}");
    // Another bot's postback: 200, not recorded, and said why.
    let other = json!({"type": "postback", "source": {"userId": who.as_str(), "domainId": 1},
                       "issuedTime": "2026-03-11T05:47:00.000Z", "data": "action=buy"});
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &other);
    let (status, text) = app.callback(&c.bot_id, &sig, raw).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("prefix"), "{text}");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("lineworks_too_large"), "{metrics}");
}

/// A signed postback of `value` for roll call `rc` from `who`, issued at `issued`.
fn tap_body(who: &ChatHandle, rc: RollCallId, value: &str, issued: &str) -> serde_json::Value {
    json!({"type": "postback", "source": {"userId": who.as_str(), "domainId": 1},
           "issuedTime": issued, "data": format!("anpi:{}:{value}", rc.0)})
}

#[tokio::test]
async fn a_tap_for_a_closed_roll_call_is_logged_and_changes_nothing() {
    let app = spawn(5, Script::default(), true, 1.0).await;
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    assert!(app.hq.close(rc.id).await.unwrap());
    let c = app.lw.config().clone();
    let who = handle(&app.contacts[0]);
    let before = app.hq.status(rc.id).await.unwrap().progress.overall;
    let body = tap_body(&who, rc.id, "safe", "2026-03-11T05:47:00.000Z");
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &body);
    let (status, text) = app.callback(&c.bot_id, &sig, raw).await;
    assert_eq!(status, 200, "{text}");
    let events = app.hq.store().events(rc.id, 100).await.unwrap();
    assert!(
        events.iter().any(|e| e.from == who.as_str()),
        "the late tap is in the event log"
    );
    let after = app.hq.status(rc.id).await.unwrap().progress.overall;
    assert_eq!(after, before, "a closed roll call changed");
}

#[tokio::test]
async fn a_tap_is_stored_at_its_receipt_time_with_the_platforms_time_beside_it() {
    // Five minutes of clock time in five seconds: everyone is on the call list first.
    let app = spawn(5, Script::default(), true, 60.0).await;
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    let hq = app.hq.clone();
    until("everyone escalated", || {
        let hq = hq.clone();
        async move { hq.status(rc.id).await.unwrap().progress.overall.escalated == 5 }
    })
    .await;
    let c = app.lw.config().clone();
    let who = &app.contacts[0];
    // issuedTime three days before the roll call even started.
    let issued = rc.created_at - 3 * 86_400_000;
    let issued_text =
        anpi::clock::from_millis(issued).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = tap_body(&handle(who), rc.id, "safe", &issued_text);
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &body);
    assert_eq!(app.callback(&c.bot_id, &sig, raw).await.0, 200);
    let events = app.hq.store().events(rc.id, 100).await.unwrap();
    let e = events
        .iter()
        .find(|e| e.from == handle(who).as_str())
        .unwrap();
    assert!(e.received_at >= rc.created_at, "{e:?}");
    assert_eq!(
        e.occurred_at, issued,
        "the platform's time is kept beside it"
    );
    // What counts is when anpi received it, not days before the message went out.
    let entry = app
        .hq
        .call_list(rc.id)
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.staff_id == who.id)
        .unwrap();
    let read_at = entry.read_at.expect("the tap confirms");
    assert!(read_at >= entry.sent_at.unwrap(), "{entry:?}");
}

#[tokio::test]
async fn a_postback_value_that_is_not_a_button_is_kept_as_a_free_text_reply() {
    let app = spawn(5, Script::default(), true, 1.0).await;
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    let c = app.lw.config().clone();
    let who = handle(&app.contacts[0]);
    let body = tap_body(&who, rc.id, "bogus", "2026-03-11T05:47:00.000Z");
    let (raw, sig) = lws::signed_callback(&c.bot_secret, &body);
    assert_eq!(app.callback(&c.bot_id, &sig, raw).await.0, 200);
    let p = app.hq.status(rc.id).await.unwrap().progress;
    assert_eq!(p.overall.answered, 1, "a reply is an answer");
    assert!(
        !p.answers.contains_key("bogus"),
        "not one of the buttons: {:?}",
        p.answers
    );
}

/// `GET path` on the app as HQ, as JSON.
async fn get_json(app: &LwApp, path: &str) -> serde_json::Value {
    app.http
        .get(format!("{}{path}", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Trouble becomes HQ's business after 30 s of clock time: half a second at 60x.
pub(crate) const HEALTH_30S: &str = "\n[health]\ndegraded_after = \"30s\"\n";

#[tokio::test]
async fn readers_failing_for_the_configured_time_degrade_healthz_status_and_metrics_until_they_recover(
) {
    let cs = contacts(20);
    let mut script = Script::new();
    for c in &cs[..5] {
        script.insert(handle(c), Behaviour::reads_after(Duration::from_secs(5)));
    }
    let app = spawn_with(20, script, true, 60.0, HEALTH_30S).await;
    app.lw.break_op("board_readers");
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    app.all_sent(rc.id).await;
    let healthz = || async { get_json(&app, "/healthz").await };
    until("/healthz degraded", || async {
        healthz().await["status"] == "degraded"
    })
    .await;
    let h = healthz().await;
    assert_eq!(h["degraded"][0]["component"], "readers", "{h}");
    assert!(
        h["degraded"][0]["reason"].as_str().unwrap().contains("503"),
        "{h}"
    );
    let api = get_json(&app, "/api/health").await;
    assert_eq!(api["status"], "degraded");
    assert!(api["degraded"][0]["label"]
        .as_str()
        .unwrap()
        .contains("既読"));
    // Reads are not coming in: that is what HQ is told, not a silent 0.
    assert_eq!(app.hq.status(rc.id).await.unwrap().progress.overall.read, 0);
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
        metrics.contains("anpi_degraded{component=\"readers\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("anpi_degraded_incidents_total{component=\"readers\"} 1"),
        "{metrics}"
    );
    // `anpi rollcall status` shows the banner above the numbers.
    let url = app.base_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_anpi"))
            .args(["rollcall", "status", &rc.id.0.to_string()])
            .env("ANPI_URL", url)
            .env("ANPI_TOKEN", HQ_TOKEN)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("!! 障害 / TROUBLE"), "{text}");
    assert!(text.contains("既読を取得できていません"), "{text}");
    // The platform answers again: the reads come in and the banner goes.
    app.lw.come_back();
    until("recovered", || async {
        healthz().await["status"] == "ok"
            && app.hq.status(rc.id).await.unwrap().progress.overall.read == 5
    })
    .await;
    assert_eq!(get_json(&app, "/api/health").await["degraded"], json!([]));
}

#[tokio::test]
async fn a_platform_down_at_the_start_is_told_at_once_and_everyone_is_on_the_call_list_as_send_failed(
) {
    // 1:1 only, and the platform answers 503 to every API request from the start.
    let app = spawn_with(10, Script::default(), false, 60.0, HEALTH_30S).await;
    app.lw.go_down_for(Duration::from_secs(24 * 3600));
    let (rc, _) = app.hq.start(&drill(), None, None).await.unwrap();
    // Told at once: long before the 30 s a component must fail to count.
    until("HQ told the roll call could not start", || async {
        get_json(&app, "/api/health").await["degraded"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x["component"] == "roll_call_start"))
    })
    .await;
    let h = get_json(&app, "/api/health").await;
    let start = h["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["component"] == "roll_call_start")
        .unwrap()
        .clone();
    assert!(
        start["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("#{}", rc.id)),
        "{start}"
    );
    let elapsed = app.hq.clock().now_millis() - rc.created_at;
    // At their deadline everyone is on the call list as send failed, with the reason.
    let hq = app.hq.clone();
    until("everyone on the call list", || {
        let hq = hq.clone();
        async move { hq.call_list(rc.id).await.unwrap().len() == 10 }
    })
    .await;
    let list = app.hq.call_list(rc.id).await.unwrap();
    for e in &list {
        assert_eq!(
            e.reason,
            Some(anpi::rollcall::EscalationReason::SendFailed),
            "{e:?}"
        );
        let why = e.last_error.as_deref().unwrap_or_default();
        assert!(why.contains("503"), "{why}");
        let at = e.escalated_at.unwrap();
        // Retried until the deadline, or until the retry schedule (1 s .. 120 s between
        // attempts, jittered) ran out of attempts shortly before it: either way on the list
        // with the reason, and never "at once" on the first refusal.
        if why.contains("gave up after") {
            assert!(at >= rc.created_at + 150_000, "gave up early: {e:?}");
        } else {
            assert!(why.contains("not sent by the deadline"), "{why}");
            assert!(
                at >= rc.created_at + rc.deadline_ms,
                "escalated before the deadline"
            );
        }
        // Within a couple of retries of it, not the retry schedule's 8.8 minutes.
        assert!(at <= rc.created_at + rc.deadline_ms + 60_000, "{e:?}");
    }
    assert!(elapsed < rc.deadline_ms, "told only at the deadline");
    assert_eq!(app.lw.stats().user_messages, 0);
}

#[tokio::test]
async fn anpi_serve_and_the_lineworks_stand_in_as_two_processes_run_a_whole_roll_call() {
    use tokio::io::AsyncBufReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let cs = contacts(40);
    let contacts_file = tmp.path().join("contacts.toml");
    std::fs::write(
        &contacts_file,
        anpi::contacts::Directory {
            contacts: cs.clone(),
        }
        .to_toml()
        .unwrap(),
    )
    .unwrap();
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let key = tmp.path().join("key.pem");
    let port = crate::tools::free_port();
    let epoch = Utc::now().to_rfc3339();
    // 1. The stand-in, scripted by the drill's [simulation] population.
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_anpi"))
        .args([
            "simulator",
            "--platform",
            "lineworks",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--print-url")
        .arg("--contacts")
        .arg(&contacts_file)
        .arg("--callback-url")
        .arg(format!("http://127.0.0.1:{port}/callbacks/lineworks"))
        .args([
            "--scenarios-dir",
            scenarios,
            "--scenario",
            "drill",
            "--seed",
            "7",
        ])
        .args(["--speed", "60", "--epoch", &epoch])
        .arg("--write-test-key")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let sim_url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the stand-in prints its URL")
        .unwrap()
        .expect("a URL line");
    assert!(sim_url.starts_with("http://127.0.0.1:"), "{sim_url}");
    // 2. anpi serve, configured as an operator would.
    let config = tmp.path().join("anpi.toml");
    std::fs::write(
        &config,
        format!(
            r#"
provider = "lineworks"
[time]
speed = 60.0
epoch = "{epoch}"
[server]
listen = "127.0.0.1:{port}"
[database]
url = "sqlite://{db}"
[api]
hq_tokens = ["{HQ_TOKEN}"]
[scenarios]
dir = "{scenarios}"
[contacts]
file = "{contacts}"
[providers.lineworks]
api_url = "{sim_url}/v1.0"
token_url = "{sim_url}/oauth2/v2.0/token"
client_id = "test-client-id"
client_secret = "test-client-secret"
service_account = "test.serviceaccount@anpi-test"
private_key_file = "{key}"
bot_id = "2000001"
bot_secret = "test-bot-secret"
board_id = "100"
"#,
            db = tmp.path().join("anpi.db").display(),
            contacts = contacts_file.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let _serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_anpi"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    crate::tools::eventually("anpi serve to answer", || async {
        let r = http.get(format!("{base}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // 3. HQ starts the drill from the command line.
    let cli = |args: Vec<String>| {
        let base = base.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_anpi"))
                .args(&args)
                .env("ANPI_URL", base)
                .env("ANPI_TOKEN", HQ_TOKEN)
                .output()
                .unwrap()
        })
    };
    let out = cli(vec![
        "rollcall".into(),
        "start".into(),
        "--scenario".into(),
        "drill".into(),
    ])
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("roll call #1 started"), "{text}");
    assert!(text.contains("everyone able to answer"), "{text}");
    // 4. Five minutes of clock time later every deadline has passed.
    let status = || async {
        http.get(format!("{base}/api/rollcalls/1"))
            .bearer_auth(HQ_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let done = crate::tools::eventually("the roll call to run its course", || async {
        let v = status().await;
        let o = &v["progress"]["overall"];
        let n = |k: &str| o[k].as_i64().unwrap_or(0);
        (n("pending") + n("sending") == 0
            && v["progress"]["next_deadline_at"].is_null()
            && n("answered") > 0)
            .then_some(v)
    })
    .await;
    let o = &done["progress"]["overall"];
    let n = |k: &str| o[k].as_i64().unwrap_or(0);
    assert_eq!(n("total"), 40);
    // The same population the stand-in drew: who never reads is on the call list, and
    // readers of the board post are confirmed without a tap.
    let drill = Scenario::find(std::path::Path::new(scenarios), "drill").unwrap();
    let values: Vec<String> = drill.buttons.iter().map(|b| b.value.clone()).collect();
    let handles: Vec<ChatHandle> = cs.iter().map(handle).collect();
    let script = Script::generate(&handles, &drill.simulation.unwrap(), &values, 7);
    let silent = handles
        .iter()
        .filter(|h| {
            let b = script.get(h).unwrap();
            b.unknown || (b.read_after.is_none() && b.answer.is_none())
        })
        .count() as i64;
    assert!(n("escalated") >= silent, "{o}");
    let early_readers = handles
        .iter()
        .filter(|h| {
            script
                .get(h)
                .unwrap()
                .read_after
                .is_some_and(|d| d < Duration::from_secs(240))
        })
        .count() as i64;
    assert!(n("read") + n("answered") >= early_readers, "{o}");
    let taps = script
        .iter()
        .filter(|(_, b)| matches!(b.answer, Some((_, SimAnswer::Button(_)))))
        .count();
    assert!(taps > 0 && n("answered") > 0, "{o}");
    // `anpi rollcall status` reads it back with the route used.
    let out = cli(vec!["rollcall".into(), "status".into(), "1".into()])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("broadcast"), "{text}");
}

#[tokio::test]
async fn after_the_board_post_the_buttons_go_by_department_rooms_and_shelter_phones_one_to_one() {
    let n = 300;
    let cs = contacts(n);
    let mut script = Script::new();
    // Everyone in the first department taps 無事 on the buttons in their room.
    let first = cs.iter().find_map(|c| c.department.clone()).unwrap();
    let tappers: Vec<&Contact> = cs
        .iter()
        .filter(|c| c.department.as_deref() == Some(first.as_str()))
        .collect();
    for c in &tappers {
        script.insert(
            handle(c),
            Behaviour::never_reads()
                .answering(Duration::from_secs(10), SimAnswer::Button("safe".into())),
        );
    }
    let app = spawn_full(n, script, true, true, 60.0, "").await;
    let (rc, est) = app.hq.start(&drill(), None, None).await.unwrap();
    assert_eq!(est.plan.route, RouteKind::Broadcast);
    let rooms = app.lw.config().rooms.len();
    let shelters = cs
        .iter()
        .filter(|c| c.kind == anpi::contacts::ContactKind::ShelterPhone)
        .count();
    let b = est.plan.buttons.as_ref().unwrap();
    assert_eq!((b.groups.len(), b.requests), (rooms, rooms + shelters));
    let lw = app.lw.clone();
    until("the buttons reached every room and shelter phone", || {
        let lw = lw.clone();
        async move {
            let st = lw.stats();
            st.channel_messages == rooms as u64 && st.user_messages == shelters as u64
        }
    })
    .await;
    let hq = app.hq.clone();
    let want = tappers.len() as i64;
    until("the room taps are answers", || {
        let hq = hq.clone();
        async move { hq.status(rc.id).await.unwrap().progress.overall.answered == want }
    })
    .await;
    for c in &cs {
        let got = app.lw.received(&handle(c));
        assert_eq!(got.len(), 1, "{}: {got:?}", c.id);
        assert_eq!(
            got[0].channel.is_some(),
            c.kind == anpi::contacts::ContactKind::Staff,
            "{}",
            c.id
        );
    }
    assert_eq!(app.lw.refusals(), vec![]);
    assert_eq!(app.lw.stats().limit_exceeded, 0);
}
