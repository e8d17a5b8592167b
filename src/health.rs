//! Provider health that HQ can see: components (token refresh, readers polling, board
//! posting, sends, a roll call's start) report ok or failing; one failing for longer than the
//! configured time (`[health] degraded_after`), or one that kept a roll call from starting, is
//! degraded, since when and why. `/healthz`, the HQ page's banner (`GET /api/health`),
//! `anpi rollcall status` and `/metrics` read it, and [`HealthMailer`] e-mails HQ once per
//! incident.
//!
//! Invariants: an incident runs from a component's first failure after its last success to its
//! next success; a success ends it at once; each incident is counted once in
//! [`Health::incidents`] and mailed at most once (recorded in the store before the next
//! check); what a component reports is never a person's data, only what failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{Millis, SharedClock};
use crate::email::{kind, NewMail};
use crate::store::SharedStore;

/// What can fail, each with what it means for HQ (Japanese first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// Getting an access token (a wrong key or secret, the auth server down).
    Token,
    /// Polling who has read the board post: reads stop coming in.
    Readers,
    /// Posting the must-read board post.
    BoardPost,
    /// Sending messages (1:1 or rooms).
    Sends,
    /// A roll call whose first messages could not go out at all.
    RollCallStart,
    /// The platform's 429s show a pace that makes reaching everyone take more than twice as
    /// long as estimated.
    Pace,
    /// The chat platform's event feed skipped events in a room anpi sent checks to (a Matrix
    /// `/sync` timeline marked `limited`) and they could not all be read back: answers there
    /// may be missing. Nothing later shows that someone checked the room, so it stays failing
    /// until anpi restarts.
    Feed,
}

impl Component {
    pub const ALL: [Component; 7] = [
        Self::Token,
        Self::Readers,
        Self::BoardPost,
        Self::Sends,
        Self::RollCallStart,
        Self::Pace,
        Self::Feed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Readers => "readers",
            Self::BoardPost => "board_post",
            Self::Sends => "sends",
            Self::RollCallStart => "roll_call_start",
            Self::Pace => "pace",
            Self::Feed => "feed",
        }
    }

    /// One line for HQ: what fails and what that means for the call list.
    pub fn label(self) -> &'static str {
        match self {
            Self::Token => {
                "チャットへのログイン(トークン取得)に失敗しています。送信も既読の取得もできません。 / \
                 Cannot log in to the chat platform: nothing can be sent or read."
            }
            Self::Readers => {
                "掲示板の既読を取得できていません。既読の人も電話リストに残ります。 / \
                 Board reads are not coming in: people who read stay on the call list."
            }
            Self::BoardPost => {
                "必読掲示板に投稿できません。 / The must-read board post cannot be made."
            }
            Self::Sends => {
                "メッセージを送信できていません。 / Messages are not going out."
            }
            Self::RollCallStart => {
                "安否確認のメッセージが一通も送れていません。締切に送信失敗として電話リストに載ります。 / \
                 No message of a roll call could go out: everyone goes on the call list as send \
                 failed at their deadline."
            }
            Self::Pace => {
                "チャットサーバーの送信制限(429)で、全員への送信に見積もりの2倍以上かかっています。 / \
                 The chat server's rate limit (429) makes reaching everyone take more than \
                 twice the estimate."
            }
            Self::Feed => {
                "チャットサーバーが一部のルームの受信を省略しました。そのルームの返信・リアクションが取り込まれていない可能性があります。理由に示すルームを確認してください(anpi を再起動するまで表示されます)。 / \
                 The chat server skipped events in some rooms: replies or reactions there may be \
                 missing. Check the rooms the reason names (shown until anpi restarts)."
            }
        }
    }
}

/// One degraded component, as HQ sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Degraded {
    pub component: Component,
    /// Clock time of the first failure of this incident.
    pub since: Millis,
    /// The last failure's reason.
    pub reason: String,
    /// What it means, Japanese first.
    pub label: &'static str,
}

#[derive(Debug, Default)]
struct State {
    /// First failure after the last success.
    failing_since: Option<Millis>,
    reason: String,
    /// Degraded at once, without waiting for `degrade_after`.
    urgent: bool,
    /// This incident has been counted.
    counted: bool,
}

