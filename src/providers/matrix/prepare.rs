//! `anpi matrix prepare`: makes sure every person has a DM room with the bot that reaches
//! them, and says who is unreachable and why. The same reasons ([`Unreachable`]) are what a
//! send to someone not in their room fails with, so HQ reads one wording for both.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::client::{HOMESERVER, PREPARE_ATTEMPTS};
use super::{MatrixError, MatrixProvider};
use crate::ids::ChatHandle;
use crate::providers::ProviderError;

/// Why a person's DM room does not reach them. The reason HQ reads names which case it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unreachable {
    /// Invited to the room and has not accepted (nothing the bot posts reaches them).
    NeverAccepted,
    /// Was in the room and left it (or was removed).
    Left,
    /// The homeserver knows no such user (a mistyped id).
    UnknownUser,
    /// The user exists but is not invited to the room.
    NotInvited,
}

impl Unreachable {
    /// One line for HQ, Japanese first.
    pub fn label(self) -> &'static str {
        match self {
            Self::NeverAccepted => "招待未承諾 / never accepted the invite",
            Self::Left => "ルームから退出 / left the room",
            Self::UnknownUser => "存在しないユーザー / unknown user",
            Self::NotInvited => "ルームに未招待 / not invited to the room",
        }
    }
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What `prepare` did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrepareReport {
    /// People who already had a DM room.
    pub existing: usize,
    /// Rooms created now (the person is invited and must accept once).
    pub created: usize,
    /// People who had left their room and were invited to it again.
    pub reinvited: Vec<ChatHandle>,
    /// People a message would not reach now, and why (a room just created is among them
    /// until the person accepts the invite).
    pub unreachable: Vec<(ChatHandle, Unreachable)>,
    /// Rooms the homeserver encrypts: anpi cannot read replies there (receipts and reactions
    /// still count).
    pub encrypted: Vec<(ChatHandle, String)>,
    /// People no room could be made for, with the homeserver's reason.
    pub failed: Vec<(ChatHandle, String)>,
}

impl MatrixProvider {
    /// Makes sure every one of `people` has a DM room that reaches them: creates a room (invite,
    /// `is_direct`, no encryption asked for) for whoever has none and exists on the homeserver,
    /// invites again whoever left their room, and reports who is not reachable and why, and
    /// which rooms the homeserver encrypts. Waits out the homeserver's 429s. Meant for before a
    /// roll call: a room costs about 100 ms and the person must accept the invite once.
    pub async fn prepare(&self, people: &[ChatHandle]) -> Result<PrepareReport, MatrixError> {
        self.patient
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let report = self.prepare_all(people).await;
        self.patient
            .store(false, std::sync::atomic::Ordering::Relaxed);
        report
    }

    async fn prepare_all(&self, people: &[ChatHandle]) -> Result<PrepareReport, MatrixError> {
        let mut report = PrepareReport::default();
        let mut created = Vec::new();
        let mut encrypted: HashMap<String, String> = HashMap::new();
        for person in people {
            let user = person.as_str();
            let room = match self.dm_room(person).await? {
                Some(room) => {
                    report.existing += 1;
                    let state = match self.membership(&room, user).await {
                        Ok(m) => m,
                        Err(e) => {
                            report.failed.push((person.clone(), e.to_string()));
                            continue;
                        }
                    };
                    match state.as_deref() {
                        Some("join") => {}
                        Some("leave") => match self.invite(&room, user).await {
                            Ok(()) => {
                                self.mark_left(user).await?;
                                report.reinvited.push(person.clone());
                                report.unreachable.push((person.clone(), Unreachable::Left));
                            }
                            Err(e) => report.failed.push((person.clone(), e.to_string())),
                        },
                        Some("ban") => {
                            report.unreachable.push((person.clone(), Unreachable::Left));
                        }
                        Some(_) | None => {
                            let why = match self.user_exists(user).await? {
                                false => Unreachable::UnknownUser,
                                true if state.is_some() => Unreachable::NeverAccepted,
                                true => match self.invite(&room, user).await {
                                    Ok(()) => Unreachable::NeverAccepted,
                                    Err(e) => {
                                        report.failed.push((person.clone(), e.to_string()));
                                        continue;
                                    }
                                },
                            };
                            report.unreachable.push((person.clone(), why));
                        }
                    }
                    room
                }
                None => {
                    if !self.user_exists(user).await? {
                        report
                            .unreachable
                            .push((person.clone(), Unreachable::UnknownUser));
                        continue;
                    }
                    match self.create_dm(person).await {
                        Ok(room) => {
                            self.set_dm_room(user, &room).await?;
                            created.push((user.to_string(), room.clone()));
                            report.created += 1;
                            report
                                .unreachable
                                .push((person.clone(), Unreachable::NeverAccepted));
                            room
                        }
                        Err(e) => {
                            report.failed.push((person.clone(), e.to_string()));
                            continue;
                        }
                    }
                }
            };
            if self.is_encrypted(&room).await? {
                encrypted.insert(user.to_string(), room.clone());
                report.encrypted.push((person.clone(), room));
            }
        }
        // What `anpi serve` warns about at start (see `startup_notes`).
        self.set_encrypted_rooms(&encrypted).await?;
        if !created.is_empty() {
            // Clients show a room as a direct chat when the bot's m.direct says so; a failure
            // here only changes how the room is listed.
            if let Err(e) = self.mark_direct(&created).await {
                tracing::warn!(error = %e, "could not update the bot's m.direct list");
            }
        }
        Ok(report)
    }

