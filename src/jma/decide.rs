//! The one decision: from a telegram and what was seen before, per rule, to start a roll
//! call, upgrade one, tell HQ, retract one, or ignore the telegram — always with the reason.
//!
//! Invariants: this module is pure (no clock, no store; the caller loads [`Seen`] and writes
//! the returned state). Only a 通常 or 訓練 telegram of a trigger family, new, fresh enough,
//! for one of the rule's areas and at or above its threshold can start anything, and a 訓練
//! one starts only a drill; one event starts at most one roll call per rule; a 取消 retracts
//! only a roll call that a telegram of the same type started.
//!
//! 訓練 and real telegrams keep apart: a 訓練 telegram's state is stored under keys prefixed
//! `drill:` (real keys are as they always were), so neither can make the other "already
//! seen", "already started" or "unchanged"; a drill's event or episode stored under a real
//! key before that is known by its `drill` mark and is not a real telegram's. In the aftershock window a real telegram is judged
//! against real starts only, so an exercise never holds a real quake back; a 訓練 telegram is
//! judged against both, so no drill roll call goes out while a real one's aftershocks are
//! still within the window (HQ is told instead).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::parse::{AreaReport, InfoType, Kind, Status, Telegram};
use super::rules::{level_label, Below, Family, Rule};
use crate::clock::Millis;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Ignore,
    /// Tell HQ (page and e-mail); start nothing.
    Notify,
    /// The event behind a running roll call got stronger: tell HQ, record the new level.
    Upgrade,
    /// JMA withdrew the telegram that started a roll call: tell everyone notified, close it.
    Retract,
    Start,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ignore => "ignore",
            Self::Notify => "notify",
            Self::Upgrade => "upgrade",
            Self::Retract => "retract",
            Self::Start => "start",
        }
    }
}

/// Why, as a code (tests and metrics) beside the words for HQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    NotTelegram,
    UnknownType,
    NotATrigger,
    TestTelegram,
    AlreadySeen,
    NoRule,
    TooOld,
    OtherArea,
    Reached,
    Stronger,
    AlreadyStarted,
    Lowered,
    Aftershock,
    StillOpen,
    BelowThreshold,
    BelowAlreadyTold,
    BelowIgnored,
    NothingThere,
    Cancelled,
    CancelledNotice,
    CancelledOther,
    CancelledUnknown,
    Twin,
    OlderSnapshot,
    NoChange,
    Changed,
}

/// What one rule's state holds about an event (or, for snapshot families, an office's
/// episode or snapshot group). Stored per (scope, rule, key).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventState {
    pub rule: String,
    /// An EventID; `office:<code>:<group>` (a snapshot group's episode: whether what it
    /// says is in force; before episodes were kept per group, `office:<code>`);
    /// `snap:<office>:<group>`. Prefixed `drill:` for 訓練 telegrams.
    pub key: String,
    /// The highest level acted on (started or upgraded); for an episode, its current level.
    pub level: i32,
    /// The level last seen.
    pub last_level: i32,
    /// The highest level told to HQ below the threshold.
    pub notified_level: i32,
    pub roll_call_id: Option<i64>,
    /// Started by a 訓練 telegram (a replay's roll calls are drills whatever this says).
    pub drill: bool,
    pub retracted: bool,
    /// Report time of the telegram that started the roll call.
    pub started_at: Option<Millis>,
    /// Control/Titles of the telegrams that started or upgraded it (a 取消 of one retracts).
    pub acting: Vec<String>,
    /// For a snapshot group: what is in force in the rule's areas, canonical text.
    pub snapshot: Option<String>,
    /// For an episode: whether it is at or above the threshold now.
    pub active: bool,
    /// Report time of the latest telegram applied.
    pub reported_at: Millis,
}

/// What was seen before, for one telegram: loaded by the caller for the keys [`wanted`]
/// names.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The same telegram (dedupe key) was decided before: its action.
    pub telegram: Option<String>,
    pub rules: HashMap<String, RuleSeen>,
}

#[derive(Debug, Clone, Default)]
pub struct RuleSeen {
    /// The event (any of the telegram's EventIDs) or the office's episode.
    pub event: Option<EventState>,
    /// A snapshot family's group state for the telegram's office.
    pub snapshot: Option<EventState>,
    /// The rule's latest start that counts for the telegram's aftershock window (see
    /// [`history_of`]).
    pub last_start: Option<EventState>,
    /// Whether `event`'s roll call is still open.
    pub roll_call_open: bool,
}

/// The stored keys a rule needs to decide on `t`.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub event_keys: Vec<String>,
    pub snapshot_key: Option<String>,
}

/// The prefix of every stored key a 訓練 telegram's state lives under.
pub const DRILL_KEY_PREFIX: &str = "drill:";

/// `key` in the telegram's keyspace: as it is for a real telegram, `drill:` before it for a
/// 訓練 one.
fn keyed(t: &Telegram, key: String) -> String {
    if t.status == Status::Drill {
        format!("{DRILL_KEY_PREFIX}{key}")
    } else {
        key
    }
}

/// Whether a stored state belongs to 訓練 telegrams: its key, or, for a start stored before
/// drill keys were kept apart, its `drill` mark.
pub fn is_drill_state(e: &EventState) -> bool {
    e.key.starts_with(DRILL_KEY_PREFIX) || e.drill
}

