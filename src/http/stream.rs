//! `GET /api/rollcalls/{id}/stream`: live progress as server-sent events, for the HQ page.
//! Each `progress` event carries the roll call's status (overall, per department, per
//! shelter) and a `calls_version` that changes whenever the action list does (an urgent
//! answer, an escalation, a late read, a claim, an outcome, a note), so the page refetches
//! the list only then.
//! The first event of a stream holds the whole status; later ones only the parts that changed
//! (`status.roll_call` when it did, and the changed keys of `status.progress`; of a part that
//! is an object, such as `by_shelter` or `overall`, only its changed keys, a key gone as
//! `null`: no count is ever null).
//!
//! However many pages watch a roll call, its view is computed once ([`Live`]): one task per
//! watched roll call reads the shared progress every tick (and at once after an escalation),
//! and the call list's version only when the counts the list shows moved (escalated, to call,
//! reached ...), a call was recorded through this process, or a couple of seconds have passed
//! with anyone on the list; every stream of that roll call is handed the same result, and the
//! same serialized change from the view before (computed once, not once per stream).
//!
//! The token may come as `?token=`: the browser's `EventSource` cannot set an Authorization
//! header. anpi logs no request URIs, so the token stays out of its logs; a reverse proxy in
//! front should not log query strings for this path either.
//!
//! Invariants: the same roles as the JSON API (caller or HQ); an event is sent only when
//! something changed; every stream ends when the server shuts down; a roll call nobody
//! watches has no task computing its view.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::{ApiError, ApiState, Role};
use crate::ids::RollCallId;

/// How often a watched roll call's progress is looked at (changes that wake nobody: reads,
/// answers, sends).
const TICK: Duration = crate::progress::TICK;
/// The call list is re-read at least this often even when nothing here says it changed
/// (another replica's claims and outcomes).
const CALLS_EVERY: Duration = Duration::from_secs(2);

pub fn router() -> Router<ApiState> {
    Router::new().route("/rollcalls/{id}/stream", get(stream))
}

/// What every stream of one roll call is shown.
#[derive(Debug, Clone)]
struct View {
    /// `{"roll_call": ..., "progress": ...}`, as `GET /api/rollcalls/{id}` gives it.
    status: Value,
    calls_version: String,
    /// Counts the views of this roll call's task; a view follows the one numbered one less.
    seq: u64,
    /// The event data from the view before to this one, for every stream that sent that one.
    delta: Option<Arc<str>>,
    /// The whole view as event data, made when a new stream first needs it.
    full: std::sync::OnceLock<Arc<str>>,
}

impl View {
    fn new(status: Value, calls_version: String) -> Self {
        Self {
            status,
            calls_version,
            seq: 0,
            delta: None,
            full: Default::default(),
        }
    }

    fn same(&self, other: &View) -> bool {
        self.status == other.status && self.calls_version == other.calls_version
    }

    /// The event data for a stream whose last event showed `last`.
    fn data_after(&self, last: Option<&View>) -> Arc<str> {
        match (last, &self.delta) {
            (None, _) => self
                .full
                .get_or_init(|| changes(None, self).to_string().into())
                .clone(),
            (Some(l), Some(delta)) if l.seq + 1 == self.seq => delta.clone(),
            // A stream that fell behind by more than one view: its own difference.
            (Some(l), _) => changes(Some(l), self).to_string().into(),
        }
    }
}

type Feed = watch::Receiver<Option<Arc<View>>>;

/// The live views being computed, one per watched roll call.
#[derive(Debug, Default)]
pub struct Live {
    feeds: Mutex<HashMap<RollCallId, Feed>>,
}

impl Live {
    /// A receiver of roll call `id`'s view, starting its computing task if none runs.
    fn subscribe(&self, s: &ApiState, id: RollCallId) -> Feed {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = feeds.get(&id) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        feeds.insert(id, rx.clone());
        tokio::spawn(produce(s.clone(), id, tx));
        rx
    }

