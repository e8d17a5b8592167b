//! Drills: scheduled drills that run once however many replicas run, and the report every
//! drill ends with (p50/p95 time to read and to answer, per department and shelter, and the
//! people the message never reached).
//!
//! Invariants: the schedule runs on anpi's clock under the singleton lease "drills", and each
//! scheduled time starts its drill with an idempotency key of that time, so two replicas (or
//! a takeover just after the time) start it once; a scheduled time missed by more than the
//! grace period is skipped, never started late. A report is computed from the deliveries as
//! stored, so it is the same on every replica and after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::{from_millis, Millis, SharedClock};
use crate::hq::{Hq, HqError};
use crate::ids::RollCallId;
use crate::rollcall::RollCall;
use crate::scenario::Scenario;

/// Parses a drill's cron line (sec min hour day month weekday), as the configuration takes it.
pub fn parse_cron(line: &str) -> Result<Cron, String> {
    Cron::new(line)
        .with_seconds_required()
        .with_dom_and_dow()
        .parse()
        .map_err(|e| e.to_string())
}

/// One `[[drills]]` entry, checked.
#[derive(Debug, Clone)]
pub struct ScheduledDrill {
    pub cron_line: String,
    pub cron: Cron,
    pub scenario: Scenario,
}

/// Starts each scheduled drill once per scheduled time.
#[derive(Debug)]
pub struct DrillScheduler {
    drills: Vec<ScheduledDrill>,
    hq: Arc<Hq>,
    clock: SharedClock,
    zone: Tz,
    /// A scheduled time is still started this long after it (a replica taking over late).
    grace: Duration,
}

impl DrillScheduler {
    pub fn new(
        drills: Vec<ScheduledDrill>,
        hq: Arc<Hq>,
        clock: SharedClock,
        zone: Tz,
        grace: Duration,
    ) -> Self {
        Self {
            drills,
            hq,
            clock,
            zone,
            grace,
        }
    }

    /// The idempotency key of a drill at a scheduled time.
    pub fn key(scenario: &str, at: DateTime<Utc>) -> String {
        format!("drill:{scenario}:{}", at.timestamp())
    }

    /// The scheduled times of drill `i` in (after, up_to], earliest first.
    fn times(&self, i: usize, after: DateTime<Utc>, up_to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cur = after.with_timezone(&self.zone);
        while let Ok(next) = self.drills[i].cron.find_next_occurrence(&cur, false) {
            let utc = next.with_timezone(&Utc);
            if utc > up_to || out.len() > 1000 {
                break;
            }
            out.push(utc);
            cur = next;
        }
        out
    }

    /// Starts each drill's latest time due in (`after`, `now`], if it is no more than the
    /// grace period old (earlier missed times are not made up). Returns the roll calls started
    /// (or found started by another replica).
    pub async fn run_once(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Vec<Result<RollCall, HqError>> {
        let mut out = Vec::new();
        let oldest = now - chrono::Duration::from_std(self.grace).unwrap_or_default();
        for i in 0..self.drills.len() {
            let d = &self.drills[i];
            let due = self.times(i, after.max(oldest - chrono::Duration::seconds(1)), now);
            if let Some(&at) = due.last().filter(|at| **at >= oldest) {
                let key = Self::key(&d.scenario.name, at);
                let res = self
                    .hq
                    .start(&d.scenario, Some(true), Some(key))
                    .await
                    .map(|(rc, _)| rc);
                match &res {
                    Ok(rc) => {
                        info!(roll_call = %rc.id, scenario = %d.scenario.name, scheduled = %at, "scheduled drill started")
                    }
                    Err(e) => {
                        warn!(error = %e, scenario = %d.scenario.name, scheduled = %at, "scheduled drill could not start")
                    }
                }
                out.push(res);
            }
        }
        out
    }

    /// The next scheduled time of any drill after `after`.
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.drills
            .iter()
            .filter_map(|d| {
                d.cron
                    .find_next_occurrence(&after.with_timezone(&self.zone), false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            })
            .min()
    }

    /// Sleeps until each next scheduled time on anpi's clock and starts what is due, until
    /// `cancel` fires. Starting, it also catches a time passed within the grace period (the
    /// replica that held the lease may have died just then; the key keeps it single).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
        let mut after = self.clock.now() - grace;
        while !cancel.is_cancelled() {
            let now = self.clock.now();
            self.run_once(after, now).await;
            after = now;
            let Some(next) = self.next_after(now) else {
                break;
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.clock.sleep_until(next) => {}
            }
        }
    }
}

