//! A real Synapse homeserver per test: started on a free loopback port from a fresh temporary
//! folder and generated config, ready only when its own process logs that it listens on that
//! port and `/_matrix/client/versions` answers 200, killed when dropped.
//!
//! Synapse comes from the venv `.ci/run` makes (`ANPI_SYNAPSE_PYTHON`, else
//! `~/.cache/anpi/venv-synapse/bin/python`). Without it a test is skipped with the reason
//! printed, except in CI (`CI=true`), where a missing Synapse is a failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anpi::clock::{SharedClock, SystemClock};
use anpi::config::Config;
use anpi::contacts::{synthetic, Contact};
use anpi::hq::Hq;
use anpi::ids::ChatHandle;
use anpi::startup::Application;
use anpi::store::SharedStore;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::support::{init_logs, HQ_TOKEN};

/// The homeserver's name; every user is `@name:SERVER_NAME`.
pub const SERVER_NAME: &str = "anpi.test";
/// How long a Synapse may take to start before the test fails (a hang guard, not a measure).
const START_LIMIT: Duration = Duration::from_secs(90);
/// Log lines kept for the failure message.
const LOG_TAIL: usize = 40;
/// One homeserver at a time: each start costs seconds of CPU, and the other tests in the
/// binary run on manual clocks that should not be starved meanwhile.
static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Which rate limits the homeserver enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limits {
    /// Every `rc_*` limit lifted, so tests are quick.
    Relaxed,
    /// Synapse's default message limit (`rc_message`: 0.2/s, burst 10) on everything that
    /// sends; only set-up (registration, login, room creation, invites, joins) is relaxed.
    DefaultMessages,
}

/// The Python that runs Synapse, or why there is none.
fn synapse_python() -> Result<PathBuf, String> {
    let path = match std::env::var_os("ANPI_SYNAPSE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
            PathBuf::from(home).join(".cache/anpi/venv-synapse/bin/python")
        }
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no Synapse python at {} (run .ci/run once, or set ANPI_SYNAPSE_PYTHON)",
            path.display()
        ))
    }
}

