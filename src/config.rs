//! Configuration: the commented default file (`anpi.example.toml`, compiled in), then the
//! user's file, then `ANPI_` environment variables, then flags. Everything is checked at
//! start; a bad value stops the daemon with the key named.
//!
//! Invariant: secrets (tokens) never appear in `Debug` output or logs.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::dispatch::DispatchSettings;
use crate::providers::RateLimit;

/// The default configuration, which is also its documentation.
pub const DEFAULT_CONFIG: &str = include_str!("../anpi.example.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("configuration: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
}

impl ConfigError {
    /// A parse error with every secret value taken out: a token written where a list was
    /// expected, or a syntax error on a secret's line, would otherwise be printed back.
    fn parse(e: figment::Error) -> Self {
        let mut out: Option<figment::Error> = None;
        // The chain comes out newest first; re-chained in the same order.
        let mut all: Vec<figment::Error> = e.into_iter().collect();
        all.reverse();
        for mut one in all {
            one.kind = redact_kind(&one.path, one.kind);
            out = Some(match out {
                None => one,
                Some(prev) => prev.chain(one),
            });
        }
        Self::Parse(Box::new(
            out.unwrap_or_else(|| figment::Error::from(String::new())),
        ))
    }
}

/// True for a configuration key whose value must never be shown.
fn is_secret_key(path: &[String]) -> bool {
    path.iter().any(|p| {
        let p = p.to_ascii_lowercase();
        p.contains("token") || p.contains("password") || p.contains("secret")
    })
}

fn redact_actual(secret: bool, a: figment::error::Actual) -> figment::error::Actual {
    use figment::error::Actual;
    match a {
        Actual::Str(_) | Actual::Char(_) | Actual::Bytes(_) | Actual::Other(_) if secret => {
            Actual::Other("a value (hidden: it may be a secret)".into())
        }
        Actual::Str(s) if s.contains("://") => Actual::Str(redact_url(&s)),
        other => other,
    }
}

fn redact_kind(path: &[String], kind: figment::error::Kind) -> figment::error::Kind {
    use figment::error::Kind;
    let secret = is_secret_key(path);
    match kind {
        Kind::InvalidType(a, exp) => Kind::InvalidType(redact_actual(secret, a), exp),
        Kind::InvalidValue(a, exp) => Kind::InvalidValue(redact_actual(secret, a), exp),
        Kind::Unsupported(a) => Kind::Unsupported(redact_actual(secret, a)),
        Kind::UnknownVariant(_, exp) if secret => Kind::Message(format!(
            "unknown variant (value hidden), expected one of {exp:?}"
        )),
        Kind::UnknownVariant(v, exp) => Kind::UnknownVariant(v, exp),
        Kind::Message(m) => Kind::Message(redact_message(&m)),
        other => other,
    }
}

/// A TOML syntax error quotes the offending line: hide the value on a secret's line.
fn redact_message(m: &str) -> String {
    m.lines()
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            let secret = ["token", "password", "secret"]
                .iter()
                .any(|k| lower.contains(k));
            match line.split_once('=') {
                Some((key, _)) if secret => format!("{key}= [redacted]"),
                _ if line.contains("://") => redact_url_in(line),
                _ => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Redacts the password of every URL in `text`.
fn redact_url_in(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                redact_url(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

/// A value that must not be printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub provider: String,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub time: TimeConfig,
    pub dispatch: DispatchConfig,
    pub api: ApiConfig,
    pub scenarios: ScenariosConfig,
    pub contacts: ContactsConfig,
    #[serde(default)]
    pub drills: Vec<DrillConfig>,
    /// Roll calls started by JMA telegrams (see [`crate::jma::rules`]).
    #[serde(default)]
    pub triggers: Vec<crate::jma::rules::TriggerConfig>,
    /// The JMA feed watcher.
    #[serde(default)]
    pub jma: crate::jma::JmaConfig,
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub email: EmailConfig,
    pub replicas: ReplicasConfig,
    #[serde(default)]
    pub answers: AnswersConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub receipts: ReceiptsConfig,
}

/// `[answers]`: how anpi reads answers that are not a button.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswersConfig {
    /// A free-text reply containing one of these is urgent (on HQ's action list at once);
    /// any other free text is shown to HQ as needing attention.
    pub urgent_words: Vec<String>,
}

impl Default for AnswersConfig {
    fn default() -> Self {
        Self {
            urgent_words: crate::answers::DEFAULT_URGENT_WORDS
                .iter()
                .map(|w| w.to_string())
                .collect(),
        }
    }
}

impl AnswersConfig {
    pub fn urgent_words(&self) -> Result<crate::answers::UrgentWords, ConfigError> {
        crate::answers::UrgentWords::new(self.urgent_words.iter().map(String::as_str))
            .map_err(|e| invalid("answers.urgent_words", e))
    }
}

/// `[health]`: when provider trouble becomes something HQ is told about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A component failing this long is degraded ([`crate::health`]).
    #[serde(with = "humantime_serde")]
    pub degraded_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            degraded_after: Duration::from_secs(120),
        }
    }
}