/// One delivery's times, as the report needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryTimes {
    pub staff_id: String,
    pub name: String,
    pub department: Option<String>,
    pub shelter: Option<String>,
    pub kind: String,
    pub state: String,
    pub has_chat_id: bool,
    pub sent_at: Option<Millis>,
    pub read_at: Option<Millis>,
    pub answered_at: Option<Millis>,
    pub escalation_reason: Option<String>,
    pub outcome: Option<String>,
}

impl DeliveryTimes {
    /// Seconds from sending to reading (an answer proves reading too).
    fn to_read(&self) -> Option<f64> {
        let sent = self.sent_at?;
        let read = match (self.read_at, self.answered_at) {
            (Some(r), Some(a)) => r.min(a),
            (r, a) => r.or(a)?,
        };
        Some(((read - sent).max(0)) as f64 / 1000.0)
    }

    fn to_answer(&self) -> Option<f64> {
        Some(((self.answered_at? - self.sent_at?).max(0)) as f64 / 1000.0)
    }

    /// Why the message never got to this person, if it did not.
    fn never_reached(&self) -> Option<&'static str> {
        if !self.has_chat_id {
            Some("チャット未登録 / no chat id")
        } else if self.state == "failed" || self.escalation_reason.as_deref() == Some("send_failed")
        {
            Some("送信失敗（連絡先が古い可能性）/ send failed: stale contact?")
        } else if self.to_read().is_none()
            && !matches!(
                self.outcome.as_deref(),
                Some("reached_safe" | "reached_injured" | "reached_needs_help")
            )
        {
            Some("未読のまま / never read")
        } else {
            None
        }
    }
}

/// Read and answer times of one group.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct GroupFigures {
    pub total: usize,
    pub read: usize,
    pub answered: usize,
    pub read_p50_s: Option<f64>,
    pub read_p95_s: Option<f64>,
    pub answer_p50_s: Option<f64>,
    pub answer_p95_s: Option<f64>,
    pub never_reached: usize,
}

/// A person the drill never reached, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unreached {
    pub staff_id: String,
    pub name: String,
    pub group: String,
    pub why: String,
}

/// The drill report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrillReport {
    pub roll_call: RollCallId,
    pub title: String,
    pub drill: bool,
    pub started_at: Millis,
    /// Whether every deadline has passed (the figures are final).
    pub finished: bool,
    pub overall: GroupFigures,
    pub by_department: BTreeMap<String, GroupFigures>,
    pub by_shelter: BTreeMap<String, GroupFigures>,
    pub never_reached: Vec<Unreached>,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some((sorted[rank.min(sorted.len()) - 1] * 10.0).round() / 10.0)
}

fn figures<'a>(rows: impl Iterator<Item = &'a DeliveryTimes>) -> GroupFigures {
    let mut read = Vec::new();
    let mut answer = Vec::new();
    let mut g = GroupFigures::default();
    for r in rows {
        g.total += 1;
        if let Some(s) = r.to_read() {
            read.push(s);
        }
        if let Some(s) = r.to_answer() {
            answer.push(s);
        }
        if r.never_reached().is_some() {
            g.never_reached += 1;
        }
    }
    read.sort_by(f64::total_cmp);
    answer.sort_by(f64::total_cmp);
    g.read = read.len();
    g.answered = answer.len();
    g.read_p50_s = percentile(&read, 50.0);
    g.read_p95_s = percentile(&read, 95.0);
    g.answer_p50_s = percentile(&answer, 50.0);
    g.answer_p95_s = percentile(&answer, 95.0);
    g
}