/// A running homeserver. Dropping it kills the process.
pub struct Synapse {
    pub base_url: String,
    secret: String,
    http: reqwest::Client,
    _child: Child,
    _dir: tempfile::TempDir,
    /// Held while this homeserver runs; set once it has started.
    _turn: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// A registered account.
#[derive(Debug, Clone)]
pub struct MatrixUser {
    pub user_id: String,
    pub token: String,
    base_url: String,
    http: reqwest::Client,
}

fn limits_yaml(limits: Limits) -> String {
    let open = "{per_second: 1000, burst_count: 1000}";
    let setup = format!(
        "rc_registration: {open}\n\
         rc_login: {{address: {open}, account: {open}, failed_attempts: {open}}}\n\
         rc_joins: {{local: {open}, remote: {open}}}\n\
         rc_joins_per_room: {open}\n\
         rc_invites: {{per_room: {open}, per_user: {open}, per_issuer: {open}}}\n\
         rc_room_creation: {open}\n"
    );
    match limits {
        Limits::Relaxed => format!("{setup}rc_message: {open}\n"),
        Limits::DefaultMessages => setup,
    }
}

impl Synapse {
    /// Starts a homeserver with `extra` lines of configuration, or returns `None` (with the
    /// reason printed) when Synapse is not installed outside CI. In CI a missing Synapse panics.
    pub async fn start_with(limits: Limits, extra: &str) -> Option<Synapse> {
        init_logs();
        let python = match synapse_python() {
            Ok(p) => p,
            Err(why) => {
                if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                    panic!("CI needs Synapse for the Matrix tests: {why}");
                }
                eprintln!("skipping a Matrix test: {why}");
                return None;
            }
        };
        let turn = ONE_AT_A_TIME.acquire().await.expect("never closed");
        // A port that was free a moment ago may be taken by the time Synapse binds it; then
        // Synapse exits and another port is tried.
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&python, limits, extra).await {
                Ok(mut s) => {
                    s._turn = Some(turn);
                    return Some(s);
                }
                Err(e) => last_error = e,
            }
        }
        panic!("Synapse did not start: {last_error}");
    }

    async fn try_start(python: &PathBuf, limits: Limits, extra: &str) -> Result<Synapse, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let secret = hex::encode(rand::random::<[u8; 16]>());
        let d = dir.path();
        // A signing key in Synapse's own format ("ed25519 <version> <unpadded base64 seed>"):
        // any 32 random bytes are a valid ed25519 seed, and writing it here saves the four
        // seconds `--generate-keys` spends importing Synapse.
        let mut seed = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut seed);
        let key = base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed);
        std::fs::write(d.join("signing.key"), format!("ed25519 a_anpi {key}\n"))
            .map_err(|e| e.to_string())?;
        std::fs::write(
            d.join("log.yaml"),
            "version: 1\n\
             formatters: {precise: {format: '%(asctime)s %(name)s %(levelname)s %(message)s'}}\n\
             handlers: {console: {class: logging.StreamHandler, formatter: precise}}\n\
             root: {level: INFO, handlers: [console]}\n\
             disable_existing_loggers: false\n",
        )
        .map_err(|e| e.to_string())?;
        let config = format!(
            "server_name: \"{SERVER_NAME}\"\n\
             pid_file: {d}/homeserver.pid\n\
             listeners:\n\
             \x20 - port: {port}\n\
             \x20   bind_addresses: ['127.0.0.1']\n\
             \x20   type: http\n\
             \x20   tls: false\n\
             \x20   x_forwarded: false\n\
             \x20   resources: [{{names: [client], compress: false}}]\n\
             database: {{name: sqlite3, args: {{database: {d}/homeserver.db}}}}\n\
             log_config: {d}/log.yaml\n\
             media_store_path: {d}/media\n\
             signing_key_path: {d}/signing.key\n\
             report_stats: false\n\
             registration_shared_secret: \"{secret}\"\n\
             macaroon_secret_key: \"{secret}-macaroon\"\n\
             form_secret: \"{secret}-form\"\n\
             bcrypt_rounds: 4\n\
             federation_domain_whitelist: []\n\
             trusted_key_servers: []\n\
             suppress_key_server_warning: true\n\
             use_presence: false\n\
             enable_metrics: false\n\
             caches: {{sync_response_cache_duration: 0}}\n\
             {limits}{extra}\n",
            d = d.display(),
            limits = limits_yaml(limits),
        );
        let config_path = d.join("homeserver.yaml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;

        let mut child = Command::new(python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config_path)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        let marker = format!("Synapse now listening on TCP port {port}");
        let log2 = log.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains(&marker) {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push(line);
                if l.len() > LOG_TAIL {
                    l.remove(0);
                }
            }
        });
        let tail = |log: &Arc<Mutex<Vec<String>>>| log.lock().unwrap().join("\n");
        // Our own process must say it listens: an answer on the port alone could come from
        // whoever else holds it.
        tokio::select! {
            r = ready_rx => {
                if r.is_err() {
                    let _ = child.wait().await;
                    return Err(format!("Synapse exited before listening:\n{}", tail(&log)));
                }
            }
            status = child.wait() => {
                return Err(format!("Synapse exited ({status:?}) before listening:\n{}", tail(&log)));
            }
            _ = tokio::time::sleep(START_LIMIT) => {
                return Err(format!("Synapse did not listen within {START_LIMIT:?}:\n{}", tail(&log)));
            }
        }
        let base_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let versions = format!("{base_url}/_matrix/client/versions");
        let until = tokio::time::Instant::now() + START_LIMIT;
        loop {
            if let Ok(r) = http.get(&versions).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if tokio::time::Instant::now() > until {
                return Err(format!("/versions never answered 200:\n{}", tail(&log)));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("Synapse exited ({status}):\n{}", tail(&log)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Synapse {
            base_url,
            secret,
            http,
            _child: child,
            _dir: dir,
            _turn: None,
        })
    }

    /// Registers `name` through the shared-secret admin API and returns its session.
    pub async fn register(&self, name: &str, admin: bool) -> MatrixUser {
        let url = format!("{}/_synapse/admin/v1/register", self.base_url);
        let nonce: Value = self
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nonce = nonce["nonce"].as_str().expect("a nonce").to_string();
        let password = format!("pw-{name}-{}", self.secret);
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(nonce.as_bytes());
        mac.update(b"\0");
        mac.update(name.as_bytes());
        mac.update(b"\0");
        mac.update(password.as_bytes());
        mac.update(b"\0");
        mac.update(if admin { b"admin" } else { b"notadmin" });
        let mac = hex::encode(mac.finalize().into_bytes());
        let resp = self
            .http
            .post(&url)
            .json(&json!({
                "nonce": nonce, "username": name, "password": password,
                "admin": admin, "mac": mac,
            }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "registering {name}: {status} {body}");
        MatrixUser {
            user_id: body["user_id"].as_str().unwrap().to_string(),
            token: body["access_token"].as_str().unwrap().to_string(),
            base_url: self.base_url.clone(),
            http: self.http.clone(),
        }
    }
}

impl Synapse {
    /// A new session (access token) for `name`, registered by [`Synapse::register`].
    pub async fn login(&self, name: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/_matrix/client/v3/login", self.base_url))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": name},
                "password": format!("pw-{name}-{}", self.secret),
            }))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "logging in {name}: {status} {body}");
        body["access_token"].as_str().unwrap().to_string()
    }
}

