//! JMA triggers: roll calls that start themselves from the Japan Meteorological Agency's
//! telegrams (気象庁防災情報XML). [`parse`] reads telegrams and feeds, [`rules`] holds the
//! `[[triggers]]` rules and JMA's code tables, [`decide`] is the one decision (telegram +
//! what was seen before -> start / upgrade / tell HQ / retract / ignore, with the reason),
//! [`feed`] watches the feeds. The [`Engine`] here loads what was seen before, decides, carries
//! the decision out (through [`Hq::start`](crate::hq::Hq::start)) and records it.
//!
//! Invariants: every telegram read is recorded with its decision and reason (HQ sees the
//! ignored ones too); a start uses an idempotency key derived from the event, so a restart, a
//! second replica or a crash between starting and recording never starts twice; a telegram's
//! record and the state it changed are written in one transaction; replayed telegrams (`anpi
//! jma replay`) live in their own scope, start drills only and never touch the live state.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::clock::Millis;
use crate::config::Config;
use crate::hq::{Hq, HqError};
use crate::ids::RollCallId;
use crate::metrics::Metrics;
use crate::rollcall::RollCallState;
use crate::scenario::{Scenario, ScenarioError};
use crate::store::{SharedStore, StoreError};

pub mod bench;
pub mod decide;
pub mod feed;
pub mod parse;
pub mod rules;

use decide::{Action, Ctx, Decision, EventState, RuleSeen, Seen};
use parse::Telegram;
use rules::Rule;

/// `[jma]`: the feed watcher.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JmaConfig {
    /// Watch JMA's feeds (off by default; `[[triggers]]` and `anpi jma replay` work without).
    #[serde(default)]
    pub enabled: bool,
    /// Where the feeds are (`<base_url>feed/<name>.xml`) and the telegrams they list
    /// (`<base_url>data/<file>`).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The high-frequency feeds to poll; after a gap, `<name>_l` (the long feed) is read once.
    #[serde(default = "default_feeds")]
    pub feeds: Vec<String>,
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A telegram older than this never starts anything (it is logged and shown to HQ).
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// A feed not read successfully for this long makes /healthz say degraded.
    #[serde(default = "default_stale", with = "humantime_serde")]
    pub stale_after: Duration,
    /// One HTTP request to JMA may take this long.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://www.data.jma.go.jp/developer/xml/".into()
}
fn default_feeds() -> Vec<String> {
    vec!["eqvol".into(), "extra".into()]
}
fn default_poll() -> Duration {
    Duration::from_secs(60)
}
fn default_max_age() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_stale() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for JmaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            base_url: default_base_url(),
            feeds: default_feeds(),
            poll_interval: default_poll(),
            max_age: default_max_age(),
            stale_after: default_stale(),
            timeout: default_timeout(),
        }
    }
}

impl JmaConfig {
    /// Checks the table; errors name the key.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((format!("jma.{k}"), m));
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://"))
            || !self.base_url.ends_with('/')
        {
            return bad(
                "base_url",
                format!("{:?} must be an http(s) URL ending in '/'", self.base_url),
            );
        }
        if self.feeds.is_empty() {
            return bad("feeds", "name at least one feed (eqvol, extra, ...)".into());
        }
        for (i, f) in self.feeds.iter().enumerate() {
            if f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((
                    format!("jma.feeds[{i}]"),
                    format!("{f:?} is not a feed name like \"eqvol\""),
                ));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.poll_interval) {
            return bad("poll_interval", "must be between 1s and 10m".into());
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600)).contains(&self.max_age) {
            return bad("max_age", "must be between 1m and 24h".into());
        }
        if self.stale_after < self.poll_interval * 2 {
            return bad("stale_after", "must be at least twice poll_interval".into());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(120)).contains(&self.timeout) {
            return bad("timeout", "must be between 1s and 2m".into());
        }
        Ok(())
    }
}

/// Where decisions are kept: the feed's, or `anpi jma replay`'s (never mixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Live,
    Replay,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Replay => "replay",
        }
    }
}

