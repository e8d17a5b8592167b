//! The command line's own state: the Idempotency-Key of each roll-call start that has not
//! been confirmed yet, kept in a small file so that running the same command again (after
//! the daemon dropped the connection, say) sends the same key, and the daemon starts one roll
//! call, not two.
//!
//! Invariant: a key is written to disk before the request that carries it is sent, and
//! forgotten only once the daemon's answer has been read (or after [`KEEP`]); the same request
//! (same daemon, same body) within that time always gets the same key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long an unconfirmed start's key is kept for a retry. Long enough to restart a daemon
/// and run the command again; short enough that starting the same scenario again later is a
/// new roll call.
pub const KEEP: Duration = Duration::from_secs(10 * 60);

const FILE: &str = "pending-starts.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pending {
    fingerprint: String,
    key: String,
    /// Unix milliseconds when the first attempt was made.
    since_ms: i64,
}

/// A key to send, and when the first attempt with it was made if this is a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartKey {
    pub key: String,
    pub retry_of_ms: Option<i64>,
}

/// Where pending starts are kept: `ANPI_STATE_DIR`, else the platform's state directory
/// (`$XDG_STATE_HOME/anpi`, `~/.local/state/anpi`), else its local data directory.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ANPI_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|d| d.join("anpi"))
}

/// What identifies "the same request": the daemon it goes to and the exact body.
pub fn fingerprint(base_url: &str, body: &serde_json::Value) -> String {
    let mut h = Sha256::new();
    h.update(base_url.trim_end_matches('/').as_bytes());
    h.update(b"\n");
    h.update(body.to_string().as_bytes());
    format!("{:x}", h.finalize())
}

/// The pending starts in one directory.
#[derive(Debug, Clone)]
pub struct StartKeys {
    dir: PathBuf,
}

impl StartKeys {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Unexpired entries. A missing or unreadable file holds none: losing it costs only the
    /// retry protection, never a start.
    fn load(&self, now_ms: i64) -> Vec<Pending> {
        let keep = KEEP.as_millis() as i64;
        std::fs::read(self.path())
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<Pending>>(&b).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|p| now_ms - p.since_ms < keep && p.since_ms <= now_ms)
            .collect()
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a file.
    fn save(&self, pending: &[Pending]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(pending)?)?;
        std::fs::rename(&tmp, self.path())
    }

    /// The key for this request: the one kept from an unconfirmed attempt, or a new one,
    /// stored before it is returned.
    pub fn key_for(&self, fingerprint: &str, now_ms: i64) -> std::io::Result<StartKey> {
        let mut pending = self.load(now_ms);
        if let Some(p) = pending.iter().find(|p| p.fingerprint == fingerprint) {
            return Ok(StartKey {
                key: p.key.clone(),
                retry_of_ms: Some(p.since_ms),
            });
        }
        let key = format!("cli-{:032x}", rand::random::<u128>());
        pending.push(Pending {
            fingerprint: fingerprint.to_string(),
            key: key.clone(),
            since_ms: now_ms,
        });
        self.save(&pending)?;
        Ok(StartKey {
            key,
            retry_of_ms: None,
        })
    }

    /// The daemon answered: this request is settled, and running the command again is a new
    /// roll call.
    pub fn settled(&self, fingerprint: &str, now_ms: i64) -> std::io::Result<()> {
        let mut pending = self.load(now_ms);
        pending.retain(|p| p.fingerprint != fingerprint);
        self.save(&pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_request_gets_the_same_key_until_settled_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let keys = StartKeys::new(dir.path().join("state"));
        let quake = fingerprint("http://127.0.0.1:8425/", &json!({"scenario": "earthquake"}));
        let flood = fingerprint("http://127.0.0.1:8425", &json!({"scenario": "flood"}));
        let first = keys.key_for(&quake, 1_000).unwrap();
        assert_eq!(first.retry_of_ms, None);
        let again = keys.key_for(&quake, 61_000).unwrap();
        assert_eq!(again.key, first.key);
        assert_eq!(again.retry_of_ms, Some(1_000));
        assert_ne!(keys.key_for(&flood, 61_000).unwrap().key, first.key);
        // Expired: a new request.
        let later = keys
            .key_for(&quake, 1_000 + KEEP.as_millis() as i64)
            .unwrap();
        assert_ne!(later.key, first.key);
        // Settled: a new request too, and the other pending one is kept.
        let t = 1_000 + KEEP.as_millis() as i64;
        keys.settled(&quake, t).unwrap();
        let fresh = keys.key_for(&quake, t + 1).unwrap();
        assert_eq!(fresh.retry_of_ms, None);
        assert_ne!(fresh.key, later.key);
        assert_eq!(
            keys.key_for(&flood, t + 1).unwrap().retry_of_ms,
            Some(61_000)
        );
    }

    #[test]
    fn a_damaged_state_file_costs_only_the_retry_protection() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let keys = StartKeys::new(dir.path());
        let k = keys.key_for("f", 5).unwrap();
        assert_eq!(k.retry_of_ms, None);
        assert_eq!(keys.key_for("f", 6).unwrap().key, k.key);
    }
}