/// `[receipts]`: how the lists HQ gets wait for receipts still at the platform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// How long past a deadline escalation and the deadline mail wait for the receipt watcher
    /// to catch up with the platform (after a restart or an outage) before they go ahead with
    /// what is stored.
    #[serde(with = "humantime_serde")]
    pub catch_up_grace: Duration,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        Self {
            catch_up_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    /// Connections each process keeps at most (PostgreSQL).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long an operation waits for a connection before it fails and its worker retries.
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// "apply": bring a schema behind this binary up to date at start; "refuse": stop and
    /// say to run `anpi migrate`.
    #[serde(default = "default_migrate")]
    pub migrate: String,
}

fn default_max_connections() -> u32 {
    10
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_migrate() -> String {
    "apply".into()
}

/// Several replicas on one database: how the singleton workers move between them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicasConfig {
    /// How long a replica holds the lease of a singleton worker (deadline timer, receipt
    /// watcher) without renewing it; a replica that dies is replaced within about this long.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    pub zone: String,
    pub speed: f64,
    #[serde(default)]
    pub epoch: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatchConfig {
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub max_attempts: u32,
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub hq_tokens: Vec<Secret>,
    pub caller_tokens: Vec<Secret>,
    /// Tokens of shelter phones: each may acknowledge for its own phone only.
    #[serde(default)]
    pub shelter_tokens: Vec<ShelterToken>,
    /// How long a caller's claim on a person lasts before the person returns to the queue.
    #[serde(default = "default_call_hold", with = "humantime_serde")]
    pub call_hold: Duration,
    /// How long an announcement stays open before its unread recipients go on the call list.
    #[serde(default = "default_announcement_deadline", with = "humantime_serde")]
    pub announcement_deadline: Duration,
    /// A call outcome on a closed roll call: "refuse" (409 with the reason) or "late"
    /// (recorded, marked as made after the close).
    #[serde(default = "default_outcomes_after_close")]
    pub outcomes_after_close: String,
}

fn default_outcomes_after_close() -> String {
    "refuse".into()
}

fn default_call_hold() -> Duration {
    Duration::from_secs(300)
}

fn default_announcement_deadline() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A shelter phone's token, bound to that phone's staff id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShelterToken {
    pub token: Secret,
    /// As typed in the file; [`Self::staff`] is the id it names.
    pub staff_id: String,
}

impl ShelterToken {
    /// The shelter phone's id, folded as a typed id is (`Ｐ０００１` is `P0001`), so it is the
    /// same id the contacts file gives that phone.
    pub fn staff(&self) -> Result<crate::ids::StaffId, crate::ids::IdError> {
        crate::ids::StaffId::typed(&self.staff_id)
    }
}

/// SMTP settings for the call-list e-mail to HQ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// "none" (plain, for a relay on loopback), "starttls" or "tls".
    pub security: String,
    pub username: String,
    pub password: Secret,
    pub from: String,
    /// Who receives the call list: HQ's own addresses only (it holds personal data).
    pub hq: Vec<String>,
    #[serde(deserialize_with = "durations")]
    pub retry_schedule: Vec<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often open roll calls are checked besides the wake-up at each escalation.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// HQ gets one correction when the list a deadline mail carried changes by more than this
    /// many people afterwards (people who read late).
    #[serde(default = "default_correction_threshold")]
    pub correction_threshold: u32,
}