/// A recorded telegram and its decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JmaRecord {
    pub id: i64,
    pub scope: String,
    pub dedupe_key: String,
    /// The URL or file it came from.
    pub source: String,
    pub code: String,
    /// Control/Title.
    pub kind: String,
    pub status: String,
    pub info_type: String,
    pub event_ids: String,
    pub serial: String,
    pub head_title: String,
    pub headline: String,
    pub sent_at: Millis,
    pub reported_at: Millis,
    pub received_at: Millis,
    /// The decision that matters most (start over notify over ignore).
    pub action: String,
    pub rule: Option<String>,
    pub reason: String,
    pub roll_call_id: Option<i64>,
    /// A roll call the decision made besides (the retraction message).
    pub related_roll_call_id: Option<i64>,
    /// Every rule's decision, JSON.
    pub decisions: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JmaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{key}: {message}")]
    Config { key: String, message: String },
}

/// What became of one telegram (or document).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub source: String,
    /// Type code and name, status, info type, events, report time, headline.
    pub telegram: Option<TelegramSummary>,
    pub decisions: Vec<Decision>,
    /// Whether the decisions were carried out (false in a dry run).
    pub executed: bool,
    /// When the decision was made (before it was carried out), for the benchmark.
    #[serde(skip)]
    pub decided_at: Option<std::time::Instant>,
}

