//! The simulator's memory and every decision it makes, with no HTTP in sight: whether a send
//! is accepted, refused by the rate limit or hit by an injected fault, which events it
//! schedules, and which events a poll sees.
//!
//! Invariants: at most `requests` sends are accepted in any window of `per` clock time; an
//! event is visible only once the clock has reached its due time, and once visible it keeps
//! its `seq` forever (the log is append-only, so a cursor never skips or repeats).

use std::cmp::{Ordering, Reverse};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::script::{Behaviour, Script, SimAnswer};
use super::{Faults, ReceivedMessage, SimConfig, SimStats};
use crate::clock::{from_millis, Millis};
use crate::ids::{ChatHandle, RollCallId};
use crate::providers::{AnswerButton, InboundKind, RateLimit};

/// Retry-After (seconds) of a forced 429. Not 1, so a client that ignores the header and
/// falls back to a default of one second can be told apart.
pub(crate) const FORCED_429_RETRY_AFTER: u64 = 2;

/// The body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
pub(crate) struct SendBody {
    pub delivery_id: i64,
    pub roll_call_id: RollCallId,
    pub to: ChatHandle,
    pub text: String,
    #[serde(default)]
    pub buttons: Vec<AnswerButton>,
    /// A second send of a message the person already has (`resend_after`): not a duplicate.
    #[serde(default)]
    pub resend: bool,
}

/// What the server answers to one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    Accepted {
        message_no: u64,
    },
    /// 429; `forced` when the window was not full ("429 anyway").
    RateLimited {
        retry_after_secs: u64,
        forced: bool,
    },
    /// Injected 503, with `Retry-After: 1` when `retry_after`.
    Unavailable {
        retry_after: bool,
    },
    UnknownUser,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision {
    pub outcome: SendOutcome,
    /// Answer only after this much wall time.
    pub slow: Option<Duration>,
    /// Events became due at once: wake long-polls now rather than at their next re-check.
    pub wake_pollers: bool,
}

/// One event in the feed, as `GET /v1/events` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireEvent {
    pub seq: u64,
    pub event_id: String,
    pub roll_call_id: RollCallId,
    pub from: ChatHandle,
    pub kind: InboundKind,
    pub occurred_at: DateTime<Utc>,
}

/// An event waiting for the clock. Ordered by due time, then by scheduling order, so that a
/// read scheduled together with an answer is logged before it.
#[derive(Debug)]
struct Scheduled {
    due: Millis,
    order: u64,
    event: Logged,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.due, self.order).cmp(&(other.due, other.order))
    }
}

#[derive(Debug, Clone)]
struct Logged {
    roll_call_id: RollCallId,
    from: ChatHandle,
    kind: InboundKind,
    occurred_at: Millis,
}

#[derive(Debug)]
pub(crate) struct State {
    rate_limit: Option<RateLimit>,
    faults: Faults,
    rng: SmallRng,
    default_behaviour: Behaviour,
    script: Script,
    /// Draws unscripted people's behaviour on their first message.
    population: Option<(crate::simulator::PopulationSpec, u64)>,
    /// Clock times of the accepted sends still inside the rate window, oldest first.
    window: VecDeque<Millis>,
    /// Latest clock reading seen; keeps `window` sorted even if a clock steps back.
    last_now: Millis,
    inboxes: HashMap<ChatHandle, Vec<ReceivedMessage>>,
    next_message: u64,
    next_order: u64,
    scheduled: BinaryHeap<Reverse<Scheduled>>,
    /// Visible events; `seq` is the index plus one.
    log: Vec<Logged>,
    stats: SimStats,
}

impl State {
    pub fn new(config: &SimConfig, script: Script) -> Self {
        Self {
            rate_limit: config.rate_limit,
            rng: SmallRng::seed_from_u64(config.faults.seed),
            faults: config.faults.clone(),
            default_behaviour: config.default_behaviour.clone(),
            script,
            population: config.population.clone(),
            window: VecDeque::new(),
            last_now: Millis::MIN,
            inboxes: HashMap::new(),
            next_message: 0,
            next_order: 0,
            scheduled: BinaryHeap::new(),
            log: Vec::new(),
            stats: SimStats::default(),
        }
    }