fn default_correction_threshold() -> u32 {
    10
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 25,
            security: "none".into(),
            username: String::new(),
            password: Secret::new(""),
            from: "anpi@localhost".into(),
            hq: Vec::new(),
            retry_schedule: vec![Duration::from_secs(5)],
            timeout: Duration::from_secs(30),
            check_interval: Duration::from_secs(10),
            correction_threshold: default_correction_threshold(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenariosConfig {
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsConfig {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    pub cron: String,
    pub scenario: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    pub simulator: Option<SimulatorConfig>,
    #[serde(default)]
    pub matrix: Option<MatrixConfig>,
    pub lineworks: Option<LineWorksConfig>,
}

/// `[providers.lineworks]`: a LINE WORKS API 2.0 app (Developer Console), its service
/// account, bot and board. Defaults are the platform's real endpoints and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineWorksConfig {
    #[serde(default = "lw_api_url")]
    pub api_url: String,
    #[serde(default = "lw_token_url")]
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub service_account: String,
    pub private_key_file: PathBuf,
    #[serde(default = "lw_scope")]
    pub scope: String,
    pub bot_id: String,
    pub bot_secret: Secret,
    #[serde(default)]
    pub board_id: Option<String>,
    /// Department -> channel id of the bot's room for that department.
    #[serde(default)]
    pub rooms: std::collections::BTreeMap<String, String>,
    #[serde(default = "lw_rate")]
    pub rate_limit_per_minute: u32,
    #[serde(default = "lw_board_rate")]
    pub board_rate_limit_per_minute: u32,
    #[serde(default = "lw_room_push_limit")]
    pub room_push_limit: usize,
    #[serde(default = "lw_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "lw_poll_for", with = "humantime_serde")]
    pub readers_poll_for: Duration,
}

fn lw_api_url() -> String {
    "https://www.worksapis.com/v1.0".into()
}
fn lw_token_url() -> String {
    "https://auth.worksmobile.com/oauth2/v2.0/token".into()
}
fn lw_scope() -> String {
    "bot bot.message board".into()
}
fn lw_rate() -> u32 {
    240
}
fn lw_board_rate() -> u32 {
    60
}
fn lw_room_push_limit() -> usize {
    500
}
fn lw_in_flight() -> usize {
    16
}
fn lw_poll_for() -> Duration {
    Duration::from_secs(2 * 3600)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    pub url: String,
    pub token: Secret,
    pub rate_limit_per_minute: u32,
    pub max_in_flight: usize,
    #[serde(with = "humantime_serde")]
    pub poll_wait: Duration,
}

/// A Matrix homeserver and the bot account anpi posts as (see [`crate::providers::matrix`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// The homeserver's client-server API base, e.g. `https://matrix.city.example`.
    pub homeserver: String,
    /// The bot's user id, e.g. `@anpi:city.example`.
    pub user_id: String,
    /// A file holding the bot's access token (first line). Preferred over `access_token`.
    #[serde(default)]
    pub access_token_file: Option<PathBuf>,
    /// The token itself; usually given as `ANPI_PROVIDERS__MATRIX__ACCESS_TOKEN`.
    #[serde(default)]
    pub access_token: Option<Secret>,
    /// How long one `/sync` long-poll waits on the homeserver for new events.
    #[serde(with = "humantime_serde", default = "default_sync_timeout")]
    pub sync_timeout: Duration,
    /// Sends per minute anpi allows itself; 0 = none (rely on the homeserver's 429s).
    #[serde(default)]
    pub rate_limit_per_minute: u32,
    /// Sends in flight at once.
    #[serde(default = "default_matrix_in_flight")]
    pub max_in_flight: usize,
}

fn default_sync_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Measured on Synapse (docs/BENCHMARKS.md, "Matrix"): the homeserver's time per send, not
/// anpi, bounds a roll call; 32 in flight was the fastest window measured.
fn default_matrix_in_flight() -> usize {
    32
}

impl MatrixConfig {
    /// The bot's access token, from the file or the setting; never logged.
    pub fn access_token(&self) -> Result<Secret, ConfigError> {
        if let Some(path) = &self.access_token_file {
            return Self::token_from_file(path);
        }
        match &self.access_token {
            Some(t) if !t.expose().trim().is_empty() => Ok(Secret::new(t.expose().trim())),
            _ => Err(invalid(
                "providers.matrix",
                "needs access_token_file or access_token (ANPI_PROVIDERS__MATRIX__ACCESS_TOKEN)",
            )),
        }
    }

    /// The token in `path`: its first line, trimmed.
    pub fn token_from_file(path: &Path) -> Result<Secret, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "providers.matrix.access_token_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(invalid(
                "providers.matrix.access_token_file",
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Secret::new(token))
    }

    pub fn rate_limit(&self) -> Option<RateLimit> {
        (self.rate_limit_per_minute > 0).then(|| RateLimit {
            requests: self.rate_limit_per_minute,
            per: Duration::from_secs(60),
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.homeserver.starts_with("http://") || self.homeserver.starts_with("https://")) {
            return Err(invalid(
                "providers.matrix.homeserver",
                format!("{:?} is not an http(s) URL", self.homeserver),
            ));
        }
        if !(self.user_id.starts_with('@') && self.user_id.contains(':')) {
            return Err(invalid(
                "providers.matrix.user_id",
                format!(
                    "{:?} is not a Matrix user id like @anpi:city.example",
                    self.user_id
                ),
            ));
        }
        if !(1..=256).contains(&self.max_in_flight) {
            return Err(invalid(
                "providers.matrix.max_in_flight",
                "must be between 1 and 256",
            ));
        }
        self.access_token().map(|_| ())
    }
}

