//! The event feed: the bot's `/sync` stream, and which check each public read receipt,
//! reply and reaction in a DM room is about (the check it names, or the newest check in the
//! room when it names none).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::AUTHORIZATION;
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::client::{HOMESERVER, REQUEST_TIMEOUT, TIMELINE_LIMIT};
use super::replies::{option, option_number, reply_kind, UNREADABLE};
use super::state::{store_error, CheckRecord};
use super::{MatrixProvider, ROLL_CALL_KEY};
use crate::clock::SharedClock;
use crate::health::Component;
use crate::ids::{ChatHandle, RollCallId};
use crate::providers::{EventBatch, InboundEvent, InboundKind, ProviderError};

/// How far back a receipt on a check also confirms the checks sent before it in the room.
const EARLIER_CHECKS: usize = 8;

/// Most pages of skipped events read back for one room in one poll, at
/// [`TIMELINE_LIMIT`] events each; a longer gap is reported, not read to its end.
pub(super) const READ_BACK_PAGES: usize = 20;

/// How often one page is asked for through 429s and outages, and the longest wait between.
pub(super) const READ_BACK_TRIES: u32 = 3;
const READ_BACK_WAIT: Duration = Duration::from_secs(5);

impl MatrixProvider {
    /// [`crate::providers::ChatProvider::poll_events`]: one `/sync` from `cursor` (a full one
    /// first, once per process), turned into events.
    pub(super) async fn poll(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        let mut events = Vec::new();
        let mut wait = wait;
        // The first poll of this process also reads every room's current receipts (a full
        // /sync), so nothing a stored cursor could have missed stays missed after a restart.
        if cursor.is_some() && !self.reconciled.load(std::sync::atomic::Ordering::Relaxed) {
            let full = self.sync(None, Duration::ZERO).await?;
            if !full.status().is_success() {
                return Err(self.refused(full, "sync").await);
            }
            let full: SyncResponse = HOMESERVER.read_json(full, "/sync answer").await?;
            for (room, data) in &full.rooms.join {
                self.room_events(room, data, &mut events).await?;
            }
            wait = Duration::ZERO;
        }
        let mut resp = self.sync(cursor, wait).await?;
        let mut incremental = cursor.is_some();
        if cursor.is_some()
            && resp.status().is_client_error()
            && resp.status() != StatusCode::TOO_MANY_REQUESTS
            && resp.status() != StatusCode::UNAUTHORIZED
        {
            // A cursor the homeserver no longer knows: start over from the current state.
            tracing::warn!(status = %resp.status(), "sync cursor refused; doing a full sync");
            resp = self.sync(None, wait).await?;
            incremental = false;
        }
        if !resp.status().is_success() {
            return Err(self.refused(resp, "sync").await);
        }
        let sync: SyncResponse = HOMESERVER.read_json(resp, "/sync answer").await?;
        self.token_accepted();
        for (room, data) in &sync.rooms.join {
            if data.timeline.limited {
                let since = if incremental { cursor } else { None };
                if let Some(whole) = self.read_back(room, data, since).await? {
                    self.room_events(room, &whole, &mut events).await?;
                    continue;
                }
            }
            self.room_events(room, data, &mut events).await?;
        }
        self.reconciled
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(EventBatch {
            events,
            cursor: Some(sync.next_batch),
        })
    }

    async fn sync(&self, since: Option<&str>, wait: Duration) -> Result<Response, ProviderError> {
        let wait = if since.is_some() {
            wait
        } else {
            Duration::ZERO
        };
        let mut req = self
            .client
            .get(self.url(&["sync"]))
            .header(AUTHORIZATION, self.auth())
            .query(&[
                ("filter", self.filter.as_str()),
                ("timeout", &wait.as_millis().to_string()),
            ])
            .timeout(REQUEST_TIMEOUT + wait);
        if let Some(s) = since {
            req = req.query(&[("since", s)]);
        }
        req.send().await.map_err(|e| HOMESERVER.transport_error(e))
    }

