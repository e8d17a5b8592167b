//! What both backends share: the statements (one text for both, or one per [`Dialect`]
//! where the databases differ), the action list's columns and order, row decoding, progress
//! counting, and how a batch of inbound events becomes answers. Only the dialect differs
//! between SQLite and PostgreSQL (how a batch of rows is bound and read, how strings collate,
//! row locks); the rules are written once, here.
//!
//! Invariants kept here for every backend: an event for a closed roll call is logged and
//! changes no delivery (an urgent one still reaches HQ: the person's newest open roll call
//! takes it, or it is kept as a late answer); an event that names no roll call counts for the
//! newest open roll call the person is in; the most severe answer stands; no stored time is
//! later than when anpi received the event, or earlier than the send.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use async_trait::async_trait;
use serde_json::json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{ApplySummary, ChatRecipient, LoggedEvent, StoreError, StoreResult};
use crate::answers::{AnswerLevel, Choice, Meaning, UrgentWords};
use crate::clock::Millis;
use crate::contacts::{Contact, ContactKind};
use crate::email::{MailOutcome, MailState, NewMail, StoredMail};
use crate::ids::{ChatHandle, RollCallId, StaffId};
use crate::providers::{InboundEvent, InboundKind};
use crate::rollcall::{
    state_after_sql, states_moved_sql, CallListEntry, CallOutcome, ClaimedDelivery, Counts,
    DeliveryEvent, DeliveryState, EscalationReason, GivenAnswer, Note, Progress, RollCall,
    RollCallState, SendResult,
};

/// Which SQL dialect a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Column `col` in a condition that must not pick the index: SQLite's `+col` (a unary
    /// plus keeps its planner on the index the query is written for); PostgreSQL plans by
    /// cost and gets the column as it is.
    pub(super) fn not_indexed(self, col: &str) -> String {
        match self {
            Dialect::Sqlite => format!("+{col}"),
            Dialect::Postgres => col.to_string(),
        }
    }

    /// `WITH j AS MATERIALIZED (...)`: a JSON array of objects bound as parameter `$n`, read
    /// as a table `j` with the given (column, SQL type) pairs, for a statement that follows
    /// with `FROM j`. Materialised, so the database walks the batch and looks each row up by
    /// its key, instead of walking the whole table and scanning the batch for every row.
    pub(super) fn rows(self, n: usize, cols: &[(&str, &str)]) -> String {
        match self {
            Dialect::Sqlite => {
                let fields: Vec<String> = cols
                    .iter()
                    .map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}"))
                    .collect();
                format!(
                    "WITH j AS MATERIALIZED (SELECT {} FROM json_each(${n}))",
                    fields.join(", ")
                )
            }
            Dialect::Postgres => {
                let fields: Vec<String> = cols.iter().map(|(c, t)| format!("{c} {t}")).collect();
                format!(
                    "WITH j AS MATERIALIZED (SELECT * FROM json_to_recordset(${n}::json) AS x({}))",
                    fields.join(", ")
                )
            }
        }
    }

    /// A batch of rows bound from parameter `$first`, read as table `j` with the given
    /// (column, SQL type) pairs, for `FROM {table}`: SQLite takes one JSON array of objects,
    /// PostgreSQL one array per column (`UNNEST`). Returns the table and the next free
    /// parameter number.
    pub(super) fn table(self, first: usize, cols: &[(&str, &str)]) -> (String, usize) {
        match self {
            Dialect::Sqlite => {
                let fields: Vec<String> = cols
                    .iter()
                    .map(|(c, _)| format!("json_extract(value, '$.{c}') AS {c}"))
                    .collect();
                (
                    format!(
                        "(SELECT {} FROM json_each(${first})) AS j",
                        fields.join(", ")
                    ),
                    first + 1,
                )
            }
            Dialect::Postgres => {
                let arrays: Vec<String> = (first..)
                    .zip(cols)
                    .map(|(n, (_, t))| format!("${n}::{t}[]"))
                    .collect();
                let names: Vec<&str> = cols.iter().map(|(c, _)| *c).collect();
                (
                    format!("UNNEST({}) AS j({})", arrays.join(", "), names.join(", ")),
                    first + cols.len(),
                )
            }
        }
    }

    /// `col` is one of the values bound as `$n` (a JSON array on SQLite, an array on
    /// PostgreSQL).
    fn one_of(self, col: &str, n: usize, ty: &str) -> String {
        match self {
            Dialect::Sqlite => format!("{col} IN (SELECT value FROM json_each(${n}))"),
            Dialect::Postgres => format!("{col} = ANY(${n}::{ty}[])"),
        }
    }

    /// What an inbound batch runs first in its transaction. PostgreSQL holds the open roll
    /// calls open until the batch commits: a close waits for it, so no answer is written into
    /// a roll call that closed after it was read as open (and the close then carries any
    /// urgent answer to the late answers); so does a deadline's mark ([`Self::hold_marks_sql`]).
    /// SQLite's batch holds the one writer's turn. Rows are locked in id order, as every
    /// statement here that locks several roll calls does, so two never wait on each other.
    pub(super) fn hold_open_sql(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => {
                Some("SELECT id FROM roll_calls WHERE state = 'open' ORDER BY id FOR SHARE")
            }
        }
    }

    /// What a deadline pass runs first in its transaction. On PostgreSQL it waits for every
    /// inbound batch in progress ([`Self::hold_open_sql`]) and holds off new ones until its
    /// mark is committed. A mark touches no delivery row, so without this a read whose
    /// statement began before the mark committed would be written as read without the
    /// escalation, while readers saw the person escalated in between; now a read is either
    /// written before the mark (and the person is not escalated) or after it (and keeps the
    /// escalation, as any read after the deadline does).
    pub(super) fn hold_marks_sql(self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => None,
            Dialect::Postgres => {
                Some("SELECT id FROM roll_calls WHERE state = 'open' ORDER BY id FOR NO KEY UPDATE")
            }
        }
    }

    /// What ends a claim's subquery: on PostgreSQL, rows another replica is claiming this
    /// instant are passed over (SQLite has one writer, so there are none).
    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        }
    }

    /// Staff ids compare byte-wise on both backends, as in Rust.
    fn staff_order(self) -> &'static str {
        match self {
            Dialect::Sqlite => "staff_id",
            Dialect::Postgres => "staff_id COLLATE \"C\"",
        }
    }

    /// The call queue's order in SQL: the action list's ([`CallListEntry::call_order`], which a
    /// contract test holds it to), except that the entry `$2` holds until after `$4` comes
    /// first and entries that got no answer go after the rest of their group.
    pub(super) fn queue_order(self) -> String {
        format!(
            "(call_claimed_by IS NOT NULL AND call_claimed_by = $2 AND call_claimed_until > $4) DESC, \
             {}, (outcome IS NOT NULL AND outcome = 'no_answer'), call_priority, {WAITING_SINCE}, {}",
            action_rank(),
            self.staff_order()
        )
    }
}

/// An urgent answer HQ has not closed (see [`CallListEntry::urgent_open`]).
pub(super) const URGENT_OPEN: &str = "(level = 3 AND NOT (outcome IS NOT NULL \
    AND outcome <> 'no_answer' AND outcome_at IS NOT NULL \
    AND outcome_at >= COALESCE(urgent_at, level_at)))";

/// Closes roll call `$1` at `$2` (0 rows when it is not open).
pub(super) const CLOSE_ROLL_CALL: &str =
    "UPDATE roll_calls SET state = 'closed', closed_at = $2 WHERE id = $1 AND state = 'open'";

/// At roll call `$1`'s close, what has not gone out by now never will: it must not sit in the
/// queue.
pub(super) fn fail_unsent_at_close_sql() -> String {
    format!(
        "UPDATE deliveries SET state = {}, \
           lease_until = NULL, last_error = 'roll call closed before this was sent' \
         WHERE roll_call_id = $1 AND state IN {}",
        state_after_sql(DeliveryEvent::Closed, "state"),
        states_moved_sql(DeliveryEvent::Closed)
    )
}

/// At roll call `$1`'s close, urgent answers HQ has not closed are carried to the late
/// answers, so closing the roll call never takes someone who asked for help off HQ's list.
pub(super) const CARRY_URGENT_AT_CLOSE: &str = "INSERT INTO late_answers (provider, event_id, \
    roll_call_id, delivery_id, level, value, label, text, received_at) \
    SELECT provider, 'carried:' || roll_call_id || ':' || id, roll_call_id, id, level, \
    COALESCE(level_value, ''), COALESCE(level_label, ''), level_text, \
    COALESCE(urgent_at, level_at, 0) \
    FROM deliveries WHERE roll_call_id = $1 AND ";

/// [`CARRY_URGENT_AT_CLOSE`] in full.
pub(super) fn carry_urgent_sql() -> String {
    format!("{CARRY_URGENT_AT_CLOSE}{URGENT_OPEN} ON CONFLICT (provider, event_id) DO NOTHING")
}

/// Roll call `rc`'s escalation mark (a column or parameter, in SQL): how far its deadlines
/// have escalated, -1 before the first pass.
fn mark_of(rc: &str) -> String {
    format!(
        "COALESCE((SELECT MAX(m.through) FROM escalation_marks m WHERE m.roll_call_id = {rc}), -1)"
    )
}

/// Escalated by its deadline, read from the roll call's mark rather than written into the
/// row: sent, unread, not escalated for another reason, and its deadline at or before `mark`.
/// Columns prefixed `t` (`""` or an alias with its dot).
fn past_deadline(t: &str, mark: &str) -> String {
    format!("({t}state = 'sent' AND {t}escalated_at IS NULL AND {t}deadline_at <= {mark})")
}

/// When a delivery (columns prefixed `t`) of roll call `rc` was escalated: the time in its row
/// (a send that failed, no chat id, or read after its deadline escalated it), else, while it
/// is unread, the first mark at or after its deadline. That is what [`past_deadline`] says,
/// as a time: a mark at or after the deadline exists exactly when the latest one is.
fn escalated_at_sql(t: &str, rc: &str) -> String {
    format!(
        "COALESCE({t}escalated_at, CASE WHEN {t}state = 'sent' THEN \
           (SELECT MIN(m.through) FROM escalation_marks m \
            WHERE m.roll_call_id = {rc} AND m.through >= {t}deadline_at) END)"
    )
}

/// Why a delivery (as in [`escalated_at_sql`]) was escalated: as its row says, else
/// `never_read` while [`past_deadline`].
fn escalation_reason_sql(t: &str, rc: &str) -> String {
    format!(
        "CASE WHEN {} THEN 'never_read' ELSE {t}escalation_reason END",
        past_deadline(t, &mark_of(rc))
    )
}

/// Roll call `$1`'s [`past_deadline`] (unprefixed columns).
fn past_deadline_1() -> String {
    past_deadline("", &mark_of("$1"))
}

/// Escalated (in its row or by roll call `$1`'s deadline), not confirmed in chat, and no call
/// closed it ([`CallListEntry::to_call`]'s escalated half).
pub(super) fn escalated_open() -> String {
    format!(
        "(((escalated_at IS NOT NULL AND state NOT IN ('read', 'answered')) OR {}) \
          AND (outcome IS NULL OR outcome = 'no_answer'))",
        past_deadline_1()
    )
}