/// Which starts a telegram's aftershock window is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// A real telegram: real starts only. An exercise never holds a real quake back.
    Real,
    /// A 訓練 telegram: every start, real ones too, so no drill goes out to people in the
    /// middle of a real quake's aftershocks.
    All,
}

pub fn history_of(t: &Telegram) -> History {
    if t.status == Status::Drill {
        History::All
    } else {
        History::Real
    }
}

impl History {
    pub fn counts(self, e: &EventState) -> bool {
        self == History::All || !is_drill_state(e)
    }
}

pub fn wanted(t: &Telegram, rule: &Rule) -> Wanted {
    if rule.family.is_snapshot() {
        let office = t.office.clone().unwrap_or_else(|| "?".into());
        let mut event_keys = vec![keyed(t, format!("office:{office}:{}", t.snapshot_group))];
        if t.status != Status::Drill {
            // The one episode per office kept before; `snapshot_rule` takes it over only for
            // the group that started it.
            event_keys.push(format!("office:{office}"));
        }
        Wanted {
            event_keys,
            snapshot_key: Some(keyed(t, format!("snap:{office}:{}", t.snapshot_group))),
        }
    } else {
        Wanted {
            event_keys: t.event_ids.iter().map(|id| keyed(t, id.clone())).collect(),
            snapshot_key: None,
        }
    }
}

/// The moment decisions are made at, and the limits that apply.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: Millis,
    /// Telegrams older than this never start anything (None: replay, judged as of its time).
    pub max_age: Option<Duration>,
}

/// One rule's decision (or a telegram-wide one, `rule: None`).
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub action: Action,
    /// A start from a 訓練 telegram: a drill.
    pub drill: bool,
    pub rule: Option<String>,
    pub why: Why,
    /// For HQ, Japanese first.
    pub reason: String,
    pub level: i32,
    pub level_label: String,
    /// "三条市 震度5弱" for each of the rule's areas in the telegram.
    pub areas: Vec<String>,
    /// The event this is about (its idempotency for a start).
    pub event_key: Option<String>,
    /// The roll call an upgrade, retraction or notice is about.
    pub roll_call: Option<i64>,
    /// State to store (a start's roll call id is filled in once it has started).
    #[serde(skip)]
    pub updates: Vec<EventState>,
}

impl Decision {
    fn global(why: Why, reason: String) -> Self {
        Self {
            action: Action::Ignore,
            drill: false,
            rule: None,
            why,
            reason,
            level: 0,
            level_label: String::new(),
            areas: Vec::new(),
            event_key: None,
            roll_call: None,
            updates: Vec::new(),
        }
    }
}

/// The decision that matters most of several (a start over a notice over an ignore).
pub fn primary(ds: &[Decision]) -> Option<&Decision> {
    ds.iter().max_by_key(|d| d.action)
}

/// The decisions for a document that could not be read as a telegram.
pub fn unreadable(error: &str) -> Vec<Decision> {
    vec![Decision::global(
        Why::NotTelegram,
        format!("電文として読めません / not a telegram: {error}"),
    )]
}

/// How a roll call is named in a reason: "#12", or "(dry run)" for one a dry run imagined.
fn rc(id: Option<i64>) -> String {
    match id {
        Some(n) if n > 0 => format!("#{n}"),
        _ => "(dry run)".into(),
    }
}

fn area_text(a: &[&AreaReport]) -> Vec<String> {
    a.iter()
        .map(|a| format!("{} {}", a.name, a.label))
        .collect()
}

/// Decides what `t` means under each rule of its family, given what was seen before.
pub fn decide(t: &Telegram, rules: &[Rule], seen: &Seen, ctx: Ctx) -> Vec<Decision> {
    let family = match &t.kind {
        Kind::Other => {
            return vec![Decision::global(
                Why::UnknownType,
                format!(
                    "対象外の電文種別「{}」: 何もしません / unknown telegram type, never acted on",
                    t.control_title
                ),
            )]
        }
        Kind::NotTrigger(why) => {
            return vec![Decision::global(
                Why::NotATrigger,
                format!(
                    "「{}」は起動対象外 / not a trigger type ({why})",
                    t.control_title
                ),
            )]
        }
        Kind::Trigger(f) => *f,
    };
    if t.status == Status::Test {
        return vec![Decision::global(
            Why::TestTelegram,
            "試験電文: 何もしません / a test telegram is never acted on".into(),
        )];
    }
    if let Some(prev) = &seen.telegram {
        return vec![Decision::global(
            Why::AlreadySeen,
            format!("受信済みの電文（前回: {prev}）/ already seen"),
        )];
    }
    let mine: Vec<&Rule> = rules.iter().filter(|r| r.family == family).collect();
    if mine.is_empty() {
        return vec![Decision::global(
            Why::NoRule,
            format!("{}の規則がありません / no {family} rule", family.label_ja()),
        )];
    }
    if let Some(max) = ctx.max_age {
        let age = ctx.now - t.sent_at.timestamp_millis();
        if age > max.as_millis() as i64 && t.info_type != InfoType::Cancel {
            return vec![Decision::global(
                Why::TooOld,
                format!(
                    "{}分前の電文（上限 {}分）: 起動しません / {} min old, older than the limit",
                    age / 60_000,
                    max.as_secs() / 60,
                    age / 60_000
                ),
            )];
        }
    }
    let empty = RuleSeen::default();
    mine.into_iter()
        .map(|rule| {
            let rs = own_keyspace(t, seen.rules.get(&rule.name).unwrap_or(&empty));
            let mut d = if family.is_snapshot() {
                snapshot_rule(t, rule, &rs)
            } else {
                event_rule(t, rule, &rs, family)
            };
            d.rule = Some(rule.name.clone());
            if d.action == Action::Start {
                d.drill = t.status == Status::Drill;
            }
            if t.status == Status::Drill && d.action != Action::Ignore {
                d.reason = format!("【訓練電文】{}", d.reason);
            }
            d
        })
        .collect()
}