    /// Decides one send at clock time `now`. The checks run in the order a real platform
    /// applies them: rate limit, then platform trouble, then the recipient.
    pub fn send(&mut self, body: SendBody, now: DateTime<Utc>) -> Decision {
        let now_ms = now.timestamp_millis().max(self.last_now);
        self.last_now = now_ms;
        // Same number of draws for every request, so a seed gives the same faults for the
        // same request sequence whatever the outcome.
        let u_fault: f64 = self.rng.gen();
        let u_slow: f64 = self.rng.gen();
        let slow = (u_slow < self.faults.slow_share).then_some(self.faults.slow_delay);
        let decided = |outcome| Decision {
            outcome,
            slow,
            wake_pollers: false,
        };

        if let Some(limit) = self.rate_limit {
            let per = (limit.per.as_millis() as i64).max(1);
            while self.window.front().is_some_and(|&t| t <= now_ms - per) {
                self.window.pop_front();
            }
            if self.window.len() >= limit.requests as usize {
                self.stats.limit_exceeded += 1;
                let wait_ms = match self.window.front() {
                    Some(&oldest) => oldest + per - now_ms,
                    None => per,
                };
                return decided(SendOutcome::RateLimited {
                    retry_after_secs: ceil_secs(wait_ms),
                    forced: false,
                });
            }
        }

        let errors = self.faults.server_error_share;
        if u_fault < errors {
            self.stats.server_errors += 1;
            return decided(SendOutcome::Unavailable {
                retry_after: u_fault < errors / 2.0,
            });
        }
        if u_fault < errors + self.faults.forced_429_share {
            self.stats.forced_429 += 1;
            return decided(SendOutcome::RateLimited {
                retry_after_secs: FORCED_429_RETRY_AFTER,
                forced: true,
            });
        }

        if self.script.get(&body.to).is_none() {
            if let Some((spec, seed)) = &self.population {
                let values: Vec<String> = body.buttons.iter().map(|b| b.value.clone()).collect();
                let drawn = spec.draw_for(&body.to, &values, *seed);
                self.script.insert(body.to.clone(), drawn);
            }
        }
        let behaviour = self.script.get(&body.to).unwrap_or(&self.default_behaviour);
        if behaviour.unknown {
            self.stats.unknown_user += 1;
            return decided(SendOutcome::UnknownUser);
        }
        let read_after = behaviour.read_after;
        let answer = behaviour.answer.clone();
        let later = behaviour.then.clone();

        if self.rate_limit.is_some() {
            self.window.push_back(now_ms);
            self.stats.max_in_window = self.stats.max_in_window.max(self.window.len() as u32);
        }
        self.stats.accepted += 1;
        self.next_message += 1;
        let message_no = self.next_message;

        let roll_call_id = body.roll_call_id;
        let message = ReceivedMessage {
            message_id: format!("m-{message_no}"),
            delivery_id: body.delivery_id,
            roll_call_id,
            text: body.text,
            buttons: body.buttons,
            at: from_millis(now_ms),
        };
        let wants_events = read_after.is_some() || answer.is_some();
        // Only the first copy of a roll call's message schedules anything: a duplicate is
        // read together with it. The handle is cloned only when an event needs it.
        let from = match self.inboxes.entry(body.to) {
            Entry::Occupied(mut e) => {
                let first = !e.get().iter().any(|m| m.roll_call_id == roll_call_id);
                if !first && !body.resend {
                    self.stats.duplicates += 1;
                }
                let from = (first && wants_events).then(|| e.key().clone());
                e.get_mut().push(message);
                from
            }
            Entry::Vacant(e) => {
                let from = wants_events.then(|| e.key().clone());
                e.insert(vec![message]);
                from
            }
        };

        let mut wake_pollers = false;
        if let Some(from) = from {
            let answer_at = answer.as_ref().map(|(d, _)| add(now_ms, *d));
            let read_at = match (read_after.map(|d| add(now_ms, d)), answer_at) {
                (Some(r), Some(a)) => Some(r.min(a)),
                (r, a) => r.or(a),
            };
            if let Some(at) = read_at {
                wake_pollers |= at <= now_ms;
                self.schedule(at, roll_call_id, from.clone(), InboundKind::Read);
            }
            let answers = answer
                .into_iter()
                .chain(later)
                .map(|(d, a)| (add(now_ms, d), a));
            for (at, a) in answers {
                wake_pollers |= at <= now_ms;
                let kind = match a {
                    SimAnswer::Button(value) => InboundKind::Answer { value },
                    SimAnswer::Sticker(id) => InboundKind::Sticker { id },
                    SimAnswer::Reply(text) => InboundKind::Reply { text },
                };
                self.schedule(at, roll_call_id, from.clone(), kind);
            }
        }
        Decision {
            outcome: SendOutcome::Accepted { message_no },
            slow,
            wake_pollers,
        }
    }

