//! What anpi says back to a stranger or a careless client: no secret, path or internal error
//! text; bad input quoted by a short prefix only; a closed roll call's record refuses late
//! calls (or marks them late, as HQ chose); a broken scenario file is listed as broken while
//! the others stay usable.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn healthz_names_a_database_problem_generically_and_details_it_only_to_a_token() {
    let Some(pg) = pg_url_or_skip().await else {
        return;
    };
    let name = pg.name.clone();
    let app = spawn_app_with(Options {
        database: TestDatabase::Postgres(pg),
        ..Options::default()
    })
    .await;
    let health = format!("{}/healthz", app.base_url);
    let ok: Value = app
        .http
        .get(&health)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["status"], "ok");
    assert_eq!(ok["problems"], json!([]));

    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect(&pg_admin_url()).await.unwrap();
    admin
        .execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false").as_str())
        .await
        .unwrap();
    admin
        .execute(
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let res = app.http.get(&health).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = res.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["problems"][0]["name"], "database");
    assert_eq!(body["problems"][0]["reason"], "unreachable");
    assert!(body["problems"][0].get("detail").is_none(), "{text}");
    assert!(!text.contains(&name), "the database's name leaked: {text}");
    let with_token: Value = app
        .http
        .get(&health)
        .bearer_auth(HQ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        with_token["problems"][0]["detail"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{with_token}"
    );
    admin
        .execute(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true").as_str())
        .await
        .unwrap();
    let _ = admin.close().await;
    app.shutdown().await;
}

#[tokio::test]
async fn an_error_quotes_only_a_short_prefix_of_a_huge_bad_input() {
    let app = spawn_app().await;
    let huge = "x".repeat(2_000_000);
    for (path, body) in [
        ("/api/rollcalls", json!({"scenario": huge})),
        ("/api/rollcalls", json!({"scenario": 42, "drill": huge})),
        (
            "/api/rollcalls",
            json!({"scenario_toml": format!("title = \"{huge}")}),
        ),
        (
            "/api/rollcalls/1/calls/S00001",
            json!({"outcome": huge.clone()}),
        ),
    ] {
        let res = app
            .http
            .post(format!("{}{path}", app.base_url))
            .bearer_auth(HQ_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error(), "{path}: {}", res.status());
        let text = res.text().await.unwrap();
        assert!(text.len() < 2_000, "{path}: {} bytes back", text.len());
        assert!(text.contains("error"), "{text}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn an_unknown_scenario_is_a_404_that_names_no_folder() {
    let app = spawn_app().await;
    let res = app
        .http
        .post(format!("{}/api/rollcalls", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .json(&json!({"scenario": "tsunami"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("tsunami") && text.contains("earthquake"),
        "{text}"
    );
    assert!(!text.contains(env!("CARGO_MANIFEST_DIR")), "{text}");
    assert!(!text.contains("/scenarios"), "{text}");
    app.shutdown().await;
}

async fn record(app: &TestApp, rc: i64, staff: &str, outcome: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/api/rollcalls/{rc}/calls/{staff}", app.base_url))
        .bearer_auth(CALLER_TOKEN)
        .json(&json!({ "outcome": outcome }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_outcome_on_a_closed_roll_call_is_refused_with_the_reason_and_changes_nothing() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    app.hq.close(rc.id).await.unwrap();
    let res = record(&app, rc.id.0, "S00001", "safe").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("is closed"),
        "{body}"
    );
    let p = app.progress(rc.id).await;
    assert_eq!(p.overall.reached, 0, "nothing recorded");
    app.shutdown().await;
}

#[tokio::test]
async fn with_late_outcomes_allowed_a_call_after_close_is_recorded_and_marked_late() {
    let app = spawn_app().await;
    let rc = app.start(&scenario()).await;
    app.all_sent(rc.id).await;
    app.advance(mins(6));
    app.wait_for(rc.id, "escalation", |p| p.overall.to_call == 50)
        .await;
    app.hq.close(rc.id).await.unwrap();
    // HQ's choice `api.outcomes_after_close = "late"`, as startup applies it.
    let config = anpi::config::Config::from_toml("[api]\noutcomes_after_close = \"late\"\n")
        .expect("the setting is accepted");
    let hq = anpi::hq::Hq::new(
        app.store.clone(),
        app.clock.clone(),
        "simulator".into(),
        anpi::providers::Capabilities {
            read_receipts: true,
            buttons: true,
            idempotent_sends: false,
            rate_limit: None,
            max_in_flight: 4,
        },
        std::sync::Arc::new(tokio::sync::Notify::new()),
    )
    .with_late_outcomes(config.api.outcomes_after_close == "late");
    let staff = anpi::ids::StaffId::parse("S00001").unwrap();
    let entry = hq
        .record_outcome(
            rc.id,
            &staff,
            anpi::rollcall::CallOutcome::ReachedSafe,
            "caller#1",
        )
        .await
        .expect("recorded after close");
    let by = entry.outcome_by.unwrap();
    assert!(by.contains("after close"), "{by}");
    assert!(config_is_refused(
        "[api]\noutcomes_after_close = \"sometimes\"\n"
    ));
    app.shutdown().await;
}

fn config_is_refused(text: &str) -> bool {
    anpi::config::Config::from_toml(text)
        .is_err_and(|e| e.to_string().contains("api.outcomes_after_close"))
}

#[tokio::test]
async fn a_broken_scenario_file_is_listed_as_broken_and_the_others_still_start() {
    let dir = tempfile::tempdir().unwrap();
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    for f in ["earthquake.toml", "drill.toml"] {
        std::fs::copy(format!("{repo}/{f}"), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("broken.toml"), "title = [\n").unwrap();
    let app = spawn_app_with(Options {
        scenarios_dir: Some(dir.path().to_path_buf()),
        ..Options::default()
    })
    .await;
    let res = app
        .http
        .get(format!("{}/api/scenarios", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let text = res.text().await.unwrap();
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = list.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["drill", "earthquake"]);
    let broken: Vec<&Value> = list.iter().filter(|s| s["broken"] == true).collect();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0]["file"], "broken.toml");
    assert!(
        broken[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("broken.toml: "),
        "{text}"
    );
    assert!(!text.contains(&dir.path().display().to_string()), "{text}");
    let res = app
        .http
        .post(format!("{}/api/rollcalls", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .json(&json!({"scenario": "earthquake"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    app.shutdown().await;
}
