//! `anpi rollcall start` is safe to retry: the real `anpi serve` is SIGKILLed after writing the
//! roll call and before its answer reaches the CLI; the CLI says the roll call may have
//! started, and running the same command again (after a restart) gives that roll call, not a
//! second one.

use std::net::SocketAddr;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anpi::clock::{SharedClock, SystemClock};
use anpi::contacts::synthetic;
use anpi::simulator::{SimConfig, Simulator};
use anpi::store::{sqlite::SqliteStore, Store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::crash::{kill, spawn_daemon, wait_until};
use crate::support::*;

/// A loopback TCP relay between the CLI and the daemon. Armed, it lets the start request
/// through and, when the daemon's answer to it arrives, kills the daemon and closes the CLI's
/// connection without passing the answer on: the roll call is written, the CLI never hears.
struct Relay {
    upstream: Mutex<SocketAddr>,
    armed: AtomicBool,
    daemon: Mutex<Option<Child>>,
}

impl Relay {
    async fn serve(self: Arc<Self>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(self.clone().relay(client));
            }
        });
        addr
    }

    async fn relay(self: Arc<Self>, mut client: TcpStream) {
        let to = *self.upstream.lock().unwrap();
        let Ok(mut up) = TcpStream::connect(to).await else {
            return; // The daemon is down: the CLI sees the connection close.
        };
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = up.split();
        let (mut from_cli, mut from_daemon) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        let mut start_sent = false;
        loop {
            tokio::select! {
                n = cr.read(&mut from_cli) => {
                    let Ok(n @ 1..) = n else { return };
                    let chunk = &from_cli[..n];
                    if self.armed.load(Ordering::SeqCst)
                        && chunk.windows(25).any(|w| w == b"POST /api/rollcalls HTTP/")
                    {
                        start_sent = true;
                    }
                    if uw.write_all(chunk).await.is_err() { return }
                }
                n = ur.read(&mut from_daemon) => {
                    let Ok(n @ 1..) = n else { return };
                    if start_sent {
                        // The answer is on its way: the roll call is in the database.
                        self.armed.store(false, Ordering::SeqCst);
                        if let Some(mut daemon) = self.daemon.lock().unwrap().take() {
                            kill(&mut daemon);
                        }
                        return;
                    }
                    if cw.write_all(&from_daemon[..n]).await.is_err() { return }
                }
            }
        }
    }
}

async fn healthy(url: &str) -> bool {
    reqwest::get(format!("{url}/healthz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_start_killed_mid_request_then_run_again_makes_one_roll_call() {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let sim = Simulator::start(
        SimConfig {
            token: SIM_TOKEN.into(),
            rate_limit: None,
            faults: Default::default(),
            default_behaviour: Default::default(),
            population: None,
        },
        Default::default(),
        clock,
    )
    .await
    .unwrap();
    let contacts = tmp.path().join("contacts.toml");
    std::fs::write(&contacts, synthetic::generate(20, 5).to_toml().unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let db = tmp.path().join("anpi.db");
    let config = tmp.path().join("anpi.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
[database]
url = "sqlite://{db}"
[api]
hq_tokens = ["{HQ_TOKEN}"]
[scenarios]
dir = "{scen}"
[contacts]
file = "{contacts}"
[providers.simulator]
url = "{sim}"
token = "{SIM_TOKEN}"
poll_wait = "100ms"
"#,
            db = db.display(),
            scen = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
            contacts = contacts.display(),
            sim = sim.base_url(),
        ),
    )
    .unwrap();
    let log = tmp.path().join("anpi.log");
    let daemon_url = format!("http://127.0.0.1:{port}");
    let relay = Arc::new(Relay {
        upstream: Mutex::new(SocketAddr::from(([127, 0, 0, 1], port))),
        armed: AtomicBool::new(true),
        daemon: Mutex::new(Some(spawn_daemon(&config, &log))),
    });
    let cli_url = format!("http://{}", relay.clone().serve().await);
    wait_until("anpi serve answers", Duration::from_secs(60), || {
        healthy(&daemon_url)
    })
    .await;

    let state = tmp.path().join("cli-state");
    let start = {
        let (cli_url, state) = (cli_url.clone(), state.clone());
        move || {
            let (cli_url, state) = (cli_url.clone(), state.clone());
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_anpi"))
                    .args(["rollcall", "start", "--scenario", "earthquake"])
                    .env("ANPI_URL", cli_url)
                    .env("ANPI_TOKEN", HQ_TOKEN)
                    .env("ANPI_STATE_DIR", state)
                    .output()
                    .unwrap()
            })
        }
    };

    // The daemon dies between writing the roll call and answering.
    let first = start().await.unwrap();
    let said = text(&first);
    assert!(!first.status.success(), "{said}");
    assert!(
        said.contains("may or may not have started") && said.contains("Run the same command again"),
        "{said}"
    );
    let store = SqliteStore::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    assert_eq!(
        store.roll_calls().await.unwrap().len(),
        1,
        "the first attempt was written"
    );

    // Restarted, the same command again: the same roll call, not a second.
    *relay.daemon.lock().unwrap() = Some(spawn_daemon(&config, &log));
    wait_until("anpi serve answers again", Duration::from_secs(60), || {
        healthy(&daemon_url)
    })
    .await;
    let again = start().await.unwrap();
    let said = text(&again);
    assert!(again.status.success(), "{said}");
    assert!(said.contains("roll call #1 started"), "{said}");
    assert!(said.contains("retrying the start from"), "{said}");
    assert_eq!(store.roll_calls().await.unwrap().len(), 1, "{said}");

    // Settled: the same command once more is a new roll call, as it should be.
    let third = start().await.unwrap();
    assert!(
        text(&third).contains("roll call #2 started"),
        "{}",
        text(&third)
    );

    if let Some(mut daemon) = relay.daemon.lock().unwrap().take() {
        kill(&mut daemon);
    }
    sim.shutdown().await;
}
