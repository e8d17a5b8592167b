//! HQ's action list (要対応) as people read it: a table for a terminal or a printer, a CSV
//! that Japanese Excel opens, and the words each entry is shown with. Every view — the API,
//! the CLI, the page, the print view, the CSV and the e-mail — renders the same entries in
//! the same order ([`CallListEntry::call_order`]).
//!
//! Invariant: an entry that needs HQ (an open urgent answer, a silent shelter, a person never
//! reached) is never left out of a rendering of the open list, and what the person answered is
//! shown verbatim.

use chrono_tz::Tz;
use unicode_width::UnicodeWidthStr;

use crate::clock::{from_millis, Millis};
use crate::contacts::ContactKind;
use crate::rollcall::{Action, CallListEntry, GivenAnswer};

/// Which entries a rendering shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListScope {
    /// Only those HQ must still act on.
    ToCall,
    /// Everyone ever on the list, with what became of them.
    All,
}

/// The entries `scope` shows, in the list's order.
pub fn select(entries: &[CallListEntry], scope: ListScope) -> impl Iterator<Item = &CallListEntry> {
    entries
        .iter()
        .filter(move |e| scope == ListScope::All || e.to_call())
}

/// Minutes the entry has been waiting for HQ (see [`CallListEntry::waiting_since`]).
pub fn minutes_waiting(e: &CallListEntry, now: Millis) -> i64 {
    let since = e.waiting_since().unwrap_or(now);
    ((now - since) / 60_000).max(0)
}

/// Why the person was escalated, with the platform's reason where it refused the message.
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
    if e.urgent_open() {
        return "要対応 / urgent".to_string();
    }
    if let Some(o) = e.outcome {
        return o.label().to_string();
    }
    if e.state.is_confirmed() {
        return "後から既読 / read late".to_string();
    }
    "要電話 / to call".to_string()
}

/// The department, or the shelter for a shelter phone.
pub fn group(e: &CallListEntry) -> String {
    match e.kind {
        ContactKind::ShelterPhone => format!(
            "避難所: {}",
            e.shelter.as_deref().unwrap_or(crate::rollcall::NO_SHELTER)
        ),
        ContactKind::Staff => {
            let dept = e
                .department
                .clone()
                .unwrap_or_else(|| crate::rollcall::NO_DEPARTMENT.into());
            match &e.shelter {
                Some(s) => format!("{dept} (避難所担当: {s})"),
                None => dept,
            }
        }
    }
}

/// "三条 太郎 (さんじょう たろう)".
pub fn name_with_kana(e: &CallListEntry) -> String {
    match e.kana.as_deref().filter(|k| !k.trim().is_empty()) {
        Some(k) => format!("{} ({k})", e.name),
        None => e.name.clone(),
    }
}

/// An E.164 number as a person dials it in Japan.
pub fn national(e164: &str) -> String {
    crate::contacts::PhoneNumber::parse(e164)
        .map(|p| p.national())
        .unwrap_or_else(|_| e164.to_string())
}