impl MatrixUser {
    /// Ends this session: its access token is refused from now on.
    pub async fn logout(&self) {
        self.call(reqwest::Method::POST, "/logout", json!({})).await;
    }

    pub fn handle(&self) -> ChatHandle {
        ChatHandle::parse(&self.user_id).unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/_matrix/client/v3{path}", self.base_url)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method.clone(), self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "{method} {path} as {}: {status} {v}",
            self.user_id
        );
        v
    }

    pub async fn join(&self, room: &str) {
        self.call(reqwest::Method::POST, &format!("/join/{room}"), json!({}))
            .await;
    }

    /// Posts a read receipt: `receipt_type` is `m.read` or `m.read.private`.
    pub async fn receipt(&self, room: &str, event: &str, receipt_type: &str, thread: Option<&str>) {
        let body = match thread {
            Some(t) => json!({"thread_id": t}),
            None => json!({}),
        };
        self.call(
            reqwest::Method::POST,
            &format!("/rooms/{room}/receipt/{receipt_type}/{event}"),
            body,
        )
        .await;
    }

    pub async fn say(&self, room: &str, text: &str) -> String {
        let txn = format!("t{}", rand::random::<u64>());
        let v = self
            .call(
                reqwest::Method::PUT,
                &format!("/rooms/{room}/send/m.room.message/{txn}"),
                json!({"msgtype": "m.text", "body": text}),
            )
            .await;
        v["event_id"].as_str().unwrap().to_string()
    }

    pub async fn leave(&self, room: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/rooms/{room}/leave"),
            json!({}),
        )
        .await;
    }

    /// Sends any event (`m.room.encrypted` from a client that encrypts, say).
    pub async fn send_event(&self, room: &str, event_type: &str, content: Value) -> String {
        let txn = format!("t{}", rand::random::<u64>());
        let v = self
            .call(
                reqwest::Method::PUT,
                &format!("/rooms/{room}/send/{event_type}/{txn}"),
                content,
            )
            .await;
        v["event_id"].as_str().unwrap().to_string()
    }

    /// Edits one of the user's own messages, as clients do (`m.replace`, a "* " fallback).
    pub async fn edit(&self, room: &str, event: &str, text: &str) -> String {
        self.send_event(
            room,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": format!("* {text}"),
                "m.new_content": {"msgtype": "m.text", "body": text},
                "m.relates_to": {"rel_type": "m.replace", "event_id": event},
            }),
        )
        .await
    }

    /// A reply quoting `event` (`m.in_reply_to`).
    pub async fn reply_to(&self, room: &str, event: &str, text: &str) -> String {
        self.send_event(
            room,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": format!("> <@anpi:{SERVER_NAME}> ...\n\n{text}"),
                "m.relates_to": {"m.in_reply_to": {"event_id": event}},
            }),
        )
        .await
    }

    pub async fn react(&self, room: &str, event: &str, key: &str) {
        let txn = format!("t{}", rand::random::<u64>());
        self.call(
            reqwest::Method::PUT,
            &format!("/rooms/{room}/send/m.reaction/{txn}"),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event, "key": key}}),
        )
        .await;
    }

    /// The room's `m.room.message` events sent by `sender`, newest first.
    pub async fn messages_from(&self, room: &str, sender: &str) -> Vec<Value> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/rooms/{room}/messages?dir=b&limit=200"),
                Value::Null,
            )
            .await;
        v["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message" && e["sender"] == sender)
            .cloned()
            .collect()
    }

    /// Lifts (or, with `false`, restores) the homeserver's rate limit for `user`; needs admin.
    pub async fn override_ratelimit(&self, user: &str, lifted: bool) {
        let url = format!(
            "{}/_synapse/admin/v1/users/{user}/override_ratelimit",
            self.base_url
        );
        let req = if lifted {
            self.http
                .post(url)
                .json(&json!({"messages_per_second": 0, "burst_count": 0}))
        } else {
            self.http.delete(url)
        };
        let resp = req.bearer_auth(&self.token).send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "override_ratelimit: {}",
            resp.status()
        );
    }
}