/// [`crate::rollcall::Action::rank`] in SQL, for roll call `$1`; 4 for entries that need
/// nothing now.
fn action_rank() -> String {
    format!(
        "CASE \
    WHEN (level = 3 AND NOT (outcome IS NOT NULL AND outcome <> 'no_answer' \
          AND outcome_at IS NOT NULL AND outcome_at >= COALESCE(urgent_at, level_at))) THEN 0 \
    WHEN {} THEN \
      CASE WHEN kind = 'shelter_phone' THEN 1 \
           WHEN escalation_reason IN ('send_failed', 'no_chat_id') THEN 3 ELSE 2 END \
    ELSE 4 END",
        escalated_open()
    )
}

/// [`CallListEntry::waiting_since`] in SQL (no time sorts first, as in Rust). An entry
/// escalated by its deadline was sent, so its send time is the one.
const WAITING_SINCE: &str = "CASE \
    WHEN (level = 3 AND NOT (outcome IS NOT NULL AND outcome <> 'no_answer' \
          AND outcome_at IS NOT NULL AND outcome_at >= COALESCE(urgent_at, level_at))) \
      THEN COALESCE(level_at, 0) \
    ELSE COALESCE(sent_at, escalated_at, 0) END";

/// Who belongs on the action list by its row (open or closed): escalated in the row, answered
/// urgently, called, or written about. The action-list index's condition, written the same
/// way so that the planner can use it.
const ON_ACTION_LIST_ROW: &str = "(escalated_at IS NOT NULL OR outcome IS NOT NULL \
    OR level = 3 OR notes IS NOT NULL)";

/// The ids of who belongs on roll call `$1`'s action list: [`ON_ACTION_LIST_ROW`] (from the
/// action-list index), and those escalated by its deadline (from the deadline index). Two
/// ranges, not one condition with `OR`, which SQLite would answer by reading every delivery
/// of the roll call.
fn action_list_ids() -> String {
    format!(
        "SELECT id FROM deliveries WHERE roll_call_id = $1 AND {ON_ACTION_LIST_ROW} \
         UNION ALL SELECT id FROM deliveries WHERE roll_call_id = $1 AND {}",
        past_deadline_1()
    )
}

/// Where a call outcome ($3, by $5 at $4) may be written: not over a hold another caller has,
/// and a person once reached is not put back on the list by a late "no answer".
pub(super) const OUTCOME_GUARD: &str = "\
    AND (call_claimed_until IS NULL OR call_claimed_until <= $4 OR call_claimed_by = $5) \
    AND NOT (COALESCE(outcome, '') LIKE 'reached%' AND $3 NOT LIKE 'reached%')";

/// The columns [`entry_from_row`] reads, in its order.
pub(super) const ENTRY_COLUMNS: &str = "id, staff_id, name, kana, role, department, shelter, \
    kind, call_priority, phones, state, escalation_reason, last_error, sent_at, escalated_at, \
    read_at, answer, answer_label, answer_text, answer_level, answer_at, level, level_value, \
    level_label, level_text, level_at, outcome, outcome_at, outcome_by, notes, \
    call_claimed_by, call_claimed_until, resent_at, urgent_at, deadline_at";

/// Roll call `$1`'s escalation marks, oldest first.
pub(super) const MARKS_SQL: &str =
    "SELECT through FROM escalation_marks WHERE roll_call_id = $1 ORDER BY through";

/// A roll call's escalation marks ([`MARKS_SQL`]), for the entries read with them: read after
/// entries whose query did not look at the marks, or before a query bound to their latest
/// ([`call_list_sql`]), so that every deadline the database counted as escalated has its mark
/// here.
pub(super) struct Marks(pub(super) Vec<Millis>);

impl Marks {
    /// The latest mark, -1 before the first (as [`mark_of`]).
    pub(super) fn latest(&self) -> Millis {
        self.0.last().copied().unwrap_or(-1)
    }

    /// [`escalated_at_sql`] in Rust: the row's own escalation, else, while it is sent and
    /// unread, the first mark at or after its deadline (`never_read`).
    fn escalation(
        &self,
        state: DeliveryState,
        stored: Option<Millis>,
        reason: Option<EscalationReason>,
        deadline: Option<Millis>,
    ) -> (Option<Millis>, Option<EscalationReason>) {
        if stored.is_some() || state != DeliveryState::Sent {
            return (stored, reason);
        }
        let mark = deadline.and_then(|d| {
            let i = self.0.partition_point(|&m| m < d);
            self.0.get(i).copied()
        });
        match mark {
            Some(at) => (Some(at), Some(EscalationReason::NeverRead)),
            None => (None, reason),
        }
    }
}

/// A row's phones (a JSON array of E.164 numbers), and the same as dialled in Japan.
fn decode_phones(json: &str) -> StoreResult<(Vec<String>, Vec<String>)> {
    let phones: Vec<String> = serde_json::from_str(json).map_err(|e| corrupt("phones", e))?;
    let national = phones
        .iter()
        .map(|p| crate::calllist::national(p))
        .collect();
    Ok((phones, national))
}

pub(super) fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

pub(super) fn parse_kind(s: &str) -> StoreResult<ContactKind> {
    match s {
        "staff" => Ok(ContactKind::Staff),
        "shelter_phone" => Ok(ContactKind::ShelterPhone),
        other => Err(corrupt("contact kind", other)),
    }
}

pub(super) fn kind_str(k: ContactKind) -> &'static str {
    match k {
        ContactKind::Staff => "staff",
        ContactKind::ShelterPhone => "shelter_phone",
    }
}

/// Reads column `i` of a row of either backend.
fn get<'r, R, T>(r: &'r R, i: usize) -> StoreResult<T>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(r.try_get(i)?)
}

/// An answer from its stored columns, if there is one.
fn given(
    level: Option<i64>,
    value: Option<String>,
    label: Option<String>,
    text: Option<String>,
    at: Option<Millis>,
) -> Option<GivenAnswer> {
    let level = AnswerLevel::from_rank(level?)?;
    let value = value?;
    Some(GivenAnswer {
        level,
        label: label.unwrap_or_else(|| value.clone()),
        value,
        text,
        at: at?,
    })
}

/// One action-list entry from a row of [`ENTRY_COLUMNS`], on either backend, escalated by
/// its roll call's `marks` where they say so.
pub(super) fn entry_from_row<R>(r: &R, marks: &Marks) -> StoreResult<CallListEntry>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
{
    let staff: String = get(r, 1)?;
    let kind: String = get(r, 7)?;
    let (phones, phones_national) = decode_phones(&get::<R, String>(r, 9)?)?;
    let state: String = get(r, 10)?;
    let state = DeliveryState::from_str(&state).map_err(|e| corrupt("state", e))?;
    let reason: Option<String> = get(r, 11)?;
    let reason = reason
        .as_deref()
        .map(EscalationReason::from_str)
        .transpose()
        .map_err(|e| corrupt("escalation reason", e))?;
    let (escalated_at, reason) = marks.escalation(state, get(r, 14)?, reason, get(r, 34)?);
    let outcome: Option<String> = get(r, 26)?;
    let notes: Option<String> = get(r, 29)?;
    let latest = given(
        get(r, 19)?,
        get(r, 16)?,
        get(r, 17)?,
        get(r, 18)?,
        get(r, 20)?,
    );
    let standing = given(
        get(r, 21)?,
        get(r, 22)?,
        get(r, 23)?,
        get(r, 24)?,
        get(r, 25)?,
    );
    Ok(CallListEntry {
        delivery_id: get(r, 0)?,
        staff_id: StaffId::parse(&staff).map_err(|e| corrupt("staff id", e))?,
        name: get(r, 2)?,
        kana: get(r, 3)?,
        role: get(r, 4)?,
        department: get(r, 5)?,
        shelter: get(r, 6)?,
        kind: parse_kind(&kind)?,
        call_priority: get::<R, i64>(r, 8)?.clamp(0, 255) as u8,
        phones,
        phones_national,
        state,
        reason,
        last_error: get(r, 12)?,
        sent_at: get(r, 13)?,
        escalated_at,
        read_at: get(r, 15)?,
        answer: latest.as_ref().map(|a| a.value.clone()),
        latest: latest.filter(|l| standing.as_ref() != Some(l)),
        standing,
        outcome: outcome
            .as_deref()
            .map(CallOutcome::parse)
            .transpose()
            .map_err(|e| corrupt("outcome", e))?,
        outcome_at: get(r, 27)?,
        outcome_by: get(r, 28)?,
        notes: match notes {
            Some(n) => serde_json::from_str::<Vec<Note>>(&n).map_err(|e| corrupt("notes", e))?,
            None => Vec::new(),
        },
        claimed_by: get(r, 30)?,
        claimed_until: get(r, 31)?,
        resent_at: get(r, 32)?,
        urgent_at: get(r, 33)?,
    })
}

/// The query behind [`fold_progress`]: one row per group of identical counting keys.
pub(super) fn progress_sql() -> String {
    format!(
        "SELECT department, shelter, kind, state, \
           CAST(CASE WHEN escalated_at IS NOT NULL OR {past} THEN 1 ELSE 0 END AS BIGINT) AS esc, \
           outcome, level, \
           CAST(CASE WHEN {URGENT_OPEN} THEN 1 ELSE 0 END AS BIGINT) AS uo, \
           CAST(CASE WHEN resent_at IS NOT NULL THEN 1 ELSE 0 END AS BIGINT) AS rs, \
           CAST(CASE WHEN {eo} THEN 1 ELSE 0 END AS BIGINT) AS eo, \
           COUNT(*) AS n \
         FROM deliveries WHERE roll_call_id = $1 \
         GROUP BY department, shelter, kind, state, esc, outcome, level, uo, rs, eo",
        past = past_deadline_1(),
        eo = escalated_open()
    )
}

/// The standing answers' values and how many gave each.
pub(super) const ANSWERS_SQL: &str = "SELECT level_value, COUNT(*) AS n FROM deliveries \
    WHERE roll_call_id = $1 AND level_value IS NOT NULL GROUP BY level_value";

/// When roll call `$1`'s last message went out and its next deadline falls (the first after
/// its escalation mark).
pub(super) fn times_sql() -> String {
    format!(
        "SELECT MAX(sent_at) AS last_sent, \
           MIN(CASE WHEN state = 'sent' AND escalated_at IS NULL AND deadline_at > {} \
               THEN deadline_at END) AS next_dl \
         FROM deliveries WHERE roll_call_id = $1",
        mark_of("$1")
    )
}

/// Counts the rows of [`progress_sql`] into overall, department and shelter counts.
pub(super) fn fold_progress<R>(rows: &[R], p: &mut Progress) -> StoreResult<()>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
{
    for r in rows {
        let dept: Option<String> = get(r, 0)?;
        let shelter: Option<String> = get(r, 1)?;
        let kind = parse_kind(&get::<R, String>(r, 2)?)?;
        let state =
            DeliveryState::from_str(&get::<R, String>(r, 3)?).map_err(|e| corrupt("state", e))?;
        let outcome = get::<R, Option<String>>(r, 5)?
            .map(|s| CallOutcome::parse(&s))
            .transpose()
            .map_err(|e| corrupt("outcome", e))?;
        let row = CountRow {
            kind,
            state,
            escalated: get::<R, i64>(r, 4)? != 0,
            outcome,
            level: AnswerLevel::from_rank(get(r, 6)?),
            urgent_open: get::<R, i64>(r, 7)? != 0,
            resent: get::<R, i64>(r, 8)? != 0,
            escalated_open: get::<R, i64>(r, 9)? != 0,
            n: get(r, 10)?,
        };
        row.add_to(&mut p.overall);
        match kind {
            ContactKind::Staff => {
                row.add_to(
                    p.by_department
                        .entry(dept.unwrap_or_else(|| crate::rollcall::NO_DEPARTMENT.into()))
                        .or_default(),
                );
                // Staff assigned to a shelter count under it as well.
                if let Some(s) = shelter.filter(|s| !s.trim().is_empty()) {
                    row.add_to(p.by_shelter.entry(s).or_default());
                }
            }
            ContactKind::ShelterPhone => row.add_to(
                p.by_shelter
                    .entry(shelter.unwrap_or_else(|| crate::rollcall::NO_SHELTER.into()))
                    .or_default(),
            ),
        }
    }
    Ok(())
}

