//! Recurring drills from the configuration start on their wall-clock schedule, as drills.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn a_scheduled_drill_starts_a_drill_roll_call() {
    let app = spawn_app_with(Options {
        extra_config: "[[drills]]\ncron = \"* * * * * *\"\nscenario = \"drill\"\n".into(),
        ..Options::default()
    })
    .await;
    let end = Instant::now() + Duration::from_secs(15);
    let rc = loop {
        if let Some(rc) = app.hq.list().await.unwrap().into_iter().next() {
            break rc;
        }
        assert!(Instant::now() < end, "no drill started within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(rc.drill);
    assert_eq!(rc.scenario, "drill");
    assert!(rc.message.starts_with("【訓練】"), "{}", rc.message);
    app.shutdown().await;
}

#[tokio::test]
async fn a_drill_naming_a_missing_scenario_stops_the_daemon_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let config = anpi::config::Config::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[scenarios]\ndir = \"{}\"\n[[drills]]\ncron = \"0 0 10 * * Mon\"\nscenario = \"volcano\"\n",
        tmp.path().join("a.db").display(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
    ))
    .unwrap();
    let err = match anpi::startup::Application::build(config).await {
        Ok(_) => panic!("a drill with a missing scenario must not build"),
        Err(e) => e,
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("drills[0]") && msg.contains("volcano"),
        "{msg}"
    );
}
