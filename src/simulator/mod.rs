//! The built-in chat simulator: a stand-in chat server on loopback HTTP with scripted read
//! times and fault injection. It powers the demo, the integration and chaos tests and the
//! benchmarks; [`crate::providers::simulator::SimulatorProvider`] is its client.
//!
//! Invariants: the rate limit is enforced exactly (a sliding-window log on the shared clock,
//! so [`SimStats::max_in_window`] and [`SimStats::limit_exceeded`] are evidence, not
//! estimates), events appear in the feed only once the shared clock reaches their time, and
//! each server start is a new feed with its own id (see `Shared::feed`).
//!
//! # Layout
//! - `script`: behaviours per chat handle and the population spec that generates them.
//! - `state`: every decision the server makes, with no HTTP (one mutex, held briefly).
//! - `routes`: the axum router: `POST /v1/messages`, `GET /v1/events`.
//! - [`lineworks`]: a LINE WORKS API 2.0-compatible stand-in, its own server.
//! - [`lineworks_schema`]: the documented request shapes that stand-in checks, field by field.
//! - [`lineworks_cli`]: that stand-in as its own process (`anpi simulator --platform lineworks`).

pub mod lineworks;
pub mod lineworks_cli;
pub mod lineworks_schema;
mod routes;
mod script;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use script::{Behaviour, PopulationSpec, Script, SimAnswer};

use crate::clock::SharedClock;
use crate::ids::{ChatHandle, RollCallId};
use crate::providers::{AnswerButton, RateLimit};

/// How the simulated platform behaves as a whole.
#[derive(Clone)]
pub struct SimConfig {
    /// Bearer token the server requires; anything else gets 401.
    pub token: String,
    /// At most `requests` accepted sends in any window of `per` clock time.
    pub rate_limit: Option<RateLimit>,
    pub faults: Faults,
    /// For handles without a script entry.
    pub default_behaviour: Behaviour,
    /// A population to draw each unscripted person's behaviour from, with its seed, when
    /// they get their first message (instead of `default_behaviour`).
    pub population: Option<(PopulationSpec, u64)>,
}

impl SimConfig {
    /// A well-behaved platform: no limit, no faults, and people who never read.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            rate_limit: None,
            faults: Faults::default(),
            default_behaviour: Behaviour::default(),
            population: None,
        }
    }
}

impl fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimConfig")
            .field("token", &"[redacted]")
            .field("rate_limit", &self.rate_limit)
            .field("faults", &self.faults)
            .field("default_behaviour", &self.default_behaviour)
            .finish()
    }
}

/// Injected trouble, drawn per send from a generator seeded with `seed`, so a chaos run can
/// be repeated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Share of sends answered 503; half of those carry `Retry-After: 1`.
    pub server_error_share: f64,
    /// Share of sends answered 429 (`Retry-After: 2`) even when under the limit.
    pub forced_429_share: f64,
    /// Share of requests answered only after `slow_delay` of wall time (the send itself is
    /// decided at once, so a client that times out may still have delivered).
    pub slow_share: f64,
    pub slow_delay: Duration,
    pub seed: u64,
}

/// Counters a test or benchmark checks the client against.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimStats {
    pub accepted: u64,
    /// Accepted sends beyond the first per (roll call, handle).
    pub duplicates: u64,
    /// Requests that arrived when the window was already full: the client broke the limit.
    pub limit_exceeded: u64,
    pub forced_429: u64,
    pub server_errors: u64,
    pub unknown_user: u64,
    /// The most accepted sends seen in any rate window (0 without a limit).
    pub max_in_window: u32,
    /// Events that have become visible in the feed.
    pub events_emitted: u64,
}

/// One message as the simulated person received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub delivery_id: i64,
    pub roll_call_id: RollCallId,
    pub text: String,
    pub buttons: Vec<AnswerButton>,
    /// Clock time of acceptance.
    pub at: DateTime<Utc>,
}

/// What the request handlers share.
pub(crate) struct Shared {
    /// `"Bearer <token>"`, compared whole against the Authorization header.
    pub expected_auth: Vec<u8>,
    /// This server's event feed, drawn at start: a restarted simulator has a new feed whose
    /// `seq` starts again at 1, and clients tell the two apart by it. Event ids carry it, so
    /// the new feed's events are never taken for the old feed's.
    pub feed: String,
    pub clock: SharedClock,
    pub state: Mutex<state::State>,
    /// Woken when an event becomes due at the moment it is scheduled.
    pub new_events: Notify,
}

impl Shared {
    /// A panic while holding the lock leaves counters that are still meaningful, so a
    /// poisoned lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, state::State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The simulator server. See [`Simulator::start`].
pub struct Simulator;

impl Simulator {
    /// Binds 127.0.0.1 on a free port and serves until [`SimHandle::shutdown`].
    pub async fn start(
        config: SimConfig,
        script: Script,
        clock: SharedClock,
    ) -> std::io::Result<SimHandle> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config, script, clock).await
    }

    /// Like [`Simulator::start`], on a given address (`anpi simulator --listen`).
    pub async fn start_on(
        addr: SocketAddr,
        config: SimConfig,
        script: Script,
        clock: SharedClock,
    ) -> std::io::Result<SimHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            expected_auth: format!("Bearer {}", config.token).into_bytes(),
            feed: format!("{:08x}", rand::random::<u32>()),
            clock,
            state: Mutex::new(state::State::new(&config, script)),
            new_events: Notify::new(),
        });
        let stop = CancellationToken::new();
        let app = routes::router(shared.clone());
        let server =
            axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
        let task = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "chat simulator stopped");
            }
        });
        tracing::info!(%addr, "chat simulator listening");
        Ok(SimHandle {
            inner: Arc::new(HandleInner {
                addr,
                shared,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

struct HandleInner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Control and inspection of a running simulator. Clones share the same server.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, with no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn stats(&self) -> SimStats {
        self.inner.shared.lock().stats()
    }

    /// Replaces every behaviour; sends already accepted keep the events they scheduled.
    pub fn set_script(&self, script: Script) {
        self.inner.shared.lock().set_script(script);
    }

    pub fn set_behaviour(&self, handle: ChatHandle, behaviour: Behaviour) {
        self.inner.shared.lock().set_behaviour(handle, behaviour);
    }

    /// Replaces the faults and reseeds their generator with `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.inner.shared.lock().set_faults(faults);
    }

    /// How many times this person got this roll call's message (duplicates included).
    pub fn received(&self, roll_call: RollCallId, to: &ChatHandle) -> u32 {
        self.inner.shared.lock().received(roll_call, to)
    }

    /// Every message this person got, in order of acceptance.
    pub fn messages_for(&self, to: &ChatHandle) -> Vec<ReceivedMessage> {
        self.inner.shared.lock().messages_for(to)
    }

    /// Stops accepting connections, lets requests in flight finish (a long poll ends within
    /// a second) and waits for the server task.
    pub async fn shutdown(self) {
        self.inner.stop.cancel();
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
