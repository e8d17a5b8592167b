//! The `anpi` command as a person runs it: checking files, and the daemon commands against a
//! running daemon.

use std::process::Command;

use crate::support::*;

fn anpi(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_anpi"))
        .args(args)
        .env_remove("ANPI_TOKEN")
        .env_remove("ANPI_URL")
        .output()
        .expect("anpi runs")
}

#[test]
fn contacts_check_accepts_the_example_file() {
    let out = anpi(&[
        "contacts",
        "check",
        concat!(env!("CARGO_MANIFEST_DIR"), "/contacts.example.toml"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn contacts_check_names_line_and_field_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("staff.csv");
    std::fs::write(
        &f,
        "id,name,department,phones,chat.simulator\n\
         S1,田中 一郎,総務課,090-1234-5678,sim-S1\n\
         S2,佐藤 花子,総務課,090-12-34,sim-S2\n\
         S1,鈴木 次郎,建設課,0256-34-5525,\n",
    )
    .unwrap();
    let out = anpi(&["contacts", "check", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3:") && err.contains("phones"), "{err}");
    assert!(
        err.contains(":4:") && err.contains("S1"),
        "duplicate id named: {err}"
    );
}

#[test]
fn contacts_check_refuses_a_nul_in_a_name_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("staff.csv");
    std::fs::write(
        &f,
        "職員番号,氏名,電話番号\r\nS1,田中 一郎,090-1234-5678\r\nS2,佐藤\0花子,090-1234-5679\r\n",
    )
    .unwrap();
    let out = anpi(&["contacts", "check", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("staff.csv:3: 氏名: ") && err.contains("NUL"),
        "{err}"
    );
}

#[test]
fn contacts_check_reads_an_excel_hr_export_and_names_the_columns_it_skips() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("社員.csv");
    let text = "社員番号,氏名,カナ,部署,内線,携帯電話,LINE WORKS ID\r\n\
                0012,田中 一郎,タナカ イチロウ,防災対策室,1234,090-1234-5678,tanaka@sanjo-city\r\n";
    let (bytes, _, _) = encoding_rs::SHIFT_JIS.encode(text);
    std::fs::write(&f, &bytes).unwrap();
    let out = anpi(&["contacts", "check", f.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OK — 1 contact (1 staff, 0 shelter phones)"),
        "{stdout}"
    );
    assert!(stdout.contains("columns not used: 内線"), "{stdout}");
}

#[test]
fn help_explains_the_commands() {
    let out = anpi(&["--help"]);
    let s = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "serve",
        "demo",
        "rollcall",
        "escalations",
        "call",
        "contacts",
    ] {
        assert!(s.contains(cmd), "--help mentions {cmd}: {s}");
    }
}

#[test]
fn remote_commands_without_a_token_say_how_to_give_one() {
    let out = anpi(&["rollcall", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ANPI_TOKEN"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollcall_status_escalations_and_call_go_through_the_api() {
    let app = spawn_app().await;
    let url = app.base_url.clone();
    let run = move |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_anpi"))
                .args(&args)
                .env("ANPI_URL", url)
                .env("ANPI_TOKEN", HQ_TOKEN)
                .output()
                .unwrap()
        })
    };
    let out = run(vec![
        "rollcall".into(),
        "start".into(),
        "--scenario".into(),
        "earthquake".into(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("#1"), "{stdout}");
    app.all_sent(anpi::ids::RollCallId(1)).await;
    app.advance(mins(6));
    app.wait_for(anpi::ids::RollCallId(1), "escalation", |p| {
        p.overall.to_call > 0
    })
    .await;
    let out = run(vec!["rollcall".into(), "status".into(), "1".into()])
        .await
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(s.contains("要電話 50"), "{s}");
    // 要対応 counts the action list (nobody answered here: the 50 to call), not only answers.
    assert!(s.contains("要対応 50 (救助要請・負傷 0 要電話 50)"), "{s}");
    assert!(
        s.contains("needs HQ 50 (urgent answers open 0, to call 50)"),
        "{s}"
    );
    let out = run(vec![
        "escalations".into(),
        "1".into(),
        "--format".into(),
        "csv".into(),
    ])
    .await
    .unwrap();
    assert!(out.stdout.starts_with(&[0xEF, 0xBB, 0xBF]));
    let first = app.call_list(anpi::ids::RollCallId(1)).await[0]
        .staff_id
        .to_string();
    let out = run(vec![
        "call".into(),
        "1".into(),
        first.clone(),
        "--outcome".into(),
        "safe".into(),
    ])
    .await
    .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && s.contains("off the action list"),
        "{s}"
    );
    let out = run(vec![
        "escalations".into(),
        "1".into(),
        "--format".into(),
        "json".into(),
    ])
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 49);
    // The call queue from a terminal: two desks get two different people, with tel: numbers.
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // `anpi call 1 ARGS...`
    let call = |args: &[&str]| {
        let mut all = vec!["call".to_string(), "1".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        run(all)
    };
    let a = call(&["--next", "--desk", "tablet-1"]).await.unwrap();
    let b = call(&["--next", "--desk", "tablet-2"]).await.unwrap();
    assert!(a.status.success() && b.status.success(), "{}", text(&a));
    let (a, b) = (text(&a), text(&b));
    assert!(a.contains("(tel:+81") && a.contains("電話 / tel: 0"), "{a}");
    let who = |s: &str| s.split_whitespace().next().unwrap().to_string();
    let held = who(&a);
    assert_ne!(held, who(&b), "{a}\n{b}");
    // tablet-2 may not record over tablet-1's call; tablet-1 hands it back, then it may.
    let over = call(&[&held, "--outcome", "no-answer", "--desk", "tablet-2"])
        .await
        .unwrap();
    assert!(!over.status.success(), "{}", text(&over));
    assert!(text(&over).contains("tablet-1"), "{}", text(&over));
    let back = call(&[&held, "--release", "--desk", "tablet-1"])
        .await
        .unwrap();
    assert!(text(&back).contains("back in the queue"), "{}", text(&back));
    let out = call(&[&held, "--outcome", "no-answer", "--desk", "tablet-2"])
        .await
        .unwrap();
    assert!(text(&out).contains("still needs HQ"), "{}", text(&out));
    // Neither --next nor a staff id: a clear usage error.
    let bad = call(&[]).await.unwrap();
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--next"), "{}", text(&bad));
    app.shutdown().await;
}

#[test]
fn bench_runs_a_small_roll_call_and_prints_every_figure() {
    let out = anpi(&[
        "bench",
        "--sizes",
        "300",
        "--runs",
        "2",
        "--ceiling-requests",
        "300",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "run 1/2:     300 recipients: all sent in",
        "run 2/2: bare HTTP client",
        "median of 2 runs:",
        "300 recipients: all sent in",
        "duplicates 0",
        "anpi at its best:",
        "peak RSS: ",
    ] {
        assert!(stdout.contains(what), "no {what:?} in:\n{stdout}");
    }
    // The last line is the machine-readable summary.
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("JSON summary");
    assert_eq!(json["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(json["results"][0]["recipients"], 300);
}