/// One group of [`progress_sql`].
struct CountRow {
    kind: ContactKind,
    state: DeliveryState,
    escalated: bool,
    outcome: Option<CallOutcome>,
    level: Option<AnswerLevel>,
    urgent_open: bool,
    resent: bool,
    escalated_open: bool,
    n: i64,
}

impl CountRow {
    fn add_to(&self, c: &mut Counts) {
        let n = self.n;
        c.total += n;
        match self.state {
            DeliveryState::Pending => c.pending += n,
            DeliveryState::Sending => c.sending += n,
            DeliveryState::Sent => c.sent += n,
            DeliveryState::Read => c.read += n,
            DeliveryState::Answered => c.answered += n,
            DeliveryState::Failed => c.failed += n,
        }
        if self.escalated {
            c.escalated += n;
        }
        if self.escalated_open {
            c.to_call += n;
        }
        if self.outcome.is_some_and(CallOutcome::closes_entry) {
            c.reached += n;
        }
        match self.outcome {
            Some(CallOutcome::ReachedInjured) => c.injured += n,
            Some(CallOutcome::ReachedNeedsHelp) => c.needs_help += n,
            Some(CallOutcome::Unreachable) => c.unreachable += n,
            _ => {}
        }
        match self.level {
            Some(AnswerLevel::Ok) => c.answered_ok += n,
            Some(AnswerLevel::Attention) => c.answered_attention += n,
            Some(AnswerLevel::Urgent) => c.answered_urgent += n,
            None => {}
        }
        if self.urgent_open {
            c.urgent_open += n;
        }
        if self.resent {
            c.resent += n;
        }
        if self.kind == ContactKind::ShelterPhone {
            c.shelter_phones += n;
            if matches!(self.state, DeliveryState::Read | DeliveryState::Answered) {
                c.shelter_phones_confirmed += n;
            }
            if self.escalated_open {
                c.shelter_phones_silent += n;
            }
        }
    }
}

// ---- Inbound events -> answers ---------------------------------------------------------

/// A roll call a person of the batch is in, as the batch needs it.
#[derive(Debug, Clone)]
pub(super) struct Membership {
    pub(super) roll_call: i64,
    pub(super) delivery: i64,
    pub(super) kind: ContactKind,
    pub(super) open: bool,
    pub(super) sent_at: Option<Millis>,
}

/// A roll call of the batch: whether it is open and what its buttons mean.
#[derive(Debug, Clone)]
pub(super) struct RollInfo {
    pub(super) open: bool,
    pub(super) buttons: Vec<Choice>,
    pub(super) shelter_buttons: Vec<Choice>,
}

impl RollInfo {
    /// From the stored columns; roll calls from before shelter buttons gave shelter phones
    /// the staff buttons.
    pub(super) fn parse(state: &str, buttons: &str, shelter: Option<&str>) -> StoreResult<Self> {
        let buttons: Vec<Choice> =
            serde_json::from_str(buttons).map_err(|e| corrupt("roll call buttons", e))?;
        let shelter_buttons = match shelter {
            Some(s) => serde_json::from_str(s).map_err(|e| corrupt("shelter buttons", e))?,
            None => buttons.clone(),
        };
        Ok(Self {
            open: state == "open",
            buttons,
            shelter_buttons,
        })
    }

    fn choices(&self, kind: ContactKind) -> &[Choice] {
        match kind {
            ContactKind::ShelterPhone => &self.shelter_buttons,
            ContactKind::Staff => &self.buttons,
        }
    }
}

/// The statements a backend runs for one batch, written once for both dialects. Each takes
/// the provider as `$1`, the time of receipt as `$2` and a JSON array of rows as `$3`.
pub(super) struct EventStatements {
    pub(super) insert_events: String,
    pub(super) reads: String,
    pub(super) answers: String,
    pub(super) late: String,
}

impl EventStatements {
    pub(super) fn new(d: Dialect) -> Self {
        let events = d.rows(
            3,
            &[
                ("eid", "text"),
                ("rc", "bigint"),
                ("did", "bigint"),
                ("h", "text"),
                ("k", "text"),
                ("v", "text"),
                ("at", "bigint"),
                ("lvl", "bigint"),
            ],
        );
        let reads = d.rows(3, &[("id", "bigint"), ("r", "bigint")]);
        let answers = d.rows(
            3,
            &[
                ("id", "bigint"),
                ("a", "bigint"),
                ("la", "bigint"),
                ("lv", "text"),
                ("lb", "text"),
                ("lt", "text"),
                ("ll", "bigint"),
                ("sa", "bigint"),
                ("sv", "text"),
                ("sb", "text"),
                ("st", "text"),
                ("sl", "bigint"),
                ("ua", "bigint"),
            ],
        );
        let late = d.rows(
            3,
            &[
                ("eid", "text"),
                ("rc", "bigint"),
                ("did", "bigint"),
                ("lvl", "bigint"),
                ("v", "text"),
                ("lb", "text"),
                ("t", "text"),
            ],
        );
        // `$1` and `$2` appear in every statement so both backends bind the same parameters.
        let newer = "(d.answer_at IS NULL OR j.la >= d.answer_at)";
        let read_state = state_after_sql(DeliveryEvent::Read, "d.state");
        let answer_state = state_after_sql(DeliveryEvent::Answered, "d.state");
        let graver =
            "(j.sl > d.level OR (j.sl = d.level AND (d.level_at IS NULL OR j.sa < d.level_at)))";
        // A delivery escalated by its deadline leaves `sent` here: its escalation is written
        // into its row first, so it stays on the action list as escalated (then read).
        let keep_escalation = format!(
            "escalated_at = {}, escalation_reason = {},",
            escalated_at_sql("d.", "d.roll_call_id"),
            escalation_reason_sql("d.", "d.roll_call_id")
        );
        Self {
            insert_events: format!(
                "{events} INSERT INTO events (provider, event_id, roll_call_id, delivery_id, from_handle, \
                   kind, value, occurred_at, received_at, level) \
                 SELECT $1, j.eid, j.rc, j.did, j.h, j.k, j.v, j.at, $2, j.lvl FROM j \
                 WHERE true ON CONFLICT (provider, event_id) DO NOTHING RETURNING event_id"
            ),
            reads: format!(
                "{reads} UPDATE deliveries AS d SET {keep_escalation} \
                   state = {read_state}, \
                   read_at = CASE WHEN d.read_at IS NULL OR j.r < d.read_at THEN j.r \
                                  ELSE d.read_at END \
                 FROM j \
                 WHERE d.id = j.id AND d.provider = $1 AND $2 >= 0 \
                   AND (d.state NOT IN ('read', 'answered') OR d.read_at IS NULL \
                        OR j.r < d.read_at)"
            ),
            answers: format!(
                "{answers} UPDATE deliveries AS d SET {keep_escalation} \
                   state = {answer_state}, \
                   answered_at = CASE WHEN d.answered_at IS NULL OR j.a < d.answered_at \
                                      THEN j.a ELSE d.answered_at END, \
                   answer = CASE WHEN {newer} THEN j.lv ELSE d.answer END, \
                   answer_label = CASE WHEN {newer} THEN j.lb ELSE d.answer_label END, \
                   answer_text = CASE WHEN {newer} THEN j.lt ELSE d.answer_text END, \
                   answer_level = CASE WHEN {newer} THEN j.ll ELSE d.answer_level END, \
                   answer_at = CASE WHEN {newer} THEN j.la ELSE d.answer_at END, \
                   level_value = CASE WHEN {graver} THEN j.sv ELSE d.level_value END, \
                   level_label = CASE WHEN {graver} THEN j.sb ELSE d.level_label END, \
                   level_text = CASE WHEN {graver} THEN j.st ELSE d.level_text END, \
                   level_at = CASE WHEN {graver} THEN j.sa ELSE d.level_at END, \
                   level = CASE WHEN j.sl > d.level THEN j.sl ELSE d.level END, \
                   urgent_at = CASE WHEN j.ua IS NOT NULL AND (d.urgent_at IS NULL OR j.ua > d.urgent_at) \
                                    THEN j.ua ELSE d.urgent_at END \
                 FROM j \
                 WHERE d.id = j.id AND d.provider = $1 AND $2 >= 0"
            ),
            late: format!(
                "{late} INSERT INTO late_answers (provider, event_id, roll_call_id, delivery_id, level, \
                   value, label, text, received_at) \
                 SELECT $1, j.eid, j.rc, j.did, j.lvl, j.v, j.lb, j.t, $2 FROM j \
                 WHERE true ON CONFLICT (provider, event_id) DO NOTHING"
            ),
        }
    }
}

/// What a backend reads about a batch before deciding what it means, in the batch's
/// transaction.
#[async_trait]
pub(super) trait BatchReader: Send {
    /// The deliveries of `provider` to `handles` in roll calls that are open or in `named`,
    /// and each handle's newest delivery of all.
    async fn memberships(
        &mut self,
        provider: &str,
        handles: &[String],
        named: &[i64],
    ) -> StoreResult<Vec<(String, Membership)>>;
    /// The state and buttons of these roll calls.
    async fn roll_infos(&mut self, ids: &[i64]) -> StoreResult<HashMap<i64, RollInfo>>;
    /// Runs one of [`EventStatements`]; returns the first column of any returned rows.
    async fn run(
        &mut self,
        sql: &str,
        provider: &str,
        now: Millis,
        rows: String,
    ) -> StoreResult<(u64, Vec<String>)>;
}

/// Where one event goes.
struct Placed<'e> {
    event: &'e InboundEvent,
    /// The roll call and delivery it is logged under.
    logged: Option<(i64, Option<i64>)>,
    /// The delivery it changes (an open roll call's), if any.
    target: Option<(i64, &'e str, Option<Millis>)>,
    meaning: Option<Meaning>,
    /// An urgent answer no open roll call could take: kept for HQ as a late answer.
    late: Option<(i64, i64)>,
    at: Millis,
}

/// What a batch says about one delivery.
#[derive(Default)]
struct Fold {
    first_seen: Option<Millis>,
    first_answer: Option<Millis>,
    latest: Option<(Millis, Meaning)>,
    gravest: Option<(Millis, Meaning)>,
    /// The latest urgent answer's time.
    urgent: Option<Millis>,
}

