//! E-mail at the deadline: once a roll call has sent every message and every deadline has
//! passed, HQ's addresses get the phone-call list (a plain-text table, Japanese first, and
//! the CSV attached); with the scenario's `escalation.email_unconfirmed`, each unconfirmed
//! person with an address gets a short reminder. SMTP via lettre.
//!
//! Invariants: mail never holds up a roll call (it is sent from its own task, and a failure
//! only retries and logs); the call list (phone numbers) goes to HQ's addresses only; each
//! roll call is mailed once, recorded in the store (`provider_state` of "email"), so a
//! restart does not mail it again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use crate::clock::SharedClock;
use crate::config::{Config, EmailConfig};
use crate::escalation::{render_csv, render_table, ListScope};
use crate::ids::RollCallId;
use crate::rollcall::{RollCall, RollCallState};
use crate::scenario::{Escalation, Scenario};
use crate::store::{SharedStore, StoreError};
use crate::worker::Outcome;

/// The `provider_state` namespace where mailed roll calls are recorded.
const STATE_NS: &str = "email";

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("email: {0}")]
    Config(String),
    #[error("email could not be built: {0}")]
    Build(String),
    #[error("SMTP: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
}

/// One e-mail, ready to send.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<Mailbox>,
    pub subject: String,
    pub text: String,
    /// (file name, bytes) of a CSV attachment.
    pub csv: Option<(String, Vec<u8>)>,
}