    /// `room`'s part of a `/sync` whose timeline left events out (`limited`: more than the
    /// filter's limit, or the homeserver's own cap, which may be as low as 10), with what was
    /// left out read back by paging `/messages` from the timeline's `prev_batch`: down to
    /// `since`, the previous sync's position, when there is one, and in any case no further
    /// than the answer floor (see [`Self::answer_floor`]): nothing older answers a check anpi
    /// still reads, and a homeserver may not stop at `since` itself. `None` when the room holds
    /// no checks (nothing in it is read) or nothing was left out.
    ///
    /// A gap that cannot be read to its end (no `prev_batch`, a refusal, a failure that
    /// outlasts a few tries, more than [`READ_BACK_PAGES`] pages) is logged as an error naming
    /// the room and the person and reported to HQ as the feed failing; what was read is still
    /// used, and the feed goes on with the other rooms.
    async fn read_back(
        &self,
        room: &str,
        data: &JoinedRoom,
        since: Option<&str>,
    ) -> Result<Option<JoinedRoom>, ProviderError> {
        let Some((check, latest)) = self.latest_check_event(room).await? else {
            tracing::debug!(room, "sync skipped events in a room without checks");
            return Ok(None);
        };
        let floor = self.answer_floor(room, &check, &latest).await?;
        let reaches_floor = |events: &[Value]| {
            floor.is_some_and(|f| {
                events
                    .iter()
                    .any(|e| e["origin_server_ts"].as_i64().is_some_and(|t| t < f))
            })
        };
        if reaches_floor(&data.timeline.events) {
            return Ok(None);
        }
        let (mut earlier, complete) = match data.timeline.prev_batch.as_deref() {
            Some(from) => self.page_back(room, from, since, &reaches_floor).await?,
            None => (Vec::new(), false),
        };
        if !complete {
            self.report_gap(room, &latest);
        } else if !earlier.is_empty() {
            tracing::info!(
                room,
                events = earlier.len(),
                "read back events the sync left out"
            );
        }
        if earlier.is_empty() {
            return Ok(None);
        }
        earlier.extend(data.timeline.events.iter().cloned());
        Ok(Some(JoinedRoom {
            timeline: Timeline {
                events: earlier,
                limited: false,
                prev_batch: None,
            },
            ephemeral: Events {
                events: data.ephemeral.events.clone(),
            },
        }))
    }

    /// The server time before which nothing in `room` can answer a check anpi still reads:
    /// the sending time of the oldest of the room's newest check (`check`, `latest`) and the
    /// open checks before it ([`Self::earlier_checks`]); what came before them is not an
    /// answer, and a reply naming one of them comes after it. `None` when one of those times
    /// cannot be learnt.
    async fn answer_floor(
        &self,
        room: &str,
        check: &str,
        latest: &CheckRecord,
    ) -> Result<Option<i64>, ProviderError> {
        let mut floor = None::<i64>;
        let mut checks = vec![(check.to_string(), latest.clone())];
        checks.extend(self.earlier_checks(room, latest).await?);
        for (event, rec) in checks {
            let ts = match rec.ts {
                Some(ts) => Some(ts),
                None => self
                    .fetch_event(room, &event)
                    .await?
                    .and_then(|ev| ev["origin_server_ts"].as_i64()),
            };
            let Some(ts) = ts else {
                return Ok(None);
            };
            floor = Some(floor.map_or(ts, |f| f.min(ts)));
        }
        Ok(floor)
    }