impl Outcome {
    pub fn primary(&self) -> Option<&Decision> {
        decide::primary(&self.decisions)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TelegramSummary {
    pub code: String,
    pub kind: String,
    pub status: String,
    pub info_type: String,
    pub event_ids: Vec<String>,
    pub serial: String,
    pub reported_at: String,
    pub head_title: String,
    pub headline: String,
}

impl TelegramSummary {
    fn of(t: &Telegram) -> Self {
        Self {
            code: t.code.clone(),
            kind: t.control_title.clone(),
            status: t.status.label().into(),
            info_type: t.info_type.label().into(),
            event_ids: t.event_ids.clone(),
            serial: t.serial.clone(),
            reported_at: t.reported_at.to_rfc3339(),
            head_title: t.head_title.clone(),
            headline: t.headline.clone(),
        }
    }
}

/// What a dry run remembers between the files of one run.
#[derive(Debug, Default)]
pub struct DryState {
    seen: HashSet<String>,
    events: HashMap<(String, String), EventState>,
    next_id: i64,
}

/// Loads what was seen before, decides, acts and records; one telegram at a time.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    /// Rule name -> the scenario it starts.
    scenarios: HashMap<String, Scenario>,
    hq: Arc<Hq>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    notices: Option<notice::Notices>,
    one_at_a_time: Mutex<()>,
}

/// The scenario name every retraction message's roll call carries.
pub const RETRACTION_SCENARIO: &str = "retraction";

impl Engine {
    /// Checks the rules and finds their scenarios; an unknown one is an error naming its key.
    pub fn new(hq: Arc<Hq>, config: Arc<Config>, metrics: Arc<Metrics>) -> Result<Self, JmaError> {
        let rules = Rule::all_from_config(&config.triggers).map_err(|e| JmaError::Config {
            key: e.key,
            message: e.message,
        })?;
        let mut scenarios = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            let s = Scenario::find(&config.scenarios.dir, &r.scenario).map_err(
                |e: ScenarioError| JmaError::Config {
                    key: format!("triggers[{i}].scenario"),
                    message: format!("{:?}: {e}", r.scenario),
                },
            )?;
            scenarios.insert(r.name.clone(), s);
        }
        let notices = notice::Notices::new(&config, hq.store().clone());
        Ok(Self {
            rules,
            scenarios,
            hq,
            config,
            metrics,
            notices,
            one_at_a_time: Mutex::new(()),
        })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn store(&self) -> &SharedStore {
        self.hq.store()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Decides on one document and, unless `dry` is given, acts on the decision and records
    /// it. With `dry`, decisions accumulate in that state only (nothing is written).
    pub async fn process(
        &self,
        xml: &str,
        source: &str,
        scope: Scope,
        dry: Option<&mut DryState>,
    ) -> Result<Outcome, JmaError> {
        let t = match parse::parse(xml, source) {
            Ok(t) => t,
            Err(e) => {
                return Ok(Outcome {
                    source: source.into(),
                    telegram: None,
                    decisions: decide::unreadable(&e.to_string()),
                    executed: dry.is_none(),
                    decided_at: Some(std::time::Instant::now()),
                })
            }
        };
        let _one = self.one_at_a_time.lock().await;
        let ctx = Ctx {
            now: self.hq.clock().now_millis(),
            max_age: (scope == Scope::Live).then_some(self.config.jma.max_age),
        };
        match dry {
            Some(state) => {
                let seen = self.seen_dry(&t, state);
                let mut decisions = decide::decide(&t, &self.rules, &seen, ctx);
                state.seen.insert(t.dedupe_key());
                for d in &mut decisions {
                    if d.action == Action::Start {
                        state.next_id -= 1;
                        d.roll_call = Some(state.next_id);
                        for u in &mut d.updates {
                            if u.started_at.is_some() && u.roll_call_id.is_none() {
                                u.roll_call_id = Some(state.next_id);
                            }
                        }
                    }
                    for u in &d.updates {
                        state
                            .events
                            .insert((u.rule.clone(), u.key.clone()), u.clone());
                    }
                }
                Ok(Outcome {
                    source: source.into(),
                    telegram: Some(TelegramSummary::of(&t)),
                    decisions,
                    executed: false,
                    decided_at: Some(std::time::Instant::now()),
                })
            }
            None => self.process_stored(t, source, scope, ctx).await,
        }
    }

    fn seen_dry(&self, t: &Telegram, state: &DryState) -> Seen {
        let mut seen = Seen {
            telegram: state
                .seen
                .contains(&t.dedupe_key())
                .then(|| "this run".to_string()),
            rules: HashMap::new(),
        };
        for r in self.rules.iter().filter(|r| Some(r.family) == t.family()) {
            let w = decide::wanted(t, r);
            let get = |k: &String| state.events.get(&(r.name.clone(), k.clone())).cloned();
            seen.rules.insert(
                r.name.clone(),
                RuleSeen {
                    event: w
                        .event_keys
                        .iter()
                        .filter_map(get)
                        .find(|e| decide::in_keyspace(t, e)),
                    snapshot: w.snapshot_key.as_ref().and_then(get),
                    last_start: state
                        .events
                        .values()
                        .filter(|e| {
                            e.rule == r.name
                                && e.roll_call_id.is_some()
                                && decide::history_of(t).counts(e)
                        })
                        .max_by_key(|e| e.started_at)
                        .cloned(),
                    roll_call_open: true,
                },
            );
        }
        seen
    }

    async fn seen_stored(&self, t: &Telegram, scope: Scope) -> Result<Seen, JmaError> {
        let store = self.hq.store();
        let sc = scope.as_str();
        let mut seen = Seen {
            telegram: store.jma_telegram_seen(sc, &t.dedupe_key()).await?,
            rules: HashMap::new(),
        };
        for r in self.rules.iter().filter(|r| Some(r.family) == t.family()) {
            let w = decide::wanted(t, r);
            let event = store
                .jma_events(sc, &r.name, &w.event_keys)
                .await?
                .into_iter()
                .find(|e| decide::in_keyspace(t, e));
            let snapshot = match &w.snapshot_key {
                Some(k) => store
                    .jma_events(sc, &r.name, std::slice::from_ref(k))
                    .await?
                    .into_iter()
                    .next(),
                None => None,
            };
            let roll_call_open = match event.as_ref().and_then(|e| e.roll_call_id) {
                Some(id) => store
                    .roll_call(RollCallId(id))
                    .await?
                    .is_some_and(|rc| rc.state == RollCallState::Open),
                None => false,
            };
            seen.rules.insert(
                r.name.clone(),
                RuleSeen {
                    event,
                    snapshot,
                    last_start: store
                        .jma_last_start(sc, &r.name, decide::history_of(t) == decide::History::Real)
                        .await?,
                    roll_call_open,
                },
            );
        }
        Ok(seen)
    }

    async fn process_stored(
        &self,
        t: Telegram,
        source: &str,
        scope: Scope,
        ctx: Ctx,
    ) -> Result<Outcome, JmaError> {
        let seen = self.seen_stored(&t, scope).await?;
        let mut decisions = decide::decide(&t, &self.rules, &seen, ctx);
        let decided_at = std::time::Instant::now();
        let mut related = None;
        for d in &mut decisions {
            match d.action {
                Action::Start => self.start(&t, d, scope).await?,
                Action::Retract => related = self.retract(&t, d, scope).await?.or(related),
                _ => {}
            }
        }
        let primary = decide::primary(&decisions).cloned();
        let updates: Vec<EventState> = decisions
            .iter()
            .flat_map(|d| d.updates.iter().cloned())
            .collect();
        let now = self.hq.clock().now_millis();
        let record = JmaRecord {
            id: 0,
            scope: scope.as_str().into(),
            dedupe_key: t.dedupe_key(),
            source: source.into(),
            code: t.code.clone(),
            kind: t.control_title.clone(),
            status: t.status.label().into(),
            info_type: t.info_type.label().into(),
            event_ids: t.event_ids.join(" "),
            serial: t.serial.clone(),
            head_title: t.head_title.clone(),
            headline: t.headline.clone(),
            sent_at: t.sent_at.timestamp_millis(),
            reported_at: t.reported_at.timestamp_millis(),
            received_at: now,
            action: primary
                .as_ref()
                .map_or("ignore", |d| d.action.as_str())
                .into(),
            rule: primary.as_ref().and_then(|d| d.rule.clone()),
            reason: primary
                .as_ref()
                .map(|d| d.reason.clone())
                .unwrap_or_default(),
            roll_call_id: primary.as_ref().and_then(|d| d.roll_call),
            related_roll_call_id: related,
            decisions: serde_json::to_string(&decisions).unwrap_or_else(|_| "[]".into()),
        };
        let recorded = self.hq.store().jma_record(&record, &updates, now).await?;
        for d in &decisions {
            self.metrics.jma_decision(d.action.as_str());
            info!(
                telegram = %record.dedupe_key,
                source,
                action = d.action.as_str(),
                rule = d.rule.as_deref().unwrap_or("-"),
                roll_call = ?d.roll_call,
                reason = %d.reason,
                "JMA telegram decided"
            );
        }
        if recorded.is_some() {
            if let Some(n) = &self.notices {
                n.send(&record, &decisions, scope, now).await;
            }
        }
        Ok(Outcome {
            source: source.into(),
            telegram: Some(TelegramSummary::of(&t)),
            decisions,
            executed: true,
            decided_at: Some(decided_at),
        })
    }

    /// Starts the rule's scenario for the event (a drill for a 訓練 telegram or a replay),
    /// keyed by the event so it starts once whoever gets here.
    async fn start(&self, t: &Telegram, d: &mut Decision, scope: Scope) -> Result<(), JmaError> {
        let rule = d.rule.clone().unwrap_or_default();
        let Some(scenario) = self.scenarios.get(&rule) else {
            return Ok(());
        };
        let drill = d.drill || scope == Scope::Replay;
        let key = format!(
            "jma:{}:{}:{}",
            scope.as_str(),
            rule,
            d.event_key.clone().unwrap_or_else(|| t.dedupe_key())
        );
        match self.hq.start(scenario, Some(drill), Some(key)).await {
            Ok((rc, _)) => {
                d.roll_call = Some(rc.id.0);
                for u in &mut d.updates {
                    if u.started_at.is_some() && u.roll_call_id.is_none() {
                        u.roll_call_id = Some(rc.id.0);
                    }
                }
                d.reason = format!(
                    "{} → 安否確認 #{}{} / roll call #{} started",
                    d.reason,
                    rc.id,
                    if rc.drill { "（訓練）" } else { "" },
                    rc.id
                );
                Ok(())
            }
            // The database failed: nothing is recorded, so the telegram is decided again.
            Err(HqError::Store(e)) if !matches!(e, StoreError::Conflict(_)) => Err(e.into()),
            Err(e) => {
                // Nothing was started (no contacts, an empty audience, a key clash): HQ must
                // act by hand; the event stays unstarted, so its next telegram tries again.
                warn!(error = %e, rule, "trigger could not start its roll call");
                d.action = Action::Notify;
                d.reason = format!(
                    "{} → 開始できませんでした: {e} / could not start: start it by hand",
                    d.reason
                );
                for u in &mut d.updates {
                    u.started_at = None;
                    u.level = 0;
                    u.active = false;
                    u.acting.clear();
                }
                Ok(())
            }
        }
    }

    /// Closes the roll call and sends a short retraction to everyone it reached.
    async fn retract(
        &self,
        t: &Telegram,
        d: &mut Decision,
        scope: Scope,
    ) -> Result<Option<i64>, JmaError> {
        let Some(id) = d.roll_call.map(RollCallId) else {
            return Ok(None);
        };
        let store = self.hq.store();
        let clock = self.hq.clock();
        let Some(rc) = store.roll_call(id).await? else {
            return Ok(None);
        };
        store.close_roll_call(id, clock.now_millis()).await?;
        let notified: HashSet<_> = store.notified_staff(id).await?.into_iter().collect();
        if notified.is_empty() {
            d.reason = format!(
                "{} → 安否確認 #{id} を終了（送信済みの人なし）/ closed; nobody had been sent it",
                d.reason
            );
            return Ok(None);
        }
        let scenario = retraction_scenario(&rc.title, &t.control_title, rc.drill)
            .map_err(|e| StoreError::Corrupt(format!("retraction message: {e}")))?;
        let contacts: Vec<_> = store
            .contacts()
            .await?
            .into_iter()
            .filter(|c| notified.contains(&c.id))
            .collect();
        let key = format!("jma-retract:{}:{}", scope.as_str(), id);
        let (new, recipients) = crate::rollcall::compose(
            &scenario,
            &contacts,
            self.hq.provider(),
            Some(rc.drill),
            Some(key),
        );
        let msg = store
            .create_roll_call(&new, &recipients, clock.now_millis())
            .await?;
        self.hq.wake_dispatch();
        d.reason = format!(
            "{} → 安否確認 #{id} を終了し、送信済みの {} 人へ取消を送信（#{}）/ closed #{id}; retraction sent to the {} people it reached (#{})",
            d.reason,
            recipients.len(),
            msg.id,
            recipients.len(),
            msg.id
        );
        Ok(Some(msg.id.0))
    }

    /// Closes retraction messages once every one has gone out (they ask for nothing).
    pub async fn tidy(&self) -> Result<u64, StoreError> {
        let store = self.hq.store();
        let mut closed = 0;
        for rc in store.roll_calls().await? {
            if rc.scenario != RETRACTION_SCENARIO || rc.state != RollCallState::Open {
                continue;
            }
            let p = store.progress(rc.id).await?;
            if p.overall.pending == 0 && p.overall.sending == 0 {
                store
                    .close_roll_call(rc.id, self.hq.clock().now_millis())
                    .await?;
                closed += 1;
            }
        }
        Ok(closed)
    }
}

/// The short message that withdraws a roll call: one 確認 button, sent to everyone it reached.
pub fn retraction_scenario(
    title: &str,
    telegram: &str,
    drill: bool,
) -> Result<Scenario, ScenarioError> {
    let title = title.trim_start_matches("【訓練】");
    let mut message = toml::Table::new();
    message.insert(
        "ja".into(),
        format!(
            "【取消】先ほどの「{title}」は、気象庁が{telegram}を取り消したため取り消します。返信は不要です。"
        )
        .into(),
    );
    message.insert(
        "en".into(),
        format!(
            "[CANCELLED] \"{title}\" is withdrawn: JMA cancelled its information. No reply needed."
        )
        .into(),
    );
    let mut button = toml::Table::new();
    button.insert("label".into(), "確認 / OK".into());
    button.insert("value".into(), "ack".into());
    let mut escalation = toml::Table::new();
    escalation.insert("email_hq".into(), false.into());
    let mut t = toml::Table::new();
    t.insert("name".into(), RETRACTION_SCENARIO.into());
    t.insert("title".into(), format!("取消: {title}").into());
    t.insert("drill".into(), drill.into());
    t.insert("deadline".into(), "24h".into());
    t.insert("message".into(), message.into());
    t.insert(
        "buttons".into(),
        toml::Value::Array(vec![toml::Value::Table(button)]),
    );
    t.insert("escalation".into(), escalation.into());
    let text = toml::to_string(&t).map_err(|e| ScenarioError::Syntax {
        origin: RETRACTION_SCENARIO.into(),
        message: e.to_string(),
    })?;
    Scenario::parse(&text, RETRACTION_SCENARIO)
}

/// One of JMA's sample telegrams, for unit tests: from `ANPI_JMA_DATA`, else from
/// `shared/data/jma` beside the crate or one of its ancestors. Missing, the test fails.
#[cfg(test)]
pub(crate) fn sample_telegram(rel: &str) -> String {
    let dir = std::env::var_os("ANPI_JMA_DATA")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .ancestors()
                .map(|d| d.join("shared/data/jma"))
                .find(|p| p.is_dir())
        })
        .expect("JMA's sample telegrams: set ANPI_JMA_DATA or keep shared/data/jma beside the repository");
    let path = dir.join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// HQ's e-mail about what a telegram did, written to the mail outbox ([`crate::email`]).
mod notice {
    use tracing::warn;