/// An SMTP connection setup and the retry schedule.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    retry_schedule: Vec<Duration>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    pub fn new(c: &EmailConfig) -> Result<Self, EmailError> {
        let builder = match c.security.as_str() {
            "none" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)?,
            "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)?,
            other => return Err(EmailError::Config(format!("unknown security {other:?}"))),
        };
        let mut builder = builder.port(c.port).timeout(Some(c.timeout));
        if !c.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                c.username.clone(),
                c.password.expose().to_string(),
            ));
        }
        let from = c
            .from
            .parse()
            .map_err(|e| EmailError::Config(format!("from {:?}: {e}", c.from)))?;
        Ok(Self {
            transport: builder.build(),
            from,
            retry_schedule: c.retry_schedule.clone(),
        })
    }

    fn build(&self, mail: &Mail) -> Result<Message, EmailError> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone());
        for to in &mail.to {
            b = b.to(to.clone());
        }
        let text = SinglePart::plain(mail.text.clone());
        let msg = match &mail.csv {
            Some((name, bytes)) => {
                let ct = ContentType::parse("text/csv; charset=utf-8")
                    .map_err(|e| EmailError::Build(e.to_string()))?;
                b.multipart(
                    MultiPart::mixed()
                        .singlepart(text)
                        .singlepart(Attachment::new(name.clone()).body(bytes.clone(), ct)),
                )
            }
            None => b.singlepart(text),
        };
        msg.map_err(|e| EmailError::Build(e.to_string()))
    }

    /// Sends `mail`, retrying transient failures on the schedule (each wait ±20%). Waits are
    /// real time: they pace a network peer, not the roll call.
    pub async fn send(&self, mail: &Mail, cancel: &CancellationToken) -> Result<(), EmailError> {
        let msg = self.build(mail)?;
        let mut attempt = 0;
        loop {
            match self.transport.send(msg.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_permanent() || attempt >= self.retry_schedule.len() => {
                    return Err(e.into())
                }
                Err(e) => {
                    let base = self.retry_schedule[attempt];
                    let wait = base.mul_f64(rand::thread_rng().gen_range(0.8..1.2));
                    attempt += 1;
                    warn!(error = %e, attempt, retry_in = ?wait, "e-mail not sent; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(e.into()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// Mails each roll call's call list once its deadlines have all passed.
#[derive(Debug)]
pub struct EmailWorker {
    store: SharedStore,
    clock: SharedClock,
    config: Arc<Config>,
    mailer: Mailer,
    hq: Vec<Mailbox>,
    /// Told after each escalation (the deadline worker's).
    escalated: Arc<Notify>,
    /// Roll calls whose mail is being sent by a task now.
    in_flight: Arc<Mutex<HashSet<RollCallId>>>,
    tracker: TaskTracker,
    metrics: Arc<crate::metrics::Metrics>,
}

/// A roll call's e-mail settings, stored when it starts (the roll call row has no column for
/// them, and the scenario file may change or not exist, e.g. an uploaded scenario).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Plan {
    email_hq: bool,
    email_unconfirmed: bool,
}

fn plan_key(id: RollCallId) -> String {
    format!("plan:{id}")
}

/// Records what e-mail the roll call `id` asks for at its deadline. Called by
/// [`Hq::start`](crate::hq::Hq::start).
pub async fn record_plan(
    store: &SharedStore,
    id: RollCallId,
    escalation: &Escalation,
    now: crate::clock::Millis,
) -> Result<(), StoreError> {
    let plan = Plan {
        email_hq: escalation.email_hq,
        email_unconfirmed: escalation.email_unconfirmed,
    };
    let text = serde_json::to_string(&plan).unwrap_or_default();
    store
        .set_provider_state(STATE_NS, &plan_key(id), &text, now)
        .await
}

/// What a roll call needs mailed once it is due: as recorded at start, else as its scenario
/// file says today.
async fn plan_for(store: &SharedStore, rc: &RollCall, config: &Config) -> Result<Plan, StoreError> {
    if rc.scenario == crate::announcement::SCENARIO_NAME {
        return Ok(Plan {
            email_hq: false,
            email_unconfirmed: false,
        });
    }
    if let Some(p) = store
        .provider_state(STATE_NS, &plan_key(rc.id))
        .await?
        .and_then(|t| serde_json::from_str::<Plan>(&t).ok())
    {
        return Ok(p);
    }
    let e = Scenario::find(&config.scenarios.dir, &rc.scenario)
        .map(|s| s.escalation)
        .unwrap_or_default();
    Ok(Plan {
        email_hq: e.email_hq,
        email_unconfirmed: e.email_unconfirmed,
    })
}

impl EmailWorker {
    /// `None` when e-mail is off.
    pub fn new(
        store: SharedStore,
        clock: SharedClock,
        config: Arc<Config>,
        escalated: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Self>, EmailError> {
        if !config.email.enabled {
            return Ok(None);
        }
        let mailer = Mailer::new(&config.email)?;
        let hq = config
            .email
            .hq
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| EmailError::Config(format!("hq {a:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Self {
            store,
            clock,
            config,
            mailer,
            hq,
            escalated,
            in_flight: Arc::default(),
            tracker: TaskTracker::new(),
            metrics,
        }))
    }

    fn key(id: RollCallId) -> String {
        format!("rollcall:{id}")
    }

    /// Starts the mail of every open roll call whose deadlines have all passed and that has
    /// not been mailed. Sending happens in background tasks; this returns at once.
    pub async fn run_once(&self, cancel: &CancellationToken) -> Result<Outcome, StoreError> {
        let mut started = 0;
        for rc in self.store.roll_calls().await? {
            if rc.state != RollCallState::Open
                || self
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(&rc.id)
                || self
                    .store
                    .provider_state(STATE_NS, &Self::key(rc.id))
                    .await?
                    .is_some()
            {
                continue;
            }
            let p = self.store.progress(rc.id).await?;
            let c = &p.overall;
            let due =
                c.escalated > 0 && c.pending == 0 && c.sending == 0 && p.next_deadline_at.is_none();
            if !due {
                continue;
            }
            let plan = plan_for(&self.store, &rc, &self.config).await?;
            let mut mails = Vec::new();
            let now = self.clock.now_millis();
            let entries = self.store.call_list(rc.id).await?;
            if plan.email_hq && !self.hq.is_empty() {
                let tz = self.config.zone().unwrap_or(chrono_tz::Asia::Tokyo);
                mails.push(Mail {
                    to: self.hq.clone(),
                    subject: format!(
                        "【安否確認】{} #{} 要電話 {}名 / {} to call",
                        rc.title, rc.id, c.to_call, c.to_call
                    ),
                    text: hq_text(&rc, &p, &render_table(&entries, ListScope::ToCall, now, tz)),
                    csv: Some((
                        format!("anpi-{}-call-list.csv", rc.id),
                        render_csv(&entries, ListScope::ToCall, now, tz),
                    )),
                });
            }
            if plan.email_unconfirmed {
                let addresses: HashMap<_, _> = self
                    .store
                    .contacts()
                    .await?
                    .into_iter()
                    .filter_map(|c| Some((c.id, c.email?)))
                    .collect();
                for e in entries.iter().filter(|e| e.to_call()) {
                    let Some(addr) = addresses.get(&e.staff_id) else {
                        continue;
                    };
                    let Ok(to) = addr.to_string().parse::<Mailbox>() else {
                        continue;
                    };
                    mails.push(Mail {
                        to: vec![to],
                        subject: format!("【安否確認】{}: 未確認です / not confirmed", rc.title),
                        text: unconfirmed_text(&rc),
                        csv: None,
                    });
                }
            }
            if mails.is_empty() {
                self.mark(rc.id, "nothing to send").await?;
                continue;
            }
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rc.id);
            started += 1;
            let mailer = self.mailer.clone();
            let store = self.store.clone();
            let clock = self.clock.clone();
            let in_flight = self.in_flight.clone();
            let metrics = self.metrics.clone();
            let cancel = cancel.clone();
            let id = rc.id;
            self.tracker.spawn(
                async move {
                    let mut failed = 0;
                    for m in &mails {
                        let res = mailer.send(m, &cancel).await;
                        metrics.email(res.is_ok());
                        if let Err(e) = res {
                            failed += 1;
                            warn!(error = %e, subject = %m.subject, "e-mail given up");
                        }
                    }
                    if cancel.is_cancelled() && failed > 0 {
                        // Stopped mid-retry: leave it unmarked so the next start tries again.
                        in_flight
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        return;
                    }
                    let result = format!("{} sent, {failed} failed", mails.len() - failed);
                    info!(mails = mails.len(), failed, "deadline e-mail done");
                    if let Err(e) = store
                        .set_provider_state(STATE_NS, &Self::key(id), &result, clock.now_millis())
                        .await
                    {
                        warn!(error = %e, "could not record that the e-mail went out");
                    }
                    in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                }
                .instrument(info_span!("email", roll_call = %id)),
            );
        }
        Ok(if started == 0 {
            Outcome::Idle
        } else {
            Outcome::Worked(started)
        })
    }

    async fn mark(&self, id: RollCallId, what: &str) -> Result<(), StoreError> {
        self.store
            .set_provider_state(STATE_NS, &Self::key(id), what, self.clock.now_millis())
            .await
    }

    /// Checks at each escalation and every `email.check_interval`, until `cancel` fires;
    /// then waits for mails in flight to finish or give up.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            let escalated = self.escalated.notified();
            if let Err(e) = self.run_once(&cancel).await {
                warn!(error = %e, "e-mail check failed; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = escalated => {}
                _ = tokio::time::sleep(self.config.email.check_interval) => {}
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn hq_text(rc: &RollCall, p: &crate::rollcall::Progress, table: &str) -> String {
    let c = &p.overall;
    format!(
        "{title}（#{id}）の期限が過ぎました。下の人に電話で確認してください。\n\
         対象 {total}名 / 確認済み {confirmed}名 / 要電話 {to_call}名 / 電話対応済み {reached}名\
         （うち負傷 {injured} / 要救助 {needs_help} / 不通 {unreachable}）\n\
         \n\
         {table}\n\
         同じ一覧を CSV で添付しています（Excel で開けます）。電話の結果は HQ 画面か\n\
         `anpi call` で記録してください。\n\
         \n\
         Deadline passed for roll call #{id} ({title}). Please call the people above.\n\
         Recipients {total}, confirmed {confirmed}, to call {to_call}, closed by phone {reached} \
         (injured {injured}, needs help {needs_help}, unreachable {unreachable}).\n\
         The same list is attached as CSV. Record call outcomes on the HQ page or with `anpi call`.\n",
        title = rc.title,
        id = rc.id,
        total = c.total,
        confirmed = c.confirmed(),
        to_call = c.to_call,
        reached = c.reached,
        injured = c.injured,
        needs_help = c.needs_help,
        unreachable = c.unreachable,
    )
}

fn unconfirmed_text(rc: &RollCall) -> String {
    format!(
        "{title}: あなたの安否がまだ確認できていません。チャットのメッセージを開くか、\n\
         ボタンを1つ押してください。難しい場合は本部から電話します。\n\
         \n\
         {title}: your safety check is not confirmed yet. Open the chat message or tap one\n\
         button. If you cannot, HQ will call you.\n",
        title = rc.title
    )
}
