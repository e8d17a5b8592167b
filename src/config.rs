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
    pub providers: ProvidersConfig,
    #[serde(default)]
    pub replicas: ReplicasConfig,
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
            lease_ttl: Duration::from_secs(10),
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
            fig = fig.merge(Env::prefixed("ANPI_").split("__"));
        }
        let config: Config = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a complete configuration from TOML text layered over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = Figment::from(Toml::string(DEFAULT_CONFIG))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(Box::new(e)))?;
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
            other => {
                return Err(invalid(
                    "provider",
                    format!("unknown chat provider {other:?}; known: simulator"),
                ))
            }
        }
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
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:[redacted]@{host}{path}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_defaults_are_valid() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.provider, "simulator");
        assert_eq!(c.dispatch.batch_size, 500);
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
    fn secrets_are_redacted_in_debug() {
        let c = Config::from_toml("[api]\nhq_tokens = [\"0123456789abcdef-secret\"]\n").unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("0123456789abcdef-secret"));
        assert!(!dbg.contains("simulator-token"));
    }
}
