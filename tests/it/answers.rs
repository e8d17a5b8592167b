//! What answers mean, on every backend: levels, the most severe answer standing, urgent
//! answers on the action list before any deadline, closed roll calls never changing, late
//! urgent answers kept for HQ, HQ's notes and outcomes for any named person, the one order of
//! the action list shared by the list and the call queue, and the re-send.

use std::time::Duration;

use anpi::answers::AnswerLevel;
use anpi::contacts::{synthetic, Contact, ContactKind};
use anpi::ids::{ChatHandle, RollCallId, StaffId};
use anpi::providers::{InboundEvent, InboundKind};
use anpi::rollcall::{self, Action, CallOutcome, SendResult};
use anpi::scenario::Scenario;
use anpi::store::{ResendResult, SharedStore, StoreError};

use crate::support::all_backends as backends;

fn quake(resend: Option<&str>) -> Scenario {
    let resend = resend
        .map(|r| format!("[escalation]\nresend_after = \"{r}\"\n"))
        .unwrap_or_default();
    Scenario::parse(
        &format!(
            r#"
name = "quake"
title = "地震 安否確認"
deadline = "5m"
[message]
ja = "【安否確認】下のボタンを押してください。"
en = "Safety check: tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
level = "ok"
[[buttons]]
label = "出動不可 / Cannot work"
value = "cannot_work"
level = "attention"
[[buttons]]
label = "負傷 / Injured"
value = "injured"
level = "urgent"
[[buttons]]
label = "救助要請 / Need help"
value = "need_help"
level = "urgent"
{resend}"#
        ),
        "quake.toml",
    )
    .unwrap()
}

struct Fixture {
    rc: rollcall::RollCall,
    contacts: Vec<Contact>,
}

impl Fixture {
    fn handle(&self, i: usize) -> ChatHandle {
        self.contacts[i].chat.get("simulator").unwrap().clone()
    }
    fn staff(&self, i: usize) -> StaffId {
        self.contacts[i].id.clone()
    }
    /// The first staff member (not a shelter phone) from index `from`.
    fn staff_index(&self, from: usize) -> usize {
        (from..self.contacts.len())
            .find(|&i| self.contacts[i].kind == ContactKind::Staff)
            .unwrap()
    }
    fn shelter_index(&self) -> usize {
        (0..self.contacts.len())
            .find(|&i| self.contacts[i].kind == ContactKind::ShelterPhone)
            .unwrap()
    }
}

/// A roll call of `n` synthetic people, everyone sent at 2,000 (deadline 302,000).
async fn sent_roll_call(store: &SharedStore, n: usize, resend: Option<&str>) -> Fixture {
    let contacts = synthetic::generate(n, 1).contacts;
    start_and_send(store, contacts, resend, 1_000).await
}

async fn start_and_send(
    store: &SharedStore,
    contacts: Vec<Contact>,
    resend: Option<&str>,
    at: i64,
) -> Fixture {
    let (new, rec) = rollcall::compose(&quake(resend), &contacts, "simulator", None, None);
    let rc = store.create_roll_call(&new, &rec, at).await.unwrap();
    let claimed = store
        .claim_due_deliveries("simulator", at + 1_000, Duration::from_secs(60), 100_000)
        .await
        .unwrap();
    let results: Vec<SendResult> = claimed
        .iter()
        .filter(|d| d.roll_call_id == rc.id)
        .map(|d| SendResult::Sent {
            id: d.id,
            at: at + 1_000,
            deadline_at: at + 301_000,
            message_id: None,
        })
        .collect();
    store
        .record_send_results(&results, at + 1_500)
        .await
        .unwrap();
    Fixture { rc, contacts }
}

fn ev(
    id: &str,
    rc: Option<RollCallId>,
    from: &ChatHandle,
    kind: InboundKind,
    at: i64,
) -> InboundEvent {
    InboundEvent {
        event_id: id.into(),
        roll_call_id: rc,
        from: from.clone(),
        kind,
        occurred_at: chrono::DateTime::from_timestamp_millis(at).unwrap(),
    }
}

fn button(v: &str) -> InboundKind {
    InboundKind::Answer { value: v.into() }
}

fn text(t: &str) -> InboundKind {
    InboundKind::Reply { text: t.into() }
}

async fn apply(
    store: &SharedStore,
    events: &[InboundEvent],
    now: i64,
) -> anpi::store::ApplySummary {
    store
        .apply_events("simulator", events, None, now)
        .await
        .unwrap()
}

