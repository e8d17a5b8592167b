//! The HQ web page and the shelter page in a real headless Chromium, driven over WebDriver
//! (Debian's chromium and chromedriver; `.ci/run` installs them): log in with a desk name,
//! start a drill, see an urgent answer at the top of 要対応 before any deadline, watch
//! progress change live, see silent people land on the list at the deadline, claim one,
//! record the outcome, and see them leave the list; a shelter phone answers in one tap.

use std::process::Stdio;

use anpi::simulator::{Behaviour, Script, SimAnswer};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::*;
use crate::tools::{eventually, free_port, require};

struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

async fn browser() -> Option<Browser> {
    let driver = require(
        "chromedriver",
        Some("/usr/bin/chromedriver".into()),
        "apt-get install chromium chromium-driver (.ci/run does this)",
    )?;
    let chromium = require(
        "chromium",
        Some("/usr/bin/chromium".into()),
        "apt-get install chromium",
    )?;
    let port = free_port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let status = format!("http://127.0.0.1:{port}/status");
    let http = reqwest::Client::new();
    eventually("chromedriver to answer", || async {
        let res = http.get(&status).send().await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;
    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1024,1366",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    // Plain HTTP to chromedriver on loopback: no TLS stack needed.
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session");
    Some(Browser {
        client,
        _driver: child,
        _profile: profile,
    })
}

/// Runs `js` (a function body that returns a value) in the page.
async fn eval(c: &Client, js: &str) -> Value {
    c.execute(js, vec![]).await.unwrap_or(Value::Null)
}

async fn text_of(c: &Client, css: &str) -> String {
    eval(
        c,
        &format!("const e = document.querySelector({css:?}); return e ? e.textContent : null;"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

async fn wait_text(c: &Client, css: &str, want: &str) {
    eventually(&format!("{css} to read {want:?}"), || async {
        (text_of(c, css).await.trim() == want).then_some(())
    })
    .await;
}

async fn count(c: &Client, css: &str) -> u64 {
    eval(
        c,
        &format!("return document.querySelectorAll({css:?}).length;"),
    )
    .await
    .as_u64()
    .unwrap_or(0)
}

async fn log_in(c: &Client, base_url: &str, token: &str, desk: &str) {
    c.goto(&format!("{base_url}/")).await.unwrap();
    assert_eq!(text_of(c, "h1").await.trim(), "安否確認 本部画面");
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    c.find(Locator::Id("desk"))
        .await
        .unwrap()
        .send_keys(desk)
        .await
        .unwrap();
    c.find(Locator::Id("login-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn hq_runs_a_drill_from_the_web_page() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let mut contacts = anpi::contacts::synthetic::generate(50, 1).contacts;
    // The shelter phone P0001 is a landline: shown grouped by its area code, not as digits.
    let shelter = contacts
        .iter_mut()
        .find(|c| c.id.as_str() == "P0001")
        .unwrap();
    shelter.phones = vec![anpi::contacts::PhoneNumber::parse("0256-34-5525").unwrap()];
    let hs = handles(&contacts);
    let mut script = Script::new();
    // Ten staff read after a minute; one asks for help; everyone else stays silent.
    for h in hs.iter().take(10) {
        script.insert(h.clone(), read_after(mins(1)));
    }
    let helper = &contacts[20];
    assert_eq!(helper.kind, anpi::contacts::ContactKind::Staff);
    script.insert(
        hs[20].clone(),
        Behaviour::reads_after(std::time::Duration::from_secs(20))
            .answering(
                std::time::Duration::from_secs(30),
                SimAnswer::Button("need_help".into()),
            )
            .then_answering(
                std::time::Duration::from_secs(40),
                SimAnswer::Reply("足を怪我、家から出られない".into()),
            ),
    );
    let app = spawn_app_with(Options {
        contacts: contacts.clone(),
        script,
        ..Options::default()
    })
    .await;

    log_in(c, &app.base_url, HQ_TOKEN, "受付1").await;
    eventually("the scenario list", || async {
        (count(c, "#scenario option[value=drill]").await == 1).then_some(())
    })
    .await;
    assert!(text_of(c, "#who").await.contains("受付1"));

    // Start a drill: scenario, drill switch, estimate, then the confirmation step.
    c.find(Locator::Id("scenario"))
        .await
        .unwrap()
        .select_by_value("drill")
        .await
        .unwrap();
    c.find(Locator::Id("estimate-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the estimate", || async {
        text_of(c, "#estimate-text")
            .await
            .contains("対象 50 名")
            .then_some(())
    })
    .await;
    assert!(
        app.hq.list().await.unwrap().is_empty(),
        "nothing before confirming"
    );
    c.find(Locator::Id("confirm-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "#p-sent", "50").await;
    let rc = app.hq.list().await.unwrap()[0].clone();
    assert!(rc.drill);
    wait_text(c, "#p-confirmed", "0").await;

    // Readers read and one asks for help: the page updates without a reload, and the request
    // for help is at the top of 要対応, by name, with what they wrote, before any deadline.
    app.advance(mins(2));
    wait_text(c, "#p-confirmed", "11").await;
    wait_text(c, "#n-urgent", "1").await;
    eventually("the urgent row", || async {
        (count(c, "#tocall tr.a-urgent").await == 1).then_some(())
    })
    .await;
    let urgent = text_of(c, "#tocall tr.a-urgent").await;
    assert!(urgent.contains(&helper.name), "{urgent}");
    assert!(urgent.contains("救助要請"), "{urgent}");
    assert!(urgent.contains("足を怪我、家から出られない"), "{urgent}");
    assert_eq!(
        eval(
            c,
            "return document.querySelector('#tocall tr[data-staff]').dataset.staff;"
        )
        .await,
        json!(helper.id.as_str())
    );
    wait_text(c, "#p-to_call", "0").await;
    // A desk in another tab sees it in the tab's title; the minutes since the start show.
    let title = eval(c, "return document.title;").await;
    assert!(
        title.as_str().unwrap_or("").contains("要対応 1名"),
        "{title}"
    );
    assert!(text_of(c, "#rc-elapsed").await.contains("開始から"));

    // The deadline passes: the silent 39 land on the list, below the urgent answer, silent
    // shelter phones first.
    app.advance(mins(4));
    wait_text(c, "#p-to_call", "39").await;
    eventually("forty rows on the list", || async {
        (count(c, "#tocall tr[data-staff]").await == 40).then_some(())
    })
    .await;
    assert_eq!(
        eval(
            c,
            "return document.querySelectorAll('#tocall tr[data-staff]')[1].dataset.staff;"
        )
        .await,
        json!("P0001")
    );
    assert!(
        count(c, "#tocall a[href^='tel:+81']").await >= 40,
        "tel: links"
    );
    assert_eq!(
        eval(
            c,
            "return document.querySelector('#tocall tr[data-staff=\"P0001\"] a[href^=\"tel:\"]').textContent;"
        )
        .await,
        json!("0256-34-5525")
    );

    // Claim the next person (the urgent one), try to close without a note, then with one.
    c.find(Locator::Id("claim-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("a claimed person", || async {
        let name = text_of(c, "#person-name").await;
        (!name.is_empty()).then_some(name)
    })
    .await;
    assert!(text_of(c, "#person-name").await.contains(&helper.name));
    assert_eq!(
        eval(c, "return document.getElementById('note-required').hidden;").await,
        json!(false),
        "the page says a note is needed to close an urgent answer"
    );
    let held = app.call_list(rc.id).await;
    let h = held.iter().find(|e| e.staff_id == helper.id).unwrap();
    assert_eq!(h.claimed_by.as_deref(), Some("hq#1/受付1"));
    c.find(Locator::Id("note"))
        .await
        .unwrap()
        .send_keys("消防に救助依頼済み")
        .await
        .unwrap();
    c.find(Locator::Css("#person button[data-outcome=needs-help]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the urgent answer closed", || async {
        (count(c, "#tocall tr.a-urgent").await == 0).then_some(())
    })
    .await;
    let e = app
        .call_list(rc.id)
        .await
        .into_iter()
        .find(|e| e.staff_id == helper.id)
        .unwrap();
    assert_eq!(e.notes[0].text, "消防に救助依頼済み");

    // The next is the silent shelter P0001: record "safe" and see it leave the list.
    c.find(Locator::Id("claim-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the shelter claimed", || async {
        text_of(c, "#person-name")
            .await
            .ends_with("避難所")
            .then_some(())
    })
    .await;
    c.find(Locator::Css("#person button[data-outcome=safe]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("P0001 off the list to call", || async {
        (count(c, "#tocall tr[data-staff=P0001]").await == 0
            && count(c, "#done tr[data-staff=P0001]").await == 1)
            .then_some(())
    })
    .await;
    assert!(text_of(c, "#done tr[data-staff=P0001]")
        .await
        .contains("代理回答"));
    wait_text(c, "#p-to_call", "38").await;
    wait_text(c, "#p-reached", "2").await;
    let entry = app
        .call_list(rc.id)
        .await
        .into_iter()
        .find(|e| e.staff_id.as_str() == "P0001")
        .unwrap();
    assert_eq!(
        entry.outcome,
        Some(anpi::rollcall::CallOutcome::ReachedSafe)
    );

    // ANPI_SCREENSHOTS=<dir> keeps a picture of the page for a person to look at.
    if let Some(dir) = std::env::var_os("ANPI_SCREENSHOTS") {
        let png = c.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&dir).join("hq-page.png"), png).unwrap();
    }

    // CSV download: the page fetches it with the token and saves the blob (captured here).
    eval(
        c,
        "window.__blobs = []; const o = URL.createObjectURL; \
         URL.createObjectURL = (b) => { window.__blobs.push(b); return o(b); }; return true;",
    )
    .await;
    c.find(Locator::Id("csv-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let head = eventually("the CSV blob", || async {
        let v = c
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 if (!window.__blobs.length) { done(null); return; } \
                 window.__blobs[0].arrayBuffer().then((b) => done(Array.from(new Uint8Array(b).slice(0, 3))));",
                vec![],
            )
            .await
            .unwrap_or(Value::Null);
        (!v.is_null()).then_some(v)
    })
    .await;
    assert_eq!(head, json!([0xEF, 0xBB, 0xBF]), "UTF-8 BOM for Excel");

    // The English switch.
    c.find(Locator::Id("lang-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(c, "#claim-btn", "Call the next person").await;

    b.client.close().await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn a_caller_sees_no_hq_buttons_and_a_shelter_phone_answers_in_one_tap() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let shelter_token = "shelter-token-P0001-0123456789";
    let app = spawn_app_with(Options {
        extra_config: format!(
            "[[api.shelter_tokens]]\ntoken = \"{shelter_token}\"\nstaff_id = \"P0001\"\n"
        ),
        ..Options::default()
    })
    .await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;

    // A caller: the list and the queue, no start, announcement or close.
    log_in(c, &app.base_url, CALLER_TOKEN, "受付2").await;
    eventually("the roll call", || async {
        (!text_of(c, "#rc-title").await.is_empty()).then_some(())
    })
    .await;
    for hq_only in ["start", "announce", "close-btn"] {
        let visible = eval(
            c,
            &format!(
                "const e = document.getElementById('{hq_only}'); \
                 return !!e && e.offsetParent !== null;"
            ),
        )
        .await;
        assert_eq!(visible, json!(false), "{hq_only} is hidden from a caller");
    }

    // The shelter phone opens its link and taps 支援が必要.
    c.goto(&format!("{}/shelter#token={shelter_token}", app.base_url))
        .await
        .unwrap();
    eventually("the shelter's buttons", || async {
        (count(c, "button[data-value=need_support]").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        eval(c, "return location.hash;").await,
        json!(""),
        "the token leaves the address bar"
    );
    c.find(Locator::Css("button[data-value=need_support]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("HQ has the answer", || async {
        text_of(c, ".sent-answer")
            .await
            .contains("支援が必要")
            .then_some(())
    })
    .await;
    let list = app.call_list(rc.id).await;
    assert_eq!(list[0].staff_id.as_str(), "P0001");
    assert_eq!(list[0].action(), Some(anpi::rollcall::Action::Urgent));

    b.client.close().await.unwrap();
    app.shutdown().await;
}

#[tokio::test]
async fn the_hq_page_shows_a_banner_while_reading_the_board_keeps_failing() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let app =
        crate::lineworks::spawn_with(10, Script::new(), true, 60.0, crate::lineworks::HEALTH_30S)
            .await;
    app.lw.break_op("board_readers");
    let (rc, _) = app
        .hq
        .start(&crate::lineworks::drill(), None, None)
        .await
        .unwrap();
    app.all_sent(rc.id).await;

    log_in(c, &app.base_url, HQ_TOKEN, "受付1").await;
    let visible = || async {
        eval(
            c,
            "const e = document.getElementById('health-banner'); return !!e && !e.hidden;",
        )
        .await
            == json!(true)
    };
    eventually("the banner", || async { visible().await.then_some(()) }).await;
    let text = text_of(c, "#health-banner").await;
    assert!(text.contains("既読を取得できていません"), "{text}");
    assert!(text.contains("から"), "it says since when: {text}");
    assert_eq!(count(c, "#health-banner .health-readers").await, 1);
    // The platform answers again: the banner goes.
    app.lw.come_back();
    eventually("the banner to go", || async {
        (!visible().await).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_page_shows_which_telegram_started_a_roll_call_hq_notices_and_the_drill_report() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let app = spawn_app_with(Options {
        extra_config: crate::jma::SANJO_RULES.into(),
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
    let rc = app.hq.list().await.unwrap()[0].clone();
    app.all_sent(rc.id).await;

    log_in(c, &app.base_url, HQ_TOKEN, "受付1").await;
    eventually("the telegram behind the roll call", || async {
        text_of(c, "#jma-why")
            .await
            .contains("VXSE53")
            .then_some(())
    })
    .await;
    assert!(text_of(c, "#jma-why").await.contains("震度5弱"));
    eventually("the HQ notice of the 震度3", || async {
        text_of(c, "#jma-recent")
            .await
            .contains("本部へのお知らせ")
            .then_some(())
    })
    .await;
    eventually("the drill report", || async {
        (count(c, "#drill-groups tr").await >= 2).then_some(())
    })
    .await;
    assert_eq!(
        eval(c, "return document.querySelector('#drill-report').hidden;").await,
        json!(false)
    );
    assert!(text_of(c, "#drill-groups").await.contains("全体 / overall"));
    app.shutdown().await;
}
