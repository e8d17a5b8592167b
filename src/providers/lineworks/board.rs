//! Must-read board posts, and the readers feed: a post's reader list, polled within half the
//! board API's budget, is the one per-person read signal LINE WORKS gives. Each read is
//! reported until the receipt watcher has stored it, then never again in this process.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{refusal, LineWorksProvider, LINE_WORKS};
use crate::clock::Millis;
use crate::health::Component;
use crate::ids::{ChatHandle, RollCallId};
use crate::providers::{
    BroadcastRequest, Broadcasted, EventBatch, InboundEvent, InboundKind, ProviderError,
};
use crate::scenario::{ButtonsShown, RouteTraits};

/// A must-read board post: readers are listed; it has no buttons, which follow in talk or
/// rooms ([`crate::dispatch`]).
const BOARD: RouteTraits = RouteTraits {
    reads_visible: true,
    buttons: ButtonsShown::Elsewhere,
};

/// A must-read post stays must-read at most this many days (board-post-create:
/// `mustReadEndDate` 最大30日).
pub const MAX_MUST_READ_DAYS: i64 = 30;

/// A must-read post whose readers are polled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct WatchedPost {
    pub(super) rc: i64,
    pub(super) post: String,
    pub(super) since: Millis,
}

/// The readers feed's cursor: the posts being watched, so a restart resumes them.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReadersCursor {
    posts: Vec<WatchedPost>,
}

/// Reads already reported and stored, and those of the last poll, which count as reported
/// only once the watcher says it has stored them ([`crate::providers::ChatProvider::events_stored`]).
#[derive(Debug, Default)]
pub(super) struct Reported {
    stored: HashSet<(String, String)>,
    pending: Vec<(String, String)>,
}

/// The body of "Create a post" (<https://developers.worksmobile.com/jp/reference/board-post-create>):
/// `title` (1..200), `body` (HTML, 1..716,800), `enableComment`, `mustReadEndDate` (a date at
/// most 30 days ahead; it is what makes the post must-read) and `sendNotifications`.
/// `isMustRead` and `mustReadPeriod` are fields of the answer, not of this request.
///
/// The end date is the day `req.until` falls on in Asia/Tokyo (the reference does not say
/// in which zone the date is read; a Japanese domain's is assumed), kept between today and
/// 30 days ahead.
pub fn board_post_body(req: &BroadcastRequest, now: DateTime<Utc>) -> Value {
    let tz = chrono_tz::Asia::Tokyo;
    let today = now.with_timezone(&tz).date_naive();
    let end = req
        .until
        .with_timezone(&tz)
        .date_naive()
        .clamp(today, today + chrono::Duration::days(MAX_MUST_READ_DAYS));
    json!({
        "title": req.title.chars().take(200).collect::<String>(),
        "body": html_escape(&req.asks.compose(&req.text, BOARD, &req.buttons)),
        "enableComment": false,
        "mustReadEndDate": end.format("%Y-%m-%d").to_string(),
        "sendNotifications": true,
    })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "<br>")
}

#[derive(Deserialize)]
struct ReadersPage {
    #[serde(default)]
    readers: Vec<Reader>,
    #[serde(rename = "responseMetaData", default)]
    meta: Option<ReadersMeta>,
}

#[derive(Deserialize)]
struct Reader {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    #[serde(rename = "isRead")]
    is_read: bool,
}

#[derive(Deserialize)]
struct ReadersMeta {
    #[serde(rename = "nextCursor")]
    next_cursor: Option<String>,
}

impl LineWorksProvider {
    pub(super) fn watch(&self, post: WatchedPost) {
        let mut posts = self.posts.lock().unwrap_or_else(|e| e.into_inner());
        if !posts.iter().any(|p| p.post == post.post) {
            posts.push(post);
        }
    }