/// Logs `events` and applies them, following the module's rules, through `db`.
pub(super) async fn apply_batch(
    db: &mut dyn BatchReader,
    dialect: Dialect,
    words: &UrgentWords,
    provider: &str,
    events: &[InboundEvent],
    now: Millis,
) -> StoreResult<ApplySummary> {
    let mut summary = ApplySummary::default();
    if events.is_empty() {
        return Ok(summary);
    }
    let handles: Vec<String> = events
        .iter()
        .map(|e| e.from.to_string())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let named: Vec<i64> = events
        .iter()
        .filter_map(|e| e.roll_call_id.map(|r| r.0))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // handle -> memberships, newest roll call first.
    let mut by_handle: HashMap<String, Vec<Membership>> = HashMap::new();
    for (h, m) in db.memberships(provider, &handles, &named).await? {
        by_handle.entry(h).or_default().push(m);
    }
    for v in by_handle.values_mut() {
        v.sort_by_key(|m| std::cmp::Reverse(m.roll_call));
        v.dedup_by_key(|m| m.roll_call);
    }
    let mut ids: Vec<i64> = by_handle
        .values()
        .flatten()
        .map(|m| m.roll_call)
        .chain(named.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let infos = db.roll_infos(&ids).await?;

    let placed: Vec<Placed> = events
        .iter()
        .map(|e| place(e, &by_handle, &infos, words, now))
        .collect();

    let rows: Vec<serde_json::Value> = placed
        .iter()
        .map(|p| {
            let (kind, value) = kind_parts(&p.event.kind);
            json!({
                "eid": storable(&p.event.event_id), "rc": p.logged.map(|l| l.0), "did": p.logged.and_then(|l| l.1),
                "h": p.event.from.as_str(), "k": kind, "v": value,
                "at": p.event.occurred_at.timestamp_millis(),
                "lvl": p.meaning.as_ref().map(|m| m.level.rank()),
            })
        })
        .collect();
    let st = EventStatements::new(dialect);
    let (_, fresh) = db
        .run(&st.insert_events, provider, now, json!(rows).to_string())
        .await?;
    summary.logged = fresh.len() as u64;
    // Ids as stored (see `storable`), so an id the database had to change still matches.
    let fresh: HashSet<String> = fresh.into_iter().collect();
    let is_fresh = |e: &InboundEvent| fresh.contains(&storable(&e.event_id));

    let mut folded: BTreeMap<i64, Fold> = BTreeMap::new();
    let mut late = Vec::new();
    for p in placed.iter().filter(|p| is_fresh(p.event)) {
        if let (Some((rc, did)), Some(m)) = (p.late, &p.meaning) {
            late.push(json!({
                "eid": storable(&p.event.event_id), "rc": rc, "did": did, "lvl": m.level.rank(),
                "v": storable(&m.value), "lb": storable(&m.label), "t": m.text.as_deref().map(storable),
            }));
        }
        let Some((delivery, _, _)) = p.target else {
            continue;
        };
        let f = folded.entry(delivery).or_default();
        f.first_seen = Some(f.first_seen.map_or(p.at, |t| t.min(p.at)));
        if let Some(m) = &p.meaning {
            f.first_answer = Some(f.first_answer.map_or(p.at, |t| t.min(p.at)));
            if f.latest.as_ref().is_none_or(|(t, _)| p.at >= *t) {
                f.latest = Some((p.at, m.clone()));
            }
            let graver = f
                .gravest
                .as_ref()
                .is_none_or(|(t, g)| m.level > g.level || (m.level == g.level && p.at < *t));
            if graver {
                f.gravest = Some((p.at, m.clone()));
            }
            if m.level == AnswerLevel::Urgent {
                f.urgent = Some(f.urgent.map_or(p.at, |t| t.max(p.at)));
            }
        }
    }
    if !folded.is_empty() {
        let reads: Vec<_> = folded
            .iter()
            .map(|(id, f)| json!({"id": id, "r": f.first_seen}))
            .collect();
        summary.read = db
            .run(&st.reads, provider, now, json!(reads).to_string())
            .await?
            .0;
        let answers: Vec<_> = folded
            .iter()
            .filter_map(|(id, f)| {
                let (la, l) = f.latest.as_ref()?;
                let (sa, s) = f.gravest.as_ref()?;
                Some(json!({
                    "id": id, "a": f.first_answer,
                    "la": la, "lv": storable(&l.value), "lb": storable(&l.label),
                    "lt": l.text.as_deref().map(storable), "ll": l.level.rank(),
                    "sa": sa, "sv": storable(&s.value), "sb": storable(&s.label),
                    "st": s.text.as_deref().map(storable), "sl": s.level.rank(),
                    // Received now: compared with HQ's outcome times (same clock), so an urgent
                    // answer that reaches anpi after HQ closed the entry opens it again.
                    "ua": f.urgent.map(|_| now),
                }))
            })
            .collect();
        if !answers.is_empty() {
            summary.answered = db
                .run(&st.answers, provider, now, json!(answers).to_string())
                .await?
                .0;
        }
    }
    if !late.is_empty() {
        summary.late = db
            .run(&st.late, provider, now, json!(late).to_string())
            .await?
            .0;
    }
    summary.urgent = placed
        .iter()
        .filter(|p| is_fresh(p.event))
        .filter(|p| {
            p.meaning
                .as_ref()
                .is_some_and(|m| m.level == AnswerLevel::Urgent)
        })
        .count() as u64;
    Ok(summary)
}

/// Decides where one event goes and what it means (see the module's rules).
fn place<'e>(
    e: &'e InboundEvent,
    by_handle: &HashMap<String, Vec<Membership>>,
    infos: &HashMap<i64, RollInfo>,
    words: &UrgentWords,
    now: Millis,
) -> Placed<'e> {
    let memberships = by_handle
        .get(e.from.as_str())
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let newest_open = memberships.iter().find(|m| m.open);
    // The roll call the event speaks for, and the person's delivery in it.
    let own: Option<(i64, Option<&Membership>)> = match e.roll_call_id {
        Some(rc) => Some((rc.0, memberships.iter().find(|m| m.roll_call == rc.0))),
        None => newest_open
            .or_else(|| memberships.first())
            .map(|m| (m.roll_call, Some(m))),
    };
    let meaning = |m: Option<&Membership>, rc: i64| -> Option<Meaning> {
        let choices = match (m, infos.get(&rc)) {
            (Some(m), Some(info)) => info.choices(m.kind),
            _ => &[],
        };
        match &e.kind {
            InboundKind::Read => None,
            InboundKind::Answer { value } => Some(Meaning::of_button(value, choices, words)),
            InboundKind::Reply { text } => Some(Meaning::of_text(text, words)),
            InboundKind::Sticker { .. } => Some(Meaning::sticker()),
        }
    };
    let occurred = e.occurred_at.timestamp_millis().min(now);
    let clamp = |m: &Membership| m.sent_at.map_or(occurred, |s| occurred.max(s));
    let Some((rc, m)) = own else {
        return Placed {
            event: e,
            logged: None,
            target: None,
            meaning: meaning(None, 0),
            late: None,
            at: occurred,
        };
    };
    let meaning = meaning(m, rc);
    let open = infos.get(&rc).is_some_and(|i| i.open);
    let logged = Some((rc, m.map(|m| m.delivery)));
    let urgent = meaning
        .as_ref()
        .is_some_and(|x| x.level == AnswerLevel::Urgent);
    let Some(m) = m else {
        // Not a recipient of the roll call it names: kept in the record only, unless it asks
        // for help, which reaches HQ as from a closed roll call (below).
        let Some(any) = memberships.first().filter(|_| urgent) else {
            return Placed {
                event: e,
                logged,
                target: None,
                meaning,
                late: None,
                at: occurred,
            };
        };
        return match newest_open {
            Some(o) => Placed {
                event: e,
                logged,
                target: Some((o.delivery, e.from.as_str(), o.sent_at)),
                meaning,
                late: None,
                at: clamp(o),
            },
            None => Placed {
                event: e,
                logged,
                target: None,
                meaning,
                late: Some((any.roll_call, any.delivery)),
                at: occurred,
            },
        };
    };
    if open {
        return Placed {
            event: e,
            logged,
            target: Some((m.delivery, e.from.as_str(), m.sent_at)),
            meaning,
            late: None,
            at: clamp(m),
        };
    }
    // A closed roll call never changes. An urgent answer still reaches HQ: on the person's
    // newest open roll call, or kept as a late answer when they are in none.
    if urgent {
        if let Some(o) = newest_open {
            return Placed {
                event: e,
                logged,
                target: Some((o.delivery, e.from.as_str(), o.sent_at)),
                meaning,
                late: None,
                at: clamp(o),
            };
        }
    }
    Placed {
        event: e,
        logged,
        target: None,
        late: urgent.then_some((rc, m.delivery)),
        meaning,
        at: occurred,
    }
}

/// How an event is written in the log: its kind and its value.
pub(super) fn kind_parts(kind: &InboundKind) -> (&'static str, Option<String>) {
    match kind {
        InboundKind::Read => ("read", None),
        InboundKind::Answer { value } => ("answer", Some(storable(value))),
        InboundKind::Reply { text } => ("reply", Some(storable(text))),
        InboundKind::Sticker { id } => ("sticker", Some(storable(id))),
    }
}

/// Text from outside as a database can keep it: a NUL, which PostgreSQL refuses in text and
/// which would stop the whole batch (and every batch after it) from being stored, becomes
/// U+FFFD. Everything else is kept as the person wrote it.
pub(super) fn storable(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s.to_string()
    }
}

// ---- HQ's calls and notes, searches, late answers, re-sends ------------------------------

/// Logs a call outcome or a note: `$1` event id, `$2` roll call, `$3` delivery, `$4` chat id
/// (or staff id), `$5` kind, `$6` value, `$7` time.
pub(super) const CALL_EVENT_SQL: &str = "INSERT INTO events (provider, event_id, roll_call_id, \
    delivery_id, from_handle, kind, value, occurred_at, received_at) \
    VALUES ('phone', $1, $2, $3, $4, $5, $6, $7, $7)";

/// A unique id for one of HQ's call records.
pub(super) fn call_event_id(delivery: i64, now: Millis, by: &str) -> String {
    let salt: u32 = rand::random();
    format!("call-{delivery}-{now}-{by}-{salt:08x}")
}

pub(super) fn call_event_kind(outcome: Option<CallOutcome>) -> &'static str {
    if outcome.is_some() {
        "call_outcome"
    } else {
        "note"
    }
}

/// What the log says of a call record: "reached_safe by caller#1/受付2: 自宅で無事".
pub(super) fn call_event_value(
    outcome: Option<CallOutcome>,
    note: Option<&str>,
    by: &str,
) -> String {
    let what = outcome.map_or("note", CallOutcome::as_str);
    match note {
        Some(n) => format!("{what} by {by}: {n}"),
        None => format!("{what} by {by}"),
    }
}

/// Every recipient of roll call `$1`, for a caller's search.
pub(super) const RECIPIENTS_SQL: &str = "SELECT staff_id, name, kana, role, department, shelter, \
    kind, phones, state FROM deliveries WHERE roll_call_id = $1";

pub(super) fn recipient_from_row<R>(r: &R) -> StoreResult<crate::rollcall::Recipient>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
{
    let staff: String = get(r, 0)?;
    let kind: String = get(r, 6)?;
    let (phones, phones_national) = decode_phones(&get::<R, String>(r, 7)?)?;
    let state: String = get(r, 8)?;
    Ok(crate::rollcall::Recipient {
        staff_id: StaffId::parse(&staff).map_err(|e| corrupt("staff id", e))?,
        name: get(r, 1)?,
        kana: get(r, 2)?,
        role: get(r, 3)?,
        department: get(r, 4)?,
        shelter: get(r, 5)?,
        kind: parse_kind(&kind)?,
        phones,
        phones_national,
        state: DeliveryState::from_str(&state).map_err(|e| corrupt("state", e))?,
    })
}