/// Whether a stored state, found under one of the keys [`wanted`] names for `t`, is `t`'s
/// own: for a real telegram, not an old drill's (see [`own_keyspace`]). The caller loading
/// [`Seen`] takes the first state that is, so a real event's state behind an old drill's
/// under another of its EventIDs is still found.
pub fn in_keyspace(t: &Telegram, e: &EventState) -> bool {
    t.status == Status::Drill || !is_drill_state(e)
}

/// What was seen, less what belongs to the other keyspace. A real telegram's keys are the
/// bare ones, where drill state was stored too before drill keys were kept apart: an old
/// drill's event or episode found there (known by its `drill` mark) is treated as absent, so
/// it neither makes the real event "already started" nor is retracted by a real 取消. An old
/// drill's snapshot group (`snap:<office>:<group>`) carries no mark and cannot be told from a
/// real one; it is used as it is, so until the office's next real telegram that changes
/// something there, a real telegram is compared with what a drill last said (and may be
/// judged unchanged or older than it).
fn own_keyspace(t: &Telegram, rs: &RuleSeen) -> RuleSeen {
    if t.status == Status::Drill {
        return rs.clone();
    }
    let real = |e: &Option<EventState>| e.clone().filter(|e| in_keyspace(t, e));
    let event = real(&rs.event);
    RuleSeen {
        roll_call_open: rs.roll_call_open && event.is_some(),
        event,
        snapshot: real(&rs.snapshot),
        last_start: real(&rs.last_start),
    }
}

struct Basis<'a> {
    matched: Vec<&'a AreaReport>,
    level: i32,
    reaches: bool,
}

fn basis<'a>(t: &'a Telegram, rule: &Rule) -> Basis<'a> {
    let matched: Vec<&AreaReport> = t
        .areas
        .iter()
        .filter(|a| rule.areas.contains(&a.code))
        .collect();
    let level = matched.iter().map(|a| a.level).max().unwrap_or(0);
    let reaches = matched.iter().any(|a| rule.reaches(a.level, &a.codes));
    Basis {
        matched,
        level,
        reaches,
    }
}

fn decision(rule: &Rule, action: Action, why: Why, reason: String, b: &Basis) -> Decision {
    Decision {
        action,
        drill: false,
        rule: Some(rule.name.clone()),
        why,
        reason,
        level: b.level,
        level_label: level_label(rule.family, b.level),
        areas: area_text(&b.matched),
        event_key: None,
        roll_call: None,
        updates: Vec::new(),
    }
}

/// One state per EventID of the telegram (a tsunami telegram's several IDs name one event).
fn for_each_id(t: &Telegram, rule: &Rule, base: &EventState) -> Vec<EventState> {
    let mut ids: Vec<String> = t.event_ids.iter().map(|id| keyed(t, id.clone())).collect();
    if ids.is_empty() {
        ids.push(no_event_key(t));
    }
    if !ids.contains(&base.key) && !base.key.is_empty() {
        ids.push(base.key.clone());
    }
    ids.into_iter()
        .map(|k| EventState {
            rule: rule.name.clone(),
            key: k,
            ..base.clone()
        })
        .collect()
}

/// The key of a telegram that names no event: its type and send time.
fn no_event_key(t: &Telegram) -> String {
    keyed(
        t,
        format!("{}:{}", t.control_title, t.sent_at.timestamp_millis()),
    )
}