/// A list of humantime durations ("1s", "2m").
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let raw: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(raw.into_iter().map(|s| s.into_inner()).collect())
}

impl SimulatorConfig {
    pub fn rate_limit(&self) -> Option<RateLimit> {
        (self.rate_limit_per_minute > 0).then(|| RateLimit {
            requests: self.rate_limit_per_minute,
            per: Duration::from_secs(60),
        })
    }
}

impl EmailConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.security.as_str(), "none" | "starttls" | "tls") {
            return Err(invalid(
                "email.security",
                format!("{:?}: use none, starttls or tls", self.security),
            ));
        }
        if self.retry_schedule.is_empty() {
            return Err(invalid("email.retry_schedule", "needs at least one wait"));
        }
        if !self.enabled {
            return Ok(());
        }
        if self.host.trim().is_empty() {
            return Err(invalid("email.host", "is empty but email.enabled = true"));
        }
        self.from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| invalid("email.from", format!("{:?}: {e}", self.from)))?;
        if self.hq.is_empty() {
            return Err(invalid(
                "email.hq",
                "no HQ addresses but email.enabled = true",
            ));
        }
        for (i, a) in self.hq.iter().enumerate() {
            a.parse::<lettre::message::Mailbox>()
                .map_err(|e| invalid(&format!("email.hq[{i}]"), format!("{a:?}: {e}")))?;
        }
        Ok(())
    }
}

impl LineWorksConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, url) in [("api_url", &self.api_url), ("token_url", &self.token_url)] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    &format!("providers.lineworks.{key}"),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
        }
        for (key, v) in [
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("service_account", self.service_account.as_str()),
            ("bot_id", self.bot_id.as_str()),
            ("bot_secret", self.bot_secret.expose()),
        ] {
            if v.trim().is_empty() {
                return Err(invalid(
                    &format!("providers.lineworks.{key}"),
                    "must not be empty (see the Developer Console)",
                ));
            }
        }
        if !self.private_key_file.exists() {
            return Err(invalid(
                "providers.lineworks.private_key_file",
                format!("{} does not exist", self.private_key_file.display()),
            ));
        }
        if self.rate_limit_per_minute == 0 || self.board_rate_limit_per_minute == 0 {
            return Err(invalid(
                "providers.lineworks.rate_limit_per_minute",
                "LINE WORKS always has a limit: give it (240, or 60 on the free plan)",
            ));
        }
        if !(1..=256).contains(&self.max_in_flight) {
            return Err(invalid(
                "providers.lineworks.max_in_flight",
                "must be between 1 and 256",
            ));
        }
        Ok(())
    }

    pub fn rate_limit(&self) -> RateLimit {
        RateLimit {
            requests: self.rate_limit_per_minute,
            per: Duration::from_secs(60),
        }
    }

    pub fn board_rate_limit(&self) -> RateLimit {
        RateLimit {
            requests: self.board_rate_limit_per_minute,
            per: Duration::from_secs(60),
        }
    }
}

/// `ANPI_<TABLE>__<KEY>` variables, and `ANPI_PROVIDER`. Other `ANPI_` variables belong to
/// the command line (`ANPI_URL`, `ANPI_TOKEN`, `ANPI_CONFIG`) or to tooling, and are not
/// configuration: reading them as such would stop the daemon on an unknown key.
fn config_env() -> Env {
    Env::prefixed("ANPI_")
        .filter(|k| k.as_str().contains("__") || k.as_str().eq_ignore_ascii_case("provider"))
        .split("__")
}