#[tokio::test]
async fn need_help_then_a_sticker_and_text_stays_urgent_at_the_top_until_hq_closes_it() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 40, None).await;
        let p = f.staff_index(5);
        let h = f.handle(p);
        let s = apply(
            &store,
            &[
                ev("a1", Some(f.rc.id), &h, button("need_help"), 10_000),
                ev(
                    "a2",
                    None,
                    &h,
                    InboundKind::Sticker { id: "ok".into() },
                    11_000,
                ),
                ev("a3", None, &h, text("大丈夫です"), 12_000),
            ],
            13_000,
        )
        .await;
        assert_eq!(s.urgent, 1, "{name}");

        // On the action list at once, long before the deadline (302,000), at the top.
        let list = store.call_list(f.rc.id).await.unwrap();
        let top = &list[0];
        assert_eq!(top.staff_id, f.staff(p), "{name}: {list:?}");
        assert_eq!(top.action(), Some(Action::Urgent), "{name}");
        let standing = top.standing.as_ref().unwrap();
        assert_eq!(
            (
                standing.level,
                standing.value.as_str(),
                standing.label.as_str()
            ),
            (AnswerLevel::Urgent, "need_help", "救助要請 / Need help"),
            "{name}"
        );
        let latest = top.latest.as_ref().unwrap();
        assert_eq!(latest.text.as_deref(), Some("大丈夫です"), "{name}");
        assert_eq!(top.answer.as_deref(), Some("text"), "{name}");

        let prog = store.progress(f.rc.id).await.unwrap();
        assert_eq!(prog.overall.urgent_open, 1, "{name}");
        assert_eq!(prog.overall.answered_urgent, 1, "{name}");
        assert_eq!(
            prog.answers.get("need_help"),
            Some(&1),
            "{name}: {:?}",
            prog.answers
        );
        assert_eq!(store.urgent_open().await.unwrap(), 1, "{name}");

        // Escalation at the deadline changes nothing about it.
        store.escalate_due(400_000).await.unwrap();
        let list = store.call_list(f.rc.id).await.unwrap();
        assert_eq!(list[0].staff_id, f.staff(p), "{name}");

        // HQ closes it with an outcome and a note; it leaves the open list, audited.
        let e = store
            .record_call(
                f.rc.id,
                &f.staff(p),
                Some(CallOutcome::ReachedNeedsHelp),
                Some("自宅1階、消防に連絡済み"),
                "caller#1/受付2",
                420_000,
                false,
            )
            .await
            .unwrap();
        assert!(!e.to_call(), "{name}");
        assert_eq!(e.notes.len(), 1, "{name}");
        assert_eq!(e.notes[0].text, "自宅1階、消防に連絡済み");
        assert_eq!(e.notes[0].by, "caller#1/受付2");
        assert_eq!(
            store.progress(f.rc.id).await.unwrap().overall.urgent_open,
            0
        );
        let log = store.events(f.rc.id, 100).await.unwrap();
        assert!(
            log.iter().any(|l| l.kind == "call_outcome"
                && l.value
                    .as_deref()
                    .is_some_and(|v| v.contains("消防に連絡済み"))),
            "{name}: {log:?}"
        );

        // A new urgent answer after HQ closed it opens it again.
        apply(
            &store,
            &[ev("a4", Some(f.rc.id), &h, button("injured"), 430_000)],
            431_000,
        )
        .await;
        let e = store.entry(f.rc.id, &f.staff(p)).await.unwrap().unwrap();
        assert_eq!(e.action(), Some(Action::Urgent), "{name}");
    }
}

#[tokio::test]
async fn free_text_is_shown_verbatim_and_urgent_only_with_a_help_word() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 20, None).await;
        let a = f.staff_index(0);
        let b = f.staff_index(a + 1);
        let c = f.staff_index(b + 1);
        let (a, b, c) = ((a, f.handle(a)), (b, f.handle(b)), (c, f.handle(c)));
        apply(
            &store,
            &[
                ev("t1", None, &a.1, text("足を怪我、家から出られない"), 5_000),
                ev("t2", None, &b.1, text("遅れて出勤します"), 5_000),
                // A value that is not one of the buttons (another bot's) is kept as text.
                ev("t3", Some(f.rc.id), &c.1, button("going_home"), 5_000),
            ],
            6_000,
        )
        .await;
        let ea = store.entry(f.rc.id, &f.staff(a.0)).await.unwrap().unwrap();
        let sa = ea.standing.unwrap();
        assert_eq!(sa.level, AnswerLevel::Urgent, "{name}");
        assert_eq!(sa.text.as_deref(), Some("足を怪我、家から出られない"));
        let eb = store.entry(f.rc.id, &f.staff(b.0)).await.unwrap().unwrap();
        let sb = eb.standing.clone().unwrap();
        assert_eq!(sb.level, AnswerLevel::Attention, "{name}");
        assert_eq!(sb.text.as_deref(), Some("遅れて出勤します"));
        assert!(
            !eb.to_call(),
            "{name}: attention is shown, not on the action list"
        );
        let ec = store.entry(f.rc.id, &f.staff(c.0)).await.unwrap().unwrap();
        let sc = ec.standing.unwrap();
        assert_eq!(
            (sc.level, sc.value.as_str()),
            (AnswerLevel::Attention, "text")
        );
        assert_eq!(sc.text.as_deref(), Some("going_home"), "{name}");
    }
}