/// Late answers, oldest first; `$1` = 1 for only those HQ has not closed.
pub(super) const LATE_ANSWERS_SQL: &str = "SELECT l.id, l.roll_call_id, d.staff_id, d.name, \
    d.kana, d.department, d.shelter, d.phones, l.level, l.value, l.label, l.text, \
    l.received_at, l.closed_at, l.closed_by, l.note \
    FROM late_answers AS l JOIN deliveries AS d ON d.id = l.delivery_id \
    WHERE ($1 = 0 OR l.closed_at IS NULL) ORDER BY l.received_at, l.id";

pub(super) fn late_from_row<R>(r: &R) -> StoreResult<crate::rollcall::LateAnswer>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
{
    let staff: String = get(r, 2)?;
    let (phones, phones_national) = decode_phones(&get::<R, String>(r, 7)?)?;
    let level: i64 = get(r, 8)?;
    Ok(crate::rollcall::LateAnswer {
        id: get(r, 0)?,
        roll_call_id: crate::ids::RollCallId(get(r, 1)?),
        staff_id: StaffId::parse(&staff).map_err(|e| corrupt("staff id", e))?,
        name: get(r, 3)?,
        kana: get(r, 4)?,
        department: get(r, 5)?,
        shelter: get(r, 6)?,
        phones,
        phones_national,
        answer: GivenAnswer {
            level: AnswerLevel::from_rank(level).ok_or_else(|| corrupt("level", level))?,
            value: get(r, 9)?,
            label: get(r, 10)?,
            text: get(r, 11)?,
            at: get(r, 12)?,
        },
        closed_at: get(r, 13)?,
        closed_by: get(r, 14)?,
        note: get(r, 15)?,
    })
}

/// HQ closes late answer `$1` at `$2`, by `$3`, with note `$4`.
pub(super) const CLOSE_LATE_SQL: &str = "UPDATE late_answers SET closed_at = $2, closed_by = $3, \
    note = $4 WHERE id = $1 AND closed_at IS NULL";

/// Open urgent entries of open roll calls, plus open late answers.
pub(super) fn urgent_open_sql() -> String {
    format!(
        "SELECT (SELECT COUNT(*) FROM deliveries WHERE level = 3 AND {URGENT_OPEN} \
                   AND roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open')) \
              + (SELECT COUNT(*) FROM late_answers WHERE closed_at IS NULL)"
    )
}

/// The call queue's claim: `$1` roll call, `$2` caller, `$3` hold until, `$4` now. Both kinds
/// of open entry are on the action list, said again so that the planner reads only the list's
/// indexes (a claim with nobody to call touches no other row).
pub(super) fn claim_next_call_sql(d: Dialect) -> String {
    // Two callers on two replicas asking at once get two different people.
    let lock = d.skip_locked();
    format!(
        "UPDATE deliveries SET call_claimed_by = $2, call_claimed_until = $3 \
         WHERE id = ( \
           SELECT id FROM deliveries \
           WHERE id IN ({on_list}) AND ({URGENT_OPEN} OR {eo}) \
             AND (call_claimed_until IS NULL OR call_claimed_until <= $4 OR call_claimed_by = $2) \
             AND roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open') \
           ORDER BY {} LIMIT 1 {lock}) \
         RETURNING {ENTRY_COLUMNS}",
        d.queue_order(),
        on_list = action_list_ids(),
        eo = escalated_open()
    )
}

/// Claims due re-sends: `$1` lease until, `$2` provider, `$3` now, `$4` limit.
pub(super) fn claim_resends_sql(d: Dialect) -> String {
    let lock = d.skip_locked();
    // Walks the re-send index in due order.
    let (p, r) = (d.not_indexed("provider"), d.not_indexed("roll_call_id"));
    format!(
        "UPDATE deliveries SET resend_lease = $1 \
         WHERE id IN (SELECT id FROM deliveries \
           WHERE resend_at IS NOT NULL AND resent_at IS NULL AND resend_at <= $3 \
             AND {p} = $2 AND state = 'sent' \
             AND (resend_lease IS NULL OR resend_lease <= $3) \
             AND {r} IN (SELECT id FROM roll_calls WHERE state = 'open') \
           ORDER BY resend_at LIMIT $4 {lock}) \
         RETURNING id, roll_call_id, chat_handle, attempts, kind"
    )
}

/// When provider `$1`'s next re-send falls due (or its claim lapses): the earliest unclaimed
/// re-send and the earliest lapse of a claim, each the first entry of its own index, so the
/// answer costs two index probes however many messages wait.
pub(super) fn next_resend_sql(d: Dialect) -> String {
    // On the re-send indexes, not the provider's or the roll call's, which would visit
    // every delivery.
    let (p, r) = (d.not_indexed("provider"), d.not_indexed("roll_call_id"));
    let waiting = format!(
        "resent_at IS NULL AND state = 'sent' AND {p} = $1 \
         AND {r} IN (SELECT id FROM roll_calls WHERE state = 'open')"
    );
    format!(
        "SELECT MIN(t) AS t FROM ( \
           SELECT (SELECT resend_at FROM deliveries \
                   WHERE resend_at IS NOT NULL AND {waiting} \
                     AND (resend_lease IS NULL OR resend_lease <= resend_at) \
                   ORDER BY resend_at LIMIT 1) AS t \
           UNION ALL \
           SELECT (SELECT resend_lease FROM deliveries \
                   WHERE resend_lease IS NOT NULL AND {waiting} \
                     AND resend_at IS NOT NULL AND resend_lease > resend_at \
                   ORDER BY resend_lease LIMIT 1) AS t) AS due"
    )
}

/// Re-send results as a JSON array for [`record_resends_sql`].
pub(super) fn resend_rows(results: &[super::ResendResult]) -> String {
    use super::ResendResult as R;
    let rows: Vec<_> = results
        .iter()
        .map(|r| match r {
            R::Sent { id, at } => json!({"id": id, "k": "sent", "at": at}),
            R::Retry { id, next, error } => {
                json!({"id": id, "k": "retry", "nx": next, "err": format!("re-send: {error}")})
            }
            R::Failed { id, error } => {
                json!({"id": id, "k": "failed", "err": format!("re-send: {error}")})
            }
        })
        .collect();
    if rows.is_empty() {
        String::new()
    } else {
        json!(rows).to_string()
    }
}

/// Records re-send results given as `$1`.
pub(super) fn record_resends_sql(d: Dialect) -> String {
    let rows = d.rows(
        1,
        &[
            ("id", "bigint"),
            ("k", "text"),
            ("at", "bigint"),
            ("nx", "bigint"),
            ("err", "text"),
        ],
    );
    format!(
        "{rows} UPDATE deliveries AS d SET \
           resent_at = CASE WHEN j.k = 'sent' THEN j.at ELSE d.resent_at END, \
           resend_at = CASE WHEN j.k = 'retry' THEN j.nx WHEN j.k = 'failed' THEN NULL \
                            ELSE d.resend_at END, \
           resend_lease = NULL, \
           last_error = CASE WHEN j.k = 'sent' THEN d.last_error ELSE j.err END \
         FROM j WHERE d.id = j.id"
    )
}

/// Everyone of roll call `$1` whose standing answer has level `$2`, newest first.
pub(super) fn answered_sql() -> String {
    format!(
        "SELECT {ENTRY_COLUMNS} FROM deliveries WHERE roll_call_id = $1 AND level = $2 \
         ORDER BY level_at DESC, id"
    )
}

// ---- The mail outbox -------------------------------------------------------------------

/// The outbox columns every mail query returns, in the order each backend decodes them.
pub(super) const MAIL_COLUMNS: &str =
    "id, kind, dedupe_key, roll_call_id, recipients, subject, body, csv_name, csv, meta, \
     state, attempts, next_attempt_at, lease_until, last_error, created_at, sent_at";

/// An attempt's outcome as (state, next attempt, error, sent at).
pub(super) fn mail_outcome_columns(
    outcome: &MailOutcome,
    now: Millis,
) -> (&'static str, Option<Millis>, Option<String>, Option<Millis>) {
    match outcome {
        MailOutcome::Sent => ("sent", None, None, Some(now)),
        MailOutcome::Retry { at, error } => ("pending", Some(*at), Some(error.clone()), None),
        MailOutcome::Failed { error } => ("failed", None, Some(error.clone()), None),
    }
}

/// Finishes a claimed mail's attempt: `$1` id, `$2` the claim's lease, `$3` state, `$4` next
/// attempt, `$5` error, `$6` sent at.
pub(super) const FINISH_MAIL_SQL: &str = "UPDATE mail_outbox SET state = $3, lease_until = NULL, \
    next_attempt_at = COALESCE($4, next_attempt_at), last_error = $5, \
    sent_at = COALESCE($6, sent_at) \
    WHERE id = $1 AND state = 'sending' AND lease_until = $2";

/// Queues a mail unless its dedupe key is stored: `$1`..`$9` the mail, `$10` due (wall
/// clock), `$11` now.
pub(super) const ENQUEUE_MAIL_SQL: &str = "INSERT INTO mail_outbox (kind, dedupe_key, \
    roll_call_id, recipients, subject, body, csv_name, csv, meta, state, attempts, \
    next_attempt_at, created_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $11) \
    ON CONFLICT (dedupe_key) DO NOTHING";

/// Claims the next due mail until `$1` at wall time `$2`.
pub(super) fn claim_mail_sql(d: Dialect) -> String {
    format!(
        "UPDATE mail_outbox SET state = 'sending', lease_until = $1, attempts = attempts + 1 \
         WHERE id = (SELECT id FROM mail_outbox \
           WHERE (state = 'pending' AND next_attempt_at <= $2) \
              OR (state = 'sending' AND lease_until <= $2) \
           ORDER BY next_attempt_at, id LIMIT 1 {}) \
         RETURNING {MAIL_COLUMNS}",
        d.skip_locked()
    )
}

/// Roll call `$1`'s mails, or all with NULL, oldest first.
pub(super) fn mails_sql() -> String {
    format!(
        "SELECT {MAIL_COLUMNS} FROM mail_outbox \
         WHERE CAST($1 AS BIGINT) IS NULL OR roll_call_id = $1 ORDER BY id"
    )
}

/// The mail with dedupe key `$1`.
pub(super) fn mail_by_key_sql() -> String {
    format!("SELECT {MAIL_COLUMNS} FROM mail_outbox WHERE dedupe_key = $1")
}

/// When the next pending mail is due or a claim lapses.
pub(super) fn next_mail_due_sql(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "SELECT MIN(t) FROM ( \
               SELECT MIN(next_attempt_at) AS t FROM mail_outbox WHERE state = 'pending' \
               UNION ALL \
               SELECT MIN(lease_until) AS t FROM mail_outbox WHERE state = 'sending')"
        }
        Dialect::Postgres => {
            "SELECT LEAST( \
               (SELECT MIN(next_attempt_at) FROM mail_outbox WHERE state = 'pending'), \
               (SELECT MIN(lease_until) FROM mail_outbox WHERE state = 'sending'))"
        }
    }
}

