//! Escalation: the deadline worker that puts everyone still unread at their deadline on the
//! phone-call list, and the list's renderings for people (table, CSV that Excel opens, JSON).
//!
//! Invariants: each person's deadline is stored (sent_at + the roll call's deadline), so a
//! restarted daemon honours it; the worker sleeps until the earliest stored deadline and wakes
//! early when new ones are written; escalation takes exactly the sent-and-unconfirmed.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

use crate::clock::{from_millis, Millis, SharedClock};
use crate::contacts::ContactKind;
use crate::metrics::Metrics;
use crate::rollcall::CallListEntry;
use crate::store::{SharedStore, StoreError};
use crate::worker::Outcome;

/// How often the deadline worker re-reads the earliest deadline when nothing wakes it.
const REPLAN: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct DeadlineWorker {
    store: SharedStore,
    clock: SharedClock,
    /// Woken when deliveries are sent (new deadlines) so the sleep is re-planned.
    pub deadlines_changed: Arc<Notify>,
    /// Told after each escalation, for whoever waits on the call list (e-mail, the web page).
    pub escalated: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl DeadlineWorker {
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        deadlines_changed: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            clock,
            deadlines_changed,
            escalated: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Resolves when the earliest deadline should be read again: other replicas write
    /// deadlines without telling this process, so it looks every `REPLAN` (of the application's
    /// clock, or of the wall when that clock stands still).
    async fn replan(&self) {
        tokio::select! {
            _ = self.clock.sleep(REPLAN) => {}
            _ = tokio::time::sleep(REPLAN) => {}
        }
    }

    /// Escalates everything due at `now`.
    pub async fn run_once(&self, now: Millis) -> Result<Outcome, StoreError> {
        let n = self.store.escalate_due(now).await?;
        if n == 0 {
            return Ok(Outcome::Idle);
        }
        info!(
            escalated = n,
            "deadline passed: people added to the call list"
        );
        self.escalated.notify_waiters();
        Ok(Outcome::Worked(n))
    }

    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            let notified = self.deadlines_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // The earliest deadline is a cheap read; the escalating write runs only when it
            // has passed (a busy dispatcher wakes this worker after every recorded group).
            let step = async {
                let now = self.clock.now_millis();
                match self.store.next_deadline().await? {
                    Some(t) if t <= now => {
                        self.run_once(now).await?;
                        self.store.next_deadline().await
                    }
                    next => Ok(next),
                }
            }
            .instrument(info_span!("deadlines"))
            .await;
            let next = match step {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(e) => {
                    failures += 1;
                    self.metrics.store_error();
                    warn!(error = %e, "deadline check failed; retrying");
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            match next {
                Some(t) => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = &mut notified => {}
                        _ = self.clock.sleep_until(from_millis(t)) => {}
                        _ = self.replan() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = &mut notified => {}
                        _ = self.replan() => {}
                    }
                }
            }
        }
    }
}

/// Which entries a rendering shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListScope {
    /// Only those still to call.
    ToCall,
    /// Everyone ever escalated, with what became of them.
    All,
}

fn select(entries: &[CallListEntry], scope: ListScope) -> impl Iterator<Item = &CallListEntry> {
    entries
        .iter()
        .filter(move |e| scope == ListScope::All || e.to_call())
}

/// Minutes since the message went out (or since the person was escalated, if it never did).
pub fn minutes_waiting(e: &CallListEntry, now: Millis) -> i64 {
    let since = e.sent_at.or(e.escalated_at).unwrap_or(now);
    ((now - since) / 60_000).max(0)
}

/// The reason shown to HQ.
pub fn why(e: &CallListEntry) -> String {
    match (e.reason, &e.last_error) {
        (Some(r), Some(err)) if r != crate::rollcall::EscalationReason::NeverRead => {
            format!("{} ({err})", r.label())
        }
        (Some(r), _) => r.label().to_string(),
        (None, _) => "-".to_string(),
    }
}

/// What became of the entry, in words.
pub fn status(e: &CallListEntry) -> String {
    if let Some(o) = e.outcome {
        return o.label().to_string();
    }
    if e.state.is_confirmed() {
        return "後から既読 / read late".to_string();
    }
    "要電話 / to call".to_string()
}

fn national(e164: &str) -> String {
    crate::contacts::PhoneNumber::parse(e164)
        .map(|p| p.national())
        .unwrap_or_else(|_| e164.to_string())
}

fn group(e: &CallListEntry) -> String {
    match e.kind {
        ContactKind::ShelterPhone => format!(
            "避難所: {}",
            e.shelter.as_deref().unwrap_or(crate::rollcall::NO_SHELTER)
        ),
        ContactKind::Staff => e
            .department
            .clone()
            .unwrap_or_else(|| crate::rollcall::NO_DEPARTMENT.into()),
    }
}

/// Pads to `width` terminal columns.
pub fn pad(s: &str, width: usize) -> String {
    // East Asian characters take two columns in a terminal.
    let w: usize = s
        .chars()
        .map(|c| if (c as u32) >= 0x1100 { 2 } else { 1 })
        .sum();
    let mut out = s.to_string();
    for _ in w..width {
        out.push(' ');
    }
    // A value wider than its column still gets a gap before the next one.
    if w >= width {
        out.push(' ');
    }
    out
}

