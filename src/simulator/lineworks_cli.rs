//! `anpi simulator --platform lineworks`: the LINE WORKS stand-in ([`super::lineworks`]) as its
//! own process, so an operator can rehearse `anpi serve` end to end without the real platform.
//! Its members come from a contacts file (their `chat.lineworks` ids), its rooms from
//! `--room CHANNEL=DEPARTMENT`, and what each person does (reads the board post, taps a button,
//! sends a sticker, stays silent, is unknown) from the population script of a scenario's
//! `[simulation]` table ([`Script::generate`]), as in the demo. It signs every callback with
//! the bot secret and POSTs it to `--callback-url`.
//!
//! Invariant: nothing here is a real credential: the default key pair, secrets and ids are the
//! TEST-ONLY ones of the test suite, and the stand-in listens on loopback unless told
//! otherwise.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;

use super::lineworks::{self as lws, LwSimConfig, LwSimHandle, TEST_PRIVATE_KEY_PEM};
use super::{PopulationSpec, Script};
use crate::clock::{ScaledClock, SharedClock, SystemClock};
use crate::ids::ChatHandle;
use crate::providers::RateLimit;
use crate::scenario::Scenario;

/// The contacts' key for LINE WORKS ids.
const PROVIDER: &str = "lineworks";

/// Settings of the LINE WORKS stand-in (`anpi simulator --platform lineworks`). The defaults
/// are the TEST-ONLY values anpi's own tests use.
#[derive(Debug, Clone, Args)]
pub struct LineWorksArgs {
    /// Contacts file (TOML or CSV): everyone with a `chat.lineworks` id is a member of the
    /// stand-in's domain and board.
    #[arg(long)]
    pub contacts: Option<PathBuf>,
    /// anpi's callback endpoint, e.g. http://127.0.0.1:8425/callbacks/lineworks. Without
    /// one, nobody taps, replies or sends a sticker.
    #[arg(long)]
    pub callback_url: Option<String>,
    #[arg(long, default_value = "2000001")]
    pub bot_id: String,
    /// Signs the callbacks (anpi's providers.lineworks.bot_secret).
    #[arg(
        long,
        env = "ANPI_LW_BOT_SECRET",
        default_value = "test-bot-secret",
        hide_env_values = true
    )]
    pub bot_secret: String,
    #[arg(long, default_value = "100")]
    pub board_id: String,
    #[arg(long, default_value = "test-client-id")]
    pub client_id: String,
    #[arg(
        long,
        env = "ANPI_LW_CLIENT_SECRET",
        default_value = "test-client-secret",
        hide_env_values = true
    )]
    pub client_secret: String,
    #[arg(long, default_value = "test.serviceaccount@anpi-test")]
    pub service_account: String,
    /// PEM of the public key the service-account JWT must verify with (default: the
    /// TEST-ONLY key; see --write-test-key).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Writes the TEST-ONLY private key that matches the default public key here, for anpi's
    /// providers.lineworks.private_key_file.
    #[arg(long)]
    pub write_test_key: Option<PathBuf>,
    /// A department room: CHANNEL=DEPARTMENT (repeatable). Its members are the contacts of
    /// that department.
    #[arg(long = "room", value_name = "CHANNEL=DEPARTMENT")]
    pub rooms: Vec<String>,
    /// The scenario whose [simulation] table (and answer buttons) script the population: a
    /// name in --scenarios-dir or a file.
    #[arg(long, default_value = "drill")]
    pub scenario: String,
    #[arg(long, default_value = "scenarios")]
    pub scenarios_dir: PathBuf,
    /// Seed of the population script (the same seed, the same people).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Board API requests per minute (creating posts, reading readers; each).
    #[arg(long, default_value_t = 60)]
    pub board_rate_limit_per_minute: u32,
    /// Clock speed, for a rehearsal in fast motion; must match anpi's [time] speed.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// The clock's epoch when --speed is not 1; must match anpi's [time] epoch.
    #[arg(long)]
    pub epoch: Option<DateTime<Utc>>,
}