fn event_rule(t: &Telegram, rule: &Rule, rs: &RuleSeen, family: Family) -> Decision {
    let b = basis(t, rule);
    let reported = t.reported_at.timestamp_millis();
    let key = rs
        .event
        .as_ref()
        .map(|e| e.key.clone())
        .or_else(|| t.event_ids.first().map(|id| keyed(t, id.clone())))
        .unwrap_or_else(|| no_event_key(t));
    let mut state = rs.event.clone().unwrap_or(EventState {
        rule: rule.name.clone(),
        key: key.clone(),
        ..EventState::default()
    });
    let started = state.roll_call_id.is_some() && !state.retracted;
    let here = if b.matched.is_empty() {
        String::new()
    } else {
        format!("{}: ", area_text(&b.matched).join("、"))
    };

    if t.info_type == InfoType::Cancel {
        let mut d = if started && state.acting.contains(&t.control_title) {
            state.retracted = true;
            let mut d = decision(
                rule,
                Action::Retract,
                Why::Cancelled,
                format!(
                    "気象庁が「{}」を取り消しました: 安否確認 {} を取り消して終了します / JMA withdrew the telegram that started roll call {}: retract and close it",
                    t.control_title,
                    rc(state.roll_call_id),
                    rc(state.roll_call_id)
                ),
                &b,
            );
            d.roll_call = state.roll_call_id;
            d
        } else if started {
            let mut d = decision(
                rule,
                Action::Notify,
                Why::CancelledOther,
                format!(
                    "「{}」の取消。安否確認 {} は別の電文で始まったため続けます / a telegram that did not start roll call {} was withdrawn; it stays open",
                    t.control_title,
                    rc(state.roll_call_id),
                    rc(state.roll_call_id)
                ),
                &b,
            );
            d.roll_call = state.roll_call_id;
            d
        } else if state.notified_level > 0 {
            decision(
                rule,
                Action::Notify,
                Why::CancelledNotice,
                format!(
                    "先にお知らせした「{}」は取り消されました / the telegram HQ was told about was withdrawn",
                    t.control_title
                ),
                &b,
            )
        } else {
            return decision(
                rule,
                Action::Ignore,
                Why::CancelledUnknown,
                "対象地域で扱っていない事象の取消 / withdraws nothing anpi acted on".into(),
                &b,
            );
        };
        state.reported_at = reported;
        d.event_key = Some(state.key.clone());
        d.updates = for_each_id(t, rule, &state);
        return d;
    }

    if b.matched.is_empty() {
        return decision(
            rule,
            Action::Ignore,
            Why::OtherArea,
            "対象地域を含みません / none of the rule's areas is in it".into(),
            &b,
        );
    }

    let what = format!("{here}{}", rule.threshold_label());
    let mut d = if started {
        if b.reaches && b.level > state.level {
            state.level = b.level;
            if !state.acting.contains(&t.control_title) {
                state.acting.push(t.control_title.clone());
            }
            decision(
                rule,
                Action::Upgrade,
                Why::Stronger,
                format!(
                    "{here}安否確認 {} の後に強まりました / stronger than when roll call {} started",
                    rc(state.roll_call_id),
                    rc(state.roll_call_id)
                ),
                &b,
            )
        } else if b.level < state.level && b.level != state.last_level {
            decision(
                rule,
                Action::Notify,
                Why::Lowered,
                format!(
                    "{here}{}（安否確認 {} は続けます）/ lower than at the start; roll call {} stays open",
                    if t.info_type == InfoType::Correction { "訂正で下がりました" } else { "下がりました" },
                    rc(state.roll_call_id),
                    rc(state.roll_call_id)
                ),
                &b,
            )
        } else {
            decision(
                rule,
                Action::Ignore,
                Why::AlreadyStarted,
                format!(
                    "{here}この事象の安否確認 {} は開始済み / roll call {} already started for this event",
                    rc(state.roll_call_id),
                    rc(state.roll_call_id)
                ),
                &b,
            )
        }
    } else if b.reaches {
        let prior = rs.last_start.as_ref().filter(|p| {
            // A real telegram's `last_start` is a real start already (`own_keyspace`).
            p.key != state.key
                && p.roll_call_id.is_some()
                && !p.retracted
                && p.started_at.is_some_and(|at| {
                    rule.aftershock_window
                        .is_some_and(|w| reported - at <= w.as_millis() as i64 && reported >= at)
                })
        });
        match prior {
            Some(p) if family == Family::Earthquake && b.level <= p.level => {
                state.notified_level = state.notified_level.max(b.level);
                let reason = if t.status == Status::Drill && !is_drill_state(p) {
                    format!(
                        "{here}実際の地震の安否確認 {}（{}）の余震の範囲内: 訓練は開始しません / within the aftershock window of real roll call {}: no drill",
                        rc(p.roll_call_id),
                        level_label(family, p.level),
                        rc(p.roll_call_id)
                    )
                } else {
                    format!(
                        "{here}余震の範囲内（安否確認 {} の{}より強くない）: 開始しません / within the aftershock window and not stronger than roll call {}",
                        rc(p.roll_call_id),
                        level_label(family, p.level),
                        rc(p.roll_call_id)
                    )
                };
                decision(rule, Action::Notify, Why::Aftershock, reason, &b)
            }
            _ => {
                state.level = b.level;
                state.started_at = Some(reported);
                state.drill = t.status == Status::Drill;
                state.acting = vec![t.control_title.clone()];
                decision(
                    rule,
                    Action::Start,
                    Why::Reached,
                    format!("{what}に達しました: 安否確認を開始 / reaches the threshold: start"),
                    &b,
                )
            }
        }
    } else if rule.below == Below::Ignore {
        decision(
            rule,
            Action::Ignore,
            Why::BelowIgnored,
            format!("{what}に達しません（通知しない設定）/ below the threshold"),
            &b,
        )
    } else if state.notified_level > 0 && b.level < state.last_level {
        decision(
            rule,
            Action::Notify,
            Why::Lowered,
            format!("{here}通知済みの発表が下がりました・解除されました / lower than what HQ was told, or lifted"),
            &b,
        )
    } else if b.level <= 0 {
        decision(
            rule,
            Action::Ignore,
            Why::NothingThere,
            format!("{here}発表なし / nothing in force there"),
            &b,
        )
    } else if b.level > state.notified_level {
        state.notified_level = b.level;
        decision(
            rule,
            Action::Notify,
            Why::BelowThreshold,
            format!("{what}に達しません: 本部へ通知のみ / below the threshold: HQ is told"),
            &b,
        )
    } else {
        decision(
            rule,
            Action::Ignore,
            Why::BelowAlreadyTold,
            format!("{here}通知済みの程度以下 / not stronger than what HQ was told"),
            &b,
        )
    };
    if d.action != Action::Ignore || started {
        d.roll_call = state.roll_call_id;
    }
    state.last_level = b.level;
    state.reported_at = reported;
    d.event_key = Some(state.key.clone());
    d.updates = for_each_id(t, rule, &state);
    d
}

