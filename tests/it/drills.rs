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

/// Two replicas (whole applications) on one SQLite file, one simulator and one clock.
async fn two_replicas(
    extra: &str,
) -> (
    Vec<TestReplica>,
    anpi::clock::ManualClock,
    tempfile::TempDir,
    anpi::simulator::SimHandle,
) {
    use anpi::clock::{ManualClock, SharedClock};
    use anpi::simulator::{Behaviour, SimConfig, Simulator};
    use std::sync::Arc;
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let manual = ManualClock::new(start_time());
    let clock: SharedClock = Arc::new(manual.clone());
    let sim = Simulator::start(
        SimConfig {
            token: SIM_TOKEN.into(),
            rate_limit: None,
            faults: Default::default(),
            default_behaviour: Behaviour::default(),
            population: None,
        },
        Default::default(),
        clock.clone(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    for i in 0..2 {
        let config = anpi::config::Config::from_toml(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[api]\nhq_tokens = [\"{HQ_TOKEN}\"]\n[scenarios]\ndir = \"{}\"\n[providers.simulator]\nurl = \"{}\"\ntoken = \"{SIM_TOKEN}\"\npoll_wait = \"50ms\"\n[replicas]\nlease_ttl = \"1s\"\n{extra}",
            tmp.path().join("shared.db").display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
            sim.base_url(),
        ))
        .unwrap();
        let app = anpi::startup::Application::build_with_clock(config, clock.clone())
            .await
            .unwrap();
        let hq = app.hq();
        if i == 0 {
            hq.import_contacts(&anpi::contacts::synthetic::generate(20, 1).contacts)
                .await
                .unwrap();
        }
        let cancel = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(app.run_until_stopped(cancel.clone()));
        out.push(TestReplica {
            hq,
            cancel,
            run: Some(run),
        });
    }
    (out, manual, tmp, sim)
}

struct TestReplica {
    hq: std::sync::Arc<anpi::hq::Hq>,
    cancel: tokio_util::sync::CancellationToken,
    run: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestReplica {
    async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(r) = self.run.take() {
            let _ = r.await;
        }
    }
}

#[tokio::test]
async fn two_replicas_start_one_drill_per_scheduled_time() {
    // 10:00 Tokyo every day; the test clock starts at 14:46 Tokyo.
    let (replicas, clock, _tmp, _sim) =
        two_replicas("[[drills]]\ncron = \"0 0 10 * * *\"\nscenario = \"drill\"\n").await;
    // Both replicas are up and competing for the lease before the time comes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        replicas[0].hq.list().await.unwrap().is_empty(),
        "nothing is due yet"
    );
    // To 10:00:30 Tokyo the next day: one scheduled time has passed.
    clock.advance(Duration::from_secs(19 * 3600 + 14 * 60 + 30));
    let end = Instant::now() + Duration::from_secs(20);
    while replicas[0].hq.list().await.unwrap().is_empty() {
        assert!(Instant::now() < end, "no drill started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let both replicas run their schedules (and a lease takeover) a while longer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list = replicas[1].hq.list().await.unwrap();
    assert_eq!(list.len(), 1, "one drill for one scheduled time: {list:?}");
    assert!(list[0].drill);
    // Stopping the holder moves the lease: the other replica does not start it again.
    let mut it = replicas.into_iter();
    let (a, b) = (it.next().unwrap(), it.next().unwrap());
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(b.hq.list().await.unwrap().len(), 1);
    b.stop().await;
}

#[tokio::test]
async fn a_drill_report_gives_read_and_answer_percentiles_per_group_and_who_was_never_reached() {
    use anpi::contacts::ContactKind;
    use anpi::ids::ChatHandle;
    use anpi::simulator::{Behaviour, Script, SimAnswer};
    // Ten people: 総務課 A1-A5 read after 10..50 s; 建設課 B1 reads after 60 s, B2 never
    // reads, B3 is unknown to the platform; shelter phone P1 answers after 70 s; C1 has no
    // chat id.
    let mut contacts = anpi::contacts::synthetic::generate(10, 7).contacts;
    let mut script = Script::default();
    let plan: [(&str, Option<&str>, Behaviour); 10] = [
        (
            "A1",
            Some("総務課"),
            Behaviour::reads_after(Duration::from_secs(10)),
        ),
        (
            "A2",
            Some("総務課"),
            Behaviour::reads_after(Duration::from_secs(20)),
        ),
        (
            "A3",
            Some("総務課"),
            Behaviour::reads_after(Duration::from_secs(30)),
        ),
        (
            "A4",
            Some("総務課"),
            Behaviour::reads_after(Duration::from_secs(40)),
        ),
        (
            "A5",
            Some("総務課"),
            Behaviour::reads_after(Duration::from_secs(50)),
        ),
        (
            "B1",
            Some("建設課"),
            Behaviour::reads_after(Duration::from_secs(60)),
        ),
        ("B2", Some("建設課"), Behaviour::never_reads()),
        ("B3", Some("建設課"), Behaviour::unknown_user()),
        (
            "P1",
            None,
            Behaviour::never_reads()
                .answering(Duration::from_secs(70), SimAnswer::Button("safe".into())),
        ),
        ("C1", Some("建設課"), Behaviour::never_reads()),
    ];
    for (c, (id, dep, b)) in contacts.iter_mut().zip(plan) {
        c.id = anpi::ids::StaffId::parse(id).unwrap();
        c.department = dep.map(String::from);
        c.kind = if id == "P1" {
            ContactKind::ShelterPhone
        } else {
            ContactKind::Staff
        };
        c.shelter = (id == "P1").then(|| "第一中学校".to_string());
        c.chat.clear();
        if id != "C1" {
            let h = ChatHandle::parse(&format!("sim-{id}")).unwrap();
            c.chat.insert("simulator".into(), h.clone());
            script.insert(h, b);
        }
    }
    let app = spawn_app_with(Options {
        contacts,
        script,
        ..Options::default()
    })
    .await;
    let drill = anpi::scenario::Scenario::find(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios")),
        "drill",
    )
    .unwrap();
    let rc = app.start(&drill).await;
    app.all_sent(rc.id).await;
    // Move the clock in 10 s steps, letting each step's reads arrive before the next.
    let expected_confirmed = [1, 2, 3, 4, 5, 6, 7];
    for n in expected_confirmed {
        app.advance(Duration::from_secs(10));
        app.wait_for(rc.id, "reads of this step", |p| p.overall.confirmed() >= n)
            .await;
    }
    app.advance(mins(5));
    app.wait_for(rc.id, "deadline", |p| p.next_deadline_at.is_none())
        .await;
    let r: serde_json::Value = app
        .http
        .get(format!(
            "{}/api/rollcalls/{}/drill-report",
            app.base_url, rc.id
        ))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["finished"], true, "{r}");
    let o = &r["overall"];
    assert_eq!(
        (
            o["total"].as_u64(),
            o["read"].as_u64(),
            o["answered"].as_u64()
        ),
        (Some(10), Some(7), Some(1)),
        "{r}"
    );
    // Reads at 10..70 s: nearest-rank p50 is the 4th (40 s), p95 the 7th (70 s).
    assert_eq!(o["read_p50_s"], 40.0);
    assert_eq!(o["read_p95_s"], 70.0);
    assert_eq!(o["answer_p50_s"], 70.0);
    let a = &r["by_department"]["総務課"];
    assert_eq!(
        (a["read_p50_s"].as_f64(), a["read_p95_s"].as_f64()),
        (Some(30.0), Some(50.0)),
        "{r}"
    );
    let b = &r["by_department"]["建設課"];
    assert_eq!(
        (b["total"].as_u64(), b["never_reached"].as_u64()),
        (Some(4), Some(3)),
        "{r}"
    );
    assert_eq!(r["by_shelter"]["第一中学校"]["answer_p95_s"], 70.0);
    let unreached: Vec<&str> = r["never_reached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["staff_id"].as_str().unwrap())
        .collect();
    assert_eq!(unreached, ["B2", "B3", "C1"]);
    // The same as CSV (Excel) and text.
    let csv = app
        .http
        .get(format!(
            "{}/api/rollcalls/{}/drill-report?format=csv",
            app.base_url, rc.id
        ))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&csv[..3], &[0xEF, 0xBB, 0xBF]);
    let csv = String::from_utf8(csv[3..].to_vec()).unwrap();
    assert!(csv.contains("所属,総務課,5,5,30.0,50.0,0,,,0"), "{csv}");
    let text = app
        .http
        .get(format!(
            "{}/api/rollcalls/{}/drill-report?format=text",
            app.base_url, rc.id
        ))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("never reached: 3"), "{text}");
    app.shutdown().await;
}