/// `n` contacts (staff and a shelter phone) whose only chat id is a Matrix user `@p<i>:...`.
pub fn matrix_contacts(n: usize, seed: u64) -> Vec<Contact> {
    let mut contacts = synthetic::generate(n, seed).contacts;
    for (i, c) in contacts.iter_mut().enumerate() {
        c.chat.clear();
        c.chat.insert(
            "matrix".into(),
            ChatHandle::parse(&format!("@p{i:02}:{SERVER_NAME}")).unwrap(),
        );
    }
    contacts
}

/// Registers every contact's Matrix user (`p00`, `p01`, ...) in order.
pub async fn register_people(hs: &Synapse, contacts: &[Contact]) -> Vec<MatrixUser> {
    let mut users = Vec::with_capacity(contacts.len());
    for i in 0..contacts.len() {
        users.push(hs.register(&format!("p{i:02}"), false).await);
    }
    users
}

/// anpi on the Matrix provider, with the real clock and a fresh SQLite file.
pub struct MatrixApp {
    pub base_url: String,
    pub hq: Arc<Hq>,
    pub store: SharedStore,
    pub config: Config,
    cancel: CancellationToken,
    running: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// The configuration file for anpi against `hs` as `bot`, in `dir`.
pub fn write_config(hs: &Synapse, bot: &MatrixUser, dir: &std::path::Path) -> PathBuf {
    let token_file = dir.join("matrix.token");
    std::fs::write(&token_file, format!("{}\n", bot.token)).unwrap();
    let path = dir.join("anpi.toml");
    std::fs::write(
        &path,
        format!(
            r#"
provider = "matrix"
[server]
listen = "127.0.0.1:0"
[database]
url = "sqlite://{db}"
[api]
hq_tokens = ["{HQ_TOKEN}"]
[scenarios]
dir = "{scen}"
[dispatch]
retry_schedule = ["200ms", "500ms", "1s"]
[providers.matrix]
homeserver = "{hs}"
user_id = "{bot}"
access_token_file = "{token}"
sync_timeout = "2s"
"#,
            db = dir.join("anpi.db").display(),
            scen = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
            hs = hs.base_url,
            bot = bot.user_id,
            token = token_file.display(),
        ),
    )
    .unwrap();
    path
}

impl MatrixApp {
    /// Builds and runs anpi from `config_path` (the real clock: receipts carry server times).
    pub async fn spawn(config_path: PathBuf) -> MatrixApp {
        let config = Config::load_with_env(Some(&config_path), false).expect("valid config");
        let clock: SharedClock = Arc::new(SystemClock);
        let app = Application::build_with_clock(config.clone(), clock)
            .await
            .expect("app builds");
        let base_url = format!("http://{}", app.local_addr());
        let hq = app.hq();
        let store = app.store();
        let cancel = CancellationToken::new();
        let running = tokio::spawn(app.run_until_stopped(cancel.clone()));
        MatrixApp {
            base_url,
            hq,
            store,
            config,
            cancel,
            running: Some(running),
        }
    }