/// A stored mail from a row of [`MAIL_COLUMNS`], on either backend.
pub(super) fn mail_from_row<R>(r: &R) -> StoreResult<StoredMail>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<Vec<u8>>: Decode<'a, R::Database> + Type<R::Database>,
{
    let to: String = r.try_get("recipients")?;
    let state: String = r.try_get("state")?;
    let csv_name: Option<String> = r.try_get("csv_name")?;
    let csv: Option<Vec<u8>> = r.try_get("csv")?;
    Ok(StoredMail {
        id: r.try_get("id")?,
        mail: NewMail {
            kind: r.try_get("kind")?,
            dedupe_key: r.try_get("dedupe_key")?,
            roll_call_id: r.try_get::<Option<i64>, _>("roll_call_id")?.map(RollCallId),
            to: serde_json::from_str(&to).map_err(|e| corrupt("mail recipients", e))?,
            subject: r.try_get("subject")?,
            body: r.try_get("body")?,
            csv: csv_name.zip(csv),
            meta: r.try_get("meta")?,
        },
        state: MailState::parse(&state).ok_or_else(|| corrupt("mail state", &state))?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        lease_until: r.try_get("lease_until")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}

// ---- Roll calls, the event log, leases and small state ----------------------------------

pub(super) const ROLL_CALL_BY_ID: &str = "SELECT * FROM roll_calls WHERE id = $1";
pub(super) const ROLL_CALL_BY_KEY: &str = "SELECT * FROM roll_calls WHERE idempotency_key = $1";
pub(super) const ROLL_CALLS: &str = "SELECT * FROM roll_calls ORDER BY id DESC";
pub(super) const ROLL_CALL_EXISTS: &str = "SELECT 1 FROM roll_calls WHERE id = $1";

/// Writes new deliveries, one a row of a relation `(s, n, d, sh, k, p, ph, e, h, ka, ro)` (staff
/// id, name, department, shelter, kind, call priority, phones, e-mail, chat handle, ふりがな,
/// role) joined with the roll call's `(rc, pr, nw)` (id, provider, now); the backend appends
/// the `FROM` that binds them. Who has no chat id on the provider is failed and on the call
/// list at once; everyone else waits to be sent.
pub(super) const INSERT_DELIVERIES: &str = "INSERT INTO deliveries (roll_call_id, staff_id, \
    name, department, shelter, kind, call_priority, phones, email, provider, chat_handle, state, \
    next_attempt_at, last_error, escalated_at, escalation_reason, kana, role) \
    SELECT rc, s, n, d, sh, k, p, ph, e, pr, h, \
      CASE WHEN h IS NULL THEN 'failed' ELSE 'pending' END, nw, \
      CASE WHEN h IS NULL THEN 'no chat id on ' || pr END, \
      CASE WHEN h IS NULL THEN nw END, \
      CASE WHEN h IS NULL THEN 'no_chat_id' END, ka, ro ";

/// A new open roll call (`$1`..`$15`); no row when its idempotency key is taken.
pub(super) const INSERT_ROLL_CALL: &str = "INSERT INTO roll_calls (scenario, title, message, \
    buttons, drill, deadline_ms, provider, state, created_at, recipients, idempotency_key, \
    shelter_buttons, resend_after_ms, asks, dispatch_plan, mail_plan) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9, $10, $11, $12, $13, $14, $15) \
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING id";

/// A roll call from `SELECT * FROM roll_calls`, on either backend.
pub(super) fn roll_call_from_row<R>(r: &R) -> StoreResult<RollCall>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> bool: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
{
    let buttons: String = r.try_get("buttons")?;
    let shelter_buttons: Option<String> = r.try_get("shelter_buttons")?;
    let state: String = r.try_get("state")?;
    let info = RollInfo::parse(&state, &buttons, shelter_buttons.as_deref())?;
    Ok(RollCall {
        id: RollCallId(r.try_get("id")?),
        scenario: r.try_get("scenario")?,
        title: r.try_get("title")?,
        message: r.try_get("message")?,
        buttons: info.buttons,
        shelter_buttons: info.shelter_buttons,
        resend_after_ms: r.try_get("resend_after_ms")?,
        // An integer on SQLite, a boolean on PostgreSQL: both decode as `bool`.
        drill: r.try_get("drill")?,
        deadline_ms: r.try_get("deadline_ms")?,
        provider: r.try_get("provider")?,
        state: if state == "closed" {
            RollCallState::Closed
        } else {
            RollCallState::Open
        },
        created_at: r.try_get("created_at")?,
        closed_at: r.try_get("closed_at")?,
        recipients: r.try_get("recipients")?,
        asks: match r.try_get::<Option<String>, _>("asks")? {
            Some(a) => serde_json::from_str(&a).map_err(|e| corrupt("roll call asks", e))?,
            None => Default::default(),
        },
        dispatch_plan: r.try_get("dispatch_plan")?,
        mail_plan: r.try_get("mail_plan")?,
    })
}

/// A claimed delivery from `RETURNING id, roll_call_id, chat_handle, attempts, kind`.
pub(super) fn claimed_from_row<R>(r: &R, lease_until: Millis) -> StoreResult<ClaimedDelivery>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
{
    let handle: Option<String> = r.try_get("chat_handle")?;
    let handle = handle.ok_or_else(|| corrupt("claimed delivery", "no chat id"))?;
    let kind: String = r.try_get("kind")?;
    Ok(ClaimedDelivery {
        id: r.try_get("id")?,
        roll_call_id: RollCallId(r.try_get("roll_call_id")?),
        chat_handle: ChatHandle::parse(&handle).map_err(|e| corrupt("chat id", e))?,
        attempts: r.try_get("attempts")?,
        kind: parse_kind(&kind)?,
        lease_until,
    })
}

/// Every recipient of roll call `$1` with a chat id, for [`chat_recipient_from_row`].
pub(super) const CHAT_RECIPIENTS_SQL: &str =
    "SELECT id, staff_id, kind, call_priority, department, shelter, chat_handle, state \
     FROM deliveries WHERE roll_call_id = $1 AND chat_handle IS NOT NULL";

/// A [`ChatRecipient`] from a row of [`CHAT_RECIPIENTS_SQL`].
pub(super) fn chat_recipient_from_row<R>(r: &R) -> StoreResult<ChatRecipient>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
{
    let staff: String = get(r, 1)?;
    let kind: String = get(r, 2)?;
    let handle: String = get(r, 6)?;
    let state: String = get(r, 7)?;
    Ok(ChatRecipient {
        delivery_id: get(r, 0)?,
        staff_id: StaffId::parse(&staff).map_err(|e| corrupt("staff id", e))?,
        kind: parse_kind(&kind)?,
        call_priority: get::<R, i64>(r, 3)?.clamp(0, 255) as u8,
        department: get(r, 4)?,
        shelter: get(r, 5)?,
        chat_handle: ChatHandle::parse(&handle).map_err(|e| corrupt("chat handle", e))?,
        state: DeliveryState::from_str(&state).map_err(|e| corrupt("state", e))?,
    })
}

/// A membership from `SELECT d.chat_handle, d.roll_call_id, d.id, d.kind, d.sent_at,
/// r.state` (see [`BatchReader::memberships`]).
pub(super) fn membership_from_row<R>(r: &R) -> StoreResult<(String, Membership)>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
{
    let kind: String = get(r, 3)?;
    let state: String = get(r, 5)?;
    Ok((
        get(r, 0)?,
        Membership {
            roll_call: get(r, 1)?,
            delivery: get(r, 2)?,
            kind: parse_kind(&kind)?,
            sent_at: get(r, 4)?,
            open: state == "open",
        },
    ))
}

/// A roll call's state and buttons from `SELECT id, state, buttons, shelter_buttons`.
pub(super) fn roll_info_from_row<R>(r: &R) -> StoreResult<(i64, RollInfo)>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
{
    let state: String = get(r, 1)?;
    let buttons: String = get(r, 2)?;
    let shelter: Option<String> = get(r, 3)?;
    Ok((
        get(r, 0)?,
        RollInfo::parse(&state, &buttons, shelter.as_deref())?,
    ))
}

/// Stores provider `$1`'s feed cursor `$2` at `$3`.
pub(super) const SET_CURSOR: &str = "INSERT INTO provider_cursors (provider, cursor, updated_at) \
    VALUES ($1, $2, $3) ON CONFLICT (provider) DO UPDATE SET \
    cursor = excluded.cursor, updated_at = excluded.updated_at";
pub(super) const CURSOR: &str = "SELECT cursor FROM provider_cursors WHERE provider = $1";

/// Roll call `$1`'s event log, oldest first, at most `$2`.
pub(super) const EVENTS_SQL: &str = "SELECT id, provider, event_id, roll_call_id, delivery_id, \
    from_handle, kind, value, occurred_at, received_at \
    FROM events WHERE roll_call_id = $1 ORDER BY id LIMIT $2";

/// A logged event from a row of [`EVENTS_SQL`].
pub(super) fn event_from_row<R>(r: &R) -> StoreResult<LoggedEvent>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
{
    Ok(LoggedEvent {
        id: r.try_get("id")?,
        provider: r.try_get("provider")?,
        event_id: r.try_get("event_id")?,
        roll_call_id: r.try_get("roll_call_id")?,
        delivery_id: r.try_get("delivery_id")?,
        from: r.try_get("from_handle")?,
        kind: r.try_get("kind")?,
        value: r.try_get("value")?,
        occurred_at: r.try_get("occurred_at")?,
        received_at: r.try_get("received_at")?,
    })
}

/// When provider `$1`'s next pending delivery is due or a claim lapses, as `t`: the first
/// entry of each state's range of the due index. Not an aggregate over the ranges: while a
/// roll call goes out, PostgreSQL's statistics are of a smaller table, and with them it
/// counted every pending row for a `MIN`.
pub(super) fn next_due_sql() -> &'static str {
    "SELECT MIN(t) AS t FROM ( \
       SELECT (SELECT next_attempt_at FROM deliveries WHERE provider = $1 AND state = 'pending' \
               ORDER BY next_attempt_at LIMIT 1) AS t \
       UNION ALL \
       SELECT (SELECT next_attempt_at FROM deliveries WHERE provider = $1 AND state = 'sending' \
               ORDER BY next_attempt_at LIMIT 1) AS t) AS due"
}

/// Sent, unread, not yet escalated deliveries `d` of open roll call `r` whose deadline is
/// past the roll call's mark and `cond`: one range of the deadline index per roll call.
fn after_mark(cond: &str) -> String {
    format!(
        "d.roll_call_id = r.id AND d.state = 'sent' AND d.escalated_at IS NULL \
         AND d.deadline_at > {} AND {cond}",
        mark_of("r.id")
    )
}

/// The earliest deadline still to escalate, as `t` (NULL when there is none): of each open
/// roll call, the first entry of the deadline index past its mark, not a `MIN` over every
/// sent row (asked after every batch sent).
pub(super) fn next_deadline_sql() -> String {
    format!(
        "SELECT MIN(t) AS t FROM ( \
           SELECT (SELECT d.deadline_at FROM deliveries d WHERE {} \
                   ORDER BY d.deadline_at LIMIT 1) AS t \
           FROM roll_calls r WHERE r.state = 'open') AS o",
        after_mark("d.deadline_at IS NOT NULL")
    )
}

/// How many deliveries of open roll calls a mark at `$1` escalates.
pub(super) fn count_escalating_sql() -> String {
    format!(
        "SELECT CAST(COALESCE(SUM( \
           (SELECT COUNT(*) FROM deliveries d WHERE {})), 0) AS BIGINT) \
         FROM roll_calls r WHERE r.state = 'open'",
        after_mark("d.deadline_at <= $1")
    )
}

/// Escalates, at `$1`, every sent, unread delivery of an open roll call whose deadline passed:
/// one mark per open roll call not yet marked that far ([`past_deadline`] reads it).
pub(super) fn escalate_due_sql() -> String {
    format!(
        "INSERT INTO escalation_marks (roll_call_id, through) \
         SELECT r.id, $1 FROM roll_calls r WHERE r.state = 'open' AND {} < $1 \
         ON CONFLICT (roll_call_id, through) DO NOTHING",
        mark_of("r.id")
    )
}

/// Roll call `$1`'s action list with its marks up to `$2` ([`Marks::latest`]), unsorted (it
/// is sorted in Rust by
/// [`CallListEntry::call_order`]: a database sorting 100,000 wide rows spills them to disk,
/// and SQLite copies them into a temporary b-tree first). Two disjoint ranges, each on its
/// index: the entries on the list by their row, and those escalated only by the deadline.
pub(super) fn call_list_sql() -> String {
    format!(
        "SELECT {ENTRY_COLUMNS} FROM deliveries WHERE roll_call_id = $1 AND {ON_ACTION_LIST_ROW} \
         UNION ALL \
         SELECT {ENTRY_COLUMNS} FROM deliveries WHERE roll_call_id = $1 AND {} \
           AND NOT {ON_ACTION_LIST_ROW}",
        past_deadline("", "$2")
    )
}

/// Roll call `$1`'s entry of staff `$2`.
pub(super) fn entry_sql() -> String {
    format!("SELECT {ENTRY_COLUMNS} FROM deliveries WHERE roll_call_id = $1 AND staff_id = $2")
}

/// A note as stored in a delivery's `notes` array.
pub(super) fn note_json(note: Option<&str>, by: &str, now: Millis) -> StoreResult<Option<String>> {
    note.map(|n| {
        serde_json::to_string(&Note {
            at: now,
            by: by.to_string(),
            text: n.to_string(),
        })
    })
    .transpose()
    .map_err(|e| corrupt("note", e))
}

/// Records a call: `$1` roll call, `$2` staff, `$3` outcome, `$4` now, `$5` by, `$6` the
/// note as JSON. With an outcome, [`OUTCOME_GUARD`] applies; unless `after_close`, only on an
/// open roll call. Returns the entry and its chat id.
pub(super) fn record_call_sql(d: Dialect, with_outcome: bool, after_close: bool) -> String {
    let (set, guard) = if with_outcome {
        (
            "outcome = $3, outcome_at = $4, outcome_by = $5, \
             call_claimed_by = NULL, call_claimed_until = NULL,",
            OUTCOME_GUARD,
        )
    } else {
        ("", "")
    };
    let open = if after_close {
        ""
    } else {
        "AND roll_call_id IN (SELECT id FROM roll_calls WHERE state = 'open')"
    };
    // Every parameter appears in every form of the statement, so both backends bind the
    // same six; PostgreSQL needs their types said where nothing else tells them.
    let (notes, params) = match d {
        Dialect::Sqlite => (
            "CASE WHEN $6 IS NULL THEN notes \
                  ELSE json_insert(COALESCE(notes, '[]'), '$[#]', json($6)) END",
            "COALESCE($3, '') = COALESCE($3, '') AND $4 = $4 AND $5 = $5",
        ),
        Dialect::Postgres => (
            "CASE WHEN $6::text IS NULL THEN notes \
                  ELSE (COALESCE(notes::jsonb, '[]'::jsonb) || jsonb_build_array($6::jsonb))::text END",
            "COALESCE($3::text, '') = COALESCE($3::text, '') AND $4::bigint = $4::bigint \
             AND $5::text = $5::text",
        ),
    };
    format!(
        "UPDATE deliveries SET {set} notes = {notes} \
         WHERE roll_call_id = $1 AND staff_id = $2 {guard} {open} AND {params} \
         RETURNING {ENTRY_COLUMNS}, chat_handle"
    )
}

/// Lets go of caller `$3`'s hold on staff `$2` of roll call `$1`.
pub(super) const RELEASE_CALL_SQL: &str = "UPDATE deliveries SET call_claimed_by = NULL, \
    call_claimed_until = NULL WHERE roll_call_id = $1 AND staff_id = $2 AND call_claimed_by = $3";

pub(super) const PROVIDER_STATE_SQL: &str =
    "SELECT value FROM provider_state WHERE provider = $1 AND key = $2";
pub(super) const SET_PROVIDER_STATE_SQL: &str = "INSERT INTO provider_state (provider, key, \
    value, updated_at) VALUES ($1, $2, $3, $4) \
    ON CONFLICT (provider, key) DO UPDATE SET value = excluded.value, \
    updated_at = excluded.updated_at";

/// Takes lease `$1` for `$2` until `$3` if it is free, expired at `$4`, or already `$2`'s.
/// One statement: concurrent callers are serialised on the row; exactly one of them finds it
/// free or expired.
pub(super) const TRY_LEASE_SQL: &str = "INSERT INTO leases (name, holder, until) \
    VALUES ($1, $2, $3) \
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
    WHERE leases.holder = excluded.holder OR leases.until <= $4";
pub(super) const LEASE_SQL: &str = "SELECT holder, until FROM leases WHERE name = $1";
/// Hands lease `$1` from `$2` to `$3` until `$4`.
pub(super) const TAKE_LEASE_SQL: &str =
    "UPDATE leases SET holder = $3, until = $4 WHERE name = $1 AND holder = $2";

/// Moves provider `$1`'s caught-up time forward to `$2`, at `$3`.
pub(super) fn set_caught_up_sql(d: Dialect) -> &'static str {
    match d {
        Dialect::Sqlite => {
            "INSERT INTO feed_positions (provider, caught_up_to, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE SET \
               caught_up_to = MAX(feed_positions.caught_up_to, excluded.caught_up_to), \
               updated_at = excluded.updated_at"
        }
        Dialect::Postgres => {
            "INSERT INTO feed_positions (provider, caught_up_to, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (provider) DO UPDATE SET \
               caught_up_to = GREATEST(feed_positions.caught_up_to, EXCLUDED.caught_up_to), \
               updated_at = EXCLUDED.updated_at"
        }
    }
}
pub(super) const CAUGHT_UP_SQL: &str =
    "SELECT caught_up_to FROM feed_positions WHERE provider = $1";