    use super::decide::{Action, Decision};
    use super::{JmaRecord, Scope};
    use crate::clock::{Clock, Millis, SystemClock};
    use crate::config::Config;
    use crate::email::{kind, NewMail};
    use crate::store::SharedStore;

    #[derive(Debug, Clone)]
    pub struct Notices {
        store: SharedStore,
        hq: Vec<String>,
        zone: chrono_tz::Tz,
    }

    impl Notices {
        /// `None` when e-mail is off or goes to nobody.
        pub fn new(config: &Config, store: SharedStore) -> Option<Self> {
            if !config.email.enabled || config.email.hq.is_empty() {
                return None;
            }
            Some(Self {
                store,
                hq: config.email.hq.clone(),
                zone: config.zone().unwrap_or(chrono_tz::Asia::Tokyo),
            })
        }

        /// Writes HQ's mail about every decision that is not an ignore, once per telegram.
        pub async fn send(
            &self,
            rec: &JmaRecord,
            decisions: &[Decision],
            scope: Scope,
            now: Millis,
        ) {
            let worth: Vec<&Decision> = decisions
                .iter()
                .filter(|d| d.action != Action::Ignore)
                .collect();
            let Some(first) = worth.iter().max_by_key(|d| d.action) else {
                return;
            };
            let drill = rec.status == "訓練" || scope == Scope::Replay;
            let verb = match first.action {
                Action::Start => "安否確認を自動開始",
                Action::Upgrade => "事象が強まりました",
                Action::Retract => "取消により安否確認を終了",
                _ => "本部へのお知らせ",
            };
            let when = crate::clock::from_millis(rec.reported_at)
                .with_timezone(&self.zone)
                .format("%Y-%m-%d %H:%M");
            let mut text = format!(
                "{verb}\n\n電文: {} {}（{}・{}）\n発表: {when}\n見出し: {}\n",
                rec.code, rec.kind, rec.status, rec.info_type, rec.headline
            );
            for d in &worth {
                text.push_str(&format!(
                    "\n[{}] {}\n  {}\n  地域: {}\n",
                    d.rule.as_deref().unwrap_or("-"),
                    d.action.as_str(),
                    d.reason,
                    if d.areas.is_empty() {
                        "-".to_string()
                    } else {
                        d.areas.join("、")
                    }
                ));
            }
            text.push_str("\nHQ 画面の「気象庁情報」にも表示されています。\nThe same is shown on the HQ page under JMA.\n");
            let mail = NewMail {
                kind: kind::JMA_NOTICE.into(),
                dedupe_key: format!("jma:{}:{}", rec.scope, rec.dedupe_key),
                roll_call_id: rec.roll_call_id.map(crate::ids::RollCallId),
                to: self.hq.clone(),
                subject: format!(
                    "{}【気象庁情報】{verb}: {} {}",
                    if drill { "【訓練】" } else { "" },
                    rec.kind,
                    first.areas.first().map(String::as_str).unwrap_or("")
                ),
                body: text,
                csv: None,
                meta: None,
            };
            if let Err(e) = self
                .store
                .enqueue_mails(&[mail], now, SystemClock.now_millis())
                .await
            {
                warn!(error = %e, "the JMA notice e-mail could not be written to the outbox");
            }
        }
    }
}