/// The rule's areas in a snapshot, as canonical text ("1520400=03,10;...").
fn snapshot_text(b: &Basis) -> String {
    let mut parts: Vec<String> = b
        .matched
        .iter()
        .map(|a| {
            let mut c = a.codes.clone();
            c.sort();
            format!("{}={}", a.code, c.join(","))
        })
        .collect();
    parts.sort();
    parts.join(";")
}

/// The stored episode that is this telegram's group's: its own, or the office's one episode
/// kept before episodes were per group, when a real telegram of this group started it (then
/// carried on under the group's key). Another group's episode is none of its business: a
/// rain telegram does not lift a landslide warning.
fn episode_of(t: &Telegram, key: &str, seen: Option<&EventState>) -> Option<EventState> {
    let e = seen?;
    if e.key == key {
        return Some(e.clone());
    }
    (!e.drill
        && e.acting
            .iter()
            .any(|title| super::parse::snapshot_group_of(title) == t.snapshot_group))
    .then(|| EventState {
        key: key.to_string(),
        ..e.clone()
    })
}

fn snapshot_rule(t: &Telegram, rule: &Rule, rs: &RuleSeen) -> Decision {
    let b = basis(t, rule);
    let w = wanted(t, rule);
    let reported = t.reported_at.timestamp_millis();
    let office_key = w.event_keys[0].clone();
    let episode = episode_of(t, &office_key, rs.event.as_ref());
    if t.info_type == InfoType::Cancel {
        // A snapshot's 取消 names no event; HQ decides about a running roll call.
        return match &episode {
            Some(e) if e.roll_call_id.is_some() || e.notified_level > 0 => {
                let mut d = decision(
                    rule,
                    Action::Notify,
                    Why::CancelledNotice,
                    format!(
                        "「{}」の取消（{}）: 本部で判断してください / a warning snapshot was withdrawn; HQ decides",
                        t.control_title,
                        t.head_title
                    ),
                    &b,
                );
                d.roll_call = e.roll_call_id;
                d
            }
            _ => decision(
                rule,
                Action::Ignore,
                Why::CancelledUnknown,
                "扱っていない電文の取消 / withdraws nothing anpi acted on".into(),
                &b,
            ),
        };
    }
    if b.matched.is_empty() {
        return decision(
            rule,
            Action::Ignore,
            Why::OtherArea,
            "対象地域を含みません / none of the rule's areas is in it".into(),
            &b,
        );
    }
    let snap_key = w.snapshot_key.clone().unwrap_or_default();
    let text = snapshot_text(&b);
    if let Some(s) = &rs.snapshot {
        if s.reported_at >= reported {
            let twin = s.reported_at == reported;
            return decision(
                rule,
                Action::Ignore,
                if twin { Why::Twin } else { Why::OlderSnapshot },
                if twin {
                    "同時刻の同じ内容の電文（VPWW53/54 の組）は受信済み / the twin of a telegram already applied".into()
                } else {
                    "より新しい発表を適用済み / older than the snapshot already applied".into()
                },
                &b,
            );
        }
        if s.snapshot.as_deref() == Some(text.as_str()) {
            let mut d = decision(
                rule,
                Action::Ignore,
                Why::NoChange,
                "対象地域の発表内容に変化なし / nothing changed for the rule's areas".into(),
                &b,
            );
            d.updates = vec![EventState {
                reported_at: reported,
                ..s.clone()
            }];
            return d;
        }
    }
    let snap = EventState {
        rule: rule.name.clone(),
        key: snap_key,
        level: b.level,
        last_level: b.level,
        snapshot: Some(text),
        reported_at: reported,
        ..EventState::default()
    };
    let mut ep = episode.unwrap_or(EventState {
        rule: rule.name.clone(),
        key: office_key,
        ..EventState::default()
    });
    let here = format!("{}: ", area_text(&b.matched).join("、"));
    let what = format!("{here}{}", rule.threshold_label());
    let prev_level = ep.last_level;
    let mut d = if b.reaches {
        if ep.active && ep.roll_call_id.is_some() {
            if b.level > ep.level {
                ep.level = b.level;
                decision(
                    rule,
                    Action::Upgrade,
                    Why::Stronger,
                    format!(
                        "{here}安否確認 {} の後に強まりました / stronger than when roll call {} started",
                        rc(ep.roll_call_id),
                        rc(ep.roll_call_id)
                    ),
                    &b,
                )
            } else {
                decision(
                    rule,
                    Action::Notify,
                    Why::Changed,
                    format!(
                        "{here}発表内容が変わりました（安否確認 {} は継続）/ changed; roll call {} continues",
                        rc(ep.roll_call_id),
                        rc(ep.roll_call_id)
                    ),
                    &b,
                )
            }
        } else if ep.roll_call_id.is_some() && rs.roll_call_open {
            ep.active = true;
            ep.level = b.level;
            decision(
                rule,
                Action::Notify,
                Why::StillOpen,
                format!(
                    "{what}に再び達しました。安否確認 {} が続いているため新たに開始しません / reached again while roll call {} is still open",
                    rc(ep.roll_call_id),
                    rc(ep.roll_call_id)
                ),
                &b,
            )
        } else {
            ep.active = true;
            ep.level = b.level;
            ep.roll_call_id = None;
            ep.retracted = false;
            ep.started_at = Some(reported);
            ep.drill = t.status == Status::Drill;
            ep.acting = vec![t.control_title.clone()];
            let mut d = decision(
                rule,
                Action::Start,
                Why::Reached,
                format!("{what}に達しました: 安否確認を開始 / reaches the threshold: start"),
                &b,
            );
            d.event_key = Some(format!("{}:{}", ep.key, reported));
            d
        }
    } else if ep.active {
        ep.active = false;
        decision(
            rule,
            Action::Notify,
            Why::Lowered,
            format!(
                "{here}基準を下回りました（安否確認 {} は続けます）/ below the threshold again; roll call {} stays open",
                rc(ep.roll_call_id),
                rc(ep.roll_call_id)
            ),
            &b,
        )
    } else if rule.below == Below::Ignore {
        decision(
            rule,
            Action::Ignore,
            Why::BelowIgnored,
            format!("{what}に達しません（通知しない設定）/ below the threshold"),
            &b,
        )
    } else if b.level > 0 || prev_level > 0 {
        ep.notified_level = ep.notified_level.max(b.level);
        decision(
            rule,
            Action::Notify,
            Why::BelowThreshold,
            format!("{what}に達しません: 本部へ通知のみ / below the threshold: HQ is told"),
            &b,
        )
    } else {
        decision(
            rule,
            Action::Ignore,
            Why::NothingThere,
            format!("{here}発表なし / nothing in force there"),
            &b,
        )
    };
    if d.roll_call.is_none() && d.action != Action::Start {
        d.roll_call = ep.roll_call_id;
    }
    if d.event_key.is_none() {
        d.event_key = Some(ep.key.clone());
    }
    ep.last_level = b.level;
    ep.reported_at = reported;
    d.updates = vec![snap, ep];
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jma::parse::parse;
    use crate::jma::rules::TriggerConfig;

    /// A VXSE53 in JMA's shape, with 新潟県中越 (371) and 三条市 (1520400) at `int`.
    fn quake(status: &str, info: &str, event: &str, serial: &str, at: &str, int: &str) -> Telegram {
        let xml = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Report xmlns="http://xml.kishou.go.jp/jmaxml1/">
<Control><Title>震源・震度に関する情報</Title><DateTime>{at}</DateTime><Status>{status}</Status></Control>
<Head xmlns="http://xml.kishou.go.jp/jmaxml1/informationBasis1/">
<Title>震源・震度情報</Title><ReportDateTime>{at}</ReportDateTime><TargetDateTime>{at}</TargetDateTime>
<EventID>{event}</EventID><InfoType>{info}</InfoType><Serial>{serial}</Serial>
<Headline><Text>地震がありました。</Text></Headline></Head>
<Body xmlns="http://xml.kishou.go.jp/jmaxml1/body/seismology1/"><Intensity><Observation>
<Pref><Name>新潟県</Name><Code>15</Code><MaxInt>{int}</MaxInt>
<Area><Name>新潟県中越</Name><Code>371</Code><MaxInt>{int}</MaxInt>
<City><Name>三条市</Name><Code>1520400</Code><MaxInt>{int}</MaxInt></City></Area></Pref>
</Observation></Intensity></Body></Report>"#
        );
        parse(&xml, "x_VXSE53_010000.xml").unwrap()
    }

    fn rules(extra: &str) -> Vec<Rule> {
        let c: TriggerConfig = toml::from_str(&format!(
            "name = \"q\"\nfamily = \"earthquake\"\nareas = [\"1520400\", \"371\"]\nintensity = \"5-\"\nscenario = \"earthquake\"\n{extra}"
        ))
        .unwrap();
        vec![Rule::from_config(0, &c).unwrap()]
    }

    /// Runs telegrams through `decide` as the engine would, keeping state in memory; a start
    /// gets roll call ids 1, 2, ... The rule's latest start is handed over whatever telegram
    /// made it: `decide` itself must not let a drill's start hold a real telegram back.
    fn run(rules: &[Rule], ts: &[Telegram], ctx: Ctx) -> Vec<(Action, Why, bool)> {
        run_from(rules, &[], ts, ctx)
    }

    /// [`run`], with `stored` already in the state as an earlier version left it.
    fn run_from(
        rules: &[Rule],
        stored: &[EventState],
        ts: &[Telegram],
        ctx: Ctx,
    ) -> Vec<(Action, Why, bool)> {
        let mut events: HashMap<String, EventState> =
            stored.iter().map(|e| (e.key.clone(), e.clone())).collect();
        let mut seen_keys = std::collections::HashSet::new();
        let mut next = 0;
        let mut out = Vec::new();
        for t in ts {
            let mut seen = Seen {
                telegram: seen_keys.contains(&t.dedupe_key()).then(|| "x".into()),
                ..Seen::default()
            };
            for r in rules {
                let w = wanted(t, r);
                seen.rules.insert(
                    r.name.clone(),
                    RuleSeen {
                        event: w.event_keys.iter().find_map(|k| events.get(k).cloned()),
                        snapshot: w.snapshot_key.and_then(|k| events.get(&k).cloned()),
                        last_start: events
                            .values()
                            .filter(|e| e.roll_call_id.is_some())
                            .max_by_key(|e| e.started_at)
                            .cloned(),
                        roll_call_open: true,
                    },
                );
            }
            seen_keys.insert(t.dedupe_key());
            let ds = decide(t, rules, &seen, ctx);
            let d = primary(&ds).unwrap().clone();
            for mut u in d.updates.clone() {
                if d.action == Action::Start && u.roll_call_id.is_none() {
                    next += 1;
                    u.roll_call_id = Some(next);
                }
                events.insert(u.key.clone(), u);
            }
            out.push((d.action, d.why, d.drill));
        }
        out
    }

    const T0: &str = "2026-03-11T05:46:00Z";
    fn ctx() -> Ctx {
        Ctx {
            now: chrono::DateTime::parse_from_rfc3339(T0)
                .unwrap()
                .timestamp_millis()
                + 60_000,
            max_age: Some(Duration::from_secs(900)),
        }
    }

    #[test]
    fn an_upgrade_past_the_threshold_after_a_telegram_below_it_starts_then_and_once() {
        let r = rules("");
        let got = run(
            &r,
            &[
                quake("通常", "発表", "E1", "1", T0, "4"),
                quake("通常", "発表", "E1", "2", T0, "5-"),
                quake("通常", "発表", "E1", "3", T0, "5-"),
                quake("通常", "発表", "E1", "4", T0, "6-"),
                quake("通常", "発表", "E1", "4", T0, "6-"),
            ],
            ctx(),
        );
        assert_eq!(
            got,
            [
                (Action::Notify, Why::BelowThreshold, false),
                (Action::Start, Why::Reached, false),
                (Action::Ignore, Why::AlreadyStarted, false),
                (Action::Upgrade, Why::Stronger, false),
                (Action::Ignore, Why::AlreadySeen, false),
            ]
        );
    }

    #[test]
    fn a_correction_is_decided_again_and_a_cancel_retracts_what_it_started() {
        let r = rules("");
        let got = run(
            &r,
            &[
                quake("通常", "発表", "E1", "1", T0, "4"),
                quake("通常", "訂正", "E1", "1", T0, "5+"),
                quake("通常", "取消", "E1", "1", T0, "5+"),
            ],
            ctx(),
        );
        assert_eq!(got[0].0, Action::Notify);
        assert_eq!(got[1], (Action::Start, Why::Reached, false));
        assert_eq!(got[2], (Action::Retract, Why::Cancelled, false));
    }

    #[test]
    fn drill_and_test_telegrams_never_start_a_real_roll_call() {
        let r = rules("");
        let got = run(
            &r,
            &[
                quake("訓練", "発表", "E1", "1", T0, "6+"),
                quake("試験", "発表", "E2", "1", T0, "7"),
            ],
            ctx(),
        );
        assert_eq!(got[0], (Action::Start, Why::Reached, true));
        assert_eq!(got[1], (Action::Ignore, Why::TestTelegram, false));
    }

    #[test]
    fn an_old_telegram_never_starts_anything() {
        let r = rules("");
        let late = Ctx {
            now: ctx().now + 3600 * 1000,
            ..ctx()
        };
        assert_eq!(
            run(&r, &[quake("通常", "発表", "E1", "1", T0, "7")], late),
            [(Action::Ignore, Why::TooOld, false)]
        );
        // Replays are judged as of the telegram's own time.
        let replay = Ctx {
            max_age: None,
            ..late
        };
        assert_eq!(
            run(&r, &[quake("通常", "発表", "E1", "1", T0, "7")], replay)[0].0,
            Action::Start
        );
    }

    #[test]
    fn within_the_aftershock_window_a_new_event_not_stronger_only_tells_hq() {
        let r = rules("aftershock_window = \"2h\"\n");
        let got = run(
            &r,
            &[
                quake("通常", "発表", "E1", "1", T0, "6-"),
                quake("通常", "発表", "E2", "1", "2026-03-11T06:46:00Z", "5+"),
                quake("通常", "発表", "E3", "1", "2026-03-11T07:00:00Z", "6+"),
                quake("通常", "発表", "E4", "1", "2026-03-11T10:00:00Z", "5-"),
            ],
            Ctx {
                max_age: None,
                ..ctx()
            },
        );
        assert_eq!(got[0].0, Action::Start);
        assert_eq!(got[1], (Action::Notify, Why::Aftershock, false));
        assert_eq!(got[2].0, Action::Start, "stronger than the first: starts");
        assert_eq!(got[3].0, Action::Start, "past the window");
    }

    /// One of JMA's sample telegrams, edited by string replacements (each must apply).
    fn sample(name: &str, edits: &[(&str, &str)]) -> Telegram {
        let mut xml = crate::jma::sample_telegram(name);
        for (from, to) in edits {
            assert!(xml.contains(from), "{name} lacks {from:?}");
            xml = xml.replace(from, to);
        }
        parse(&xml, name).unwrap()
    }

    fn rule(text: &str) -> Vec<Rule> {
        vec![Rule::from_config(0, &toml::from_str(text).unwrap()).unwrap()]
    }

    const NIIGATA: &str = "32-39_11_05_120615_VXSE53.xml";
    const DRILL: (&str, &str) = ("<Status>通常</Status>", "<Status>訓練</Status>");
    const REPLAY: Ctx = Ctx {
        now: 0,
        max_age: None,
    };

    #[test]
    fn a_drill_start_does_not_hold_back_a_real_quake_in_the_aftershock_window() {
        let r = rules("aftershock_window = \"2h\"\n");
        let drill = sample(
            NIIGATA,
            &[
                DRILL,
                ("<EventID>20110311144640<", "<EventID>20110311140000<"),
            ],
        );
        let real = sample(NIIGATA, &[]);
        let got = run(&r, &[drill, real], REPLAY);
        assert_eq!(got[0], (Action::Start, Why::Reached, true));
        assert_eq!(got[1], (Action::Start, Why::Reached, false), "{got:?}");
    }

    #[test]
    fn a_drill_sharing_a_real_events_id_keeps_its_own_state() {
        let r = rules("");
        let drill = sample(NIIGATA, &[DRILL]);
        let real = sample(NIIGATA, &[]);
        let again = sample(NIIGATA, &[DRILL, ("<Serial>1<", "<Serial>2<")]);
        let got = run(&r, &[drill, real, again], REPLAY);
        assert_eq!(got[0], (Action::Start, Why::Reached, true));
        assert_eq!(got[1], (Action::Start, Why::Reached, false), "{got:?}");
        assert_eq!(got[2], (Action::Ignore, Why::AlreadyStarted, false));
    }

    #[test]
    fn a_drill_in_a_real_quakes_aftershock_window_only_tells_hq() {
        let r = rules("aftershock_window = \"2h\"\n");
        let real = sample(NIIGATA, &[]);
        let drill = sample(
            NIIGATA,
            &[
                DRILL,
                ("<EventID>20110311144640<", "<EventID>20110311150000<"),
            ],
        );
        let got = run(&r, &[real, drill], REPLAY);
        assert_eq!(got[0], (Action::Start, Why::Reached, false));
        assert_eq!(got[1], (Action::Notify, Why::Aftershock, false), "{got:?}");
    }

    /// A drill start stored before drill keys were kept apart: under the bare EventID.
    fn old_drill_start(event: &str, at: &str, level: i32) -> EventState {
        let at = chrono::DateTime::parse_from_rfc3339(at)
            .unwrap()
            .timestamp_millis();
        EventState {
            rule: "q".into(),
            key: event.into(),
            level,
            last_level: level,
            roll_call_id: Some(41),
            drill: true,
            started_at: Some(at),
            acting: vec!["震源・震度に関する情報".into()],
            reported_at: at,
            ..EventState::default()
        }
    }

    #[test]
    fn a_drill_start_stored_under_the_real_event_id_does_not_hold_back_the_real_quake() {
        let r = rules("");
        let real = sample(NIIGATA, &[]);
        // At the real telegram's own level: were it taken for this event's start, the real
        // telegram would be "already started".
        let level = basis(&real, &r[0]).level;
        let stored = old_drill_start("20110311144640", "2011-03-11T14:50:00+09:00", level);
        let got = run_from(&r, &[stored], &[real], REPLAY);
        assert_eq!(got, [(Action::Start, Why::Reached, false)]);
    }

    #[test]
    fn a_real_cancel_does_not_retract_a_drill_started_under_the_same_event_id() {
        let r = rules("");
        let cancel = quake("通常", "取消", "E1", "1", T0, "6+");
        let stored = old_drill_start("E1", T0, basis(&cancel, &r[0]).level);
        let got = run_from(&r, &[stored], &[cancel], ctx());
        assert_eq!(got, [(Action::Ignore, Why::CancelledUnknown, false)]);
    }

    const UNNAN: &str = "name = \"unnan\"\nfamily = \"warning\"\nareas = [\"3220900\"]\nlevel = 4\nscenario = \"flood\"\n";
    const DOSHA: &str = "weather/15_17_01_250630_VPWW56.xml";
    const OOAME: &str = "weather/15_17_01_250630_VPWW55.xml";

    #[test]
    fn a_drill_warning_does_not_hide_the_real_one_from_the_same_office() {
        let r = rule(UNNAN);
        let drill = sample(
            DOSHA,
            &[
                DRILL,
                ("2024-11-02T08:00:00+09:00", "2024-11-02T07:00:00+09:00"),
                ("2024-11-01T23:00:18Z", "2024-11-01T22:00:18Z"),
            ],
        );
        let real = sample(DOSHA, &[]);
        let got = run(&r, &[drill, real], REPLAY);
        assert_eq!(got[0], (Action::Start, Why::Reached, true));
        assert_eq!(got[1], (Action::Start, Why::Reached, false), "{got:?}");
    }

    #[test]
    fn the_rain_telegram_does_not_lift_the_landslide_warning_of_the_same_office() {
        let r = rule(UNNAN);
        let got = run(&r, &[sample(DOSHA, &[]), sample(OOAME, &[])], REPLAY);
        assert_eq!(got[0], (Action::Start, Why::Reached, false));
        // 雲南市 has 大雨警報 (03) in the rain telegram: below the threshold, nothing lifted.
        assert_eq!(
            got[1],
            (Action::Notify, Why::BelowThreshold, false),
            "{got:?}"
        );
        // The landslide telegram again, an hour later and unchanged: its roll call goes on.
        let later = sample(
            DOSHA,
            &[
                ("2024-11-02T08:00:00+09:00", "2024-11-02T12:00:00+09:00"),
                ("2024-11-01T23:00:18Z", "2024-11-02T03:00:18Z"),
            ],
        );
        let got = run(&r, &[sample(DOSHA, &[]), sample(OOAME, &[]), later], REPLAY);
        assert_eq!(got[2], (Action::Ignore, Why::NoChange, false), "{got:?}");
    }

    #[test]
    fn another_area_or_an_unknown_type_decides_nothing() {
        let r = rules("");
        let mut t = quake("通常", "発表", "E1", "1", T0, "7");
        for a in &mut t.areas {
            a.code = "221".into();
        }
        assert_eq!(run(&r, &[t], ctx())[0].1, Why::OtherArea);
        let mut t = quake("通常", "発表", "E1", "1", T0, "7");
        t.kind = Kind::Other;
        assert_eq!(run(&r, &[t], ctx())[0].1, Why::UnknownType);
    }
}