// ---- Broadcasts and Matrix rooms --------------------------------------------------------

/// The broadcast of roll call `$1` through provider `$2` to group `$3` ('' for the board post).
pub(super) const BROADCAST_SQL: &str = "SELECT posted_at, post_id FROM broadcasts \
    WHERE roll_call_id = $1 AND provider = $2 AND group_key = $3";
/// Records a broadcast (`$1`..`$5`); one recorded before keeps its first record.
pub(super) const RECORD_BROADCAST_SQL: &str = "INSERT INTO broadcasts (roll_call_id, provider, \
    group_key, posted_at, post_id) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (roll_call_id, provider, group_key) DO NOTHING";

/// The `group_key` of a broadcast: the board post's is empty.
pub(super) fn group_key(group: Option<&str>) -> &str {
    group.unwrap_or("")
}

pub(super) const MATRIX_ROOM_SQL: &str =
    "SELECT room_id, left_at, encrypted_room FROM matrix_rooms WHERE user_id = $1";
/// User `$1`'s DM room is `$2`, at `$3`.
pub(super) const SET_MATRIX_ROOM_SQL: &str = "INSERT INTO matrix_rooms (user_id, room_id, \
    updated_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE SET \
    room_id = excluded.room_id, updated_at = excluded.updated_at";
/// User `$1` left their room and was invited again at `$2`.
pub(super) const SET_MATRIX_LEFT_SQL: &str = "INSERT INTO matrix_rooms (user_id, left_at, \
    updated_at) VALUES ($1, $2, $2) ON CONFLICT (user_id) DO UPDATE SET \
    left_at = excluded.left_at, updated_at = excluded.updated_at";
pub(super) const MATRIX_ENCRYPTED_SQL: &str = "SELECT user_id, encrypted_room FROM matrix_rooms \
    WHERE encrypted_room IS NOT NULL ORDER BY user_id";
/// Forgets every encrypted room, at `$1`.
pub(super) const CLEAR_MATRIX_ENCRYPTED_SQL: &str = "UPDATE matrix_rooms SET \
    encrypted_room = NULL, updated_at = $1 WHERE encrypted_room IS NOT NULL";
/// User `$1`'s room `$2` is encrypted, at `$3`.
pub(super) const SET_MATRIX_ENCRYPTED_SQL: &str = "INSERT INTO matrix_rooms (user_id, \
    encrypted_room, updated_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE SET \
    encrypted_room = excluded.encrypted_room, updated_at = excluded.updated_at";

const MATRIX_CHECK_COLUMNS: &str =
    "event_id, room_id, roll_call_id, to_user, answer_values, origin_ts, prev_event, sent_at";
pub(super) fn matrix_check_sql() -> String {
    format!("SELECT {MATRIX_CHECK_COLUMNS} FROM matrix_checks WHERE event_id = $1")
}
/// The newest check sent in room `$1`: the last one recorded as sent.
pub(super) fn newest_matrix_check_sql() -> String {
    format!(
        "SELECT {MATRIX_CHECK_COLUMNS} FROM matrix_checks \
         WHERE room_id = $1 AND sent_at IS NOT NULL ORDER BY id DESC LIMIT 1"
    )
}
/// Records a check (`$1`..`$8`, in [`MATRIX_CHECK_COLUMNS`] order); one recorded before stays.
pub(super) fn record_matrix_check_sql() -> String {
    format!(
        "INSERT INTO matrix_checks ({MATRIX_CHECK_COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (event_id) DO NOTHING"
    )
}
pub(super) const SET_MATRIX_CHECK_TS_SQL: &str =
    "UPDATE matrix_checks SET origin_ts = $2 WHERE event_id = $1";

/// A check from a row of [`MATRIX_CHECK_COLUMNS`], on either backend.
pub(super) fn matrix_check_from_row<R>(r: &R) -> StoreResult<super::MatrixCheck>
where
    R: Row,
    for<'n> &'n str: ColumnIndex<R>,
    for<'a> String: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> i64: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<String>: Decode<'a, R::Database> + Type<R::Database>,
    for<'a> Option<i64>: Decode<'a, R::Database> + Type<R::Database>,
{
    let values: String = r.try_get("answer_values")?;
    Ok(super::MatrixCheck {
        event_id: r.try_get("event_id")?,
        room_id: r.try_get("room_id")?,
        roll_call_id: r.try_get("roll_call_id")?,
        to: r.try_get("to_user")?,
        values: serde_json::from_str(&values).map_err(|e| corrupt("a check's answer values", e))?,
        origin_ts: r.try_get("origin_ts")?,
        prev: r.try_get("prev_event")?,
        sent_at: r.try_get("sent_at")?,
    })
}

// ---- Sending: claims, results, renewals -------------------------------------------------