impl Config {
    /// Defaults, then `file`, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, true)
    }

    /// The defaults alone (plus `file`), ignoring the environment: for the demo and tests.
    pub fn load_with_env(file: Option<&Path>, env: bool) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_CONFIG));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            fig = fig.merge(Toml::file(path));
        }
        if env {
            fig = fig.merge(config_env());
        }
        let config: Config = fig.extract().map_err(ConfigError::parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a complete configuration from TOML text layered over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Toml::string(DEFAULT_CONFIG))
            .merge(Toml::string(text))
            .extract()
            .map_err(ConfigError::parse)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.zone()?;
        if !(self.time.speed.is_finite() && self.time.speed > 0.0 && self.time.speed <= 10_000.0) {
            return Err(invalid(
                "time.speed",
                format!(
                    "{} is not a speed between 0 and 10000 (1 = real time)",
                    self.time.speed
                ),
            ));
        }
        if self.time.speed != 1.0 && self.time.epoch.is_none() {
            return Err(invalid(
                "time.epoch",
                "a clock running at a speed other than 1 needs an epoch (e.g. \"2026-01-01T00:00:00Z\")",
            ));
        }
        if !(1..=10_000).contains(&self.dispatch.batch_size) {
            return Err(invalid(
                "dispatch.batch_size",
                "must be between 1 and 10000",
            ));
        }
        if self.dispatch.lease < Duration::from_secs(1) {
            return Err(invalid("dispatch.lease", "must be at least 1s"));
        }
        if self.dispatch.max_attempts == 0 {
            return Err(invalid("dispatch.max_attempts", "must be at least 1"));
        }
        if self.dispatch.retry_schedule.is_empty() {
            return Err(invalid(
                "dispatch.retry_schedule",
                "needs at least one wait",
            ));
        }
        if !(1..=16).contains(&self.dispatch.workers) {
            return Err(invalid("dispatch.workers", "must be between 1 and 16"));
        }
        for (key, list) in [
            ("api.hq_tokens", &self.api.hq_tokens),
            ("api.caller_tokens", &self.api.caller_tokens),
        ] {
            for (i, t) in list.iter().enumerate() {
                if t.expose().chars().count() < 16 {
                    return Err(invalid(
                        key,
                        format!("token #{} is shorter than 16 characters", i + 1),
                    ));
                }
            }
        }
        if !(self.database.url.starts_with("sqlite:")
            || crate::store::is_postgres_url(&self.database.url))
        {
            return Err(invalid(
                "database.url",
                format!(
                    "{:?} is neither a sqlite:// nor a postgres:// URL",
                    self.redacted_database_url()
                ),
            ));
        }
        if !(1..=1000).contains(&self.database.max_connections) {
            return Err(invalid(
                "database.max_connections",
                "must be between 1 and 1000",
            ));
        }
        if self.database.acquire_timeout < Duration::from_millis(100) {
            return Err(invalid(
                "database.acquire_timeout",
                "must be at least 100ms",
            ));
        }
        self.migrate_policy()?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600))
            .contains(&self.health.degraded_after)
        {
            return Err(invalid(
                "health.degraded_after",
                "must be between 1s and 1h",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.replicas.lease_ttl) {
            return Err(invalid("replicas.lease_ttl", "must be between 1s and 10m"));
        }
        match self.provider.as_str() {
            "simulator" => {
                let sim = self.providers.simulator.as_ref().ok_or_else(|| {
                    invalid(
                        "providers.simulator",
                        "provider is \"simulator\" but this table is missing",
                    )
                })?;
                if !(sim.url.starts_with("http://") || sim.url.starts_with("https://")) {
                    return Err(invalid(
                        "providers.simulator.url",
                        format!("{:?} is not an http(s) URL", sim.url),
                    ));
                }
                if !(1..=1024).contains(&sim.max_in_flight) {
                    return Err(invalid(
                        "providers.simulator.max_in_flight",
                        "must be between 1 and 1024",
                    ));
                }
            }
            "lineworks" => {
                let lw = self.providers.lineworks.as_ref().ok_or_else(|| {
                    invalid(
                        "providers.lineworks",
                        "provider is \"lineworks\" but this table is missing",
                    )
                })?;
                lw.validate()?;
            }
            "matrix" => self
                .providers
                .matrix
                .as_ref()
                .ok_or_else(|| {
                    invalid(
                        "providers.matrix",
                        "provider is \"matrix\" but this table is missing",
                    )
                })?
                .validate()?,
            other => {
                return Err(invalid(
                    "provider",
                    format!("unknown chat provider {other:?}; known: simulator, lineworks, matrix"),
                ))
            }
        }
        for (i, s) in self.api.shelter_tokens.iter().enumerate() {
            let key = format!("api.shelter_tokens[{i}]");
            if s.token.expose().chars().count() < 16 {
                return Err(invalid(&key, "token is shorter than 16 characters"));
            }
            s.staff()
                .map_err(|e| invalid(&format!("{key}.staff_id"), e.to_string()))?;
        }
        self.check_tokens_are_distinct()?;
        if !matches!(self.api.outcomes_after_close.as_str(), "refuse" | "late") {
            return Err(invalid(
                "api.outcomes_after_close",
                format!(
                    "{:?}: use \"refuse\" or \"late\"",
                    crate::http::clip(&self.api.outcomes_after_close, 40)
                ),
            ));
        }
        if self.api.call_hold < Duration::from_secs(10) {
            return Err(invalid("api.call_hold", "must be at least 10s"));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600))
            .contains(&self.api.announcement_deadline)
        {
            return Err(invalid(
                "api.announcement_deadline",
                "must be between 1m and 24h",
            ));
        }
        self.email.validate()?;
        self.answers.urgent_words()?;
        for (i, d) in self.drills.iter().enumerate() {
            if d.cron.split_whitespace().count() < 6 {
                return Err(invalid(
                    &format!("drills[{i}].cron"),
                    format!(
                        "{:?} needs 6 fields: sec min hour day month weekday",
                        d.cron
                    ),
                ));
            }
            crate::drills::parse_cron(&d.cron)
                .map_err(|e| invalid(&format!("drills[{i}].cron"), format!("{:?}: {e}", d.cron)))?;
        }
        crate::jma::rules::Rule::all_from_config(&self.triggers)
            .map_err(|e| invalid(&e.key, e.message))?;
        self.jma.validate().map_err(|(k, m)| invalid(&k, m))?;
        Ok(())
    }

    /// A token listed twice, in two roles or for two shelter phones, would make who did what
    /// depend on the order the lists are checked in: refused, naming both places (never the
    /// token).
    fn check_tokens_are_distinct(&self) -> Result<(), ConfigError> {
        let mut places: Vec<(String, &str)> = Vec::new();
        for (key, list) in [
            ("api.hq_tokens", &self.api.hq_tokens),
            ("api.caller_tokens", &self.api.caller_tokens),
        ] {
            for (i, t) in list.iter().enumerate() {
                places.push((format!("{key}[{i}]"), t.expose()));
            }
        }
        for (i, s) in self.api.shelter_tokens.iter().enumerate() {
            places.push((format!("api.shelter_tokens[{i}].token"), s.token.expose()));
        }
        for (i, (at, token)) in places.iter().enumerate() {
            if let Some((first, _)) = places[..i].iter().find(|(_, t)| t == token) {
                return Err(invalid(
                    at,
                    format!("is the same token as {first}: give each role and desk its own"),
                ));
            }
        }
        Ok(())
    }

    pub fn zone(&self) -> Result<Tz, ConfigError> {
        self.time.zone.parse::<Tz>().map_err(|_| {
            invalid(
                "time.zone",
                format!(
                    "{:?} is not a time zone name (e.g. Asia/Tokyo)",
                    self.time.zone
                ),
            )
        })
    }

    pub fn dispatch_settings(&self) -> DispatchSettings {
        DispatchSettings {
            batch_size: self.dispatch.batch_size,
            lease: self.dispatch.lease,
            max_attempts: self.dispatch.max_attempts,
            retry_schedule: self.dispatch.retry_schedule.clone(),
        }
    }

    /// How long one poll of the configured provider's event feed may wait.
    pub fn poll_wait(&self) -> Duration {
        match self.provider.as_str() {
            "matrix" => self.providers.matrix.as_ref().map(|m| m.sync_timeout),
            _ => self.providers.simulator.as_ref().map(|s| s.poll_wait),
        }
        .unwrap_or(Duration::from_secs(1))
    }

    /// What start-up does with a schema behind this binary.
    pub fn migrate_policy(&self) -> Result<crate::store::schema::MigratePolicy, ConfigError> {
        use crate::store::schema::MigratePolicy;
        match self.database.migrate.as_str() {
            "apply" => Ok(MigratePolicy::Apply),
            "refuse" => Ok(MigratePolicy::Refuse),
            other => Err(invalid(
                "database.migrate",
                format!("{other:?} is neither \"apply\" nor \"refuse\""),
            )),
        }
    }

    /// How to open the configured database.
    pub fn store_options(&self) -> Result<crate::store::OpenOptions, ConfigError> {
        Ok(crate::store::OpenOptions {
            migrate: self.migrate_policy()?,
            postgres: crate::store::postgres::PgSettings {
                max_connections: self.database.max_connections,
                acquire_timeout: self.database.acquire_timeout,
            },
            urgent_words: self.answers.urgent_words()?,
        })
    }

    /// The database URL with any password replaced, for messages and logs.
    pub fn redacted_database_url(&self) -> String {
        redact_url(&self.database.url)
    }

    /// The contacts file to load at start, if one is set.
    pub fn contacts_file(&self) -> Option<&Path> {
        (!self.contacts.file.as_os_str().is_empty()).then_some(self.contacts.file.as_path())
    }
}