/// Builds the report of a roll call from its deliveries.
pub fn report(rc: &RollCall, rows: &[DeliveryTimes], finished: bool) -> DrillReport {
    let shelter_of = |r: &DeliveryTimes| {
        (r.kind == "shelter_phone").then(|| {
            r.shelter
                .clone()
                .unwrap_or_else(|| "（避難所名なし）".into())
        })
    };
    let group = |r: &DeliveryTimes| match shelter_of(r) {
        Some(s) => format!("避難所 {s}"),
        None => r
            .department
            .clone()
            .unwrap_or_else(|| "（所属なし）".into()),
    };
    let mut by_department = BTreeMap::new();
    let mut by_shelter = BTreeMap::new();
    let mut deps: BTreeMap<String, Vec<&DeliveryTimes>> = BTreeMap::new();
    let mut shs: BTreeMap<String, Vec<&DeliveryTimes>> = BTreeMap::new();
    for r in rows {
        match shelter_of(r) {
            Some(s) => shs.entry(s).or_default().push(r),
            None => deps.entry(group(r)).or_default().push(r),
        }
    }
    for (k, v) in deps {
        by_department.insert(k, figures(v.into_iter()));
    }
    for (k, v) in shs {
        by_shelter.insert(k, figures(v.into_iter()));
    }
    DrillReport {
        roll_call: rc.id,
        title: rc.title.clone(),
        drill: rc.drill,
        started_at: rc.created_at,
        finished,
        overall: figures(rows.iter()),
        by_department,
        by_shelter,
        never_reached: rows
            .iter()
            .filter_map(|r| {
                r.never_reached().map(|why| Unreached {
                    staff_id: r.staff_id.clone(),
                    name: r.name.clone(),
                    group: group(r),
                    why: why.into(),
                })
            })
            .collect(),
    }
}

/// Loads a roll call's report.
pub async fn load(hq: &Hq, id: RollCallId) -> Result<DrillReport, HqError> {
    let rc = hq
        .store()
        .roll_call(id)
        .await?
        .ok_or(HqError::NotFound(id))?;
    let rows = hq.store().drill_rows(id).await.map_err(HqError::from)?;
    let p = hq.store().progress(id).await?;
    let finished = rc.state == crate::rollcall::RollCallState::Closed
        || (p.overall.pending == 0 && p.overall.sending == 0 && p.next_deadline_at.is_none());
    Ok(report(&rc, &rows, finished))
}

fn secs(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1}")).unwrap_or_else(|| "-".into())
}

/// The report as plain text (Japanese first), for the CLI.
pub fn render_text(r: &DrillReport, tz: Tz) -> String {
    let mut out = format!(
        "訓練結果 / drill report: #{} {}{}\n開始 / started {}{}\n\n",
        r.roll_call,
        r.title,
        if r.drill {
            ""
        } else {
            "（訓練ではありません / not a drill）"
        },
        from_millis(r.started_at)
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M"),
        if r.finished {
            ""
        } else {
            "（期限前: 途中経過 / deadline not passed: figures so far）"
        }
    );
    out.push_str(&format!(
        "{:<20} {:>5} {:>5} {:>9} {:>9} {:>5} {:>9} {:>9} {:>6}\n",
        "group", "total", "read", "read p50", "read p95", "ans", "ans p50", "ans p95", "unreached"
    ));
    let mut line = |name: &str, g: &GroupFigures| {
        out.push_str(&format!(
            "{:<20} {:>5} {:>5} {:>9} {:>9} {:>5} {:>9} {:>9} {:>6}\n",
            name,
            g.total,
            g.read,
            secs(g.read_p50_s),
            secs(g.read_p95_s),
            g.answered,
            secs(g.answer_p50_s),
            secs(g.answer_p95_s),
            g.never_reached
        ));
    };
    line("全体 / overall", &r.overall);
    for (k, g) in &r.by_department {
        line(k, g);
    }
    for (k, g) in &r.by_shelter {
        line(&format!("避難所 {k}"), g);
    }
    out.push_str("(秒 / seconds from each person's send)\n");
    if !r.never_reached.is_empty() {
        out.push_str(&format!(
            "\n届かなかった人 / never reached: {}\n",
            r.never_reached.len()
        ));
        for u in &r.never_reached {
            out.push_str(&format!(
                "  {} {} ({}) — {}\n",
                u.staff_id, u.name, u.group, u.why
            ));
        }
    }
    out
}

