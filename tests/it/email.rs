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
    let out = tempfile::tempdir().expect("mail dir");
    let child = tokio::process::Command::new(python)
        .args(["-m", "aiosmtpd", "-n", "-l"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-c", "smtp_sink.Sink"])
        .arg(out.path())
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
    assert!(subject.contains("要電話 40名"), "{subject}");
    let text = hq["text"].as_str().unwrap();
    assert!(
        text.starts_with("テスト 安否確認（#1）の期限が過ぎました。"),
        "{text}"
    );
    assert!(text.contains("要電話 40名"), "{text}");
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
    // Mailed once: the worker recorded it, so no second round comes.
    let mark = eventually("the mail to be recorded", || async {
        app.store
            .provider_state("email", &format!("rollcall:{}", rc.id))
            .await
            .unwrap()
    })
    .await;
    assert_eq!(mark, format!("{expected} sent, 0 failed"));
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
    assert!(mails[0]["subject"].as_str().unwrap().contains("to call"));
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