/// The health of one process's provider work.
#[derive(Debug)]
pub struct Health {
    clock: SharedClock,
    degrade_after: Duration,
    state: Mutex<BTreeMap<Component, State>>,
    incidents: Mutex<BTreeMap<Component, u64>>,
}

impl Health {
    pub fn new(clock: SharedClock, degrade_after: Duration) -> Self {
        Self {
            clock,
            degrade_after,
            state: Mutex::new(BTreeMap::new()),
            incidents: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Component, State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `c` worked: any incident of it is over.
    pub fn ok(&self, c: Component) {
        let mut st = self.lock();
        if let Some(s) = st.get_mut(&c) {
            if s.failing_since.take().is_some() {
                info!(component = c.as_str(), "recovered");
            }
            s.urgent = false;
            s.counted = false;
        }
    }

    /// `c` failed; degraded once it has failed for `degrade_after`.
    pub fn failing(&self, c: Component, reason: impl Into<String>) {
        self.fail(c, reason.into(), false);
    }

    /// `c` failed in a way HQ must hear of at once (a roll call could not start).
    pub fn failing_now(&self, c: Component, reason: impl Into<String>) {
        self.fail(c, reason.into(), true);
    }

    fn fail(&self, c: Component, reason: String, urgent: bool) {
        let now = self.clock.now_millis();
        let mut st = self.lock();
        let s = st.entry(c).or_default();
        if s.failing_since.is_none() {
            s.failing_since = Some(now);
            warn!(component = c.as_str(), %reason, "failing");
        }
        s.reason = reason;
        s.urgent |= urgent;
    }

    /// Every degraded component now, oldest first. Counts each incident once.
    pub fn degraded(&self) -> Vec<Degraded> {
        let now = self.clock.now_millis();
        let after = self.degrade_after.as_millis() as i64;
        let mut out = Vec::new();
        let mut newly = Vec::new();
        {
            let mut st = self.lock();
            for (c, s) in st.iter_mut() {
                let Some(since) = s.failing_since else {
                    continue;
                };
                if !s.urgent && now - since < after {
                    continue;
                }
                if !s.counted {
                    s.counted = true;
                    newly.push(*c);
                }
                out.push(Degraded {
                    component: *c,
                    since,
                    reason: s.reason.clone(),
                    label: c.label(),
                });
            }
        }
        if !newly.is_empty() {
            let mut inc = self.incidents.lock().unwrap_or_else(|e| e.into_inner());
            for c in newly {
                *inc.entry(c).or_default() += 1;
                warn!(component = c.as_str(), "degraded: HQ is told");
            }
        }
        out.sort_by_key(|d| d.since);
        out
    }

    /// Incidents so far, per component (a counter for /metrics).
    pub fn incidents(&self) -> BTreeMap<Component, u64> {
        self.degraded();
        self.incidents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Prometheus lines: `anpi_degraded{component}` (0/1) and
    /// `anpi_degraded_incidents_total{component}`.
    pub fn render_metrics(&self) -> String {
        let degraded: Vec<Component> = self.degraded().iter().map(|d| d.component).collect();
        let incidents = self.incidents();
        let mut out = String::new();
        out.push_str(
            "# HELP anpi_degraded 1 while a provider component has been failing longer than \
             [health] degraded_after.\n# TYPE anpi_degraded gauge\n",
        );
        for c in Component::ALL {
            out.push_str(&format!(
                "anpi_degraded{{component=\"{}\"}} {}\n",
                c.as_str(),
                u8::from(degraded.contains(&c))
            ));
        }
        out.push_str(
            "# HELP anpi_degraded_incidents_total Times a provider component became degraded.\n\
             # TYPE anpi_degraded_incidents_total counter\n",
        );
        for c in Component::ALL {
            out.push_str(&format!(
                "anpi_degraded_incidents_total{{component=\"{}\"}} {}\n",
                c.as_str(),
                incidents.get(&c).copied().unwrap_or(0)
            ));
        }
        out
    }
}

/// How often degraded components are checked for a mail to send.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// E-mails HQ once per incident of this process, through the mail outbox.
#[derive(Debug)]
pub struct HealthMailer {
    pub health: Arc<Health>,
    pub store: SharedStore,
    /// HQ's addresses.
    pub hq: Vec<String>,
    pub zone: chrono_tz::Tz,
}

fn incident_key(d: &Degraded) -> String {
    format!("mailed:{}:{}", d.component.as_str(), d.since)
}

impl HealthMailer {
    /// Writes a mail for every degraded incident not mailed yet. Returns how many.
    pub async fn run_once(&self, _cancel: &CancellationToken) -> usize {
        let mut mailed = 0;
        for d in self.health.degraded() {
            let since = crate::clock::from_millis(d.since)
                .with_timezone(&self.zone)
                .format("%m/%d %H:%M:%S");
            let mail = NewMail {
                kind: kind::PROVIDER_INCIDENT.into(),
                // One mail per incident, whichever replica or restart decides it again.
                dedupe_key: format!("incident:{}", incident_key(&d)),
                roll_call_id: None,
                to: self.hq.clone(),
                subject: format!(
                    "【anpi 障害】{} ({since}〜) / anpi: {} failing",
                    d.label.split(" / ").next().unwrap_or(d.label),
                    d.component.as_str()
                ),
                body: format!(
                    "{}\n\n{since} から / since {since}\n理由 / reason: {}\n\n\
                     HQ 画面と `anpi rollcall status` にも表示されています。復旧すると表示は消えます。\n\
                     It also shows on the HQ page and in `anpi rollcall status`, until it recovers.\n",
                    d.label, d.reason
                ),
                csv: None,
                meta: None,
            };
            let now = self.health.clock.now_millis();
            match self
                .store
                .enqueue_mails(
                    &[mail],
                    now,
                    crate::clock::Clock::now_millis(&crate::clock::SystemClock),
                )
                .await
            {
                Ok(n) if n > 0 => {
                    info!(
                        component = d.component.as_str(),
                        "HQ is mailed about a degraded component"
                    );
                    mailed += 1;
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "the incident mail could not be written to the outbox"),
            }
        }
        mailed
    }

    /// Checks every few seconds until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            self.run_once(&cancel).await;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(CHECK_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use chrono::{TimeZone, Utc};

    fn health() -> (Health, ManualClock) {
        let c = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 11, 5, 46, 0).unwrap());
        (
            Health::new(Arc::new(c.clone()), Duration::from_secs(120)),
            c,
        )
    }

    #[test]
    fn a_component_is_degraded_only_after_failing_for_the_configured_time() {
        let (h, c) = health();
        h.failing(Component::Readers, "503");
        assert!(h.degraded().is_empty());
        c.advance(Duration::from_secs(60));
        h.failing(Component::Readers, "timeout");
        assert!(h.degraded().is_empty(), "a minute is not two");
        c.advance(Duration::from_secs(61));
        let d = h.degraded();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].component, Component::Readers);
        assert_eq!(d[0].reason, "timeout");
        assert_eq!(d[0].since, c.now_millis() - 121_000);
        // Counted once however often it is read.
        h.degraded();
        assert_eq!(h.incidents()[&Component::Readers], 1);
        assert!(h
            .render_metrics()
            .contains("anpi_degraded{component=\"readers\"} 1"));
        // One success ends it; a new failure is a new incident.
        h.ok(Component::Readers);
        assert!(h.degraded().is_empty());
        assert!(h
            .render_metrics()
            .contains("anpi_degraded{component=\"readers\"} 0"));
        h.failing(Component::Readers, "again");
        c.advance(Duration::from_secs(121));
        assert_eq!(h.degraded().len(), 1);
        assert_eq!(h.incidents()[&Component::Readers], 2);
    }

    #[test]
    fn a_roll_call_that_could_not_start_is_degraded_at_once() {
        let (h, _) = health();
        h.failing_now(Component::RollCallStart, "roll call #3: 503");
        let d = h.degraded();
        assert_eq!(d.len(), 1);
        assert!(d[0].label.contains("送信失敗"));
        h.ok(Component::RollCallStart);
        assert!(h.degraded().is_empty());
    }
}