/// The report as CSV with a UTF-8 BOM (Excel): one row per group, then the unreached.
pub fn render_csv(r: &DrillReport) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(vec![0xEF, 0xBB, 0xBF]);
    let _ = w.write_record([
        "区分",
        "名称",
        "対象",
        "既読",
        "既読まで p50(秒)",
        "既読まで p95(秒)",
        "回答",
        "回答まで p50(秒)",
        "回答まで p95(秒)",
        "届かなかった人数",
    ]);
    let mut row = |kind: &str, name: &str, g: &GroupFigures| {
        let o = |v: Option<f64>| v.map(|s| format!("{s:.1}")).unwrap_or_default();
        let _ = w.write_record([
            kind.to_string(),
            name.to_string(),
            g.total.to_string(),
            g.read.to_string(),
            o(g.read_p50_s),
            o(g.read_p95_s),
            g.answered.to_string(),
            o(g.answer_p50_s),
            o(g.answer_p95_s),
            g.never_reached.to_string(),
        ]);
    };
    row("全体", "", &r.overall);
    for (k, g) in &r.by_department {
        row("所属", k, g);
    }
    for (k, g) in &r.by_shelter {
        row("避難所", k, g);
    }
    let _ = w.write_record(["", "", "", "", "", "", "", "", "", ""]);
    let _ = w.write_record([
        "届かなかった人",
        "職員ID",
        "氏名",
        "所属・避難所",
        "理由",
        "",
        "",
        "",
        "",
        "",
    ]);
    for u in &r.never_reached {
        let _ = w.write_record([
            "",
            u.staff_id.as_str(),
            u.name.as_str(),
            u.group.as_str(),
            u.why.as_str(),
            "",
            "",
            "",
            "",
            "",
        ]);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        staff: &str,
        dep: &str,
        sent: i64,
        read: Option<i64>,
        ans: Option<i64>,
    ) -> DeliveryTimes {
        DeliveryTimes {
            staff_id: staff.into(),
            name: staff.into(),
            department: Some(dep.into()),
            shelter: None,
            kind: "staff".into(),
            state: if ans.is_some() {
                "answered"
            } else if read.is_some() {
                "read"
            } else {
                "sent"
            }
            .into(),
            has_chat_id: true,
            sent_at: Some(sent),
            read_at: read,
            answered_at: ans,
            escalation_reason: None,
            outcome: None,
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&[3.0], 95.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn an_answer_counts_as_reading_and_the_unreached_are_named() {
        let mut rows = vec![
            row("S1", "総務課", 0, Some(10_000), None),
            row("S2", "総務課", 0, None, Some(4_000)),
            row("S3", "総務課", 0, None, None),
        ];
        rows.push(DeliveryTimes {
            has_chat_id: false,
            sent_at: None,
            ..row("S4", "消防本部", 0, None, None)
        });
        let rc = RollCall {
            id: RollCallId(1),
            scenario: "drill".into(),
            title: "訓練".into(),
            message: String::new(),
            buttons: vec![],
            shelter_buttons: vec![],
            asks: Default::default(),
            drill: true,
            deadline_ms: 300_000,
            provider: "simulator".into(),
            state: crate::rollcall::RollCallState::Open,
            created_at: 0,
            closed_at: None,
            recipients: 4,
            resend_after_ms: None,
            dispatch_plan: None,
            mail_plan: None,
        };
        let r = report(&rc, &rows, true);
        assert_eq!(r.overall.read, 2);
        assert_eq!(r.overall.read_p50_s, Some(4.0));
        assert_eq!(r.overall.answer_p95_s, Some(4.0));
        assert_eq!(r.by_department["総務課"].never_reached, 1);
        let ids: Vec<_> = r
            .never_reached
            .iter()
            .map(|u| u.staff_id.as_str())
            .collect();
        assert_eq!(ids, ["S3", "S4"]);
        assert!(r.never_reached[1].why.contains("no chat id"));
        let csv = String::from_utf8(render_csv(&r)).unwrap();
        assert!(csv.starts_with('\u{feff}'));
        assert!(
            csv.contains("所属,総務課,3,2,4.0,10.0,1,4.0,4.0,1"),
            "{csv}"
        );
    }

    #[test]
    fn a_cron_line_without_seconds_is_refused() {
        assert!(parse_cron("0 10 * * *").is_err());
        assert!(parse_cron("0 0 10 * * Mon").is_ok());
    }
}