    /// Creates the must-read post ([`board_post_body`]) and follows its readers.
    pub(super) async fn board_post(
        &self,
        req: &BroadcastRequest,
    ) -> Result<Broadcasted, ProviderError> {
        let board = self.settings.board_id.as_deref().ok_or_else(|| {
            ProviderError::Permanent("no board is configured for LINE WORKS".into())
        })?;
        self.board_posts.acquire().await;
        let body = board_post_body(req, self.clock.now());
        let url = self.api(&["boards", board, "posts"]);
        let resp = self.call(|| self.client.post(&url).json(&body)).await?;
        if !resp.status().is_success() {
            return Err(refusal(resp).await);
        }
        // Accepted: without a post id the reads cannot be followed, but the post is out.
        let post_id = resp
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| match v.get("postId") {
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            });
        match &post_id {
            Some(p) => self.watch(WatchedPost {
                rc: req.roll_call_id.0,
                post: p.clone(),
                since: self.clock.now_millis(),
            }),
            None => {
                tracing::warn!(roll_call = %req.roll_call_id, "board post accepted without a post id: reads cannot be followed")
            }
        }
        Ok(Broadcasted { post_id })
    }

    /// Every member marked read on `post`, page by page, each page within the readers budget:
    /// "Get readers of a post" (<https://developers.worksmobile.com/en/docs/board-post-reader-list>),
    /// `GET /boards/{boardId}/posts/{postId}/readers`. The page documents no query parameter;
    /// its answer holds up to 5,000 members, read and unread (`isRead`), and
    /// `responseMetaData.nextCursor`, which is sent back as `cursor` as every other Board list
    /// operation takes it. No `count`: this operation does not document one.
    async fn readers(&self, post: &str) -> Result<Vec<String>, ProviderError> {
        let board = self.settings.board_id.as_deref().unwrap_or_default();
        let url = self.api(&["boards", board, "posts", post, "readers"]);
        let mut read = Vec::new();
        let mut cursor: Option<String> = None;
        let mut cursors_seen = std::collections::HashSet::new();
        loop {
            self.board_readers.acquire().await;
            let resp = self
                .call(|| {
                    let req = self.client.get(&url);
                    match &cursor {
                        Some(c) => req.query(&[("cursor", c)]),
                        None => req,
                    }
                })
                .await?;
            if !resp.status().is_success() {
                let e = refusal(resp).await;
                if let ProviderError::RateLimited { reset } = &e {
                    self.board_readers.pause_for(*reset);
                }
                return Err(e);
            }
            let page: ReadersPage = LINE_WORKS.read_json(resp, "readers page").await?;
            read.extend(
                page.readers
                    .into_iter()
                    .filter(|r| r.is_read)
                    .filter_map(|r| r.user_id),
            );
            match page
                .meta
                .and_then(|m| m.next_cursor)
                .filter(|c| !c.is_empty())
            {
                // A cursor given twice would read the same pages forever (the operation does
                // not document `cursor`): the reads so far count, the rest are phoned.
                Some(c) if !cursors_seen.insert(c.clone()) => {
                    tracing::error!(
                        post,
                        cursor = %c,
                        members_read = read.len(),
                        "LINE WORKS gave the same readers cursor twice; reads on later pages \
                         of this post are not counted, so those people stay on the call list"
                    );
                    // The last page may have been one already read.
                    read.sort_unstable();
                    read.dedup();
                    return Ok(read);
                }
                Some(c) => cursor = Some(c),
                None => return Ok(read),
            }
        }
    }

    /// [`crate::providers::ChatProvider::poll_events`]: the readers of every watched post,
    /// once; reads not yet stored become Read events.
    pub(super) async fn poll_readers(
        &self,
        cursor: Option<&str>,
        wait: Duration,
    ) -> Result<EventBatch, ProviderError> {
        // Reads of a poll whose batch was not stored are reported again.
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .clear();
        if let Some(saved) = cursor.and_then(|c| serde_json::from_str::<ReadersCursor>(c).ok()) {
            for p in saved.posts {
                self.watch(p);
            }
        }
        let now = self.clock.now_millis();
        let keep_ms = self.settings.readers_poll_for.as_millis() as i64;
        let posts: Vec<WatchedPost> = {
            let mut posts = self.posts.lock().unwrap_or_else(|e| e.into_inner());
            posts.retain(|p| now - p.since < keep_ms);
            posts.clone()
        };
        if posts.is_empty() {
            self.clock.sleep(wait).await;
            let next = serde_json::to_string(&ReadersCursor::default()).ok();
            return Ok(EventBatch {
                events: Vec::new(),
                cursor: cursor.and(next),
            });
        }
        let mut events = Vec::new();
        let mut new_reads = Vec::new();
        // One post that cannot be read (moved to the Trash, or refused) costs its own reads
        // only: the other posts are still read, and it is asked again next round (a post
        // restored from the Trash counts again). A rate limit ends the round with what was
        // read before it.
        let mut failed: Option<ProviderError> = None;
        let mut read_any = false;
        for p in &posts {
            let readers = match self.readers(&p.post).await {
                Ok(r) => r,
                Err(e @ ProviderError::RateLimited { .. }) => {
                    // The rest waits for the next round; what was read so far counts.
                    failed = Some(e);
                    break;
                }
                Err(e) => {
                    let e = match e {
                        // "This API operation cannot get a post from Trash."
                        ProviderError::Permanent(r) if r.starts_with(super::UNKNOWN_USER) => {
                            ProviderError::Permanent(format!(
                                "board post {} of roll call {} is not found (deleted or in \
                                 the Trash): its reads are not counted until it is restored; \
                                 people not yet counted stay on the call list ({r})",
                                p.post, p.rc
                            ))
                        }
                        e => e,
                    };
                    tracing::error!(roll_call = p.rc, post = %p.post, error = %e,
                        "the readers of a board post could not be read; the other posts are \
                         read, and this one is asked again next round");
                    failed.get_or_insert(e);
                    continue;
                }
            };
            read_any = true;
            let seen_at = self.clock.now();
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            for user in readers {
                let key = (p.post.clone(), user);
                if seen.stored.contains(&key) {
                    continue;
                }
                let Ok(from) = ChatHandle::parse(&key.1) else {
                    continue;
                };
                events.push(InboundEvent {
                    event_id: format!("lw-read:{}:{}", p.post, key.1),
                    roll_call_id: Some(RollCallId(p.rc)),
                    from,
                    kind: InboundKind::Read,
                    // The platform says who has read, not when: this is when anpi saw it.
                    occurred_at: seen_at,
                });
                new_reads.push(key);
            }
        }
        // HQ is told (health) while any post cannot be read.
        match failed {
            Some(e) if !read_any => {
                self.report::<()>(Component::Readers, &Err(e.clone()));
                return Err(e);
            }
            Some(e) => self.report::<()>(Component::Readers, &Err(e)),
            None => self.report::<()>(Component::Readers, &Ok(())),
        }
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).pending = new_reads;
        let next = serde_json::to_string(&ReadersCursor { posts }).ok();
        Ok(EventBatch {
            events,
            cursor: next,
        })
    }

    /// The watcher stored the last poll's reads: they are not reported again.
    pub(super) fn reads_stored(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let pending = std::mem::take(&mut seen.pending);
        seen.stored.extend(pending);
    }
}
