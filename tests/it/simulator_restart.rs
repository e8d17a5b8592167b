//! The stand-in chat server restarted under an existing database: its new feed starts again
//! at 1, behind the stored cursor. anpi notices, reads the new feed from its beginning, and
//! every read is counted.

use anpi::ids::RollCallId;
use anpi::simulator::{SimConfig, Simulator};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_from_a_restarted_simulator_are_counted() {
    let contacts = anpi::contacts::synthetic::generate(30, 9).contacts;
    let mut script = anpi::simulator::Script::default();
    for h in handles(&contacts) {
        script.insert(h, read_after(mins(1)));
    }
    let mut app = spawn_app_with(Options {
        contacts,
        script: script.clone(),
        ..Options::default()
    })
    .await;
    let first = app.start(&scenario()).await;
    app.all_sent(first.id).await;
    app.advance(mins(2));
    app.wait_for(first.id, "the first feed's reads", |p| p.overall.read == 30)
        .await;

    // The simulator restarts on the same address: a new feed, its seq back at 1.
    let addr = app.sim.addr();
    let old = std::mem::replace(
        &mut app.sim,
        Simulator::start_on(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            SimConfig::new("unused"),
            Default::default(),
            app.clock.clone(),
        )
        .await
        .unwrap(),
    );
    old.shutdown().await;
    let restarted = Simulator::start_on(addr, SimConfig::new(SIM_TOKEN), script, app.clock.clone())
        .await
        .unwrap();
    std::mem::replace(&mut app.sim, restarted).shutdown().await;

    let second = app.start(&scenario()).await;
    assert_eq!(second.id, RollCallId(2));
    app.all_sent(second.id).await;
    app.advance(mins(2));
    let p = app
        .wait_for(second.id, "the new feed's reads", |p| p.overall.read == 30)
        .await;
    assert_eq!(p.overall.read, 30);
    assert_eq!(app.progress(first.id).await.overall.read, 30);
    app.shutdown().await;
}
