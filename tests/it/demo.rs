//! `anpi demo`'s summary counts the same people to call as the list it prints above it.

use anpi::demo::{self, DemoArgs};

use crate::support::*;

/// A quick plain demo of `size` people on the simulator.
fn args(size: usize, seed: u64) -> DemoArgs {
    DemoArgs {
        size,
        speed: 300.0,
        seed,
        scenario: None,
        rate_limit_per_minute: 0,
        database: None,
        plain: true,
        provider: "simulator".into(),
        no_board: false,
        rooms: false,
        answers: None,
        texts: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_summary_and_its_call_list_agree() {
    init_logs();
    for seed in [1, 2] {
        let r = demo::run_measured(args(500, seed)).await.unwrap();
        assert!(r.to_call > 0, "{r:?}");
        // The list holds those to call and the urgent answers, nobody else.
        assert_eq!(
            r.to_call + r.urgent,
            r.listed as i64,
            "summary vs list, seed {seed}: {r:?}"
        );
    }
}

#[tokio::test]
async fn an_answer_mix_naming_no_button_of_the_scenario_is_refused_with_the_choices() {
    let err = demo::run_measured(DemoArgs {
        answers: Some("safe=50,injurd=5".into()),
        ..args(20, 1)
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"injurd\""), "{err}");
    assert!(
        err.contains("injured") && err.contains("need_help"),
        "{err}"
    );
}