    fn schedule(
        &mut self,
        due: Millis,
        roll_call_id: RollCallId,
        from: ChatHandle,
        kind: InboundKind,
    ) {
        self.next_order += 1;
        self.scheduled.push(Reverse(Scheduled {
            due,
            order: self.next_order,
            event: Logged {
                roll_call_id,
                from,
                kind,
                occurred_at: due,
            },
        }));
    }

    /// Moves every event due by `now` into the log, then returns up to `limit` events after
    /// `after` (a `seq`).
    pub fn poll(&mut self, now: DateTime<Utc>, after: u64, limit: usize) -> Vec<WireEvent> {
        let now_ms = now.timestamp_millis();
        while self
            .scheduled
            .peek()
            .is_some_and(|Reverse(s)| s.due <= now_ms)
        {
            if let Some(Reverse(s)) = self.scheduled.pop() {
                self.log.push(s.event);
                self.stats.events_emitted += 1;
            }
        }
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(self.log.len());
        let end = start.saturating_add(limit).min(self.log.len());
        self.log[start..end]
            .iter()
            .zip(start as u64 + 1..)
            .map(|(e, seq)| WireEvent {
                seq,
                event_id: format!("e-{seq}"),
                roll_call_id: e.roll_call_id,
                from: e.from.clone(),
                kind: e.kind.clone(),
                occurred_at: from_millis(e.occurred_at),
            })
            .collect()
    }

    pub fn stats(&self) -> SimStats {
        self.stats.clone()
    }

    /// The newest `seq` in the feed (0 when empty).
    pub fn last_seq(&self) -> u64 {
        self.log.len() as u64
    }

    pub fn received(&self, roll_call: RollCallId, to: &ChatHandle) -> u32 {
        self.inboxes.get(to).map_or(0, |msgs| {
            msgs.iter().filter(|m| m.roll_call_id == roll_call).count() as u32
        })
    }

    pub fn messages_for(&self, to: &ChatHandle) -> Vec<ReceivedMessage> {
        self.inboxes.get(to).cloned().unwrap_or_default()
    }

    pub fn set_script(&mut self, script: Script) {
        self.script = script;
    }

    pub fn set_behaviour(&mut self, handle: ChatHandle, behaviour: Behaviour) {
        self.script.insert(handle, behaviour);
    }

    /// Replaces the faults and reseeds the generator, so the faults from here on depend only
    /// on the new seed and the requests that follow.
    pub fn set_faults(&mut self, faults: Faults) {
        self.rng = SmallRng::seed_from_u64(faults.seed);
        self.faults = faults;
    }
}

fn add(at: Millis, d: Duration) -> Millis {
    at.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ceil_secs(ms: Millis) -> u64 {
    (ms.max(1) as u64).div_ceil(1000).max(1)
}