/// A table for a terminal or a printer.
pub fn render_table(entries: &[CallListEntry], scope: ListScope, now: Millis, tz: Tz) -> String {
    let mut out = String::new();
    let rows: Vec<&CallListEntry> = select(entries, scope).collect();
    if rows.is_empty() {
        out.push_str("電話連絡が必要な人はいません / nobody to call\n");
        return out;
    }
    out.push_str(&format!(
        "{}{}{}{}{}{}{}\n",
        pad("#", 5),
        pad("ID", 9),
        pad("氏名 / name", 16),
        pad("所属・避難所 / group", 24),
        pad("電話 / phones", 30),
        pad("経過 / min", 11),
        "理由 / why"
    ));
    for (i, e) in rows.iter().enumerate() {
        let phones = if e.phones.is_empty() {
            "(電話番号なし)".to_string()
        } else {
            e.phones
                .iter()
                .map(|p| national(p))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!(
            "{}{}{}{}{}{}{}",
            pad(&(i + 1).to_string(), 5),
            pad(e.staff_id.as_str(), 9),
            pad(&e.name, 16),
            pad(&group(e), 24),
            pad(&phones, 30),
            pad(&format!("{} 分", minutes_waiting(e, now)), 11),
            why(e)
        );
        if scope == ListScope::All {
            line.push_str(&format!("  [{}]", status(e)));
            if let (Some(at), Some(by)) = (e.outcome_at, &e.outcome_by) {
                line.push_str(&format!(
                    " {} {by}",
                    from_millis(at).with_timezone(&tz).format("%H:%M")
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// CSV with a UTF-8 byte-order mark, which Japanese Excel needs to show the text correctly.
pub fn render_csv(entries: &[CallListEntry], scope: ListScope, now: Millis, tz: Tz) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(vec![0xEF, 0xBB, 0xBF]);
    let _ = w.write_record([
        "順番",
        "職員ID",
        "氏名",
        "所属",
        "避難所",
        "種別",
        "優先度",
        "電話1",
        "電話2",
        "送信時刻",
        "経過(分)",
        "理由",
        "状態",
        "通話結果(代理回答)",
        "記録者",
        "記録時刻",
    ]);
    let fmt = |t: Option<Millis>| {
        t.map(|t| {
            from_millis(t)
                .with_timezone(&tz)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
    };
    for (i, e) in select(entries, scope).enumerate() {
        let _ = w.write_record([
            (i + 1).to_string(),
            e.staff_id.to_string(),
            e.name.clone(),
            e.department.clone().unwrap_or_default(),
            e.shelter.clone().unwrap_or_default(),
            match e.kind {
                ContactKind::Staff => "職員".into(),
                ContactKind::ShelterPhone => "避難所".into(),
            },
            e.call_priority.to_string(),
            e.phones.first().map(|p| national(p)).unwrap_or_default(),
            e.phones.get(1).map(|p| national(p)).unwrap_or_default(),
            fmt(e.sent_at),
            minutes_waiting(e, now).to_string(),
            why(e),
            status(e),
            e.outcome.map(|o| o.label().to_string()).unwrap_or_default(),
            e.outcome_by.clone().unwrap_or_default(),
            fmt(e.outcome_at),
        ]);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StaffId;
    use crate::rollcall::{CallOutcome, DeliveryState, EscalationReason};

    fn entry(id: &str, state: DeliveryState, outcome: Option<CallOutcome>) -> CallListEntry {
        CallListEntry {
            delivery_id: 1,
            staff_id: StaffId::parse(id).unwrap(),
            name: "田中 一郎".into(),
            department: Some("防災対策室".into()),
            shelter: None,
            kind: ContactKind::Staff,
            call_priority: 1,
            phones: vec!["+819012345678".into()],
            state,
            reason: Some(EscalationReason::NeverRead),
            last_error: None,
            sent_at: Some(0),
            escalated_at: Some(300_000),
            read_at: None,
            answer: None,
            outcome,
            outcome_at: None,
            outcome_by: None,
            claimed_by: None,
            claimed_until: None,
        }
    }

    #[test]
    fn late_reader_and_reached_person_are_not_to_call_but_no_answer_is() {
        let list = vec![
            entry("A", DeliveryState::Sent, None),
            entry("B", DeliveryState::Read, None),
            entry("C", DeliveryState::Sent, Some(CallOutcome::ReachedSafe)),
            entry("D", DeliveryState::Sent, Some(CallOutcome::NoAnswer)),
        ];
        let to_call: Vec<_> = select(&list, ListScope::ToCall)
            .map(|e| e.staff_id.to_string())
            .collect();
        assert_eq!(to_call, ["A", "D"]);
    }

    #[test]
    fn csv_starts_with_a_bom_and_shows_domestic_numbers() {
        let list = vec![entry("A", DeliveryState::Sent, None)];
        let csv = render_csv(&list, ListScope::ToCall, 600_000, chrono_tz::Asia::Tokyo);
        assert_eq!(&csv[..3], &[0xEF, 0xBB, 0xBF]);
        let text = String::from_utf8(csv[3..].to_vec()).unwrap();
        assert!(text.contains("090-1234-5678"), "{text}");
        assert!(text.contains("田中 一郎"));
        assert!(text.contains(",10,"), "ten minutes since sent: {text}");
    }

    #[test]
    fn table_says_when_nobody_is_left() {
        let list = vec![entry("B", DeliveryState::Answered, None)];
        let t = render_table(&list, ListScope::ToCall, 0, chrono_tz::Asia::Tokyo);
        assert!(t.contains("nobody to call"));
    }
}