#[tokio::test]
async fn a_closed_roll_call_never_changes_and_a_late_urgent_answer_still_reaches_hq() {
    for (name, store, _db) in backends().await {
        let contacts = synthetic::generate(10, 1).contacts;
        let first = start_and_send(&store, contacts.clone(), None, 1_000).await;
        assert!(store.close_roll_call(first.rc.id, 50_000).await.unwrap());
        let second = start_and_send(&store, contacts, None, 60_000).await;
        let p = first.staff_index(0);
        let h = first.handle(p);

        // A plain answer to the closed roll call: logged, nothing changes anywhere.
        apply(
            &store,
            &[ev("c1", Some(first.rc.id), &h, button("safe"), 70_000)],
            70_001,
        )
        .await;
        let old = store
            .entry(first.rc.id, &first.staff(p))
            .await
            .unwrap()
            .unwrap();
        assert!(old.standing.is_none(), "{name}");
        assert_eq!(old.state, rollcall::DeliveryState::Sent, "{name}");
        let new = store
            .entry(second.rc.id, &first.staff(p))
            .await
            .unwrap()
            .unwrap();
        assert!(new.standing.is_none(), "{name}");
        assert_eq!(
            store.events(first.rc.id, 10).await.unwrap().len(),
            1,
            "{name}: kept in the record"
        );

        // An urgent tap on the closed one reaches HQ on the open roll call.
        apply(
            &store,
            &[ev("c2", Some(first.rc.id), &h, button("need_help"), 71_000)],
            71_001,
        )
        .await;
        let old = store
            .entry(first.rc.id, &first.staff(p))
            .await
            .unwrap()
            .unwrap();
        assert!(
            old.standing.is_none(),
            "{name}: the closed one never changes"
        );
        let new = store
            .entry(second.rc.id, &first.staff(p))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.action(), Some(Action::Urgent), "{name}");
        assert_eq!(new.standing.unwrap().label, "救助要請 / Need help");

        // Free text names no roll call: the newest open one takes it.
        let q = first.staff_index(p + 1);
        apply(
            &store,
            &[ev("c3", None, &first.handle(q), text("無事"), 72_000)],
            72_001,
        )
        .await;
        let e = store
            .entry(second.rc.id, &first.staff(q))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.standing.unwrap().text.as_deref(), Some("無事"), "{name}");

        // Closing the roll call does not take someone who asked for help off HQ's list: the
        // open urgent answer is carried to the late answers.
        assert!(store.close_roll_call(second.rc.id, 80_000).await.unwrap());
        let carried = store.late_answers(true).await.unwrap();
        assert_eq!(carried.len(), 1, "{name}: {carried:?}");
        assert_eq!(carried[0].staff_id, first.staff(p));
        assert_eq!(carried[0].answer.label, "救助要請 / Need help");
        assert_eq!(store.urgent_open().await.unwrap(), 1, "{name}");
        assert!(store
            .close_late_answer(carried[0].id, "hq", "消防へ連絡済み", 85_000)
            .await
            .unwrap());
        // Closing it again carries nothing twice.
        assert!(!store.close_roll_call(second.rc.id, 86_000).await.unwrap());
        assert!(store.late_answers(true).await.unwrap().is_empty(), "{name}");

        // With nothing open, an urgent answer is kept as a late answer until HQ closes it.
        let s = apply(
            &store,
            &[ev("c4", None, &h, text("閉じ込められた"), 90_000)],
            90_001,
        )
        .await;
        assert_eq!(s.late, 1, "{name}");
        apply(
            &store,
            &[ev("c5", None, &first.handle(q), text("ok"), 90_000)],
            90_002,
        )
        .await;
        let late = store.late_answers(true).await.unwrap();
        assert_eq!(late.len(), 1, "{name}: {late:?}");
        assert_eq!(late[0].staff_id, first.staff(p));
        assert_eq!(late[0].roll_call_id, second.rc.id);
        assert_eq!(late[0].answer.text.as_deref(), Some("閉じ込められた"));
        assert!(!late[0].phones.is_empty(), "{name}: HQ can call back");
        assert_eq!(store.urgent_open().await.unwrap(), 1, "{name}");
        assert!(store
            .close_late_answer(late[0].id, "hq", "救急搬送済み", 95_000)
            .await
            .unwrap());
        assert!(store.late_answers(true).await.unwrap().is_empty(), "{name}");
        let all = store.late_answers(false).await.unwrap();
        assert_eq!(all.len(), 2, "{name}");
        assert!(
            all.iter()
                .any(|l| l.note.as_deref() == Some("救急搬送済み")),
            "{name}"
        );
        assert_eq!(store.urgent_open().await.unwrap(), 0, "{name}");
        // Outcomes on a closed roll call are refused with the reason.
        let e = store
            .record_call(
                second.rc.id,
                &first.staff(p),
                None,
                Some("x"),
                "hq",
                96_000,
                false,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Closed(_)), "{name}: {e:?}");
    }
}

