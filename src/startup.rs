//! Wiring: [`Application::build`] opens the store, builds the provider and its workers, binds
//! the HTTP listener (port 0 allowed); [`Application::run_until_stopped`] runs everything until
//! the shutdown token fires. `anpi serve`, `anpi demo` and the tests all start anpi this way.
//!
//! Invariant: every long-lived task is on one `TaskTracker` and stops on one
//! `CancellationToken`; a worker finishes the batch it claimed, an unfinished lease expires.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::clock::{ScaledClock, SharedClock, SystemClock};
use crate::config::Config;
use crate::dispatch::{Dispatcher, Pacing, Signals};
use crate::escalation::DeadlineWorker;
use crate::health::Health;
use crate::hq::Hq;
use crate::http::{self, ApiState};
use crate::metrics::Metrics;
use crate::providers::lineworks::{LineWorksProvider, LineWorksSettings};
use crate::providers::matrix::MatrixProvider;
use crate::providers::simulator::SimulatorProvider;
use crate::providers::ChatProvider;
use crate::receipts::ReceiptWatcher;
use crate::resend::ResendWorker;
use crate::scenario::Scenario;
use crate::singleton::{self, Singleton};
use crate::store::{self, SharedStore};

/// The clock the configuration asks for.
pub fn clock_from(config: &Config) -> SharedClock {
    match config.time.epoch {
        Some(epoch) if config.time.speed != 1.0 => {
            Arc::new(ScaledClock::new(epoch, config.time.speed))
        }
        _ => Arc::new(SystemClock),
    }
}

/// Builds the configured chat provider. `store` and `clock` are for providers that keep
/// small state (the Matrix DM room map).
pub fn provider_from(
    config: &Config,
    store: &SharedStore,
    clock: &SharedClock,
    health: &Arc<Health>,
) -> anyhow::Result<Arc<dyn ChatProvider>> {
    match config.provider.as_str() {
        "simulator" => {
            let sim = config
                .providers
                .simulator
                .as_ref()
                .context("providers.simulator is not configured")?;
            Ok(Arc::new(SimulatorProvider::new(
                sim.url.clone(),
                sim.token.expose().to_string(),
                sim.rate_limit(),
                sim.max_in_flight,
            )))
        }
        "matrix" => Ok(Arc::new(
            matrix_provider(config, store, clock)?.with_health(health.clone()),
        )),
        "lineworks" => Ok(Arc::new(
            lineworks_provider(config, clock)?.with_health(health.clone()),
        )),
        other => anyhow::bail!("unknown chat provider {other:?}"),
    }
}

/// The LINE WORKS provider from `[providers.lineworks]`; it keeps time (token expiry, the
/// board budget) on `clock`.
pub fn lineworks_provider(
    config: &Config,
    clock: &SharedClock,
) -> anyhow::Result<LineWorksProvider> {
    let lw = config
        .providers
        .lineworks
        .as_ref()
        .context("providers.lineworks is not configured")?;
    let pem = std::fs::read_to_string(&lw.private_key_file).with_context(|| {
        format!(
            "providers.lineworks.private_key_file: reading {}",
            lw.private_key_file.display()
        )
    })?;
    let settings = LineWorksSettings {
        api_base: lw.api_url.clone(),
        token_url: lw.token_url.clone(),
        client_id: lw.client_id.clone(),
        client_secret: lw.client_secret.clone(),
        service_account: lw.service_account.clone(),
        private_key_pem: crate::config::Secret::new(pem),
        scope: lw.scope.clone(),
        bot_id: lw.bot_id.clone(),
        board_id: lw.board_id.clone(),
        rooms: lw.rooms.clone(),
        rate_limit: lw.rate_limit(),
        board_rate_limit: lw.board_rate_limit(),
        room_push_limit: lw.room_push_limit,
        max_in_flight: lw.max_in_flight,
        readers_poll_for: lw.readers_poll_for,
    };
    LineWorksProvider::new(settings, clock.clone()).context("providers.lineworks.private_key_file")
}

/// The Matrix provider from `[providers.matrix]` (also used by `anpi matrix prepare`).
pub fn matrix_provider(
    config: &Config,
    store: &SharedStore,
    clock: &SharedClock,
) -> anyhow::Result<MatrixProvider> {
    let m = config
        .providers
        .matrix
        .as_ref()
        .context("providers.matrix is not configured")?;
    let token = m.access_token()?;
    Ok(MatrixProvider::new(
        m,
        &token,
        store.clone(),
        clock.clone(),
    )?)
}

