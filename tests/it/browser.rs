//! The HQ web page in a real headless Chromium, driven over WebDriver (Debian's chromium and
//! chromedriver; `.ci/run` installs them): log in, start a drill, watch progress change live,
//! see silent people land on the call list at the deadline, claim one, record the outcome,
//! and see them leave the list.

use std::process::Stdio;

use anpi::simulator::Script;
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

#[tokio::test]
async fn hq_runs_a_drill_from_the_web_page() {
    let Some(b) = browser().await else { return };
    let c = &b.client;
    let contacts = anpi::contacts::synthetic::generate(50, 1).contacts;
    let mut script = Script::new();
    // Ten staff read after a minute; everyone else stays silent.
    for h in handles(&contacts).into_iter().take(10) {
        script.insert(h, read_after(mins(1)));
    }
    let app = spawn_app_with(Options {
        contacts,
        script,
        ..Options::default()
    })
    .await;

    c.goto(&format!("{}/", app.base_url)).await.unwrap();
    assert_eq!(text_of(c, "h1").await.trim(), "安否確認 本部画面");
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(HQ_TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("login-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("the scenario list", || async {
        (count(c, "#scenario option[value=drill]").await == 1).then_some(())
    })
    .await;

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

    // Readers read: the page updates without a reload.
    app.advance(mins(2));
    wait_text(c, "#p-confirmed", "10").await;
    wait_text(c, "#p-to_call", "0").await;

    // The deadline passes: the silent forty land on the call list, shelter phones first.
    app.advance(mins(4));
    wait_text(c, "#p-to_call", "40").await;
    eventually("forty rows to call", || async {
        (count(c, "#tocall tr").await == 40).then_some(())
    })
    .await;
    assert_eq!(
        eval(
            c,
            "return document.querySelector('#tocall tr').dataset.staff;"
        )
        .await,
        json!("P0001")
    );
    assert!(
        count(c, "#tocall a[href^='tel:+81']").await >= 40,
        "tel: links"
    );

    // Claim the next person, record "safe", and see them leave the list.
    c.find(Locator::Id("claim-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually("a claimed person", || async {
        let name = text_of(c, "#claimed-name").await;
        (!name.is_empty()).then_some(name)
    })
    .await;
    assert!(text_of(c, "#claimed-name").await.ends_with("避難所"));
    let held = app.call_list(rc.id).await;
    let p1 = held
        .iter()
        .find(|e| e.staff_id.as_str() == "P0001")
        .unwrap();
    assert!(p1.claimed_by.as_deref().unwrap().starts_with("hq#1/tab-"));
    c.find(Locator::Css("#claimed button[data-outcome=safe]"))
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
    wait_text(c, "#p-to_call", "39").await;
    wait_text(c, "#p-reached", "1").await;
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

    c.goto(&format!("{}/", app.base_url)).await.unwrap();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(HQ_TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("login-btn"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
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
