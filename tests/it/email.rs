//! E-mail to a real SMTP server on loopback (aiosmtpd from PyPI, in the venv `.ci/run`
//! makes): HQ gets the call list with the CSV attached at the deadline, unconfirmed people
//! get a short reminder, and a stopped SMTP server holds nothing up.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anpi::scenario::Scenario;
use serde_json::Value;

use crate::support::*;
use crate::tools::{eventually, free_port, require};

struct Smtp {
    _child: tokio::process::Child,
    out: tempfile::TempDir,
}

fn smtp_python() -> Option<PathBuf> {
    let path = std::env::var_os("ANPI_TEST_SMTP_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/anpi/venv-smtp/bin/python"))
        });
    require(
        "aiosmtpd's Python (ANPI_TEST_SMTP_PYTHON)",
        path,
        "run .ci/run once, or: python3 -m venv ~/.cache/anpi/venv-smtp && ~/.cache/anpi/venv-smtp/bin/pip install aiosmtpd",
    )
}

/// Starts aiosmtpd on `port`, saving each message under a fresh folder.
async fn start_smtp(python: &Path, port: u16) -> Smtp {
    start_smtp_with(python, port, 0).await
}

/// Starts aiosmtpd on `port`; each message is saved, then acknowledged `delay_ms` later.
async fn start_smtp_with(python: &Path, port: u16, delay_ms: u64) -> Smtp {
    let out = tempfile::tempdir().expect("mail dir");
    let child = tokio::process::Command::new(python)
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "smtp_sink.Sink"])
        .arg(out.path())
        .arg(delay_ms.to_string())
        .env(
            "PYTHONPATH",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it"),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("aiosmtpd starts");
    eventually("the SMTP server to listen", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    Smtp { _child: child, out }
}

fn messages(dir: &Path) -> Vec<Value> {
    let mut v: Vec<Value> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str(&t).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|m| m["subject"].as_str().unwrap_or_default().to_string());
    v
}

fn mail_config(port: u16, retry: &str) -> String {
    format!(
        r#"
[email]
enabled = true
host = "127.0.0.1"
port = {port}
from = "anpi <anpi@city.example.jp>"
hq = ["hq@city.example.jp", "bousai@city.example.jp"]
retry_schedule = {retry}
timeout = "5s"
check_interval = "100ms"
"#
    )
}

