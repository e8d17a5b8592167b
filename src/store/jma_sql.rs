//! The statements behind the JMA trigger state, the drill report and the retraction list.
//! They are the same text on SQLite and PostgreSQL (`$n` placeholders, 64-bit integers, text,
//! `ON CONFLICT`), so one macro writes them for both backends; each backend's `Store` impl
//! calls these.
//!
//! Invariant: a telegram's record and the state its decision changed are written in one
//! transaction, and a telegram (scope, dedupe key) is recorded at most once.

/// Expands the JMA and drill queries as inherent methods of a backend (`$store`), whose
/// `write_lock()` serialises writers where the database needs it.
macro_rules! jma_queries {
    ($store:ty) => {
        impl $store {
            pub(super) async fn q_jma_telegram_seen(
                &self,
                scope: &str,
                key: &str,
            ) -> $crate::store::StoreResult<Option<String>> {
                use sqlx::Row;
                let row = sqlx::query(
                    "SELECT action, received_at FROM jma_telegrams WHERE scope = $1 AND dedupe_key = $2",
                )
                .bind(scope)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
                Ok(match row {
                    Some(r) => {
                        let action: String = r.try_get("action")?;
                        let at: i64 = r.try_get("received_at")?;
                        Some(format!(
                            "{action}, {}",
                            $crate::clock::from_millis(at).format("%Y-%m-%d %H:%M:%S UTC")
                        ))
                    }
                    None => None,
                })
            }

            pub(super) async fn q_jma_events(
                &self,
                scope: &str,
                rule: &str,
                keys: &[String],
            ) -> $crate::store::StoreResult<Vec<$crate::jma::decide::EventState>> {
                use sqlx::Row;
                let mut out = Vec::new();
                for key in keys {
                    let row = sqlx::query(
                        "SELECT state FROM jma_events WHERE scope = $1 AND rule = $2 AND key = $3",
                    )
                    .bind(scope)
                    .bind(rule)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                    if let Some(r) = row {
                        let text: String = r.try_get("state")?;
                        out.push(serde_json::from_str(&text).map_err(|e| {
                            $crate::store::StoreError::Corrupt(format!("jma event state: {e}"))
                        })?);
                    }
                }
                Ok(out)
            }

            pub(super) async fn q_jma_last_start(
                &self,
                scope: &str,
                rule: &str,
                real_only: bool,
            ) -> $crate::store::StoreResult<Option<$crate::jma::decide::EventState>> {
                use sqlx::Row;
                // A 訓練 telegram's state is keyed `drill:...`; a drill start stored before
                // that is known by its state's `"drill":true` (set only by 訓練 telegrams in
                // the live scope). The same test as `decide::is_drill_state`.
                let sql = if real_only {
                    "SELECT state FROM jma_events WHERE scope = $1 AND rule = $2 \
                     AND started_at IS NOT NULL AND key NOT LIKE 'drill:%' \
                     AND state NOT LIKE '%\"drill\":true%' \
                     ORDER BY started_at DESC LIMIT 1"
                } else {
                    "SELECT state FROM jma_events WHERE scope = $1 AND rule = $2 \
                     AND started_at IS NOT NULL ORDER BY started_at DESC LIMIT 1"
                };
                let row = sqlx::query(sql)
                .bind(scope)
                .bind(rule)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(r) => {
                        let text: String = r.try_get("state")?;
                        Ok(Some(serde_json::from_str(&text).map_err(|e| {
                            $crate::store::StoreError::Corrupt(format!("jma event state: {e}"))
                        })?))
                    }
                    None => Ok(None),
                }
            }

            pub(super) async fn q_jma_record(
                &self,
                rec: &$crate::jma::JmaRecord,
                updates: &[$crate::jma::decide::EventState],
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<Option<i64>> {
                use sqlx::Row;
                let _w = self.write_lock().await;
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(
                    "INSERT INTO jma_telegrams (scope, dedupe_key, source, code, kind, status, \
                       info_type, event_ids, serial, head_title, headline, sent_at, reported_at, \
                       received_at, action, rule, reason, roll_call_id, related_roll_call_id, decisions) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                       $16, $17, $18, $19, $20) \
                     ON CONFLICT (scope, dedupe_key) DO NOTHING RETURNING id",
                )
                .bind(&rec.scope)
                .bind(&rec.dedupe_key)
                .bind(&rec.source)
                .bind(&rec.code)
                .bind(&rec.kind)
                .bind(&rec.status)
                .bind(&rec.info_type)
                .bind(&rec.event_ids)
                .bind(&rec.serial)
                .bind(&rec.head_title)
                .bind(&rec.headline)
                .bind(rec.sent_at)
                .bind(rec.reported_at)
                .bind(rec.received_at)
                .bind(&rec.action)
                .bind(&rec.rule)
                .bind(&rec.reason)
                .bind(rec.roll_call_id)
                .bind(rec.related_roll_call_id)
                .bind(&rec.decisions)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let id: i64 = row.try_get("id")?;
                for u in updates {
                    let state = serde_json::to_string(u).map_err(|e| {
                        $crate::store::StoreError::Corrupt(format!("jma event state: {e}"))
                    })?;
                    sqlx::query(
                        "INSERT INTO jma_events (scope, rule, key, state, started_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (scope, rule, key) DO UPDATE SET state = excluded.state, \
                           started_at = excluded.started_at, updated_at = excluded.updated_at",
                    )
                    .bind(&rec.scope)
                    .bind(&u.rule)
                    .bind(&u.key)
                    .bind(state)
                    .bind(if u.roll_call_id.is_some() { u.started_at } else { None })
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Some(id))
            }

            pub(super) async fn q_jma_log(
                &self,
                scope: Option<&str>,
                roll_call: Option<$crate::ids::RollCallId>,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::jma::JmaRecord>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT id, scope, dedupe_key, source, code, kind, status, info_type, \
                       event_ids, serial, head_title, headline, sent_at, reported_at, received_at, \
                       action, rule, reason, roll_call_id, related_roll_call_id, decisions \
                     FROM jma_telegrams \
                     WHERE ($1 IS NULL OR scope = $1) \
                       AND ($2 IS NULL OR roll_call_id = $2 OR related_roll_call_id = $2) \
                     ORDER BY id DESC LIMIT $3",
                )
                .bind(scope)
                .bind(roll_call.map(|r| r.0))
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::jma::JmaRecord {
                            id: r.try_get("id")?,
                            scope: r.try_get("scope")?,
                            dedupe_key: r.try_get("dedupe_key")?,
                            source: r.try_get("source")?,
                            code: r.try_get("code")?,
                            kind: r.try_get("kind")?,
                            status: r.try_get("status")?,
                            info_type: r.try_get("info_type")?,
                            event_ids: r.try_get("event_ids")?,
                            serial: r.try_get("serial")?,
                            head_title: r.try_get("head_title")?,
                            headline: r.try_get("headline")?,
                            sent_at: r.try_get("sent_at")?,
                            reported_at: r.try_get("reported_at")?,
                            received_at: r.try_get("received_at")?,
                            action: r.try_get("action")?,
                            rule: r.try_get("rule")?,
                            reason: r.try_get("reason")?,
                            roll_call_id: r.try_get("roll_call_id")?,
                            related_roll_call_id: r.try_get("related_roll_call_id")?,
                            decisions: r.try_get("decisions")?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn q_jma_fetched(
                &self,
                url: &str,
            ) -> $crate::store::StoreResult<bool> {
                let row = sqlx::query("SELECT 1 AS one FROM jma_fetched WHERE url = $1")
                    .bind(url)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            pub(super) async fn q_jma_mark_fetched(
                &self,
                url: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(
                    "INSERT INTO jma_fetched (url, fetched_at) VALUES ($1, $2) \
                     ON CONFLICT (url) DO NOTHING",
                )
                .bind(url)
                .bind(now)
                .execute(&self.pool)
                .await?;
                // Feeds list days at most; what is older is never listed again.
                sqlx::query("DELETE FROM jma_fetched WHERE fetched_at < $1")
                    .bind(now - 30 * 24 * 3600 * 1000)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            pub(super) async fn q_notified_staff(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::ids::StaffId>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT staff_id FROM deliveries WHERE roll_call_id = $1 \
                     AND sent_at IS NOT NULL ORDER BY staff_id",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let s: String = r.try_get("staff_id")?;
                        $crate::ids::StaffId::parse(&s).map_err(|e| {
                            $crate::store::StoreError::Corrupt(format!("staff id {s:?}: {e}"))
                        })
                    })
                    .collect()
            }

            pub(super) async fn q_drill_rows(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::drills::DeliveryTimes>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT staff_id, name, department, shelter, kind, state, chat_handle, \
                       sent_at, read_at, answered_at, escalation_reason, outcome \
                     FROM deliveries WHERE roll_call_id = $1 ORDER BY staff_id",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let handle: Option<String> = r.try_get("chat_handle")?;
                        Ok($crate::drills::DeliveryTimes {
                            staff_id: r.try_get("staff_id")?,
                            name: r.try_get("name")?,
                            department: r.try_get("department")?,
                            shelter: r.try_get("shelter")?,
                            kind: r.try_get("kind")?,
                            state: r.try_get("state")?,
                            has_chat_id: handle.is_some(),
                            sent_at: r.try_get("sent_at")?,
                            read_at: r.try_get("read_at")?,
                            answered_at: r.try_get("answered_at")?,
                            escalation_reason: r.try_get("escalation_reason")?,
                            outcome: r.try_get("outcome")?,
                        })
                    })
                    .collect()
            }
        }
    };
}

pub(super) use jma_queries;