fn phones(e: &CallListEntry) -> String {
    if e.phones.is_empty() {
        "(電話番号なし)".to_string()
    } else {
        e.phones
            .iter()
            .map(|p| national(p))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn clock_time(t: Millis, tz: Tz) -> String {
    from_millis(t)
        .with_timezone(&tz)
        .format("%H:%M")
        .to_string()
}

fn full_time(t: Option<Millis>, tz: Tz) -> String {
    t.map(|t| {
        from_millis(t)
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    })
    .unwrap_or_default()
}

/// "救助要請 / Need help 03:12" — the answer's label and when it came.
pub fn answer_line(a: &GivenAnswer, tz: Tz) -> String {
    format!("{} {}", a.label, clock_time(a.at, tz))
}

/// Pads to `width` terminal columns, counting East Asian wide characters as two and
/// half-width katakana as one.
pub fn pad(s: &str, width: usize) -> String {
    let w = UnicodeWidthStr::width(s);
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

/// `s` right-aligned in `width` display columns, after one space: numbers under a Japanese
/// header line up whatever the header's width.
pub fn pad_left(s: &str, width: usize) -> String {
    let w = UnicodeWidthStr::width(s);
    format!(" {}{s}", " ".repeat(width.saturating_sub(w)))
}

/// The section an entry is listed under.
fn section(e: &CallListEntry) -> &'static str {
    match e.action() {
        Some(Action::Urgent) => "■ 要対応（救助要請・負傷など）/ urgent answers",
        Some(Action::SilentShelter) => "■ 避難所 応答なし / silent shelters",
        Some(Action::NeverRead) => "■ 未読（期限切れ）/ never read by the deadline",
        Some(Action::NotSent) => "■ 送信できず / message could not go out",
        None => "■ 対応済み・後から確認 / closed or confirmed later",
    }
}

/// A table for a terminal or a printer: one section per kind of action, each entry on one
/// line with what the person answered, then their free text and HQ's notes indented below.
pub fn render_table(entries: &[CallListEntry], scope: ListScope, now: Millis, tz: Tz) -> String {
    let mut out = String::new();
    let rows: Vec<&CallListEntry> = select(entries, scope).collect();
    if rows.is_empty() {
        out.push_str("対応が必要な人はいません / nobody needs HQ now\n");
        return out;
    }
    const HEADERS: [&str; 7] = [
        "#",
        "ID",
        "氏名 (ふりがな) / name",
        "役職",
        "所属・避難所 / group",
        "電話 / phones",
        "経過",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .enumerate()
        .map(|(i, e)| {
            [
                (i + 1).to_string(),
                e.staff_id.as_str().to_string(),
                name_with_kana(e),
                e.role.clone().unwrap_or_else(|| "-".into()),
                group(e),
                phones(e),
                format!("{}分", minutes_waiting(e, now)),
            ]
        })
        .collect();
    // Each column as wide as its widest value (wide characters count two), plus a gap, so
    // long names and shelter assignments never push the columns out of line.
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| {
            cells
                .iter()
                .map(|r| UnicodeWidthStr::width(r[c].as_str()))
                .chain([UnicodeWidthStr::width(HEADERS[c])])
                .max()
                .unwrap_or(0)
                + 2
        })
        .collect();
    let columns = |values: &[&str]| -> String {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| pad(v, *w))
            .collect()
    };
    let mut current = "";
    for (i, e) in rows.iter().enumerate() {
        let sec = section(e);
        if sec != current {
            let n = rows.iter().filter(|x| section(x) == sec).count();
            if !current.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("{sec} — {n}名\n"));
            out.push_str(&format!("{}回答・理由 / answer, why\n", columns(&HEADERS)));
            current = sec;
        }
        let said = match (&e.standing, e.action()) {
            (Some(a), _) => answer_line(a, tz),
            (None, _) => why(e),
        };
        let row: Vec<&str> = cells[i].iter().map(String::as_str).collect();
        let mut line = format!("{}{said}", columns(&row));
        if let (Some(by), Some(until)) = (&e.claimed_by, e.claimed_until) {
            if until > now {
                line.push_str(&format!("  [対応中: {}]", desk_of(by)));
            }
        }
        if scope == ListScope::All {
            line.push_str(&format!("  [{}]", status(e)));
            if let (Some(at), Some(by)) = (e.outcome_at, &e.outcome_by) {
                line.push_str(&format!(" {} {}", clock_time(at, tz), desk_of(by)));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if let Some(t) = e.standing.as_ref().and_then(|a| a.text.as_deref()) {
            out.push_str(&format!("       「{}」\n", one_line(t)));
        }
        if let Some(l) = &e.latest {
            let text = l
                .text
                .as_deref()
                .map(|t| format!(" 「{}」", one_line(t)))
                .unwrap_or_default();
            out.push_str(&format!("       最新: {}{text}\n", answer_line(l, tz)));
        }
        for n in &e.notes {
            out.push_str(&format!(
                "       メモ {} {}: {}\n",
                clock_time(n.at, tz),
                desk_of(&n.by),
                one_line(&n.text)
            ));
        }
    }
    out
}

/// Free text on one line of a table.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What HQ sees of who recorded something: the desk the person named on the page
/// ("caller#1/受付2" -> "受付2"), else the token's name.
pub fn desk_of(by: &str) -> &str {
    by.rsplit_once('/').map_or(by, |(_, desk)| desk)
}

/// CSV with a UTF-8 byte-order mark, which Japanese Excel needs to show the text correctly.
pub fn render_csv(entries: &[CallListEntry], scope: ListScope, now: Millis, tz: Tz) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(vec![0xEF, 0xBB, 0xBF]);
    let _ = w.write_record([
        "順番",
        "区分",
        "職員ID",
        "氏名",
        "ふりがな",
        "役職",
        "所属",
        "避難所",
        "種別",
        "優先度",
        "電話1",
        "電話2",
        "送信時刻",
        "経過(分)",
        "回答",
        "回答レベル",
        "自由記述",
        "回答時刻",
        "最新の回答",
        "理由",
        "状態",
        "通話結果(代理回答)",
        "記録者",
        "記録時刻",
        "対応中",
        "メモ",
    ]);
    for (i, e) in select(entries, scope).enumerate() {
        let standing = e.standing.as_ref();
        let notes = e
            .notes
            .iter()
            .map(|n| {
                format!(
                    "{} {}: {}",
                    full_time(Some(n.at), tz),
                    desk_of(&n.by),
                    n.text
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let _ = w.write_record([
            (i + 1).to_string(),
            e.action().map_or("対応済み", |a| a.label()).to_string(),
            e.staff_id.to_string(),
            e.name.clone(),
            e.kana.clone().unwrap_or_default(),
            e.role.clone().unwrap_or_default(),
            e.department.clone().unwrap_or_default(),
            e.shelter.clone().unwrap_or_default(),
            match e.kind {
                ContactKind::Staff => "職員".into(),
                ContactKind::ShelterPhone => "避難所".into(),
            },
            e.call_priority.to_string(),
            e.phones.first().map(|p| national(p)).unwrap_or_default(),
            e.phones.get(1).map(|p| national(p)).unwrap_or_default(),
            full_time(e.sent_at, tz),
            minutes_waiting(e, now).to_string(),
            standing.map(|a| a.label.clone()).unwrap_or_default(),
            standing
                .map(|a| a.level.label().to_string())
                .unwrap_or_default(),
            standing.and_then(|a| a.text.clone()).unwrap_or_default(),
            full_time(standing.map(|a| a.at), tz),
            e.latest
                .as_ref()
                .map(|l| match &l.text {
                    Some(t) => format!("{}: {t}", l.label),
                    None => l.label.clone(),
                })
                .unwrap_or_default(),
            why(e),
            status(e),
            e.outcome.map(|o| o.label().to_string()).unwrap_or_default(),
            e.outcome_by
                .as_deref()
                .map(desk_of)
                .unwrap_or_default()
                .to_string(),
            full_time(e.outcome_at, tz),
            match (&e.claimed_by, e.claimed_until) {
                (Some(by), Some(until)) if until > now => desk_of(by).to_string(),
                _ => String::new(),
            },
            notes,
        ]);
    }
    w.into_inner().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::AnswerLevel;
    use crate::ids::StaffId;
    use crate::rollcall::{CallOutcome, DeliveryState, EscalationReason, Note};

    pub(crate) fn entry(
        id: &str,
        state: DeliveryState,
        outcome: Option<CallOutcome>,
    ) -> CallListEntry {
        CallListEntry {
            delivery_id: 1,
            staff_id: StaffId::parse(id).unwrap(),
            name: "田中 一郎".into(),
            kana: Some("たなか いちろう".into()),
            role: Some("主査".into()),
            department: Some("防災対策室".into()),
            shelter: None,
            kind: ContactKind::Staff,
            call_priority: 1,
            phones: vec!["+819012345678".into()],
            phones_national: vec!["090-1234-5678".into()],
            state,
            reason: Some(EscalationReason::NeverRead),
            last_error: None,
            sent_at: Some(0),
            escalated_at: Some(300_000),
            read_at: None,
            standing: None,
            latest: None,
            answer: None,
            outcome,
            outcome_at: outcome.map(|_| 400_000),
            outcome_by: outcome.map(|_| "caller#1/受付2".to_string()),
            notes: Vec::new(),
            claimed_by: None,
            claimed_until: None,
            resent_at: None,
            urgent_at: None,
        }
    }

    fn urgent(id: &str, at: Millis, text: Option<&str>) -> CallListEntry {
        let mut e = entry(id, DeliveryState::Answered, None);
        e.escalated_at = None;
        e.reason = None;
        e.standing = Some(GivenAnswer {
            level: AnswerLevel::Urgent,
            value: if text.is_some() { "text" } else { "need_help" }.into(),
            label: if text.is_some() {
                crate::answers::TEXT_LABEL
            } else {
                "救助要請 / Need help"
            }
            .into(),
            text: text.map(str::to_string),
            at,
        });
        e
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
    fn urgent_answers_come_first_then_silent_shelters_never_read_and_not_sent() {
        let mut shelter = entry("SH1", DeliveryState::Sent, None);
        shelter.kind = ContactKind::ShelterPhone;
        shelter.call_priority = 9;
        let mut failed = entry("F1", DeliveryState::Failed, None);
        failed.reason = Some(EscalationReason::SendFailed);
        failed.call_priority = 0;
        let never = entry("N1", DeliveryState::Sent, None);
        let help = urgent("U1", 500_000, None);
        let mut list = [failed, never, shelter, help];
        list.sort_by(CallListEntry::call_order);
        let order: Vec<_> = list.iter().map(|e| e.staff_id.to_string()).collect();
        assert_eq!(order, ["U1", "SH1", "N1", "F1"]);
        let actions: Vec<_> = list.iter().map(|e| e.action().unwrap()).collect();
        assert_eq!(
            actions,
            [
                Action::Urgent,
                Action::SilentShelter,
                Action::NeverRead,
                Action::NotSent
            ]
        );
    }

    #[test]
    fn an_urgent_entry_stays_until_an_outcome_after_it_and_reopens_on_a_new_one() {
        let mut e = urgent("U1", 500_000, None);
        assert!(e.to_call());
        // An outcome recorded before the urgent answer came does not close it.
        e.outcome = Some(CallOutcome::ReachedSafe);
        e.outcome_at = Some(400_000);
        assert!(e.urgent_open());
        e.outcome_at = Some(600_000);
        assert!(!e.urgent_open() && !e.to_call());
        // "No answer" never closes it.
        e.outcome = Some(CallOutcome::NoAnswer);
        assert!(e.urgent_open());
    }

    #[test]
    fn table_shows_the_answer_the_free_text_and_notes_under_their_section() {
        let mut help = urgent("U1", 120_000, Some("足を怪我、家から出られない"));
        help.notes.push(Note {
            at: 180_000,
            by: "caller#1/受付2".into(),
            text: "消防に連絡済み".into(),
        });
        let list = vec![help, entry("N1", DeliveryState::Sent, None)];
        let t = render_table(&list, ListScope::ToCall, 600_000, chrono_tz::Asia::Tokyo);
        let urgent_at = t.find("要対応").unwrap();
        let never_at = t.find("未読").unwrap();
        assert!(urgent_at < never_at, "{t}");
        assert!(t.contains("「足を怪我、家から出られない」"), "{t}");
        assert!(t.contains("消防に連絡済み") && t.contains("受付2"), "{t}");
        assert!(
            t.contains("田中 一郎 (たなか いちろう)") && t.contains("主査"),
            "{t}"
        );
    }

    #[test]
    fn csv_starts_with_a_bom_and_shows_domestic_numbers_and_answers() {
        let list = vec![
            urgent("U1", 60_000, Some("閉じ込められた")),
            entry("A", DeliveryState::Sent, None),
        ];
        let csv = render_csv(&list, ListScope::ToCall, 600_000, chrono_tz::Asia::Tokyo);
        assert_eq!(&csv[..3], &[0xEF, 0xBB, 0xBF]);
        let text = String::from_utf8(csv[3..].to_vec()).unwrap();
        assert!(text.contains("090-1234-5678"), "{text}");
        assert!(text.contains("閉じ込められた"), "{text}");
        assert!(text.contains(",10,"), "ten minutes since sent: {text}");
    }

    #[test]
    fn table_says_when_nobody_is_left() {
        let list = vec![entry("B", DeliveryState::Answered, None)];
        let t = render_table(&list, ListScope::ToCall, 0, chrono_tz::Asia::Tokyo);
        assert!(t.contains("nobody needs HQ now"));
    }

    #[test]
    fn pad_left_lines_numbers_up_under_wide_headers() {
        assert_eq!(pad_left("確認済", 6), " 確認済");
        assert_eq!(pad_left("8", 6), "      8");
        assert_eq!(
            UnicodeWidthStr::width(pad_left("要電話", 6).as_str()),
            UnicodeWidthStr::width(pad_left("12", 6).as_str())
        );
        // Wider than its column: still one space before it.
        assert_eq!(pad_left("1234567", 6), " 1234567");
    }

    #[test]
    fn pad_counts_wide_and_half_width_katakana_columns() {
        assert_eq!(UnicodeWidthStr::width(pad("ｻﾝｼﾞｮｳ", 8).as_str()), 8);
        assert_eq!(UnicodeWidthStr::width(pad("三条", 8).as_str()), 8);
        assert_eq!(pad("三条太郎五", 8), "三条太郎五 ");
    }
}