/// What was started, for the operator.
#[derive(Debug)]
pub struct Started {
    pub handle: LwSimHandle,
    pub members: usize,
    pub rooms: usize,
}

/// Starts the stand-in on `listen` as `args` say. `rate_limit_per_minute` is the message
/// API's limit (0: the platform's 240).
pub async fn start(
    args: &LineWorksArgs,
    listen: std::net::SocketAddr,
    rate_limit_per_minute: u32,
) -> anyhow::Result<Started> {
    let path = args.contacts.as_ref().context(
        "--contacts FILE is required with --platform lineworks: its chat.lineworks ids are \
         the stand-in's members",
    )?;
    let contacts = crate::contacts::load_file(path)
        .with_context(|| format!("loading contacts from {}", path.display()))?
        .contacts;
    let members: Vec<ChatHandle> = contacts
        .iter()
        .filter_map(|c| c.chat.get(PROVIDER).cloned())
        .collect();
    anyhow::ensure!(
        !members.is_empty(),
        "{}: no contact has a chat.lineworks id",
        path.display()
    );
    let mut config = LwSimConfig::new(members.clone());
    for raw in &args.rooms {
        let (channel, department) = raw
            .split_once('=')
            .filter(|(c, d)| !c.trim().is_empty() && !d.trim().is_empty())
            .with_context(|| format!("--room {raw:?}: write CHANNEL=DEPARTMENT"))?;
        let in_room: Vec<ChatHandle> = contacts
            .iter()
            .filter(|c| c.department.as_deref() == Some(department.trim()))
            .filter_map(|c| c.chat.get(PROVIDER).cloned())
            .collect();
        anyhow::ensure!(
            !in_room.is_empty(),
            "--room {raw:?}: nobody in department {department:?} has a chat.lineworks id"
        );
        config.rooms.insert(channel.trim().to_string(), in_room);
    }
    let scenario = Scenario::find(&args.scenarios_dir, &args.scenario)
        .with_context(|| format!("--scenario {:?}", args.scenario))?;
    let spec: PopulationSpec = scenario.simulation.clone().unwrap_or_default();
    spec.validate().map_err(anyhow::Error::msg)?;
    let values: Vec<String> = scenario.buttons.iter().map(|b| b.value.clone()).collect();
    let script = Script::generate(&members, &spec, &values, args.seed);
    config.bot_id = args.bot_id.clone();
    config.bot_secret = args.bot_secret.clone();
    config.board_id = args.board_id.clone();
    config.client_id = args.client_id.clone();
    config.client_secret = args.client_secret.clone();
    config.service_account = args.service_account.clone();
    config.callback_url = args.callback_url.clone();
    if let Some(p) = &args.public_key {
        config.public_key_pem = std::fs::read_to_string(p)
            .with_context(|| format!("--public-key: reading {}", p.display()))?;
    }
    if rate_limit_per_minute > 0 {
        config.rate_limit = RateLimit {
            requests: rate_limit_per_minute,
            per: std::time::Duration::from_secs(60),
        };
    }
    anyhow::ensure!(
        args.board_rate_limit_per_minute > 0,
        "--board-rate-limit-per-minute must be at least 1"
    );
    config.board_rate_limit = RateLimit {
        requests: args.board_rate_limit_per_minute,
        per: std::time::Duration::from_secs(60),
    };
    if let Some(out) = &args.write_test_key {
        std::fs::write(out, TEST_PRIVATE_KEY_PEM)
            .with_context(|| format!("--write-test-key: writing {}", out.display()))?;
    }
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a positive number"
    );
    let clock: SharedClock = if args.speed == 1.0 {
        Arc::new(SystemClock)
    } else {
        let epoch = args
            .epoch
            .context("--speed other than 1 needs --epoch (the same as anpi's [time] epoch)")?;
        Arc::new(ScaledClock::new(epoch, args.speed))
    };
    let rooms = config.rooms.len();
    let handle = lws::start_on(listen, config, script, clock)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    Ok(Started {
        handle,
        members: members.len(),
        rooms,
    })
}