fn scenario_mailing_unconfirmed() -> Scenario {
    Scenario::parse(
        r#"
name = "mailtest"
title = "テスト 安否確認"
deadline = "5m"
[message]
ja = "【安否確認】読んだら下のボタンを押してください。"
en = "Safety check: tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
[escalation]
email_hq = true
email_unconfirmed = true
"#,
        "mailtest.toml",
    )
    .unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn hq_gets_the_call_list_with_the_csv_and_unconfirmed_people_a_reminder() {
    let Some(python) = smtp_python() else { return };
    let port = free_port();
    let smtp = start_smtp(&python, port).await;
    let contacts = anpi::contacts::synthetic::generate(50, 1).contacts;
    let mut script = anpi::simulator::Script::new();
    for h in handles(&contacts).into_iter().take(10) {
        script.insert(h, read_after(mins(1)));
    }
    let with_mail: Vec<String> = contacts
        .iter()
        .skip(10)
        .filter_map(|c| c.email.as_ref().map(|e| e.to_string()))
        .collect();
    let app = spawn_app_with(Options {
        contacts,
        script,
        extra_config: mail_config(port, r#"["100ms"]"#),
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario_mailing_unconfirmed()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(2));
    app.wait_for(rc.id, "reads", |p| p.overall.read == 10).await;
    assert!(
        messages(smtp.out.path()).is_empty(),
        "no mail before the deadline"
    );
    app.advance(mins(4));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 40)
        .await;
    let expected = 1 + with_mail.len();
    let mails = eventually("the deadline mails", || async {
        let m = messages(smtp.out.path());
        (m.len() >= expected).then_some(m)
    })
    .await;
    assert_eq!(
        mails.len(),
        expected,
        "one to HQ, one per unconfirmed address"
    );

    let hq: Vec<&Value> = mails
        .iter()
        .filter(|m| m["rcpt_tos"].as_array().unwrap().len() == 2)
        .collect();
    assert_eq!(hq.len(), 1);
    let hq = hq[0];
    let subject = hq["subject"].as_str().unwrap();
    assert!(subject.starts_with("【安否確認】"), "{subject}");
    assert!(subject.contains("要対応 40名"), "{subject}");
    let text = hq["text"].as_str().unwrap();
    assert!(
        text.starts_with("テスト 安否確認（#1）の期限が過ぎました。"),
        "{text}"
    );
    assert!(text.contains("要対応 40名"), "{text}");
    assert!(
        text.contains("三条小学校避難所"),
        "the table lists the shelter: {text}"
    );
    assert!(text.contains("Deadline passed"), "{text}");
    for greeting in anpi::scenario::FORBIDDEN_GREETINGS {
        assert!(!text.contains(greeting), "{greeting} in {text}");
    }
    let att = &hq["attachments"][0];
    assert_eq!(att["filename"], "anpi-1-call-list.csv");
    assert_eq!(att["content_type"], "text/csv");
    let csv = unhex(att["hex"].as_str().unwrap());
    assert_eq!(&csv[..3], &[0xEF, 0xBB, 0xBF], "BOM for Excel");
    let csv = String::from_utf8(csv[3..].to_vec()).unwrap();
    assert_eq!(csv.lines().count(), 41, "header and forty people");
    assert!(
        csv.lines().nth(1).unwrap().contains("P0001"),
        "shelters first"
    );

    // Reminders go to each unconfirmed person's own address and carry no one's phone number.
    for m in mails.iter().filter(|m| !std::ptr::eq(*m, hq)) {
        let to = m["rcpt_tos"].as_array().unwrap();
        assert_eq!(to.len(), 1);
        assert!(with_mail.contains(&to[0].as_str().unwrap().to_string()));
        let t = m["text"].as_str().unwrap();
        assert!(t.contains("まだ確認できていません"), "{t}");
        assert!(!t.contains("090-") && !t.contains("+81"), "{t}");
    }
    // Mailed once: each mail is an outbox row marked sent, so no second round comes.
    let outbox = eventually("every mail marked sent", || async {
        let m = app.store.mails(Some(rc.id)).await.unwrap();
        m.iter()
            .all(|m| m.state == anpi::email::MailState::Sent)
            .then_some(m)
    })
    .await;
    assert_eq!(outbox.len(), expected);
    assert_eq!(
        outbox[0].mail.kind,
        anpi::email::kind::DEADLINE_HQ,
        "HQ's first"
    );
    assert!(
        subject.contains("時点"),
        "names the time its list is true at: {subject}"
    );
    assert!(text.contains("時点の既読・回答を反映"), "{text}");
    app.advance(mins(1));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(messages(smtp.out.path()).len(), expected);
    let m = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(&format!("anpi_emails_total{{result=\"sent\"}} {expected}")),
        "{m}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_stopped_smtp_server_does_not_hold_up_the_roll_call_and_mail_follows_later() {
    let Some(python) = smtp_python() else { return };
    // Nothing listens here yet.
    let port = free_port();
    let retries = format!("[{}]", vec!["\"100ms\""; 300].join(", "));
    let app = spawn_app_with(Options {
        extra_config: mail_config(port, &retries),
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    // The roll call goes on while the mail fails: HQ works the list and closes it.
    let entry = app
        .hq
        .record_outcome(
            rc.id,
            &anpi::ids::StaffId::parse("S00001").unwrap(),
            anpi::rollcall::CallOutcome::ReachedSafe,
            "hq#1",
        )
        .await
        .unwrap();
    assert!(!entry.to_call());
    assert_eq!(app.progress(rc.id).await.overall.to_call, 49);
    let res = app
        .http
        .get(format!("{}/healthz", app.base_url))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    // The server comes back: the retried mail arrives.
    let smtp = start_smtp(&python, port).await;
    let mails = eventually("the retried mail", || async {
        let m = messages(smtp.out.path());
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert!(mails[0]["subject"].as_str().unwrap().contains("to act on"));
    app.shutdown().await;
}

#[test]
fn smtp_sink_script_is_where_the_tests_expect_it() {
    assert!(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/it/smtp_sink.py"
    ))
    .is_file());
}

/// Everything a kill-and-restart mail test needs beside the daemon.
async fn restart_across_the_deadline(database: Option<PgDb>) {
    use crate::crash::{kill, spawn_daemon, wait_until};
    use anpi::clock::{ScaledClock, SharedClock};
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;
    use std::time::Duration;

    let Some(python) = smtp_python() else { return };
    init_logs();
    const SPEED: f64 = 20.0;
    let port = free_port();
    // Each message is saved, then acknowledged 150 ms later: a mail run of dozens takes
    // seconds, and a kill can land between delivery and acknowledgement.
    let smtp = start_smtp_with(&python, port, 150).await;
    let tmp = tempfile::tempdir().unwrap();
    let epoch = chrono::Utc::now();
    let clock: SharedClock = Arc::new(ScaledClock::new(epoch, SPEED));
    let contacts = anpi::contacts::synthetic::generate(200, 5).contacts;
    let hs = handles(&contacts);
    let mut script = anpi::simulator::Script::new();
    let mut readers = BTreeSet::new();
    for (i, (c, h)) in contacts.iter().zip(&hs).enumerate() {
        if i % 2 == 0 {
            // Two minutes after their message (6 s of wall time): while anpi is down, before
            // the deadline, with room for a slow machine to finish sending first.
            script.insert(h.clone(), read_after(mins(2)));
            readers.insert(c.id.to_string());
        }
    }
    let never: BTreeSet<String> = contacts
        .iter()
        .map(|c| c.id.to_string())
        .filter(|id| !readers.contains(id))
        .collect();
    let address: HashMap<String, String> = contacts
        .iter()
        .filter_map(|c| Some((c.email.as_ref()?.to_string(), c.id.to_string())))
        .collect();
    let sim = anpi::simulator::Simulator::start(
        anpi::simulator::SimConfig {
            token: SIM_TOKEN.into(),
            rate_limit: None,
            faults: Default::default(),
            default_behaviour: Default::default(),
            population: None,
        },
        script,
        clock.clone(),
    )
    .await
    .unwrap();
    let url = match &database {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}", tmp.path().join("anpi.db").display()),
    };
    let config = tmp.path().join("anpi.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{url}"
[time]
speed = {SPEED}
epoch = "{}"
[replicas]
lease_ttl = "20s"
[receipts]
# The grace is on the roll call's clock: 30 s would be 1.5 s of wall time here, less than a
# loaded machine may take to start anpi and fetch the waiting receipts. This test is about
# those receipts being applied, so it gives them a minute of wall time.
catch_up_grace = "20m"
[providers.simulator]
url = "{}"
token = "{SIM_TOKEN}"
poll_wait = "100ms"
{}"#,
            epoch.to_rfc3339(),
            sim.base_url(),
            // A generous SMTP timeout: a send that times out after the server kept the
            // message is sent again, and this test counts only what the kill repeats.
            mail_config(port, r#"["1s"]"#).replace(r#"timeout = "5s""#, r#"timeout = "20s""#),
        ),
    )
    .unwrap();
    let log = tmp.path().join("anpi.log");
    let store = anpi::store::open(&url).await.unwrap();
    let hq = anpi::hq::Hq::new(
        store.clone(),
        clock.clone(),
        "simulator".into(),
        anpi::providers::Capabilities {
            read_receipts: true,
            buttons: true,
            idempotent_sends: false,
            rate_limit: None,
            max_in_flight: 64,
        },
        Arc::new(tokio::sync::Notify::new()),
    );
    hq.import_contacts(&contacts).await.unwrap();
    let (rc, _) = hq
        .start(&scenario_mailing_unconfirmed(), None, None)
        .await
        .unwrap();

    // 1. anpi sends everyone, then dies before anyone reads.
    let begun = std::time::Instant::now();
    let mut daemon = spawn_daemon(&config, &log);
    wait_until("all sent", Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            let p = store.progress(rc.id).await.unwrap();
            p.overall.pending == 0 && p.overall.sending == 0
        }
    })
    .await;
    kill(&mut daemon);
    eprintln!("{:?}: all sent, killed", begun.elapsed());
    let last_deadline = store.progress(rc.id).await.unwrap().last_sent_at.unwrap() + 5 * 60_000;
    assert!(
        store.progress(rc.id).await.unwrap().overall.confirmed() == 0,
        "the reads must come while anpi is down"
    );
    // 2. Down across every deadline; the reads wait at the platform.
    wait_until("past the last deadline", Duration::from_secs(60), || {
        let past = clock.now_millis() > last_deadline + 20_000;
        async move { past }
    })
    .await;
    let mut daemon = spawn_daemon(&config, &log);

    // The HQ mail comes first, and its list is the true one: exactly those who never read.
    // (The dead process's leases run out first: up to `lease_ttl` of wall time.)
    eprintln!("{:?}: restarted past the deadline", begun.elapsed());
    let to_hq = |m: &Value| m["rcpt_tos"].as_array().is_some_and(|t| t.len() == 2);
    wait_until("the HQ mail", Duration::from_secs(120), || {
        let there = messages(smtp.out.path()).iter().any(to_hq);
        async move { there }
    })
    .await;
    eprintln!("{:?}: the HQ mail", begun.elapsed());
    let hq_mail = messages(smtp.out.path())
        .into_iter()
        .find(to_hq)
        .expect("the HQ mail");
    let subject = hq_mail["subject"].as_str().unwrap();
    assert!(
        subject.contains(&format!("要対応 {}名", never.len())),
        "{subject}"
    );
    let csv = unhex(hq_mail["attachments"][0]["hex"].as_str().unwrap());
    let csv = String::from_utf8(csv[3..].to_vec()).unwrap();
    let column = csv
        .lines()
        .next()
        .unwrap()
        .split(',')
        .position(|h| h == "職員ID")
        .expect("a staff id column");
    let listed: BTreeSet<String> = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(column).map(String::from))
        .collect();
    assert_eq!(listed, never, "the mailed list is the true list");
    let p = store.progress(rc.id).await.unwrap();
    assert_eq!(
        p.overall.escalated as usize,
        never.len(),
        "escalated counts the people unread at their deadline: {:?}",
        p.overall
    );

    // 3. Killed in the middle of the mail run, restarted, the run completes.
    wait_until("the mail run under way", Duration::from_secs(60), || {
        let n = messages(smtp.out.path()).len();
        async move { n >= 8 }
    })
    .await;
    kill(&mut daemon);
    let at_kill = messages(smtp.out.path()).len();
    eprintln!("{:?}: killed after {at_kill} mails", begun.elapsed());
    let reminders_wanted = never
        .iter()
        .filter(|id| address.values().any(|s| s == *id))
        .count();
    assert!(
        at_kill < 1 + reminders_wanted,
        "the run finished before the kill ({at_kill}); slow the SMTP server"
    );
    let mut daemon = spawn_daemon(&config, &log);
    // The mail in flight at the kill waits for its claim to run out (twice the SMTP
    // timeout and 5 s of wall time) before it is sent again.
    wait_until("every mail marked sent", Duration::from_secs(180), || {
        let store = store.clone();
        async move {
            let m = store.mails(Some(rc.id)).await.unwrap();
            !m.is_empty() && m.iter().all(|m| m.state == anpi::email::MailState::Sent)
        }
    })
    .await;
    kill(&mut daemon);
    eprintln!("{:?}: every mail marked sent", begun.elapsed());

    let all = messages(smtp.out.path());
    let hq_count = all
        .iter()
        .filter(|m| m["rcpt_tos"].as_array().is_some_and(|t| t.len() == 2))
        .count();
    assert_eq!(hq_count, 1, "HQ is mailed once");
    let mut per: HashMap<String, usize> = HashMap::new();
    for m in all
        .iter()
        .filter(|m| m["rcpt_tos"].as_array().unwrap().len() == 1)
    {
        let to = m["rcpt_tos"][0].as_str().unwrap().to_string();
        let who = address.get(&to).expect("a reminder to a known address");
        assert!(
            !readers.contains(who),
            "{who} read before the deadline and still got a reminder"
        );
        *per.entry(to).or_default() += 1;
    }
    assert_eq!(
        per.len(),
        reminders_wanted,
        "every unconfirmed address got one"
    );
    assert!(per.values().all(|n| *n <= 2), "a mail sent three times");
    let twice: Vec<_> = per.iter().filter(|(_, n)| **n == 2).collect();
    let retried: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("e-mail") && l.contains("WARN"))
        .map(String::from)
        .collect();
    assert!(
        twice.len() <= 1,
        "more than the mail in flight went twice: {twice:?}; anpi's e-mail warnings: {retried:#?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_restart_across_the_deadline_mails_the_true_list_and_a_kill_mid_run_repeats_at_most_one_mail(
) {
    restart_across_the_deadline(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_restart_across_the_deadline_mails_the_true_list_and_a_kill_mid_run_repeats_at_most_one_mail(
) {
    let Some(pg) = pg_url_or_skip().await else {
        return;
    };
    restart_across_the_deadline(Some(pg)).await;
}

#[tokio::test]
async fn hq_gets_one_correction_when_the_mailed_list_changes_by_more_than_the_threshold() {
    let Some(python) = smtp_python() else { return };
    let port = free_port();
    let smtp = start_smtp(&python, port).await;
    let contacts = anpi::contacts::synthetic::generate(50, 1).contacts;
    let mut script = anpi::simulator::Script::new();
    for (i, h) in handles(&contacts).into_iter().enumerate() {
        match i {
            // Read late, after the list went out: first eight, then eight more.
            0..8 => {
                script.insert(h, read_after(mins(7)));
            }
            8..16 => {
                script.insert(h, read_after(mins(9)));
            }
            _ => {}
        }
    }
    let app = spawn_app_with(Options {
        contacts,
        script,
        extra_config: format!(
            "{}correction_threshold = 5\n",
            mail_config(port, r#"["100ms"]"#)
        ),
        ..Options::default()
    })
    .await;
    let scenario = Scenario::parse(
        r#"
name = "hqonly"
title = "テスト 安否確認"
deadline = "5m"
[message]
ja = "【安否確認】読んだら下のボタンを押してください。"
en = "Safety check: tap a button below."
[[buttons]]
label = "無事 / Safe"
value = "safe"
[escalation]
email_hq = true
"#,
        "hqonly.toml",
    )
    .unwrap();
    let rc = app.start(&scenario).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    let hq_mails = |smtp: &Smtp| {
        messages(smtp.out.path())
            .into_iter()
            .filter(|m| m["rcpt_tos"].as_array().is_some_and(|t| t.len() == 2))
            .collect::<Vec<_>>()
    };
    eventually("the HQ mail", || async {
        (hq_mails(&smtp).len() == 1).then_some(())
    })
    .await;
    // Eight read late: more than five, so one correction with the list as it stands.
    app.advance(mins(2));
    app.wait_for(rc.id, "late reads", |p| p.overall.read == 8)
        .await;
    let both = eventually("the correction", || async {
        let m = hq_mails(&smtp);
        (m.len() == 2).then_some(m)
    })
    .await;
    let correction = both
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("訂正"))
        .expect("a correction");
    let subject = correction["subject"].as_str().unwrap();
    assert!(subject.contains("要対応 42名"), "{subject}");
    let text = correction["text"].as_str().unwrap();
    assert!(text.contains("8名がその後確認できました"), "{text}");
    // Eight more read late: still only the one correction.
    app.advance(mins(2));
    app.wait_for(rc.id, "more late reads", |p| p.overall.read == 16)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(hq_mails(&smtp).len(), 2, "one correction only");
    app.shutdown().await;
}

#[tokio::test]
async fn hq_is_mailed_once_when_reading_the_board_keeps_failing() {
    let Some(python) = smtp_python() else { return };
    let port = free_port();
    let smtp = start_smtp(&python, port).await;
    let extra = format!(
        "{}{}",
        crate::lineworks::HEALTH_30S,
        mail_config(port, r#"["100ms"]"#)
    );
    let app =
        crate::lineworks::spawn_with(10, anpi::simulator::Script::new(), true, 60.0, &extra).await;
    app.lw.break_op("board_readers");
    let (rc, _) = app
        .hq
        .start(&crate::lineworks::drill(), None, None)
        .await
        .unwrap();
    app.all_sent(rc.id).await;
    let trouble = || {
        messages(smtp.out.path())
            .into_iter()
            .filter(|m| {
                m["subject"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("anpi 障害")
            })
            .collect::<Vec<_>>()
    };
    let first = eventually("the trouble mail", || async {
        let m = trouble();
        (!m.is_empty()).then_some(m)
    })
    .await;
    let subject = first[0]["subject"].as_str().unwrap();
    assert!(
        subject.contains("既読") && subject.contains("readers"),
        "{subject}"
    );
    let text = first[0]["text"].as_str().unwrap();
    assert!(text.contains("503"), "{text}");
    assert_eq!(
        first[0]["rcpt_tos"].as_array().unwrap().len(),
        2,
        "to HQ's addresses"
    );
    // Still failing, checked many times over: still one mail.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(
        trouble().len(),
        1,
        "HQ mailed more than once for one incident"
    );
}

#[tokio::test]
async fn hq_is_mailed_the_telegram_behind_a_started_roll_call_and_every_hq_notice() {
    let Some(python) = smtp_python() else { return };
    let port = free_port();
    let smtp = start_smtp(&python, port).await;
    let app = spawn_app_with(Options {
        extra_config: format!(
            "{}\n{}",
            mail_config(port, "[\"1s\"]"),
            crate::jma::SANJO_RULES
        ),
        ..Options::default()
    })
    .await;
    let dir = crate::jma::jma_data();
    let files: Vec<String> = [
        "32-35_07_03_100915_VXSE51.xml",
        "32-39_11_05_120615_VXSE53.xml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    crate::jma::replay(&app, &dir, &files, false).await;
    let mails = eventually("two JMA mails", || async {
        let m = messages(smtp.out.path());
        (m.len() >= 2).then_some(m)
    })
    .await;
    let start = mails
        .iter()
        .find(|m| {
            m["subject"]
                .as_str()
                .unwrap()
                .contains("安否確認を自動開始")
        })
        .expect("the start is mailed");
    let subject = start["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("【訓練】【気象庁情報】"),
        "a replay is a drill: {subject}"
    );
    let text = start["text"].as_str().unwrap();
    assert!(text.contains("VXSE53 震源・震度に関する情報"), "{text}");
    assert!(text.contains("新潟県中越 震度5弱"), "{text}");
    assert!(text.contains("発表: 2011-03-11 14:"), "{text}");
    let notice = mails
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("本部へのお知らせ"))
        .expect("the HQ-only notice is mailed");
    assert!(
        notice["text"].as_str().unwrap().contains("震度3"),
        "{notice}"
    );
    assert_eq!(
        notice["rcpt_tos"].as_array().unwrap().len(),
        2,
        "HQ's addresses only"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn someone_asking_for_help_is_mailed_to_hq_at_once_and_the_deadline_mail_agrees_with_the_counts(
) {
    let Some(python) = smtp_python() else { return };
    let port = free_port();
    let smtp = start_smtp(&python, port).await;
    let contacts = anpi::contacts::synthetic::generate(20, 6).contacts;
    let staff: Vec<usize> = (0..contacts.len())
        .filter(|&i| contacts[i].kind == anpi::contacts::ContactKind::Staff)
        .collect();
    let hs = handles(&contacts);
    let helper = staff[2];
    let mut script = anpi::simulator::Script::new();
    // Half read in time; the helper taps 救助要請, then a sticker, then a line of text.
    for (i, h) in hs.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        if i != helper {
            script.insert(h.clone(), read_after(std::time::Duration::from_secs(20)));
        }
    }
    use anpi::simulator::{Behaviour, SimAnswer};
    script.insert(
        hs[helper].clone(),
        Behaviour::reads_after(std::time::Duration::from_secs(20))
            .answering(
                std::time::Duration::from_secs(30),
                SimAnswer::Button("need_help".into()),
            )
            .then_answering(
                std::time::Duration::from_secs(40),
                SimAnswer::Sticker("ok".into()),
            )
            .then_answering(
                std::time::Duration::from_secs(50),
                SimAnswer::Reply("足を怪我、家から出られない".into()),
            ),
    );
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        script,
        extra_config: mail_config(port, r#"["100ms"]"#),
        ..Options::default()
    })
    .await;
    let scenario = Scenario::parse(
        r#"
name = "helpmail"
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
label = "救助要請 / Need help"
value = "need_help"
level = "urgent"
[escalation]
email_hq = true
email_unconfirmed = true
"#,
        "helpmail.toml",
    )
    .unwrap();
    let rc = app.start(&scenario).await;
    app.all_sent(rc.id).await;
    app.advance(mins(1));
    app.wait_for(rc.id, "the urgent answer and its follow-ups", |p| {
        p.overall.urgent_open == 1 && p.answers.values().sum::<i64>() >= 1
    })
    .await;

    // Four minutes before the deadline, HQ has one mail naming the person and what they said.
    let name = contacts[helper].name.as_str();
    let urgent = eventually("the urgent mail", || async {
        messages(smtp.out.path())
            .into_iter()
            .find(|m| m["subject"].as_str().unwrap_or("").contains(name))
    })
    .await;
    let subject = urgent["subject"].as_str().unwrap();
    assert!(subject.contains("救助要請"), "{subject}");
    let text = urgent["text"].as_str().unwrap();
    assert!(text.contains("救助要請"), "{text}");
    assert_eq!(urgent["rcpt_tos"].as_array().unwrap().len(), 2, "HQ only");
    // The later sticker and text neither lower the answer nor send a second mail.
    eventually("the text reply stored", || async {
        let l = app.call_list(rc.id).await;
        l.iter()
            .find(|e| e.staff_id == contacts[helper].id)
            .and_then(|e| e.latest.as_ref())
            .filter(|a| a.text.as_deref() == Some("足を怪我、家から出られない"))
            .map(|_| ())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let before_deadline = messages(smtp.out.path());
    assert_eq!(
        before_deadline.len(),
        1,
        "one mail per person: {before_deadline:?}"
    );

    // At the deadline the list is the helper and the silent half; counts and mail agree.
    app.advance(mins(5));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 10)
        .await;
    let p = app.progress(rc.id).await;
    let to_act = p.overall.to_call + p.overall.urgent_open;
    assert_eq!(to_act, 11);
    let silent_with_mail = contacts
        .iter()
        .enumerate()
        .filter(|(i, c)| i % 2 == 1 && c.email.is_some())
        .count();
    let expected = 1 + 1 + silent_with_mail;
    let mails = eventually("the deadline mails", || async {
        let m = messages(smtp.out.path());
        (m.len() >= expected).then_some(m)
    })
    .await;
    assert_eq!(
        mails.len(),
        expected,
        "no reminder to the helper: {mails:?}"
    );
    let hq = mails
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("#1 要対応"))
        .expect("the deadline mail");
    let subject = hq["subject"].as_str().unwrap();
    assert!(subject.contains(&format!("要対応 {to_act}名")), "{subject}");
    let text = hq["text"].as_str().unwrap();
    assert!(text.contains(&format!("要対応 {to_act}名")), "{text}");
    assert!(text.contains("助けを求める回答 1名"), "{text}");
    assert!(
        text.contains(&format!("未確認 {}名", p.overall.to_call)),
        "{text}"
    );
    assert!(text.contains("足を怪我、家から出られない"), "{text}");
    let helper_mail = contacts[helper].email.as_ref().map(|e| e.to_string());
    for m in &mails {
        let to: Vec<&str> = m["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            helper_mail.as_deref().is_none_or(|h| !to.contains(&h)),
            "the helper answered; no reminder: {m}"
        );
    }
    app.shutdown().await;
}