    /// Pages `/messages` backwards from `from` (newest first) until `to`, or a page that
    /// `reaches_floor`, or the start of the room. Returns what was read, oldest first, and
    /// whether the end was reached within [`READ_BACK_PAGES`]; a page is tried
    /// [`READ_BACK_TRIES`] times through 429s and outages before the gap is given up on. A
    /// refused bot token fails the whole poll instead: the same gap is read again, from the
    /// same position, once the token works.
    async fn page_back(
        &self,
        room: &str,
        from: &str,
        to: Option<&str>,
        reaches_floor: &(dyn Fn(&[Value]) -> bool + Send + Sync),
    ) -> Result<(Vec<Value>, bool), ProviderError> {
        let mut from = from.to_string();
        let mut newest_first = Vec::new();
        let mut complete = false;
        for _ in 0..READ_BACK_PAGES {
            let page = match self.messages_page(room, &from, to).await {
                Ok(page) => page,
                Err(e @ ProviderError::Unauthorized { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(room, error = %e, "reading skipped events back failed");
                    break;
                }
            };
            let below_floor = reaches_floor(&page.chunk);
            newest_first.extend(page.chunk);
            match page.end {
                Some(end) if !below_floor && end != from => from = end,
                _ => {
                    complete = true;
                    break;
                }
            }
        }
        newest_first.reverse();
        Ok((newest_first, complete))
    }

    /// One page of `/messages` back from `from`, waiting out a 429 or a brief outage
    /// (at most [`READ_BACK_WAIT`] each) up to [`READ_BACK_TRIES`] times.
    async fn messages_page(
        &self,
        room: &str,
        from: &str,
        to: Option<&str>,
    ) -> Result<MessagesPage, ProviderError> {
        let url = self.url(&["rooms", room, "messages"]);
        let limit = TIMELINE_LIMIT.to_string();
        let resp = self
            .retrying("messages", READ_BACK_TRIES, READ_BACK_WAIT, || {
                let req = self.client.get(url.clone()).query(&[
                    ("dir", "b"),
                    ("from", from),
                    ("limit", limit.as_str()),
                    ("filter", self.timeline_filter.as_str()),
                ]);
                match to {
                    Some(to) => req.query(&[("to", to)]),
                    None => req,
                }
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.refused(resp, "messages").await);
        }
        HOMESERVER.read_json(resp, "/messages answer").await
    }

    /// Events left out of `room`'s timeline could not all be read back: replies or reactions
    /// from its person may be missing. Logged as an error naming the room and the person, and
    /// reported as the feed failing, so HQ checks the room.
    fn report_gap(&self, room: &str, latest: &CheckRecord) {
        let person = latest.to.as_deref().unwrap_or("?");
        tracing::error!(
            room,
            person,
            roll_call = latest.rc,
            "the homeserver skipped events in this room (timeline limited) and they could not \
             all be read back: replies or reactions there may be missing; check the room"
        );
        if let Some(h) = &self.health {
            h.failing_now(
                Component::Feed,
                format!(
                    "sync skipped events in room {room} (timeline limited) that could not be \
                     read back: answers there may be missing; check the room"
                ),
            );
        }
    }

    /// The check `event` is, if it is one of anpi's.
    async fn check_of(
        &self,
        room: &str,
        event: &str,
    ) -> Result<Option<CheckRecord>, ProviderError> {
        if let Some(rec) = self.check_record(event).await? {
            return Ok(Some(rec));
        }
        // Not in the cache (the write after the send was lost): the check says what it is.
        let Some(ev) = self.fetch_event(room, event).await? else {
            return Ok(None);
        };
        if ev["sender"].as_str() != Some(self.bot.as_str()) {
            return Ok(None);
        }
        let Some(rc) = ev["content"][ROLL_CALL_KEY].as_i64() else {
            return Ok(None);
        };
        let rec = CheckRecord {
            rc,
            to: None,
            values: Vec::new(),
            ts: ev["origin_server_ts"].as_i64(),
            prev: None,
        };
        self.save_learnt_check(room, event, &rec).await?;
        Ok(Some(rec))
    }

    /// The newest check sent in `room`, with its server timestamp.
    async fn latest_check(&self, room: &str) -> Result<Option<CheckRecord>, ProviderError> {
        let Some((event, mut rec)) = self.latest_check_event(room).await? else {
            return Ok(None);
        };
        if rec.ts.is_none() {
            let Some(ev) = self.fetch_event(room, &event).await? else {
                return Ok(None);
            };
            rec.ts = ev["origin_server_ts"].as_i64();
            if let Some(ts) = rec.ts {
                self.save_check_ts(&event, ts).await?;
            }
        }
        Ok(Some(rec))
    }

    /// The check a receipt by `from` on `target` confirms: `target` itself, or else the newest
    /// check in the room if `target` is later.
    async fn read_check(
        &self,
        room: &str,
        target: &str,
        from: &str,
    ) -> Result<Option<CheckRecord>, ProviderError> {
        if let Some(rec) = self.check_of(room, target).await? {
            return Ok(Some(rec));
        }
        let Some(latest) = self.latest_check(room).await? else {
            return Ok(None);
        };
        if latest.to.as_deref().is_some_and(|to| to != from) {
            return Ok(None);
        }
        let at = self
            .fetch_event(room, target)
            .await?
            .and_then(|ev| ev["origin_server_ts"].as_i64());
        Ok(match (at, latest.ts) {
            (Some(at), Some(check)) if at >= check => Some(latest),
            _ => None,
        })
    }

    /// The check something `from` wrote or reacted in `room` (at server time `at`) answers,
    /// and whether it names it: `target` when that is a check of an open roll call (named);
    /// otherwise the newest open check in the room, or the newest check when none is open (not
    /// named: the store gives it to the newest open roll call the person is in, so a closed
    /// roll call never changes). `None` for what came before the room's newest check.
    async fn answered_check(
        &self,
        room: &str,
        target: Option<&str>,
        from: &str,
        at: Option<i64>,
    ) -> Result<Option<(CheckRecord, bool)>, ProviderError> {
        if let Some(t) = target {
            if let Some(rec) = self.check_of(room, t).await? {
                if self.is_open(rec.rc).await? {
                    return Ok(Some((rec, true)));
                }
            }
        }
        let Some(latest) = self.latest_check(room).await? else {
            return Ok(None);
        };
        if latest.to.as_deref().is_some_and(|to| to != from) {
            return Ok(None);
        }
        match (at, latest.ts) {
            (Some(at), Some(check)) if at >= check => {}
            _ => return Ok(None),
        }
        if self.is_open(latest.rc).await? {
            return Ok(Some((latest, false)));
        }
        let open = self.earlier_checks(room, &latest).await?.into_iter().next();
        Ok(Some((open.map_or(latest, |(_, rec)| rec), false)))
    }

    async fn is_open(&self, rc: i64) -> Result<bool, ProviderError> {
        Ok(self
            .store
            .roll_call(RollCallId(rc))
            .await
            .map_err(store_error)?
            .is_some_and(|r| r.state == crate::rollcall::RollCallState::Open))
    }

    /// The open checks sent in `room` before `rec`, newest first (at most [`EARLIER_CHECKS`]),
    /// with their event ids: what has been read or answered after them has been seen after
    /// them too.
    async fn earlier_checks(
        &self,
        room: &str,
        rec: &CheckRecord,
    ) -> Result<Vec<(String, CheckRecord)>, ProviderError> {
        let mut out: Vec<(String, CheckRecord)> = Vec::new();
        let mut seen = std::collections::HashSet::from([rec.rc]);
        let mut next = rec.prev.clone();
        while let Some(event) = next.take() {
            if out.len() >= EARLIER_CHECKS {
                break;
            }
            let Some(earlier) = self.check_of(room, &event).await? else {
                break;
            };
            // A closed roll call's record is evidence and stays as it was; older checks are
            // older still. A roll call seen twice means the chain loops: stop.
            if !self.is_open(earlier.rc).await? || !seen.insert(earlier.rc) {
                break;
            }
            next = earlier.prev.clone();
            out.push((event, earlier));
        }
        Ok(out)
    }

    /// Read events for the checks before `rec` (see [`Self::earlier_checks`]).
    async fn push_earlier_reads(
        &self,
        room: &str,
        rec: &CheckRecord,
        base: &InboundEvent,
        out: &mut Vec<InboundEvent>,
    ) -> Result<(), ProviderError> {
        for (_, earlier) in self.earlier_checks(room, rec).await? {
            if earlier.rc == rec.rc {
                continue;
            }
            out.push(InboundEvent {
                event_id: format!("{}:rc{}", base.event_id, earlier.rc),
                roll_call_id: Some(RollCallId(earlier.rc)),
                from: base.from.clone(),
                kind: InboundKind::Read,
                occurred_at: base.occurred_at,
            });
        }
        Ok(())
    }

    /// Turns one joined room's part of a `/sync` answer into inbound events.
    async fn room_events(
        &self,
        room: &str,
        data: &JoinedRoom,
        out: &mut Vec<InboundEvent>,
    ) -> Result<(), ProviderError> {
        for ev in &data.ephemeral.events {
            if ev["type"] != "m.receipt" {
                continue;
            }
            let Some(content) = ev["content"].as_object() else {
                continue;
            };
            for (target, by_type) in content {
                // Only public receipts reach the bot; m.read.private never arrives here.
                let Some(readers) = by_type["m.read"].as_object() else {
                    continue;
                };
                for (user, receipt) in readers {
                    if *user == self.bot {
                        continue;
                    }
                    let Ok(from) = ChatHandle::parse(user) else {
                        continue;
                    };
                    let Some(rec) = self.read_check(room, target, user).await? else {
                        continue;
                    };
                    let read = InboundEvent {
                        event_id: format!("receipt:{user}:{target}"),
                        roll_call_id: Some(RollCallId(rec.rc)),
                        from,
                        kind: InboundKind::Read,
                        occurred_at: server_time(receipt["ts"].as_i64(), &self.clock),
                    };
                    self.push_earlier_reads(room, &rec, &read, out).await?;
                    out.push(read);
                }
            }
        }
        for ev in &data.timeline.events {
            let (Some(sender), Some(event_id)) = (ev["sender"].as_str(), ev["event_id"].as_str())
            else {
                continue;
            };
            if sender == self.bot {
                continue;
            }
            let Ok(from) = ChatHandle::parse(sender) else {
                continue;
            };
            let at = ev["origin_server_ts"].as_i64();
            let content = &ev["content"];
            let relates = &content["m.relates_to"];
            // What the person did, and the event they did it to, when they named one. An edit
            // (`m.replace`) is read again as an answer from its new content.
            let (target, body, reaction): (Option<&str>, Option<&str>, Option<&str>) =
                match ev["type"].as_str() {
                    Some("m.reaction") if relates["rel_type"] == "m.annotation" => (
                        relates["event_id"].as_str(),
                        None,
                        Some(relates["key"].as_str().unwrap_or("")),
                    ),
                    Some("m.sticker") => (
                        None,
                        None,
                        Some(content["body"].as_str().unwrap_or("sticker")),
                    ),
                    Some("m.room.message") if relates["rel_type"] == "m.replace" => {
                        (None, content["m.new_content"]["body"].as_str(), None)
                    }
                    Some("m.room.message") => (
                        relates["m.in_reply_to"]["event_id"].as_str(),
                        content["body"].as_str(),
                        None,
                    ),
                    // End-to-end encrypted: anpi cannot read it, and says so.
                    Some("m.room.encrypted") => {
                        self.remember_encrypted(sender, room).await?;
                        (None, Some(UNREADABLE), None)
                    }
                    _ => continue,
                };
            let Some((rec, named)) = self.answered_check(room, target, sender, at).await? else {
                continue;
            };
            let kind = match (reaction, body) {
                (Some(key), _) => match option_number(key).and_then(|n| option(&rec.values, n)) {
                    Some(value) => InboundKind::Answer { value },
                    None => InboundKind::Sticker {
                        id: key.to_string(),
                    },
                },
                (None, Some(UNREADABLE)) => InboundKind::Reply {
                    text: UNREADABLE.to_string(),
                },
                (None, Some(body)) => reply_kind(body, &rec.values),
                (None, None) => continue,
            };
            let answer = InboundEvent {
                event_id: event_id.to_string(),
                // Something the person did in the room counts for the newest open roll call
                // they are in (the store's rule for events that name none), unless it answers
                // an open check by name.
                roll_call_id: named.then_some(RollCallId(rec.rc)),
                from,
                kind,
                occurred_at: server_time(at, &self.clock),
            };
            self.push_earlier_reads(room, &rec, &answer, out).await?;
            out.push(answer);
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
struct SyncResponse {
    next_batch: String,
    #[serde(default)]
    rooms: SyncRooms,
}

#[derive(Debug, Default, Deserialize)]
struct SyncRooms {
    #[serde(default)]
    join: HashMap<String, JoinedRoom>,
}

#[derive(Debug, Default, Deserialize)]
struct JoinedRoom {
    #[serde(default)]
    timeline: Timeline,
    #[serde(default)]
    ephemeral: Events,
}

#[derive(Debug, Default, Deserialize)]
struct Timeline {
    #[serde(default)]
    events: Vec<Value>,
    /// Events between the previous sync and these were left out.
    #[serde(default)]
    limited: bool,
    /// Where to page back from to read what was left out.
    #[serde(default)]
    prev_batch: Option<String>,
}

/// One page of `/rooms/{roomId}/messages`.
#[derive(Debug, Deserialize)]
struct MessagesPage {
    #[serde(default)]
    chunk: Vec<Value>,
    /// Where the next page starts; absent when there are no more events.
    #[serde(default)]
    end: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Events {
    /// Kept raw so that one event this adapter cannot read does not block the feed.
    #[serde(default)]
    events: Vec<Value>,
}

fn server_time(ms: Option<i64>, clock: &SharedClock) -> DateTime<Utc> {
    ms.and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(|| clock.now())
}