    /// The DM room `prepare` stored for `user`.
    pub async fn room_of(&self, user: &MatrixUser) -> String {
        self.store
            .matrix_room(&user.user_id)
            .await
            .unwrap()
            .and_then(|r| r.room_id)
            .unwrap_or_else(|| panic!("no DM room for {}", user.user_id))
    }

    /// A counter from `/metrics`, by its full name with labels; 0 when absent.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.base_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stops every worker and waits for them.
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        if let Some(h) = self.running.take() {
            let _ = h.await;
        }
    }
}

impl Drop for MatrixApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A homeserver, anpi's bot, `n` people with their DM rooms joined, and anpi running.
pub struct World {
    pub hs: Synapse,
    pub bot: MatrixUser,
    /// A server admin (only with [`Limits::DefaultMessages`], to lift the bot's limit).
    pub admin: Option<MatrixUser>,
    pub contacts: Vec<Contact>,
    pub people: Vec<MatrixUser>,
    /// `rooms[i]` is `people[i]`'s DM room with the bot.
    pub rooms: Vec<String>,
    pub app: MatrixApp,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
}

/// What `anpi matrix prepare` does, on the app's configuration (in process: the binary in a
/// shared build folder may be another checkout's).
pub async fn prepare(app: &MatrixApp) -> anpi::providers::matrix::PrepareReport {
    let report = anpi::cli::prepare_matrix_rooms(&app.config)
        .await
        .expect("prepare runs");
    assert!(report.failed.is_empty(), "{report:?}");
    report
}

/// Settings for [`World::new_with`].
#[derive(Debug, Clone, Copy)]
pub struct WorldOptions<'a> {
    pub limits: Limits,
    /// Extra homeserver configuration lines.
    pub synapse_extra: &'a str,
    /// Lift the bot's rate limit for the whole test (an admin is made either way).
    pub bot_unlimited: bool,
}

impl World {
    /// Sets everything up as an admin would: with the bot's rate limit lifted while the rooms
    /// are made (then restored), `anpi matrix prepare`, and each person accepting the invite.
    /// `None` when Synapse is not installed (outside CI).
    pub async fn new(n: usize, seed: u64, limits: Limits) -> Option<World> {
        Self::new_with(
            n,
            seed,
            WorldOptions {
                limits,
                synapse_extra: "",
                bot_unlimited: false,
            },
        )
        .await
    }

    pub async fn new_with(n: usize, seed: u64, o: WorldOptions<'_>) -> Option<World> {
        let limits = o.limits;
        let hs = Synapse::start_with(limits, o.synapse_extra).await?;
        let admin = match limits {
            Limits::DefaultMessages => Some(hs.register("admin", true).await),
            Limits::Relaxed => None,
        };
        let bot = hs.register("anpi", false).await;
        let contacts = matrix_contacts(n, seed);
        let people = register_people(&hs, &contacts).await;
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_config(&hs, &bot, dir.path());
        let app = MatrixApp::spawn(config_path.clone()).await;
        app.hq.import_contacts(&contacts).await.unwrap();
        if let Some(a) = &admin {
            a.override_ratelimit(&bot.user_id, true).await;
        }
        assert_eq!(prepare(&app).await.created, n);
        let mut rooms = Vec::new();
        for p in &people {
            let room = app.room_of(p).await;
            p.join(&room).await;
            rooms.push(room);
        }
        if let Some(a) = admin.as_ref().filter(|_| !o.bot_unlimited) {
            a.override_ratelimit(&bot.user_id, false).await;
        }
        Some(World {
            hs,
            bot,
            admin,
            contacts,
            people,
            rooms,
            app,
            config_path,
            dir,
        })
    }
}