#[tokio::test]
async fn answer_times_are_never_before_the_send_nor_after_receipt() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 10, None).await;
        let (a, b) = (f.staff_index(0), f.staff_index(1));
        // The send went out at 2,000; a platform clock days behind, another ahead.
        apply(
            &store,
            &[
                ev(
                    "t1",
                    Some(f.rc.id),
                    &f.handle(a),
                    button("safe"),
                    -86_400_000,
                ),
                ev(
                    "t2",
                    Some(f.rc.id),
                    &f.handle(b),
                    button("safe"),
                    99_999_999,
                ),
            ],
            50_000,
        )
        .await;
        let ea = store.entry(f.rc.id, &f.staff(a)).await.unwrap().unwrap();
        assert_eq!(ea.standing.unwrap().at, 2_000, "{name}");
        assert_eq!(ea.read_at, Some(2_000), "{name}");
        let eb = store.entry(f.rc.id, &f.staff(b)).await.unwrap().unwrap();
        assert_eq!(eb.standing.unwrap().at, 50_000, "{name}");
    }
}

#[tokio::test]
async fn shelter_phones_answer_with_shelter_buttons() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 40, None).await;
        let sh = f.shelter_index();
        let st = f.staff_index(0);
        apply(
            &store,
            &[
                ev(
                    "s1",
                    Some(f.rc.id),
                    &f.handle(sh),
                    button("need_support"),
                    5_000,
                ),
                ev(
                    "s2",
                    Some(f.rc.id),
                    &f.handle(st),
                    button("need_support"),
                    5_000,
                ),
            ],
            6_000,
        )
        .await;
        let e = store.entry(f.rc.id, &f.staff(sh)).await.unwrap().unwrap();
        let a = e.standing.unwrap();
        assert_eq!(
            (a.level, a.label.as_str()),
            (AnswerLevel::Urgent, "支援が必要 / Need support"),
            "{name}"
        );
        // Not a staff button: kept as free text, attention.
        let e = store.entry(f.rc.id, &f.staff(st)).await.unwrap().unwrap();
        assert_eq!(e.standing.unwrap().level, AnswerLevel::Attention, "{name}");
    }
}