    /// How many roll calls have a view being computed now.
    pub fn watched(&self) -> usize {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The call list's version and what it was computed from.
struct CallsSeen {
    at: Instant,
    /// The counts of the progress that the call list shows.
    progress: Value,
    generation: u64,
    version: String,
}

/// Computes roll call `id`'s view while anyone watches it.
async fn produce(s: ApiState, id: RollCallId, tx: watch::Sender<Option<Arc<View>>>) {
    let mut calls: Option<CallsSeen> = None;
    loop {
        let escalated = s.escalated.notified();
        tokio::pin!(escalated);
        escalated.as_mut().enable();
        match view(&s, id, &mut calls).await {
            Ok(Some(mut v)) => {
                let before = tx.borrow().clone();
                if !before.as_deref().is_some_and(|b| b.same(&v)) {
                    if let Some(b) = &before {
                        v.seq = b.seq + 1;
                        v.delta = Some(changes(Some(b), &v).to_string().into());
                    }
                    tx.send_replace(Some(Arc::new(v)));
                }
            }
            // The roll call is gone: nothing more to show.
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(roll_call = %id, error = %e, "progress stream could not read the store");
            }
        }
        {
            // Under the map's lock, so a stream subscribing now either finds this task
            // running or starts a new one.
            let mut feeds = s.live.feeds.lock().unwrap_or_else(|e| e.into_inner());
            if tx.receiver_count() <= 1 {
                feeds.remove(&id);
                return;
            }
        }
        tokio::select! {
            _ = s.shutdown.cancelled() => break,
            // Escalated just now: the shared progress is read afresh.
            _ = &mut escalated => s.hq.progress_changed(),
            _ = tokio::time::sleep(TICK) => {}
        }
    }
    s.live
        .feeds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
}

/// The view now, or `None` if the roll call has gone.
async fn view(
    s: &ApiState,
    id: RollCallId,
    calls: &mut Option<CallsSeen>,
) -> Result<Option<View>, crate::hq::HqError> {
    let status = match s.hq.live_status(id).await {
        Ok(st) => st,
        Err(crate::hq::HqError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    // What of the progress the call list shows: sends and reads of people not on it do not
    // change it, so they do not make the list be read again.
    let o = &status.progress.overall;
    let on_list = json!([
        o.escalated,
        o.to_call,
        o.reached,
        o.injured,
        o.needs_help,
        o.unreachable,
        o.urgent_open,
        o.answered,
        o.answered_urgent,
        o.answered_attention,
        o.resent
    ]);
    let empty = o.escalated == 0 && o.reached == 0 && o.answered_urgent == 0;
    let status = serde_json::to_value(&status).unwrap_or(Value::Null);
    let generation = s.hq.calls_generation();
    let fresh = calls.as_ref().is_some_and(|c| {
        c.progress == on_list
            && c.generation == generation
            && (empty || c.at.elapsed() < CALLS_EVERY)
    });
    if !fresh {
        let list = s.hq.call_list(id).await?;
        let mut h = DefaultHasher::new();
        for e in &list {
            (
                e.staff_id.as_str(),
                e.state.as_str(),
                e.outcome.map(|o| o.as_str()),
                &e.outcome_at,
                &e.claimed_by,
                &e.claimed_until,
                e.standing.as_ref().map(|a| (a.level, a.at)),
                e.latest.as_ref().map(|a| a.at),
                e.notes.len(),
            )
                .hash(&mut h);
        }
        // Answers HQ should read (attention) change the page too, off the action list.
        (o.answered, o.answered_attention).hash(&mut h);
        *calls = Some(CallsSeen {
            at: Instant::now(),
            progress: on_list,
            generation,
            version: format!("{:x}", h.finish()),
        });
    }
    let calls_version = calls
        .as_ref()
        .map(|c| c.version.clone())
        .unwrap_or_default();
    Ok(Some(View::new(status, calls_version)))
}

/// What changed from `old` to `new`: `roll_call` when it did, and the changed keys of
/// `progress`. Without `old`, everything.
fn changes(old: Option<&View>, new: &View) -> Value {
    let Some(old) = old else {
        return json!({"full": true, "status": new.status, "calls_version": new.calls_version});
    };
    let mut status = Map::new();
    if old.status["roll_call"] != new.status["roll_call"] {
        status.insert("roll_call".into(), new.status["roll_call"].clone());
    }
    let mut progress = Map::new();
    if let Some(fields) = new.status["progress"].as_object() {
        for (k, v) in fields {
            match (old.status["progress"].get(k), v) {
                (Some(o), _) if o == v => {}
                (Some(Value::Object(o)), Value::Object(n)) => {
                    let mut inner: Map<String, Value> = n
                        .iter()
                        .filter(|(ik, iv)| o.get(*ik) != Some(*iv))
                        .map(|(ik, iv)| (ik.clone(), iv.clone()))
                        .collect();
                    for gone in o.keys().filter(|ik| !n.contains_key(*ik)) {
                        inner.insert(gone.clone(), Value::Null);
                    }
                    progress.insert(k.clone(), Value::Object(inner));
                }
                _ => {
                    progress.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !progress.is_empty() {
        status.insert("progress".into(), Value::Object(progress));
    }
    json!({"status": status, "calls_version": new.calls_version})
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    token: Option<String>,
}

async fn stream(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    match q.token.as_deref() {
        Some(t) => s.authorize_token(t.trim(), Role::Caller)?,
        None => s.authorize(&headers, Role::Caller)?,
    };
    let id = RollCallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    // Refuse an unknown roll call with a 404 now, rather than an endless empty stream.
    s.hq.store()
        .roll_call(id)
        .await
        .map_err(crate::hq::HqError::from)?
        .ok_or(crate::hq::HqError::NotFound(id))?;
    let feed = s.live.subscribe(&s, id);
    let shutdown = s.shutdown.clone();
    let events = futures::stream::unfold(
        (feed, None::<Arc<View>>, shutdown),
        move |(mut feed, last, shutdown)| async move {
            loop {
                let current = feed.borrow_and_update().clone();
                if let Some(v) =
                    current.filter(|v| last.as_ref().is_none_or(|l| !Arc::ptr_eq(l, v)))
                {
                    let data = v.data_after(last.as_deref());
                    let event = Event::default().event("progress").data(&*data);
                    return Some((Ok(event), (feed, Some(v), shutdown)));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    changed = feed.changed() => if changed.is_err() { return None },
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_the_first_event_only_what_changed_is_sent() {
        let a = View::new(
            json!({"roll_call": {"id": 1, "state": "open"},
                   "progress": {"overall": {"read": 1, "sent": 5}, "by_shelter": {"x": 1, "y": 2},
                                "next_deadline_at": 7}}),
            "a".into(),
        );
        let full = changes(None, &a);
        assert_eq!(full["status"], a.status);
        let mut b = a.clone();
        b.status["progress"]["overall"]["read"] = json!(2);
        let d = changes(Some(&a), &b);
        assert_eq!(
            d,
            json!({"status": {"progress": {"overall": {"read": 2}}}, "calls_version": "a"})
        );
        let mut c = b.clone();
        c.status["roll_call"]["state"] = json!("closed");
        let d = changes(Some(&b), &c);
        assert_eq!(d["status"]["roll_call"]["state"], "closed");
        assert!(d["status"].get("progress").is_none());
        // Of an object, only its changed keys; a key gone is null; a scalar whole.
        let mut e = c.clone();
        e.status["progress"]["by_shelter"] = json!({"x": 3, "z": 1});
        e.status["progress"]["next_deadline_at"] = Value::Null;
        let d = changes(Some(&c), &e);
        assert_eq!(
            d["status"]["progress"],
            json!({"by_shelter": {"x": 3, "y": null, "z": 1}, "next_deadline_at": null})
        );
    }

    #[test]
    fn a_stream_one_view_behind_gets_the_shared_change_and_one_further_behind_its_own() {
        let mut views = vec![View::new(json!({"progress": {"overall": {"read": 0}}}), "a".into())];
        for n in 1..3 {
            let mut v = View::new(json!({"progress": {"overall": {"read": n}}}), "a".into());
            v.seq = views[n - 1].seq + 1;
            v.delta = Some("shared".into());
            views.push(v);
        }
        assert_eq!(&*views[2].data_after(Some(&views[1])), "shared");
        let own: Value = serde_json::from_str(&views[2].data_after(Some(&views[0]))).unwrap();
        assert_eq!(own["status"]["progress"]["overall"]["read"], 2);
        let full: Value = serde_json::from_str(&views[2].data_after(None)).unwrap();
        assert_eq!(full["full"], true);
    }
}