/// `scheme://user:password@host/...` -> `scheme://user:[redacted]@host/...`.
pub fn redact_url(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    // `?password=...` (and `sslpassword=`) is as secret as the password in the authority.
    let query = query.map(|q| {
        q.split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                    format!("{k}=[redacted]")
                }
                _ => pair.to_string(),
            })
            .collect::<Vec<_>>()
            .join("&")
    });
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("{url}{query}");
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:[redacted]@{host}{path}{query}")
        }
        _ => format!("{url}{query}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn only_table_keys_and_provider_are_read_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ANPI_TOKEN", "cli-token-not-config");
            jail.set_env("ANPI_TEST_PG", "postgres://x");
            jail.set_env("ANPI_DISPATCH__BATCH_SIZE", "42");
            jail.set_env("ANPI_PROVIDER", "simulator");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.dispatch.batch_size, 42);
            Ok(())
        });
    }

    #[test]
    fn the_documented_defaults_are_valid() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.provider, "simulator");
        assert_eq!(c.dispatch.batch_size, 1000);
        assert_eq!(c.zone().unwrap(), chrono_tz::Asia::Tokyo);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[dispatch]\nbatchsize = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batchsize"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[time]\nzone = \"Mars/Olympus\"\n", "time.zone"),
            ("[dispatch]\nbatch_size = 0\n", "dispatch.batch_size"),
            ("[dispatch]\nlease = \"soon\"\n", "lease"),
            ("provider = \"fax\"\n", "unknown chat provider \"fax\""),
            ("[api]\nhq_tokens = [\"short\"]\n", "api.hq_tokens"),
            ("[time]\nspeed = 60.0\n", "time.epoch"),
            ("[database]\nurl = \"mysql://x\"\n", "database.url"),
            (
                "[[drills]]\ncron = \"0 10 * * *\"\nscenario = \"drill\"\n",
                "drills[0].cron",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }

    #[test]
    fn email_and_shelter_token_values_are_named() {
        let cases = [
            ("[email]\nsecurity = \"ssl3\"\n", "email.security"),
            ("[email]\nenabled = true\nhq = []\n", "email.hq"),
            (
                "[email]\nenabled = true\nfrom = \"anpi@x.example.jp\"\nhq = [\"not an address\"]\n",
                "email.hq[0]",
            ),
            (
                "[[api.shelter_tokens]]\ntoken = \"short\"\nstaff_id = \"P0001\"\n",
                "api.shelter_tokens[0]",
            ),
            (
                "[[api.shelter_tokens]]\ntoken = \"0123456789abcdef-long\"\nstaff_id = \"\"\n",
                "api.shelter_tokens[0].staff_id",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
        let c = Config::from_toml(
            "[email]\nenabled = true\npassword = \"smtp-secret-123\"\nfrom = \"anpi <anpi@x.example.jp>\"\nhq = [\"hq@x.example.jp\"]\n",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("smtp-secret-123"));
    }

    #[test]
    fn a_shelter_token_staff_id_typed_in_full_width_names_the_half_width_id() {
        let c = Config::from_toml(
            "[[api.shelter_tokens]]\ntoken = \"0123456789abcdef-long\"\nstaff_id = \"Ｐ０００１\"\n",
        )
        .unwrap();
        assert_eq!(c.api.shelter_tokens[0].staff().unwrap().as_str(), "P0001");
        let err = Config::from_toml(
            "[[api.shelter_tokens]]\ntoken = \"0123456789abcdef-long\"\nstaff_id = \"Ｐ／１\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("api.shelter_tokens[0].staff_id"), "{err}");
    }

    #[test]
    fn lineworks_table_parses_checks_and_hides_its_secrets() {
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/lineworks-test-private-key.TEST-ONLY.pem"
        );
        let text = format!(
            "provider = \"lineworks\"\n[providers.lineworks]\nclient_id = \"cid\"\n\
             client_secret = \"client-s3cret\"\nservice_account = \"sa@x\"\n\
             private_key_file = \"{key}\"\nbot_id = \"b1\"\nbot_secret = \"bot-s3cret\"\n\
             board_id = \"100\"\n[providers.lineworks.rooms]\n\"総務課\" = \"ch-1\"\n"
        );
        let c = Config::from_toml(&text).unwrap();
        let lw = c.providers.lineworks.as_ref().unwrap();
        assert_eq!(lw.rate_limit().requests, 240);
        assert_eq!(lw.board_rate_limit().requests, 60);
        assert_eq!(lw.rooms["総務課"], "ch-1");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("client-s3cret") && !dbg.contains("bot-s3cret"));
        let err = Config::from_toml(&text.replace(key, "/nonexistent.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("providers.lineworks.private_key_file"),
            "{err}"
        );
        let err = Config::from_toml("provider = \"lineworks\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.lineworks"), "{err}");
    }

    #[test]
    fn matrix_needs_a_token_and_reads_it_from_a_file() {
        let base = "provider = \"matrix\"\n[providers.matrix]\nhomeserver = \"https://hs.example\"\nuser_id = \"@anpi:hs.example\"\n";
        let err = Config::from_toml(base).unwrap_err().to_string();
        assert!(err.contains("access_token"), "{err}");
        let err = Config::from_toml(&base.replace("@anpi:hs.example", "anpi"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.matrix.user_id"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "syt_from_file\n").unwrap();
        let c = Config::from_toml(&format!(
            "{base}access_token_file = \"{}\"\nsync_timeout = \"5s\"\n",
            file.display()
        ))
        .unwrap();
        let m = c.providers.matrix.as_ref().unwrap();
        assert_eq!(m.access_token().unwrap().expose(), "syt_from_file");
        assert_eq!(c.poll_wait(), Duration::from_secs(5));
        assert!(!format!("{c:?}").contains("syt_from_file"));
    }

    #[test]
    fn postgres_urls_are_accepted_and_their_passwords_never_shown() {
        let c = Config::from_toml(
            "[database]\nurl = \"postgres://anpi:hunter2@db.example:5432/anpi\"\n",
        )
        .unwrap();
        assert_eq!(
            c.redacted_database_url(),
            "postgres://anpi:[redacted]@db.example:5432/anpi"
        );
        assert!(Config::from_toml("[database]\nurl = \"postgresql://db/anpi\"\n").is_ok());
        let err = Config::from_toml("[database]\nurl = \"mysql://u:hunter2@x/y\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database.url") && !err.contains("hunter2"),
            "{err}"
        );
        for (text, needle) in [
            ("[database]\nmigrate = \"later\"\n", "database.migrate"),
            ("[replicas]\nlease_ttl = \"100ms\"\n", "replicas.lease_ttl"),
            (
                "[database]\nmax_connections = 0\n",
                "database.max_connections",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} -> {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail fixes the closure's error type
    fn a_token_where_a_list_belongs_is_named_but_never_printed() {
        let err = Config::from_toml("[api]\nhq_tokens = \"0123456789abcdef-very-secret\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hq_tokens"), "{err}");
        assert!(!err.contains("very-secret"), "{err}");
        let err = Config::from_toml("[api]\ncaller_tokens = [\"0123456789abcdef-very-secret\"\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("very-secret"), "{err}");
        let err = Config::from_toml("[email]\npassword = 42\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("password"), "{err}");
        figment::Jail::expect_with(|jail| {
            jail.set_env("ANPI_API__HQ_TOKENS", "0123456789abcdef-env-secret");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("hq_tokens"), "{err}");
            assert!(!err.contains("env-secret"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_token_in_two_roles_is_refused_without_showing_it() {
        let t = "0123456789abcdef-shared-token";
        for text in [
            format!("[api]\nhq_tokens = [\"{t}\"]\ncaller_tokens = [\"{t}\"]\n"),
            format!("[api]\nhq_tokens = [\"{t}\", \"{t}\"]\n"),
            format!(
                "[api]\ncaller_tokens = [\"{t}\"]\n[[api.shelter_tokens]]\ntoken = \"{t}\"\nstaff_id = \"P0001\"\n"
            ),
        ] {
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("same token as"), "{text} -> {err}");
            assert!(!err.contains("shared-token"), "{err}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = Config::from_toml("[api]\nhq_tokens = [\"0123456789abcdef-secret\"]\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("0123456789abcdef-secret"));
        assert!(!dbg.contains("simulator-token"));
    }

    #[test]
    fn a_password_in_the_query_string_is_redacted_too() {
        assert_eq!(
            redact_url("postgres://db:5432/anpi?user=a&password=hunter2&sslmode=require"),
            "postgres://db:5432/anpi?user=a&password=[redacted]&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://a:hunter2@db/anpi?sslpassword=x"),
            "postgres://a:[redacted]@db/anpi?sslpassword=[redacted]"
        );
        assert_eq!(
            redact_url("sqlite://anpi.db?mode=rwc"),
            "sqlite://anpi.db?mode=rwc"
        );
    }
}