#[tokio::test]
async fn the_call_queue_hands_out_people_in_the_action_lists_order() {
    for (name, store, _db) in backends().await {
        // One of each: no chat id (not sent), urgent answers, shelters and staff never read.
        let mut contacts = synthetic::generate(40, 1).contacts;
        let unreachable = (10..40)
            .find(|&i| contacts[i].kind == ContactKind::Staff)
            .unwrap();
        contacts[unreachable].chat.clear();
        let f = start_and_send(&store, contacts, None, 1_000).await;
        let u1 = f.staff_index(20);
        let u2 = f.staff_index(u1 + 1);
        apply(
            &store,
            &[
                ev("q1", Some(f.rc.id), &f.handle(u1), button("injured"), 9_000),
                ev("q2", None, &f.handle(u2), text("助けて"), 8_000),
            ],
            10_000,
        )
        .await;
        store.escalate_due(400_000).await.unwrap();
        let list: Vec<_> = store
            .call_list(f.rc.id)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.to_call())
            .collect();
        assert_eq!(list[0].action(), Some(Action::Urgent), "{name}");
        let mut urgent: Vec<_> = list[..2].iter().map(|e| e.staff_id.clone()).collect();
        urgent.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut want = vec![f.staff(u1), f.staff(u2)];
        want.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(
            urgent, want,
            "{name}: urgent answers first, before any deadline entry"
        );
        assert_eq!(list[2].action(), Some(Action::SilentShelter), "{name}");
        assert_eq!(
            list.last().unwrap().action(),
            Some(Action::NotSent),
            "{name}"
        );
        // The list's order, from Rust, is the one the queue hands out from SQL.
        let mut sorted = list.clone();
        sorted.sort_by(rollcall::CallListEntry::call_order);
        let ids = |l: &[rollcall::CallListEntry]| {
            l.iter().map(|e| e.staff_id.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&list), ids(&sorted), "{name}");
        let mut queue = Vec::new();
        for i in 0..list.len() {
            let got = store
                .claim_next_call(
                    f.rc.id,
                    &format!("desk{i}"),
                    410_000,
                    Duration::from_secs(60),
                )
                .await
                .unwrap()
                .unwrap();
            queue.push(got);
        }
        assert_eq!(ids(&queue), ids(&list), "{name}");
    }
}

#[tokio::test]
async fn hq_records_a_note_or_an_outcome_for_any_named_person() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 20, None).await;
        let p = f.staff_index(3);
        // They phoned in: not escalated, not at the head of any queue.
        let e = store
            .record_call(
                f.rc.id,
                &f.staff(p),
                None,
                Some("本人から電話: 避難所にいる"),
                "caller#2/受付1",
                10_000,
                false,
            )
            .await
            .unwrap();
        assert_eq!(e.notes.len(), 1, "{name}");
        let e = store
            .record_call(
                f.rc.id,
                &f.staff(p),
                Some(CallOutcome::ReachedSafe),
                Some("無事を確認"),
                "caller#2/受付1",
                11_000,
                false,
            )
            .await
            .unwrap();
        assert_eq!(e.outcome, Some(CallOutcome::ReachedSafe), "{name}");
        assert_eq!(
            e.notes.iter().map(|n| n.text.as_str()).collect::<Vec<_>>(),
            ["本人から電話: 避難所にいる", "無事を確認"],
            "{name}"
        );
        let list = store.call_list(f.rc.id).await.unwrap();
        assert!(list.iter().any(|x| x.staff_id == f.staff(p)), "{name}");
        // Search finds every recipient, with kana and role.
        let people = store.recipients(f.rc.id).await.unwrap();
        assert_eq!(people.len(), 20, "{name}");
        let err = store
            .record_call(
                f.rc.id,
                &StaffId::parse("NOBODY").unwrap(),
                None,
                Some("x"),
                "hq",
                12_000,
                false,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::NoSuchRecipient { .. }),
            "{name}: {err:?}"
        );
    }
}

/// `f`'s first staff member reads at 30,000, before a re-send after 1m falls due.
async fn first_reads(store: &SharedStore, f: &Fixture) {
    apply(
        store,
        &[ev(
            "r1",
            Some(f.rc.id),
            &f.handle(f.staff_index(0)),
            InboundKind::Read,
            30_000,
        )],
        30_001,
    )
    .await;
}

#[tokio::test]
async fn the_resend_goes_once_to_the_unread_when_it_falls_due() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 10, Some("1m")).await;
        // Sent at 2,000: due at 62,000.
        assert_eq!(
            store.next_resend("simulator").await.unwrap(),
            Some(62_000),
            "{name}"
        );
        let lease = Duration::from_secs(30);
        assert!(store
            .claim_due_resends("simulator", 61_999, lease, 100)
            .await
            .unwrap()
            .is_empty());
        // One reads before it is due: no re-send for them.
        first_reads(&store, &f).await;
        let due = store
            .claim_due_resends("simulator", 62_000, lease, 100)
            .await
            .unwrap();
        assert_eq!(due.len(), 9, "{name}");
        // Claimed: not handed out twice while the claim holds.
        assert!(store
            .claim_due_resends("simulator", 62_001, lease, 100)
            .await
            .unwrap()
            .is_empty());
        // Nothing else waits: the next time to look is when the claim lapses (the reader's
        // earlier message counts for nothing).
        assert_eq!(
            store.next_resend("simulator").await.unwrap(),
            Some(92_000),
            "{name}"
        );
        let (first, rest) = due.split_at(1);
        let mut results: Vec<ResendResult> = rest
            .iter()
            .map(|d| ResendResult::Sent {
                id: d.id,
                at: 62_100,
            })
            .collect();
        results.push(ResendResult::Retry {
            id: first[0].id,
            next: 70_000,
            error: "503".into(),
        });
        store.record_resends(&results).await.unwrap();
        assert_eq!(
            store.next_resend("simulator").await.unwrap(),
            Some(70_000),
            "{name}"
        );
        let again = store
            .claim_due_resends("simulator", 70_000, lease, 100)
            .await
            .unwrap();
        assert_eq!(again.len(), 1, "{name}");
        store
            .record_resends(&[ResendResult::Sent {
                id: again[0].id,
                at: 70_100,
            }])
            .await
            .unwrap();
        assert_eq!(
            store.next_resend("simulator").await.unwrap(),
            None,
            "{name}"
        );
        let p = store.progress(f.rc.id).await.unwrap();
        assert_eq!(p.overall.resent, 9, "{name}");
        // Deadlines still count from the first send.
        assert_eq!(p.next_deadline_at, Some(302_000), "{name}");
    }
}