    async fn invite(&self, room: &str, user: &str) -> Result<(), ProviderError> {
        let url = self.url(&["rooms", room, "invite"]);
        let body = json!({ "user_id": user });
        let resp = self
            .patiently("invite", || self.client.post(url.clone()).json(&body))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.refused(resp, "invite").await)
        }
    }

    /// Whether `room` has an `m.room.encryption` state event: then the bot cannot read what
    /// people write there (anpi does not do end-to-end encryption).
    async fn is_encrypted(&self, room: &str) -> Result<bool, ProviderError> {
        let url = self.url(&["rooms", room, "state", "m.room.encryption", ""]);
        let resp = self
            .patiently("encryption state", || self.client.get(url.clone()))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.refused(resp, "encryption state").await),
        }
    }

    /// Why the person's room does not reach them now, if it does not.
    pub(super) async fn unreachable(
        &self,
        room: &str,
        user: &str,
    ) -> Result<Option<Unreachable>, ProviderError> {
        Ok(match self.membership(room, user).await?.as_deref() {
            Some("join") => None,
            Some("leave") | Some("ban") => Some(Unreachable::Left),
            Some("invite") if self.has_left(user).await? => Some(Unreachable::Left),
            Some(_) if self.user_exists(user).await? => Some(Unreachable::NeverAccepted),
            None if self.user_exists(user).await? => Some(Unreachable::NotInvited),
            _ => Some(Unreachable::UnknownUser),
        })
    }

    async fn create_dm(&self, person: &ChatHandle) -> Result<String, ProviderError> {
        let body = json!({
            "preset": "trusted_private_chat",
            "is_direct": true,
            "invite": [person.as_str()],
        });
        let mut attempt = 0;
        loop {
            attempt += 1;
            let resp = self
                .client
                .post(self.url(&["createRoom"]))
                .header(AUTHORIZATION, self.auth())
                .json(&body)
                .send()
                .await
                .map_err(|e| HOMESERVER.transport_error(e))?;
            if resp.status().is_success() {
                let v: Value = HOMESERVER.read_json(resp, "createRoom answer").await?;
                return v["room_id"].as_str().map(str::to_string).ok_or_else(|| {
                    ProviderError::Permanent("createRoom answered without a room_id".into())
                });
            }
            match self.refused(resp, "createRoom").await {
                ProviderError::RateLimited { reset } if attempt < PREPARE_ATTEMPTS => {
                    tokio::time::sleep(reset).await
                }
                ProviderError::Retryable { after, .. } if attempt < PREPARE_ATTEMPTS => {
                    tokio::time::sleep(after.unwrap_or(Duration::from_secs(1))).await
                }
                e => return Err(e),
            }
        }
    }

    async fn mark_direct(&self, created: &[(String, String)]) -> Result<(), ProviderError> {
        let url = self.url(&["user", &self.bot, "account_data", "m.direct"]);
        let resp = self
            .client
            .get(url.clone())
            .header(AUTHORIZATION, self.auth())
            .send()
            .await
            .map_err(|e| HOMESERVER.transport_error(e))?;
        // Only a missing list starts empty: anything else unreadable would be overwritten.
        let mut direct: HashMap<String, Vec<String>> = if resp.status().is_success() {
            resp.json().await.map_err(|e| ProviderError::Retryable {
                after: None,
                reason: format!("the bot's m.direct list is not readable ({e}); left unchanged"),
            })?
        } else if resp.status() != StatusCode::NOT_FOUND {
            return Err(self.refused(resp, "m.direct").await);
        } else {
            HashMap::new()
        };
        for (user, room) in created {
            let rooms = direct.entry(user.clone()).or_default();
            if !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        let resp = self
            .client
            .put(url)
            .header(AUTHORIZATION, self.auth())
            .json(&direct)
            .send()
            .await
            .map_err(|e| HOMESERVER.transport_error(e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.refused(resp, "m.direct").await)
        }
    }

    /// The warning `anpi serve` gives at start when rooms are encrypted (see `prepare`).
    pub(super) async fn encrypted_rooms_note(&self) -> Vec<String> {
        let rooms = match self.encrypted_rooms().await {
            Ok(r) => r,
            Err(e) => {
                return vec![format!(
                    "Matrix: cannot read which rooms are encrypted: {e}"
                )]
            }
        };
        if rooms.is_empty() {
            return Vec::new();
        }
        let mut people: Vec<&String> = rooms.keys().collect();
        people.sort();
        let list: Vec<String> = people
            .iter()
            .take(20)
            .map(|p| format!("{p} ({})", rooms[*p]))
            .collect();
        let more = people.len().saturating_sub(20);
        vec![format!(
            "暗号化された Matrix ルームが {n} 件あります。返信の内容は読めません（既読とリアクションは数えます）。\
             / {n} Matrix DM rooms are end-to-end encrypted: anpi cannot read replies there \
             (read receipts and reactions still count; an encrypted reply shows as unreadable): {}{}",
            list.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
            n = rooms.len(),
        )]
    }
}