/// Claims provider `$2`'s due deliveries at `$3`, at most `$4`, until `$1`: expired leases
/// first (a crashed worker's batch), then due pending rows. The states are written out here
/// (each part is one index range); the contract suite checks them against
/// [`TRANSITIONS`](crate::rollcall::TRANSITIONS). Returns `id, roll_call_id,
/// chat_handle, attempts, kind`.
pub(super) fn claim_due_sql(d: Dialect) -> &'static str {
    match d {
        // Each part walks the (provider, state, next_attempt_at) index and stops at the
        // limit. A claimed row's next_attempt_at is its lease's end, so both parts are index
        // ranges; the lease_until check keeps a row claimed by an anpi from before that rule
        // (a replica not yet upgraded) until its real lease ends.
        Dialect::Sqlite => {
            "UPDATE deliveries SET state = 'sending', lease_until = $1, next_attempt_at = $1, \
               attempts = attempts + 1 \
             WHERE id IN ( \
               SELECT id FROM ( \
                 SELECT id FROM (SELECT id FROM deliveries \
                    WHERE provider = $2 AND state = 'sending' AND next_attempt_at <= $3 \
                      AND lease_until <= $3 LIMIT $4) \
                 UNION ALL \
                 SELECT id FROM (SELECT id FROM deliveries \
                    WHERE provider = $2 AND state = 'pending' AND next_attempt_at <= $3 LIMIT $4) \
               ) LIMIT $4) \
             RETURNING id, roll_call_id, chat_handle, attempts, kind"
        }
        // Pending rows oldest first; both parts walk one index (lease_until is checked too,
        // for rows claimed by a replica not yet upgraded). SKIP LOCKED: rows another replica
        // is claiming this instant are passed over, and a row changed since this statement's
        // snapshot is re-checked before it is taken.
        Dialect::Postgres => {
            "WITH expired AS ( \
               SELECT id FROM deliveries \
               WHERE provider = $2 AND state = 'sending' AND next_attempt_at <= $3 \
                 AND lease_until <= $3 \
               LIMIT $4 FOR UPDATE SKIP LOCKED), \
             due AS ( \
               SELECT id FROM deliveries \
               WHERE provider = $2 AND state = 'pending' AND next_attempt_at <= $3 \
               ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED), \
             picked AS ( \
               SELECT id FROM (SELECT id FROM expired UNION ALL SELECT id FROM due) AS u LIMIT $4) \
             UPDATE deliveries AS d \
             SET state = 'sending', lease_until = $1, next_attempt_at = $1, \
               attempts = d.attempts + 1 \
             FROM picked WHERE d.id = picked.id \
             RETURNING d.id, d.roll_call_id, d.chat_handle, d.attempts, d.kind"
        }
    }
}

/// One sent message of a batch of send results.
#[derive(serde::Serialize)]
pub(super) struct SentRow<'a> {
    pub(super) id: i64,
    pub(super) at: Millis,
    pub(super) dl: Millis,
    pub(super) mid: Option<&'a str>,
}

/// One send to try again, handed back under the claim's lease.
#[derive(serde::Serialize)]
pub(super) struct RetryRow<'a> {
    pub(super) id: i64,
    pub(super) next: Millis,
    pub(super) err: &'a str,
    pub(super) refund: i64,
    pub(super) lease: Millis,
}

/// One send the platform refused for good.
#[derive(serde::Serialize)]
pub(super) struct FailedRow<'a> {
    pub(super) id: i64,
    pub(super) err: &'a str,
}

/// A batch of send results split by outcome, one statement each.
#[derive(Default)]
pub(super) struct SplitResults<'a> {
    pub(super) sent: Vec<SentRow<'a>>,
    pub(super) retry: Vec<RetryRow<'a>>,
    pub(super) failed: Vec<FailedRow<'a>>,
}

pub(super) fn split_results(results: &[SendResult]) -> SplitResults<'_> {
    let mut out = SplitResults::default();
    for r in results {
        match r {
            SendResult::Sent {
                id,
                at,
                deadline_at,
                message_id,
            } => out.sent.push(SentRow {
                id: *id,
                at: *at,
                dl: *deadline_at,
                mid: message_id.as_deref(),
            }),
            SendResult::Retry {
                id,
                next_attempt_at,
                error,
                refund_attempt,
                lease_until,
            } => out.retry.push(RetryRow {
                id: *id,
                next: *next_attempt_at,
                err: error,
                refund: i64::from(*refund_attempt),
                lease: *lease_until,
            }),
            SendResult::Failed { id, error } => out.failed.push(FailedRow {
                id: *id,
                err: error,
            }),
        }
    }
    out
}

/// Records [`SentRow`]s: a delivery still sending becomes sent; a read or answer that came
/// first is kept; the first send time, deadline and re-send time stand.
pub(super) fn record_sent_sql(d: Dialect) -> String {
    let (j, _) = d.table(
        1,
        &[
            ("id", "bigint"),
            ("at", "bigint"),
            ("dl", "bigint"),
            ("mid", "text"),
        ],
    );
    format!(
        "UPDATE deliveries AS d SET \
           state = {state}, \
           sent_at = COALESCE(d.sent_at, j.at), \
           deadline_at = COALESCE(d.deadline_at, j.dl), \
           message_id = COALESCE(j.mid, d.message_id), \
           lease_until = NULL, \
           resend_at = COALESCE(d.resend_at, j.at + \
             (SELECT r.resend_after_ms FROM roll_calls r WHERE r.id = d.roll_call_id)) \
         FROM {j} \
         WHERE d.id = j.id AND d.state IN ('sending', 'read', 'answered')",
        state = state_after_sql(DeliveryEvent::Accepted, "d.state")
    )
}

/// Runs `statements` in order in one transaction: a batch of send results is recorded whole
/// or not at all. Each backend binds the batch its own way (one JSON array on SQLite, one
/// array per column on PostgreSQL).
pub(super) async fn in_one_transaction<'q, DB>(
    pool: &sqlx::Pool<DB>,
    statements: Vec<sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>>,
) -> StoreResult<()>
where
    DB: sqlx::Database,
    <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
{
    let mut tx = pool.begin().await?;
    for q in statements {
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Records [`RetryRow`]s: pending again, only while the claim that sent it still holds.
pub(super) fn record_retry_sql(d: Dialect) -> String {
    let (j, _) = d.table(
        1,
        &[
            ("id", "bigint"),
            ("next", "bigint"),
            ("err", "text"),
            ("refund", "bigint"),
            ("lease", "bigint"),
        ],
    );
    format!(
        "UPDATE deliveries AS d SET state = {state}, next_attempt_at = j.next, \
           last_error = j.err, lease_until = NULL, attempts = d.attempts - j.refund \
         FROM {j} \
         WHERE d.id = j.id AND d.state IN {from} AND d.lease_until = j.lease",
        state = state_after_sql(DeliveryEvent::Retried, "d.state"),
        from = states_moved_sql(DeliveryEvent::Retried)
    )
}

/// Records [`FailedRow`]s, escalated at once (at the parameter after the rows).
pub(super) fn record_failed_sql(d: Dialect) -> String {
    let (j, now) = d.table(1, &[("id", "bigint"), ("err", "text")]);
    format!(
        "UPDATE deliveries AS d SET state = {state}, last_error = j.err, lease_until = NULL, \
           escalated_at = COALESCE(d.escalated_at, ${now}), \
           escalation_reason = COALESCE(d.escalation_reason, 'send_failed') \
         FROM {j} \
         WHERE d.id = j.id AND d.state IN {from}",
        state = state_after_sql(DeliveryEvent::Refused, "d.state"),
        from = states_moved_sql(DeliveryEvent::Refused)
    )
}

/// Renews claims until `$1`: rows `(id, l)` still sending under exactly lease `l`. Returns
/// the renewed ids.
pub(super) fn renew_claims_sql(d: Dialect) -> String {
    let (j, _) = d.table(2, &[("id", "bigint"), ("l", "bigint")]);
    // SQLite's RETURNING names the updated table's columns only, and not by its alias.
    let id = match d {
        Dialect::Sqlite => "id",
        Dialect::Postgres => "d.id",
    };
    format!(
        "UPDATE deliveries AS d SET lease_until = $1, next_attempt_at = $1 \
         FROM {j} \
         WHERE d.id = j.id AND d.state = 'sending' AND d.lease_until = j.l \
         RETURNING {id}"
    )
}

/// The deliveries of provider `$1` to the chat ids `$2` in roll calls that are open or named
/// in `$3`, and each chat id's newest delivery of all (see [`membership_from_row`]).
pub(super) fn memberships_sql(d: Dialect) -> String {
    format!(
        "SELECT d.chat_handle, d.roll_call_id, d.id, d.kind, d.sent_at, r.state \
         FROM deliveries AS d JOIN roll_calls AS r ON r.id = d.roll_call_id \
         WHERE d.provider = $1 AND {} \
           AND (r.state = 'open' OR {} \
                OR d.roll_call_id = (SELECT MAX(x.roll_call_id) FROM deliveries AS x \
                                     WHERE x.provider = d.provider \
                                       AND x.chat_handle = d.chat_handle))",
        d.one_of("d.chat_handle", 2, "text"),
        d.one_of("d.roll_call_id", 3, "bigint")
    )
}

/// The roll calls `$1`, for [`roll_info_from_row`].
pub(super) fn roll_infos_sql(d: Dialect) -> String {
    format!(
        "SELECT id, state, buttons, shelter_buttons FROM roll_calls WHERE {}",
        d.one_of("id", 1, "bigint")
    )
}

/// The directory's next page, or `None` after the last.
pub(super) async fn next_contacts(
    pages: &mut tokio::sync::mpsc::Receiver<StoreResult<Vec<Contact>>>,
) -> StoreResult<Option<Vec<Contact>>> {
    // The reader ends with an empty page: a channel closed before it (the reader panicked)
    // must not pass for the end of the directory.
    let page = pages
        .recv()
        .await
        .ok_or_else(|| corrupt("contacts", "the directory's read stopped before its end"))??;
    Ok((!page.is_empty()).then_some(page))
}

/// The deliveries `composer` makes of the directory's next page, or `None` after the last.
pub(super) async fn next_page(
    pages: &mut tokio::sync::mpsc::Receiver<StoreResult<Vec<Contact>>>,
    composer: &mut dyn crate::rollcall::DeliveryComposer,
) -> StoreResult<Option<Vec<crate::rollcall::NewDelivery>>> {
    Ok(next_contacts(pages).await?.map(|page| composer.page(page)))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Everyone;

    impl crate::rollcall::DeliveryComposer for Everyone {
        fn page(&mut self, contacts: Vec<Contact>) -> Vec<crate::rollcall::NewDelivery> {
            contacts
                .iter()
                .map(|c| crate::rollcall::NewDelivery::from_contact(c, "simulator"))
                .collect()
        }

        fn finish(&mut self) -> Option<crate::rollcall::Composed> {
            Some(Default::default())
        }
    }

    /// A reader that stopped without its end page (it panicked, its task was dropped) must
    /// fail the roll call, not pass for a directory that ended there.
    #[tokio::test]
    async fn a_directory_read_that_stops_before_its_end_is_an_error_not_the_end() {
        let contacts = crate::contacts::synthetic::generate(3, 1).contacts;
        let (out, mut pages) = tokio::sync::mpsc::channel(4);
        out.send(Ok(contacts.clone())).await.unwrap();
        drop(out);
        let rows = next_page(&mut pages, &mut Everyone).await.unwrap();
        assert_eq!(rows.map(|r| r.len()), Some(3));
        let stopped = next_page(&mut pages, &mut Everyone).await;
        assert!(
            matches!(&stopped, Err(StoreError::Corrupt(m)) if m.contains("before its end")),
            "{stopped:?}"
        );

        // The end page ends it.
        let (out, mut pages) = tokio::sync::mpsc::channel(4);
        out.send(Ok(contacts)).await.unwrap();
        out.send(Ok(Vec::new())).await.unwrap();
        assert!(next_page(&mut pages, &mut Everyone)
            .await
            .unwrap()
            .is_some());
        assert!(next_page(&mut pages, &mut Everyone)
            .await
            .unwrap()
            .is_none());
    }
}