#[tokio::test]
async fn a_reply_with_a_nul_is_kept_and_does_not_stop_the_batch() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 10, None).await;
        let (a, b) = (f.staff_index(0), f.staff_index(1));
        let s = apply(
            &store,
            &[
                ev("n\0ul", None, &f.handle(a), text("閉じ込め\0られた"), 5_000),
                ev("n2", None, &f.handle(b), InboundKind::Read, 5_000),
            ],
            6_000,
        )
        .await;
        assert_eq!((s.logged, s.urgent), (2, 1), "{name}");
        let e = store.entry(f.rc.id, &f.staff(a)).await.unwrap().unwrap();
        let st = e.standing.unwrap();
        assert_eq!(st.level, AnswerLevel::Urgent, "{name}");
        assert_eq!(st.text.as_deref(), Some("閉じ込め\u{FFFD}られた"), "{name}");
        let eb = store.entry(f.rc.id, &f.staff(b)).await.unwrap().unwrap();
        assert!(
            eb.state.is_confirmed(),
            "{name}: the rest of the batch is stored"
        );
        // The same event again is a replay, not a new one.
        let again = apply(
            &store,
            &[ev(
                "n\0ul",
                None,
                &f.handle(a),
                text("閉じ込め\0られた"),
                5_000,
            )],
            7_000,
        )
        .await;
        assert_eq!(again.logged, 0, "{name}");
    }
}

#[tokio::test]
async fn a_plea_naming_a_roll_call_the_person_is_not_in_still_reaches_hq_and_the_first_stands() {
    for (name, store, _db) in backends().await {
        let f = sent_roll_call(&store, 20, None).await;
        let a = f.staff_index(0);
        let b = f.staff_index(a + 1);
        // Both name roll call 999, which neither person is in: the plea goes to their open
        // roll call, the calm reply stays in the record only.
        apply(
            &store,
            &[
                ev(
                    "n1",
                    Some(RollCallId(999)),
                    &f.handle(a),
                    text("閉じ込められた"),
                    5_000,
                ),
                ev(
                    "n2",
                    Some(RollCallId(999)),
                    &f.handle(b),
                    text("無事です"),
                    5_000,
                ),
            ],
            6_000,
        )
        .await;
        let ea = store.entry(f.rc.id, &f.staff(a)).await.unwrap().unwrap();
        assert_eq!(ea.action(), Some(rollcall::Action::Urgent), "{name}");
        assert_eq!(
            ea.standing.as_ref().unwrap().text.as_deref(),
            Some("閉じ込められた")
        );
        let eb = store.entry(f.rc.id, &f.staff(b)).await.unwrap().unwrap();
        assert!(eb.standing.is_none(), "{name}: {eb:?}");

        // A second urgent answer in a later batch is the latest; the first one stands.
        apply(
            &store,
            &[ev(
                "n3",
                Some(f.rc.id),
                &f.handle(a),
                button("injured"),
                8_000,
            )],
            9_000,
        )
        .await;
        let ea = store.entry(f.rc.id, &f.staff(a)).await.unwrap().unwrap();
        let (s, l) = (ea.standing.unwrap(), ea.latest.unwrap());
        assert_eq!(s.text.as_deref(), Some("閉じ込められた"), "{name}");
        assert_eq!(l.value, "injured", "{name}");
    }
}