pub struct Application {
    listener: TcpListener,
    config: Arc<Config>,
    store: SharedStore,
    clock: SharedClock,
    hq: Arc<Hq>,
    metrics: Arc<Metrics>,
    dispatchers: Vec<Arc<Dispatcher>>,
    watcher: Arc<ReceiptWatcher>,
    deadlines: Arc<DeadlineWorker>,
    resend: Arc<ResendWorker>,
    /// Recurring drills: cron line and scenario, checked at build.
    drills: Vec<crate::drills::ScheduledDrill>,
    /// Decides on JMA telegrams (`[[triggers]]`), for the feed watcher and `anpi jma replay`.
    jma: Arc<crate::jma::Engine>,
    /// The JMA feed watcher, when `[jma] enabled`.
    feed: Option<Arc<crate::jma::feed::FeedWatcher>>,
    /// This process among the replicas sharing the database: names it in singleton leases.
    instance: String,
    /// Provider trouble HQ is told about.
    health: Arc<Health>,
    /// What `/healthz` checks besides the database; other parts add theirs.
    checks: Arc<crate::http::ops::HealthChecks>,
    /// How far the provider's receipt feed is complete (the watcher moves it).
    position: Arc<crate::receipts::FeedPosition>,
}

impl Application {
    /// Builds with the clock the configuration names.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let clock = clock_from(&config);
        Self::build_with_clock(config, clock).await
    }

    /// Builds with a given clock (tests move a manual one).
    pub async fn build_with_clock(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        let store = store::open_with(&config.database.url, &config.store_options()?)
            .await
            .with_context(|| format!("opening the database {}", config.redacted_database_url()))?;
        let health = Arc::new(Health::new(clock.clone(), config.health.degraded_after));
        let provider = provider_from(&config, &store, &clock, &health)?;
        for note in provider.startup_notes().await {
            tracing::warn!("{note}");
        }
        let metrics = Arc::new(Metrics::default());
        let signals = Signals::default();
        let pacing = Pacing::for_provider(provider.as_ref(), &clock);
        let dispatchers = (0..config.dispatch.workers)
            .map(|_| {
                Arc::new(
                    Dispatcher::new(
                        store.clone(),
                        provider.clone(),
                        clock.clone(),
                        pacing.clone(),
                        config.dispatch_settings(),
                        signals.clone(),
                        metrics.clone(),
                    )
                    .with_health(health.clone()),
                )
            })
            .collect();
        let poll_wait = config.poll_wait();
        let position = Arc::new(crate::receipts::FeedPosition::default());
        let watcher = Arc::new(
            ReceiptWatcher::new(
                store.clone(),
                provider.clone(),
                clock.clone(),
                poll_wait,
                metrics.clone(),
            )
            .with_position(position.clone()),
        );
        let deadlines = Arc::new(
            DeadlineWorker::new(
                store.clone(),
                clock.clone(),
                signals.deadlines_changed.clone(),
                metrics.clone(),
            )
            .with_feed(
                provider.name(),
                position.clone(),
                config.receipts.catch_up_grace,
            ),
        );
        // Shares the dispatchers' token bucket: the platform's limit holds for both.
        let resend = Arc::new(ResendWorker::new(
            store.clone(),
            provider.clone(),
            clock.clone(),
            pacing.limiter.clone(),
            signals.deadlines_changed.clone(),
            metrics.clone(),
        ));
        let hq = Arc::new(
            Hq::new(
                store.clone(),
                clock.clone(),
                provider.name().to_string(),
                provider.capabilities(),
                signals.new_work.clone(),
            )
            .with_routes(provider.routes())
            .with_late_outcomes(config.api.outcomes_after_close == "late"),
        );
        if let Some(path) = config.contacts_file() {
            let dir = crate::contacts::load_file(path)
                .with_context(|| format!("loading contacts from {}", path.display()))?;
            let n = hq.import_contacts(&dir.contacts).await?;
            info!(contacts = n, file = %path.display(), "contacts loaded");
        }
        let drills = config
            .drills
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let scenario = Scenario::find(&config.scenarios.dir, &d.scenario)
                    .with_context(|| format!("drills[{i}]: scenario {:?}", d.scenario))?;
                let cron = crate::drills::parse_cron(&d.cron)
                    .map_err(|e| anyhow::anyhow!("drills[{i}].cron {:?}: {e}", d.cron))?;
                Ok(crate::drills::ScheduledDrill {
                    cron_line: d.cron.clone(),
                    cron,
                    scenario,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let config = Arc::new(config);
        let jma = Arc::new(
            crate::jma::Engine::new(hq.clone(), config.clone(), metrics.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let feed = if config.jma.enabled {
            Some(Arc::new(
                crate::jma::feed::FeedWatcher::new(jma.clone(), clock.clone())
                    .context("setting up the JMA feed watcher")?,
            ))
        } else {
            None
        };
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        Ok(Self {
            listener,
            config,
            store,
            clock,
            hq,
            metrics,
            dispatchers,
            watcher,
            deadlines,
            resend,
            drills,
            jma,
            feed,
            instance: singleton::instance_id(),
            health,
            checks: Arc::default(),
            position,
        })
    }

    /// What this process knows of provider trouble.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Wakes this application's dispatchers (new deliveries written by someone else).
    pub fn dispatch_wakeup(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.dispatchers.first().map(|d| d.new_work.clone())
    }

    /// `/healthz`'s checks: register one to report a problem by name.
    pub fn checks(&self) -> Arc<crate::http::ops::HealthChecks> {
        self.checks.clone()
    }

    /// How far the provider's receipt feed is known complete, in this process.
    pub fn feed(&self) -> Arc<crate::receipts::FeedPosition> {
        self.position.clone()
    }

    /// This process's id in the singleton leases.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.config.server.listen)
    }

    pub fn hq(&self) -> Arc<Hq> {
        self.hq.clone()
    }

    pub fn store(&self) -> SharedStore {
        self.store.clone()
    }

    pub fn deadlines(&self) -> Arc<DeadlineWorker> {
        self.deadlines.clone()
    }

    pub fn resend(&self) -> Arc<ResendWorker> {
        self.resend.clone()
    }

    /// The JMA decision engine (`[[triggers]]`).
    pub fn jma(&self) -> Arc<crate::jma::Engine> {
        self.jma.clone()
    }

    /// The JMA feed watcher, when `[jma] enabled`.
    pub fn feed_watcher(&self) -> Option<Arc<crate::jma::feed::FeedWatcher>> {
        self.feed.clone()
    }

    /// Runs the workers, the drill schedule and the HTTP server until `cancel` fires.
    pub async fn run_until_stopped(self, cancel: CancellationToken) -> anyhow::Result<()> {
        // Anything that can refuse to start does so before a worker runs.
        let zone = self.config.zone()?;
        let mail = crate::email::EmailWorker::new(
            self.store.clone(),
            self.clock.clone(),
            self.config.clone(),
            self.deadlines.escalated.clone(),
            self.metrics.clone(),
        )
        .context("setting up e-mail")?
        .map(|m| m.with_feed(self.hq.provider(), self.position.clone()));
        let tracker = TaskTracker::new();
        for d in &self.dispatchers {
            tracker.spawn(d.clone().run(cancel.clone()));
        }
        // The receipt watcher and the deadline timer run on one replica at a time.
        let lease = |name: String| Singleton {
            store: self.store.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            name,
            holder: self.instance.clone(),
            ttl: self.config.replicas.lease_ttl,
        };
        let watcher = self.watcher.clone();
        tracker.spawn(
            lease(format!("receipts:{}", self.hq.provider()))
                .run(cancel.clone(), move |stop| watcher.clone().run(stop)),
        );
        let deadlines = self.deadlines.clone();
        tracker.spawn(
            lease("deadlines".into()).run(cancel.clone(), move |stop| deadlines.clone().run(stop)),
        );
        let resend = self.resend.clone();
        tracker.spawn(
            lease(format!("resend:{}", self.hq.provider()))
                .run(cancel.clone(), move |stop| resend.clone().run(stop)),
        );
        if !self.drills.is_empty() {
            // One replica runs the schedule; each scheduled time's key makes it one drill
            // even when a takeover overlaps.
            let grace =
                (self.config.replicas.lease_ttl * 3).max(std::time::Duration::from_secs(60));
            let drills = Arc::new(crate::drills::DrillScheduler::new(
                self.drills.clone(),
                self.hq.clone(),
                self.clock.clone(),
                zone,
                grace,
            ));
            tracker.spawn(
                lease("drills".into()).run(cancel.clone(), move |stop| drills.clone().run(stop)),
            );
        }
        if let Some(feed) = self.feed.clone() {
            tracker
                .spawn(lease("jma".into()).run(cancel.clone(), move |stop| feed.clone().run(stop)));
        } else if !self.jma.rules().is_empty() {
            // Without the feed, retraction messages from replays still get closed once sent.
            let jma = self.jma.clone();
            tracker.spawn(lease("jma".into()).run(cancel.clone(), move |stop| {
                let jma = jma.clone();
                async move {
                    while !stop.is_cancelled() {
                        if let Err(e) = jma.tidy().await {
                            warn!(error = %e, "could not close sent retraction messages");
                        }
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
                        }
                    }
                }
            }));
        }
        if let Some(mail) = mail {
            // One replica mails a roll call's list.
            let mail = Arc::new(mail);
            tracker.spawn(
                lease("email".into()).run(cancel.clone(), move |stop| mail.clone().run(stop)),
            );
        }
        // HQ hears of each provider incident once, by mail, from the process that saw it.
        if self.config.email.enabled {
            let mailer = crate::health::HealthMailer {
                health: self.health.clone(),
                store: self.store.clone(),
                hq: self.config.email.hq.clone(),
                zone: self.config.zone()?,
            };
            tracker.spawn(Arc::new(mailer).run(cancel.clone()));
        }
        let state = ApiState::new(self.hq.clone(), self.config.clone(), self.metrics.clone())
            .with_jma(self.jma.clone())
            .with_shutdown(cancel.clone())
            .with_escalated(self.deadlines.escalated.clone())
            .with_health(self.health.clone())
            .with_checks(self.checks.clone());
        let app = http::router(state, &self.config);
        let addr = self.local_addr();
        info!(%addr, provider = self.hq.provider(), instance = %self.instance, "anpi is listening");
        let shutdown = cancel.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("HTTP server failed")?;
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
        crate::singleton::retire(&self.instance);
        info!("anpi stopped");
        Ok(())
    }
}