#[tokio::test]
async fn a_database_at_schema_0012_keeps_its_resends_and_claims_when_it_migrates() {
    for (name, store, db) in backends().await {
        let f = sent_roll_call(&store, 10, Some("1m")).await;
        first_reads(&store, &f).await;
        let lease = Duration::from_secs(30);
        let claimed = store
            .claim_due_resends("simulator", 62_000, lease, 100)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 9, "{name}");
        drop(store);

        // Before migration 0013 the re-send index held read messages too, and claims had no
        // index: put that back and open the database with this version.
        db.execute("DROP INDEX deliveries_resend_lease").await;
        db.execute("DROP INDEX deliveries_resend").await;
        db.execute(
            "CREATE INDEX deliveries_resend ON deliveries (resend_at) \
             WHERE resend_at IS NOT NULL AND resent_at IS NULL",
        )
        .await;
        db.execute("DELETE FROM _sqlx_migrations WHERE version = 13")
            .await;
        let store = crate::store_contract::reopen(&db).await;

        // The claim made before still holds until it lapses, and then the same nine are due.
        assert_eq!(
            store.next_resend("simulator").await.unwrap(),
            Some(92_000),
            "{name}"
        );
        assert!(store
            .claim_due_resends("simulator", 91_999, lease, 100)
            .await
            .unwrap()
            .is_empty());
        let again = store
            .claim_due_resends("simulator", 92_000, lease, 100)
            .await
            .unwrap();
        let mut ids: Vec<i64> = again.iter().map(|d| d.id).collect();
        let mut before: Vec<i64> = claimed.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        before.sort_unstable();
        assert_eq!(ids, before, "{name}");
        let sent: Vec<ResendResult> = again
            .iter()
            .map(|d| ResendResult::Sent {
                id: d.id,
                at: 92_100,
            })
            .collect();
        store.record_resends(&sent).await.unwrap();
        assert_eq!(
            store.next_resend("simulator").await.unwrap(),
            None,
            "{name}"
        );
        assert_eq!(
            store.progress(f.rc.id).await.unwrap().overall.resent,
            9,
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_database_at_schema_0013_keeps_its_escalations_when_it_migrates() {
    for (name, store, db) in backends().await {
        // Ten sent at 2,000 with their deadline at 302,000; one reads in time.
        let f = sent_roll_call(&store, 10, None).await;
        first_reads(&store, &f).await;
        drop(store);

        // Before migration 0014 a deadline escalated by writing each unread row. Put that
        // schema back: five unread escalated at 302,500 in their rows, four whose deadline
        // was moved to 400,000 still waiting.
        db.execute("DROP INDEX deliveries_deadline").await;
        db.execute("DROP TABLE escalation_marks").await;
        db.execute(
            "CREATE INDEX deliveries_deadline ON deliveries (deadline_at) \
             WHERE state = 'sent' AND escalated_at IS NULL",
        )
        .await;
        db.execute(
            "UPDATE deliveries SET escalated_at = 302500, escalation_reason = 'never_read' \
             WHERE id IN (SELECT id FROM deliveries WHERE state = 'sent' ORDER BY id LIMIT 5)",
        )
        .await;
        db.execute(
            "UPDATE deliveries SET deadline_at = 400000 \
             WHERE state = 'sent' AND escalated_at IS NULL",
        )
        .await;
        db.execute("DELETE FROM _sqlx_migrations WHERE version = 14")
            .await;
        let store = crate::store_contract::reopen(&db).await;

        // The five stay on the list with their time; the next deadline is the others'.
        let listed = |l: &[rollcall::CallListEntry]| -> Vec<(String, Option<i64>)> {
            let mut v: Vec<_> = l
                .iter()
                .filter(|e| e.to_call())
                .map(|e| (e.staff_id.to_string(), e.escalated_at))
                .collect();
            v.sort();
            v
        };
        let before = listed(&store.call_list(f.rc.id).await.unwrap());
        assert_eq!(before.len(), 5, "{name}");
        assert!(before.iter().all(|(_, at)| *at == Some(302_500)), "{name}");
        assert_eq!(
            store.next_deadline().await.unwrap(),
            Some(400_000),
            "{name}"
        );
        assert_eq!(store.escalate_due(399_999).await.unwrap(), 0, "{name}");

        // One of the five reads late: still listed as escalated, no longer to call.
        let late = &before[0].0;
        let i = f
            .contacts
            .iter()
            .position(|c| c.id.to_string() == *late)
            .unwrap();
        apply(
            &store,
            &[ev(
                "late",
                Some(f.rc.id),
                &f.handle(i),
                InboundKind::Read,
                310_000,
            )],
            310_001,
        )
        .await;
        let e = store.entry(f.rc.id, &f.staff(i)).await.unwrap().unwrap();
        assert_eq!(e.escalated_at, Some(302_500), "{name}");
        assert!(!e.to_call(), "{name}");

        // The other four escalate at their deadline, by the mark.
        assert_eq!(store.escalate_due(400_200).await.unwrap(), 4, "{name}");
        assert_eq!(store.next_deadline().await.unwrap(), None, "{name}");
        let after = listed(&store.call_list(f.rc.id).await.unwrap());
        assert_eq!(after.len(), 8, "{name}");
        assert_eq!(
            after.iter().filter(|(_, at)| *at == Some(400_200)).count(),
            4,
            "{name}"
        );
        let p = store.progress(f.rc.id).await.unwrap().overall;
        assert_eq!((p.escalated, p.to_call), (9, 8), "{name}");

        // Of those four, one reads and one taps a button: each keeps its escalation time and
        // leaves the list of people to call.
        let four: Vec<usize> = after
            .iter()
            .filter(|(_, at)| *at == Some(400_200))
            .map(|(s, _)| {
                f.contacts
                    .iter()
                    .position(|c| c.id.to_string() == *s)
                    .unwrap()
            })
            .collect();
        apply(
            &store,
            &[
                ev(
                    "r4",
                    Some(f.rc.id),
                    &f.handle(four[0]),
                    InboundKind::Read,
                    401_000,
                ),
                ev(
                    "a4",
                    Some(f.rc.id),
                    &f.handle(four[1]),
                    button("safe"),
                    401_000,
                ),
            ],
            401_001,
        )
        .await;
        for &i in &four[..2] {
            let e = store.entry(f.rc.id, &f.staff(i)).await.unwrap().unwrap();
            assert_eq!(e.escalated_at, Some(400_200), "{name}");
            assert!(!e.to_call(), "{name}");
        }
        let p = store.progress(f.rc.id).await.unwrap().overall;
        assert_eq!((p.escalated, p.to_call), (9, 6), "{name}");
    }
}

/// On PostgreSQL (several replicas share it) a deadline's mark waits for an inbound batch in
/// progress. A mark touches no delivery row, so otherwise a read written in a batch that began
/// before the mark would leave the person read and never escalated, after readers had briefly
/// seen them escalated; with the wait, a read is either before the mark or after it.
#[tokio::test]
async fn on_postgres_a_deadline_mark_waits_for_an_inbound_batch_in_progress() {
    use sqlx::{Connection, Executor};
    let Some(pg) = crate::support::pg_url_or_skip().await else {
        return;
    };
    let store = anpi::store::open(&pg.url).await.unwrap();
    // Three sent at 2,000, their deadline at 302,000.
    let f = sent_roll_call(&store, 3, None).await;

    // Another replica's batch, in progress: its first statement holds the open roll calls.
    let mut other = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    other.execute("BEGIN").await.unwrap();
    other
        .execute("SELECT id FROM roll_calls WHERE state = 'open' ORDER BY id FOR SHARE")
        .await
        .unwrap();

    // The deadline pass starts, and must wait for that batch before it marks anything.
    let escalating = tokio::spawn({
        let store = store.clone();
        async move { store.escalate_due(302_500).await.unwrap() }
    });
    let mut look = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let waited = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut look)
            .await
            .unwrap();
            if waiting > 0 || escalating.is_finished() {
                return waiting > 0;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(30), waited)
        .await
        .expect("the deadline pass neither finished nor waited");
    assert!(
        waited,
        "the deadline pass marked the roll call while an inbound batch was in progress"
    );
    let marks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM escalation_marks")
        .fetch_one(&mut look)
        .await
        .unwrap();
    assert_eq!(marks, 0, "no mark while a batch is in progress");

    // Meanwhile this replica's batch records a read after the deadline, before the mark.
    let reader = f.staff_index(0);
    apply(
        &store,
        &[ev(
            "r1",
            Some(f.rc.id),
            &f.handle(reader),
            InboundKind::Read,
            302_400,
        )],
        302_400,
    )
    .await;
    other.execute("COMMIT").await.unwrap();

    // The mark follows the reads: the two others escalated, the reader not.
    let escalated = tokio::time::timeout(Duration::from_secs(30), escalating)
        .await
        .expect("the deadline pass still waits after the batch committed")
        .unwrap();
    assert_eq!(escalated, 2);
    let e = store
        .entry(f.rc.id, &f.staff(reader))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.escalated_at, None, "read before the mark: {e:?}");
    let p = store.progress(f.rc.id).await.unwrap().overall;
    assert_eq!((p.escalated, p.to_call), (2, 2));
}
