//! The [`Store`](super::Store) implementation both backends share. Most operations run the
//! same statements on SQLite and PostgreSQL (or one statement per
//! [`Dialect`](super::shared::Dialect) from `shared`), decode rows with the same functions
//! and differ only in two ways the backend says for itself: whether writers queue on a lock
//! of anpi's own (`write_lock`) and whether a transaction that lost a race to another
//! replica is run again (`retrying`).
//!
//! [`store_impl!`] writes `impl Store` once, for a backend type; what really differs between
//! the databases stays in the backend's file as inherent methods.
//!
//! Invariants kept here for every backend: the roll call and its deliveries are written in one
//! transaction; closing a roll call fails what was never sent and carries open urgent answers
//! to the late answers in the same transaction; a call outcome or note is logged in the same
//! transaction as the change it records.

/// Implements [`Store`](super::Store) for `$store`, a backend over the sqlx database `$db`
/// writing SQL in `$dialect`.
///
/// The backend's module provides, beside the `pool` and `words` fields:
/// - `write_lock(&self) -> Option<MutexGuard<()>>`: held by every write;
/// - `retrying(&self, op)`: runs a transaction-opening `op`, again where a race was lost;
/// - `list_param(&[T])`: a list as one bound parameter (a JSON array, or an array);
/// - what differs: `run_migrations`, `write_contacts`, `read_directory`,
///   `insert_deliveries`, `record_sends`, `renew`, `check`.
macro_rules! store_impl {
    ($store:ty, $db:ty, $dialect:expr) => {
        impl $store {
            /// Roll call `id`'s escalation marks, for entries read before them.
            async fn marks<'c, E>(ex: E, id: i64) -> $crate::store::StoreResult<super::shared::Marks>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                Ok(super::shared::Marks(
                    sqlx::query_scalar(super::shared::MARKS_SQL)
                        .bind(id)
                        .fetch_all(ex)
                        .await?,
                ))
            }

            /// Writes `mails` in `tx`, skipping any whose dedupe key is stored. Returns how
            /// many were new.
            async fn enqueue_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                mails: &[$crate::email::NewMail],
                now: $crate::clock::Millis,
                wall: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<u64> {
                use super::shared::corrupt;
                let mut new = 0;
                for m in mails {
                    new += sqlx::query(super::shared::ENQUEUE_MAIL_SQL)
                        .bind(&m.kind)
                        .bind(&m.dedupe_key)
                        .bind(m.roll_call_id.map(|r| r.0))
                        .bind(serde_json::to_string(&m.to).map_err(|e| corrupt("recipients", e))?)
                        .bind(&m.subject)
                        .bind(&m.body)
                        .bind(m.csv.as_ref().map(|(n, _)| n.as_str()))
                        .bind(m.csv.as_ref().map(|(_, b)| b.as_slice()))
                        .bind(m.meta.as_deref())
                        .bind(wall)
                        .bind(now)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                }
                Ok(new)
            }

            /// One text column of a roll call's `roll_call_work` row (`sql` selects it by the
            /// roll call's id, `$1`); none where the row or the value is missing.
            async fn roll_call_text(
                &self,
                sql: &'static str,
                roll_call: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Option<String>> {
                let value: Option<Option<String>> = sqlx::query_scalar(sql)
                    .bind(roll_call.0)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(value.flatten())
            }

            /// Claims up to `limit` rows with `sql` (`$1` lease until, `$2` provider, `$3` now,
            /// `$4` limit): due deliveries, or due re-sends.
            async fn claim_rows(
                &self,
                sql: &str,
                provider: &str,
                now: $crate::clock::Millis,
                lease: std::time::Duration,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::ClaimedDelivery>> {
                let lease_until = now + lease.as_millis() as i64;
                let _w = self.write_lock().await;
                let rows = sqlx::query(sql)
                    .bind(lease_until)
                    .bind(provider)
                    .bind(now)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| super::shared::claimed_from_row(r, lease_until))
                    .collect()
            }
        }

        /// An inbound batch's reads and writes, inside its transaction.
        struct Batch<'a, 't>(&'a mut sqlx::Transaction<'t, $db>);

        #[async_trait::async_trait]
        impl super::shared::BatchReader for Batch<'_, '_> {
            async fn memberships(
                &mut self,
                provider: &str,
                handles: &[String],
                named: &[i64],
            ) -> $crate::store::StoreResult<Vec<(String, super::shared::Membership)>> {
                use super::shared;
                if let Some(hold) = $dialect.hold_open_sql() {
                    sqlx::query(hold).fetch_all(&mut **self.0).await?;
                }
                let rows = sqlx::query(&shared::memberships_sql($dialect))
                    .bind(provider)
                    .bind(list_param(handles))
                    .bind(list_param(named))
                    .fetch_all(&mut **self.0)
                    .await?;
                rows.iter().map(shared::membership_from_row).collect()
            }

            async fn roll_infos(
                &mut self,
                ids: &[i64],
            ) -> $crate::store::StoreResult<std::collections::HashMap<i64, super::shared::RollInfo>>
            {
                let rows = sqlx::query(&super::shared::roll_infos_sql($dialect))
                    .bind(list_param(ids))
                    .fetch_all(&mut **self.0)
                    .await?;
                rows.iter().map(super::shared::roll_info_from_row).collect()
            }

            async fn run(
                &mut self,
                sql: &str,
                provider: &str,
                now: $crate::clock::Millis,
                rows: String,
            ) -> $crate::store::StoreResult<(u64, Vec<String>)> {
                use sqlx::Row;
                if sql.contains("RETURNING") {
                    let out = sqlx::query(sql)
                        .bind(provider)
                        .bind(now)
                        .bind(rows)
                        .fetch_all(&mut **self.0)
                        .await?;
                    let firsts = out
                        .iter()
                        .map(|r| r.try_get::<String, _>(0))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((firsts.len() as u64, firsts))
                } else {
                    let n = sqlx::query(sql)
                        .bind(provider)
                        .bind(now)
                        .bind(rows)
                        .execute(&mut **self.0)
                        .await?
                        .rows_affected();
                    Ok((n, Vec::new()))
                }
            }
        }

        impl $store {
            /// Uses `words` to tell urgent free text from the rest.
            pub fn with_urgent_words(mut self, words: $crate::answers::UrgentWords) -> Self {
                self.words = std::sync::Arc::new(words);
                self
            }

            async fn roll_call_by_key(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::rollcall::RollCall>> {
                let row = sqlx::query(super::shared::ROLL_CALL_BY_KEY)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map(super::shared::roll_call_from_row)
                    .transpose()
            }

            /// Opens the transaction a new roll call is written in and writes its row, with
            /// `recipients` for now. `Err` holds the roll call an already used idempotency
            /// key started: nothing is written then.
            async fn begin_roll_call(
                &self,
                new: &$crate::rollcall::NewRollCall,
                recipients: usize,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<
                Result<(sqlx::Transaction<'static, $db>, i64), $crate::rollcall::RollCall>,
            > {
                use super::shared::{self, corrupt};
                use sqlx::Row;
                if let Some(key) = &new.idempotency_key {
                    if let Some(existing) = self.roll_call_by_key(key).await? {
                        return Ok(Err(existing));
                    }
                }
                let mut tx = self.pool.begin().await?;
                // A concurrent start with the same key waits here on the unique index until
                // the first commits, then inserts nothing: the first roll call is the answer.
                let inserted = sqlx::query(shared::INSERT_ROLL_CALL)
                    .bind(&new.scenario)
                    .bind(&new.title)
                    .bind(&new.message)
                    .bind(serde_json::to_string(&new.buttons).map_err(|e| corrupt("buttons", e))?)
                    .bind(new.drill)
                    .bind(new.deadline_ms)
                    .bind(&new.provider)
                    .bind(now)
                    .bind(recipients as i64)
                    .bind(&new.idempotency_key)
                    .bind(
                        serde_json::to_string(&new.shelter_buttons)
                            .map_err(|e| corrupt("buttons", e))?,
                    )
                    .bind(new.resend_after_ms)
                    .bind(serde_json::to_string(&new.asks).map_err(|e| corrupt("asks", e))?)
                    .bind(&new.dispatch_plan)
                    .bind(&new.mail_plan)
                    .fetch_optional(&mut *tx)
                    .await?;
                match inserted {
                    Some(row) => Ok(Ok((tx, row.try_get("id")?))),
                    None => {
                        tx.rollback().await?;
                        let key = new.idempotency_key.as_deref().unwrap_or_default();
                        Ok(Err(self
                            .roll_call_by_key(key)
                            .await?
                            .ok_or_else(|| corrupt("idempotency key", "vanished"))?))
                    }
                }
            }

            /// Reads roll call `id` back in `tx` and commits.
            async fn commit_roll_call(
                mut tx: sqlx::Transaction<'static, $db>,
                id: i64,
            ) -> $crate::store::StoreResult<$crate::rollcall::RollCall> {
                let row = sqlx::query(super::shared::ROLL_CALL_BY_ID)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                let rc = super::shared::roll_call_from_row(&row)?;
                tx.commit().await?;
                Ok(rc)
            }

            async fn close_once(
                &self,
                id: $crate::ids::RollCallId,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<bool> {
                use super::shared;
                let mut tx = self.pool.begin().await?;
                let changed = sqlx::query(shared::CLOSE_ROLL_CALL)
                    .bind(id.0)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed == 0 {
                    let exists = sqlx::query(shared::ROLL_CALL_EXISTS)
                        .bind(id.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if exists.is_none() {
                        return Err($crate::store::StoreError::NoSuchRollCall(id));
                    }
                    return Ok(false);
                }
                sqlx::query(&shared::fail_unsent_at_close_sql())
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&shared::carry_urgent_sql())
                    .bind(id.0)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }

            /// One try at [`Store::record_call`]; `None` when the guard refused it.
            #[allow(clippy::too_many_arguments)]
            async fn record_call_once(
                &self,
                sql: &str,
                id: $crate::ids::RollCallId,
                staff: &$crate::ids::StaffId,
                outcome: Option<$crate::rollcall::CallOutcome>,
                note: Option<&str>,
                note_json: Option<&str>,
                by: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<Option<$crate::rollcall::CallListEntry>> {
                use super::shared;
                use sqlx::Row;
                let mut tx = self.pool.begin().await?;
                let row = sqlx::query(sql)
                    .bind(id.0)
                    .bind(staff.as_str())
                    .bind(outcome.map(|o| o.as_str()))
                    .bind(now)
                    .bind(by)
                    .bind(note_json)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else { return Ok(None) };
                let marks = Self::marks(&mut *tx, id.0).await?;
                let entry = shared::entry_from_row(&row, &marks)?;
                let handle: Option<String> = row.try_get("chat_handle")?;
                // The call and the note are evidence too: they go in the same append-only log
                // as chat events.
                sqlx::query(shared::CALL_EVENT_SQL)
                    .bind(shared::call_event_id(entry.delivery_id, now, by))
                    .bind(id.0)
                    .bind(entry.delivery_id)
                    .bind(handle.unwrap_or_else(|| staff.to_string()))
                    .bind(shared::call_event_kind(outcome))
                    .bind(shared::call_event_value(outcome, note, by))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(Some(entry))
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn migrate(&self) -> $crate::store::StoreResult<()> {
                self.run_migrations().await
            }

            async fn replace_contacts(
                &self,
                contacts: &[$crate::contacts::Contact],
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<usize> {
                self.write_contacts(contacts, now).await?;
                Ok(contacts.len())
            }

            async fn contacts(&self) -> $crate::store::StoreResult<Vec<$crate::contacts::Contact>> {
                // The directory as a roll call's start reads it, every page kept.
                let (out, mut pages) = tokio::sync::mpsc::channel(1 << 16);
                Self::read_directory(self.pool.clone(), out).await;
                let mut all = Vec::new();
                while let Some(page) = super::shared::next_contacts(&mut pages).await? {
                    all.extend(page);
                }
                Ok(all)
            }

            async fn create_roll_call(
                &self,
                new: &$crate::rollcall::NewRollCall,
                recipients: &[$crate::rollcall::NewDelivery],
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<$crate::rollcall::RollCall> {
                let _w = self.write_lock().await;
                let (mut tx, id) = match self.begin_roll_call(new, recipients.len(), now).await? {
                    Ok(begun) => begun,
                    Err(existing) => return Ok(existing),
                };
                Self::insert_deliveries(&mut tx, id, new, recipients.to_vec(), now).await?;
                Self::commit_roll_call(tx, id).await
            }

            async fn start_roll_call(
                &self,
                new: &$crate::rollcall::NewRollCall,
                composer: &mut dyn $crate::rollcall::DeliveryComposer,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<Option<$crate::rollcall::RollCall>> {
                let _w = self.write_lock().await;
                // Each page is read (on a connection of its own) and parsed while the page
                // before it is written. A pool too small to spare a connection for the reader
                // beside the transaction and everyone else has the directory read first.
                let ahead = self.pool.options().get_max_connections() < 3;
                let (out, mut pages) = tokio::sync::mpsc::channel(if ahead { 1 << 16 } else { 1 });
                let reader = Self::read_directory(self.pool.clone(), out);
                let reader = if ahead {
                    reader.await;
                    None
                } else {
                    Some(reader)
                };
                let (mut tx, id) = match self.begin_roll_call(new, 0, now).await? {
                    Ok(begun) => begun,
                    Err(existing) => return Ok(Some(existing)),
                };
                if let Some(reader) = reader {
                    tokio::spawn(reader);
                }
                // Each page's rows are made while the rows before them are written.
                let mut written = 0usize;
                let mut next = super::shared::next_page(&mut pages, composer).await?;
                while let Some(rows) = next.take() {
                    written += rows.len();
                    let (done, made) = futures::join!(
                        Self::insert_deliveries(&mut tx, id, new, rows, now),
                        super::shared::next_page(&mut pages, composer)
                    );
                    done?;
                    next = made?;
                }
                let Some(composed) = composer.finish() else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                sqlx::query(
                    "UPDATE roll_calls SET recipients = $2, dispatch_plan = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(written as i64)
                .bind(&composed.dispatch_plan)
                .execute(&mut *tx)
                .await?;
                Self::commit_roll_call(tx, id).await.map(Some)
            }

            async fn set_dispatch_plan(
                &self,
                id: $crate::ids::RollCallId,
                plan: &str,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query("UPDATE roll_calls SET dispatch_plan = $2 WHERE id = $1")
                    .bind(id.0)
                    .bind(plan)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn roll_call(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Option<$crate::rollcall::RollCall>> {
                let row = sqlx::query(super::shared::ROLL_CALL_BY_ID)
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map(super::shared::roll_call_from_row)
                    .transpose()
            }

            async fn roll_calls(
                &self,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::RollCall>> {
                let rows = sqlx::query(super::shared::ROLL_CALLS)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(super::shared::roll_call_from_row).collect()
            }

            async fn close_roll_call(
                &self,
                id: $crate::ids::RollCallId,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<bool> {
                let _w = self.write_lock().await;
                self.retrying(|| self.close_once(id, now)).await
            }

            async fn progress(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<$crate::rollcall::Progress> {
                use super::shared;
                use sqlx::Row;
                let mut p = $crate::rollcall::Progress::default();
                // One snapshot for the three reads: counts read before an escalation and the
                // next deadline after it would show people sent, none escalated and no
                // deadline left.
                let mut tx = self.pool.begin().await?;
                if matches!($dialect, super::shared::Dialect::Postgres) {
                    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .execute(&mut *tx)
                        .await?;
                }
                let rows = sqlx::query(&shared::progress_sql())
                    .bind(id.0)
                    .fetch_all(&mut *tx)
                    .await?;
                shared::fold_progress(&rows, &mut p)?;
                for r in sqlx::query(shared::ANSWERS_SQL)
                    .bind(id.0)
                    .fetch_all(&mut *tx)
                    .await?
                {
                    p.answers.insert(r.try_get(0)?, r.try_get::<i64, _>(1)?);
                }
                let times = sqlx::query(&shared::times_sql())
                    .bind(id.0)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.rollback().await?;
                p.last_sent_at = times.try_get("last_sent")?;
                p.next_deadline_at = times.try_get("next_dl")?;
                Ok(p)
            }

            async fn claim_due_deliveries(
                &self,
                provider: &str,
                now: $crate::clock::Millis,
                lease: std::time::Duration,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::ClaimedDelivery>> {
                self.claim_rows(
                    super::shared::claim_due_sql($dialect),
                    provider,
                    now,
                    lease,
                    limit,
                )
                .await
            }

            async fn record_send_results(
                &self,
                results: &[$crate::rollcall::SendResult],
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                self.record_sends(results, now).await
            }

            async fn next_due_attempt(
                &self,
                provider: &str,
            ) -> $crate::store::StoreResult<Option<$crate::clock::Millis>> {
                use sqlx::Row;
                let row = sqlx::query(super::shared::next_due_sql())
                    .bind(provider)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(row.try_get("t")?)
            }

            async fn apply_events(
                &self,
                provider: &str,
                events: &[$crate::providers::InboundEvent],
                cursor: Option<&str>,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<$crate::store::ApplySummary> {
                use super::shared;
                let _w = self.write_lock().await;
                self.retrying(|| async {
                    let mut tx = self.pool.begin().await?;
                    let summary = {
                        let mut reader = Batch(&mut tx);
                        shared::apply_batch(
                            &mut reader,
                            $dialect,
                            &self.words,
                            provider,
                            events,
                            now,
                        )
                        .await?
                    };
                    if let Some(c) = cursor {
                        sqlx::query(shared::SET_CURSOR)
                            .bind(provider)
                            .bind(c)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(summary)
                })
                .await
            }

            async fn cursor(&self, provider: &str) -> $crate::store::StoreResult<Option<String>> {
                Ok(sqlx::query_scalar(super::shared::CURSOR)
                    .bind(provider)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn events(
                &self,
                roll_call: $crate::ids::RollCallId,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::LoggedEvent>> {
                let rows = sqlx::query(super::shared::EVENTS_SQL)
                    .bind(roll_call.0)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(super::shared::event_from_row).collect()
            }

            async fn next_deadline(
                &self,
            ) -> $crate::store::StoreResult<Option<$crate::clock::Millis>> {
                let t: Option<Option<i64>> =
                    sqlx::query_scalar(&super::shared::next_deadline_sql())
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(t.flatten())
            }

            async fn chat_recipients(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ChatRecipient>> {
                use futures::TryStreamExt;
                let mut rows = sqlx::query(super::shared::CHAT_RECIPIENTS_SQL)
                    .bind(id.0)
                    .fetch(&self.pool);
                let mut out = Vec::new();
                while let Some(r) = rows.try_next().await? {
                    out.push(super::shared::chat_recipient_from_row(&r)?);
                }
                out.sort_unstable_by($crate::store::ChatRecipient::follow_up_order);
                Ok(out)
            }

            async fn escalate_due(
                &self,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<u64> {
                let _w = self.write_lock().await;
                // Again if PostgreSQL chose this pass as a deadlock's victim (it waits on
                // roll calls a batch holds): it was rolled back whole.
                self.retrying(|| async {
                    let mut tx = self.pool.begin().await?;
                    if let Some(hold) = $dialect.hold_marks_sql() {
                        sqlx::query(hold).fetch_all(&mut *tx).await?;
                    }
                    let n: i64 = sqlx::query_scalar(&super::shared::count_escalating_sql())
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                    sqlx::query(&super::shared::escalate_due_sql())
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(n as u64)
                })
                .await
            }

            async fn call_list(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::CallListEntry>> {
                use futures::TryStreamExt;
                if self.roll_call(id).await?.is_none() {
                    return Err($crate::store::StoreError::NoSuchRollCall(id));
                }
                // The marks first, and the list as of the latest of them: each entry escalated
                // by the deadline has its mark among these.
                let marks = Self::marks(&self.pool, id.0).await?;
                let sql = super::shared::call_list_sql();
                let mut rows = sqlx::query(&sql)
                    .bind(id.0)
                    .bind(marks.latest())
                    .fetch(&self.pool);
                // Converted row by row: the list can be 100,000 long, and holding every raw
                // row as well as every entry would double the memory it takes.
                let mut out = Vec::new();
                while let Some(row) = rows.try_next().await? {
                    out.push(super::shared::entry_from_row(&row, &marks)?);
                }
                out.sort_unstable_by($crate::rollcall::CallListEntry::call_order);
                Ok(out)
            }

            async fn entry(
                &self,
                id: $crate::ids::RollCallId,
                staff: &$crate::ids::StaffId,
            ) -> $crate::store::StoreResult<Option<$crate::rollcall::CallListEntry>> {
                let row = sqlx::query(&super::shared::entry_sql())
                    .bind(id.0)
                    .bind(staff.as_str())
                    .fetch_optional(&self.pool)
                    .await?;
                let marks = Self::marks(&self.pool, id.0).await?;
                row.as_ref()
                    .map(|r| super::shared::entry_from_row(r, &marks))
                    .transpose()
            }

            async fn record_call(
                &self,
                id: $crate::ids::RollCallId,
                staff: &$crate::ids::StaffId,
                outcome: Option<$crate::rollcall::CallOutcome>,
                note: Option<&str>,
                by: &str,
                now: $crate::clock::Millis,
                after_close: bool,
            ) -> $crate::store::StoreResult<$crate::rollcall::CallListEntry> {
                let note_json = super::shared::note_json(note, by, now)?;
                let sql = super::shared::record_call_sql($dialect, outcome.is_some(), after_close);
                let found = {
                    let _w = self.write_lock().await;
                    self.retrying(|| {
                        self.record_call_once(
                            &sql,
                            id,
                            staff,
                            outcome,
                            note,
                            note_json.as_deref(),
                            by,
                            now,
                        )
                    })
                    .await?
                };
                match found {
                    Some(entry) => Ok(entry),
                    None => Err($crate::store::refused_outcome(self, id, staff, by, now).await),
                }
            }

            async fn answered(
                &self,
                id: $crate::ids::RollCallId,
                level: $crate::answers::AnswerLevel,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::CallListEntry>> {
                let rows = sqlx::query(&super::shared::answered_sql())
                    .bind(id.0)
                    .bind(level.rank())
                    .fetch_all(&self.pool)
                    .await?;
                let marks = Self::marks(&self.pool, id.0).await?;
                rows.iter()
                    .map(|r| super::shared::entry_from_row(r, &marks))
                    .collect()
            }

            async fn recipients(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::Recipient>> {
                if self.roll_call(id).await?.is_none() {
                    return Err($crate::store::StoreError::NoSuchRollCall(id));
                }
                let rows = sqlx::query(super::shared::RECIPIENTS_SQL)
                    .bind(id.0)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(super::shared::recipient_from_row).collect()
            }

            async fn late_answers(
                &self,
                open_only: bool,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::LateAnswer>> {
                let rows = sqlx::query(super::shared::LATE_ANSWERS_SQL)
                    .bind(i64::from(open_only))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(super::shared::late_from_row).collect()
            }

            async fn close_late_answer(
                &self,
                id: i64,
                by: &str,
                note: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<bool> {
                let _w = self.write_lock().await;
                let n = sqlx::query(super::shared::CLOSE_LATE_SQL)
                    .bind(id)
                    .bind(now)
                    .bind(by)
                    .bind(note)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn urgent_open(&self) -> $crate::store::StoreResult<i64> {
                let n: i64 = sqlx::query_scalar(&super::shared::urgent_open_sql())
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n)
            }

            async fn claim_due_resends(
                &self,
                provider: &str,
                now: $crate::clock::Millis,
                lease: std::time::Duration,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::rollcall::ClaimedDelivery>> {
                self.claim_rows(
                    &super::shared::claim_resends_sql($dialect),
                    provider,
                    now,
                    lease,
                    limit,
                )
                .await
            }

            async fn record_resends(
                &self,
                results: &[$crate::store::ResendResult],
            ) -> $crate::store::StoreResult<()> {
                let rows = super::shared::resend_rows(results);
                if rows.is_empty() {
                    return Ok(());
                }
                let sql = super::shared::record_resends_sql($dialect);
                let _w = self.write_lock().await;
                self.retrying(|| async {
                    sqlx::query(&sql).bind(&rows).execute(&self.pool).await?;
                    Ok(())
                })
                .await
            }

            async fn next_resend(
                &self,
                provider: &str,
            ) -> $crate::store::StoreResult<Option<$crate::clock::Millis>> {
                let t: Option<Option<i64>> = sqlx::query_scalar(&super::shared::next_resend_sql($dialect))
                    .bind(provider)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(t.flatten())
            }

            async fn claim_next_call(
                &self,
                id: $crate::ids::RollCallId,
                caller: &str,
                now: $crate::clock::Millis,
                hold: std::time::Duration,
            ) -> $crate::store::StoreResult<Option<$crate::rollcall::CallListEntry>> {
                let _w = self.write_lock().await;
                let row = sqlx::query(&super::shared::claim_next_call_sql($dialect))
                    .bind(id.0)
                    .bind(caller)
                    .bind(now + hold.as_millis() as i64)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                let marks = Self::marks(&self.pool, id.0).await?;
                row.as_ref()
                    .map(|r| super::shared::entry_from_row(r, &marks))
                    .transpose()
            }

            async fn release_call(
                &self,
                id: $crate::ids::RollCallId,
                staff: &$crate::ids::StaffId,
                caller: &str,
            ) -> $crate::store::StoreResult<bool> {
                let _w = self.write_lock().await;
                let n = sqlx::query(super::shared::RELEASE_CALL_SQL)
                    .bind(id.0)
                    .bind(staff.as_str())
                    .bind(caller)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn provider_state(
                &self,
                provider: &str,
                key: &str,
            ) -> $crate::store::StoreResult<Option<String>> {
                Ok(sqlx::query_scalar(super::shared::PROVIDER_STATE_SQL)
                    .bind(provider)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn set_provider_state(
                &self,
                provider: &str,
                key: &str,
                value: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(super::shared::SET_PROVIDER_STATE_SQL)
                    .bind(provider)
                    .bind(key)
                    .bind(value)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn broadcast_done(
                &self,
                roll_call: $crate::ids::RollCallId,
                provider: &str,
                group: Option<&str>,
            ) -> $crate::store::StoreResult<Option<$crate::store::Broadcast>> {
                let row: Option<(i64, Option<String>)> =
                    sqlx::query_as(super::shared::BROADCAST_SQL)
                        .bind(roll_call.0)
                        .bind(provider)
                        .bind(super::shared::group_key(group))
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(|(posted_at, post_id)| $crate::store::Broadcast { posted_at, post_id }))
            }

            async fn record_broadcast(
                &self,
                roll_call: $crate::ids::RollCallId,
                provider: &str,
                group: Option<&str>,
                done: &$crate::store::Broadcast,
            ) -> $crate::store::StoreResult<bool> {
                let _w = self.write_lock().await;
                let n = sqlx::query(super::shared::RECORD_BROADCAST_SQL)
                    .bind(roll_call.0)
                    .bind(provider)
                    .bind(super::shared::group_key(group))
                    .bind(done.posted_at)
                    .bind(done.post_id.as_deref())
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn matrix_room(
                &self,
                user: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::MatrixRoom>> {
                let row: Option<(Option<String>, Option<i64>, Option<String>)> =
                    sqlx::query_as(super::shared::MATRIX_ROOM_SQL)
                        .bind(user)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.map(
                    |(room_id, left_at, encrypted_room)| $crate::store::MatrixRoom {
                        room_id,
                        left_at,
                        encrypted_room,
                    },
                ))
            }

            async fn set_matrix_room(
                &self,
                user: &str,
                room: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(super::shared::SET_MATRIX_ROOM_SQL)
                    .bind(user)
                    .bind(room)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn set_matrix_left(
                &self,
                user: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(super::shared::SET_MATRIX_LEFT_SQL)
                    .bind(user)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn matrix_encrypted_rooms(
                &self,
            ) -> $crate::store::StoreResult<Vec<(String, String)>> {
                Ok(sqlx::query_as(super::shared::MATRIX_ENCRYPTED_SQL)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn replace_matrix_encrypted_rooms(
                &self,
                rooms: &[(String, String)],
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                self.retrying(|| async {
                    let mut tx = self.pool.begin().await?;
                    sqlx::query(super::shared::CLEAR_MATRIX_ENCRYPTED_SQL)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    for (user, room) in rooms {
                        sqlx::query(super::shared::SET_MATRIX_ENCRYPTED_SQL)
                            .bind(user)
                            .bind(room)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                })
                .await
            }

            async fn add_matrix_encrypted_room(
                &self,
                user: &str,
                room: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(super::shared::SET_MATRIX_ENCRYPTED_SQL)
                    .bind(user)
                    .bind(room)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn matrix_check(
                &self,
                event_id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::MatrixCheck>> {
                let row = sqlx::query(&super::shared::matrix_check_sql())
                    .bind(event_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map(super::shared::matrix_check_from_row)
                    .transpose()
            }

            async fn newest_matrix_check(
                &self,
                room: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::MatrixCheck>> {
                let row = sqlx::query(&super::shared::newest_matrix_check_sql())
                    .bind(room)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref()
                    .map(super::shared::matrix_check_from_row)
                    .transpose()
            }

            async fn record_matrix_check(
                &self,
                check: &$crate::store::MatrixCheck,
            ) -> $crate::store::StoreResult<bool> {
                let values = serde_json::to_string(&check.values)
                    .map_err(|e| super::shared::corrupt("a check's answer values", e))?;
                let _w = self.write_lock().await;
                let n = sqlx::query(&super::shared::record_matrix_check_sql())
                    .bind(&check.event_id)
                    .bind(check.room_id.as_deref())
                    .bind(check.roll_call_id)
                    .bind(check.to.as_deref())
                    .bind(values)
                    .bind(check.origin_ts)
                    .bind(check.prev.as_deref())
                    .bind(check.sent_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn set_matrix_check_ts(
                &self,
                event_id: &str,
                ts: i64,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(super::shared::SET_MATRIX_CHECK_TS_SQL)
                    .bind(event_id)
                    .bind(ts)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn try_lease(
                &self,
                name: &str,
                holder: &str,
                now: $crate::clock::Millis,
                ttl: std::time::Duration,
            ) -> $crate::store::StoreResult<bool> {
                let _w = self.write_lock().await;
                let n = sqlx::query(super::shared::TRY_LEASE_SQL)
                    .bind(name)
                    .bind(holder)
                    .bind(now + ttl.as_millis() as i64)
                    .bind(now)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn renew_claims(
                &self,
                held: &[(i64, $crate::clock::Millis)],
                until: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<Vec<i64>> {
                if held.is_empty() {
                    return Ok(Vec::new());
                }
                self.renew(held, until).await
            }

            async fn set_caught_up(
                &self,
                provider: &str,
                at: $crate::clock::Millis,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(super::shared::set_caught_up_sql($dialect))
                    .bind(provider)
                    .bind(at)
                    .bind(now)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn caught_up(
                &self,
                provider: &str,
            ) -> $crate::store::StoreResult<Option<$crate::clock::Millis>> {
                Ok(sqlx::query_scalar(super::shared::CAUGHT_UP_SQL)
                    .bind(provider)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn enqueue_mails(
                &self,
                mails: &[$crate::email::NewMail],
                now: $crate::clock::Millis,
                wall: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<u64> {
                let _w = self.write_lock().await;
                self.retrying(|| async {
                    let mut tx = self.pool.begin().await?;
                    let new = Self::enqueue_in(&mut tx, mails, now, wall).await?;
                    tx.commit().await?;
                    Ok(new)
                })
                .await
            }

            async fn decide_mails(
                &self,
                roll_call: $crate::ids::RollCallId,
                mails: &[$crate::email::NewMail],
                note: &str,
                now: $crate::clock::Millis,
                wall: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<u64> {
                let _w = self.write_lock().await;
                self.retrying(|| async {
                    let mut tx = self.pool.begin().await?;
                    let new = Self::enqueue_in(&mut tx, mails, now, wall).await?;
                    // The first decision's note stays (its "list true at").
                    sqlx::query(
                        "INSERT INTO roll_call_work (roll_call_id, mail_decided) VALUES ($1, $2) \
                         ON CONFLICT (roll_call_id) DO UPDATE SET mail_decided = \
                           COALESCE(roll_call_work.mail_decided, excluded.mail_decided)",
                    )
                    .bind(roll_call.0)
                    .bind(note)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(new)
                })
                .await
            }

            async fn mail_decided(
                &self,
                roll_call: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Option<String>> {
                self.roll_call_text(
                    "SELECT mail_decided FROM roll_call_work WHERE roll_call_id = $1",
                    roll_call,
                )
                .await
            }

            async fn button_wave(
                &self,
                roll_call: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Option<String>> {
                self.roll_call_text(
                    "SELECT button_wave FROM roll_call_work WHERE roll_call_id = $1",
                    roll_call,
                )
                .await
            }

            async fn set_button_wave(
                &self,
                roll_call: $crate::ids::RollCallId,
                state: &str,
            ) -> $crate::store::StoreResult<()> {
                let _w = self.write_lock().await;
                sqlx::query(
                    "INSERT INTO roll_call_work (roll_call_id, button_wave) VALUES ($1, $2) \
                     ON CONFLICT (roll_call_id) DO UPDATE SET button_wave = excluded.button_wave",
                )
                .bind(roll_call.0)
                .bind(state)
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn claim_mail(
                &self,
                wall: $crate::clock::Millis,
                lease_until: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<Option<$crate::email::StoredMail>> {
                let _w = self.write_lock().await;
                let row = sqlx::query(&super::shared::claim_mail_sql($dialect))
                    .bind(lease_until)
                    .bind(wall)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(super::shared::mail_from_row).transpose()
            }

            async fn finish_mail(
                &self,
                id: i64,
                lease_until: $crate::clock::Millis,
                outcome: &$crate::email::MailOutcome,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<bool> {
                let (state, next, error, sent_at) =
                    super::shared::mail_outcome_columns(outcome, now);
                let _w = self.write_lock().await;
                let n = sqlx::query(super::shared::FINISH_MAIL_SQL)
                    .bind(id)
                    .bind(lease_until)
                    .bind(state)
                    .bind(next)
                    .bind(error)
                    .bind(sent_at)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn mails(
                &self,
                roll_call: Option<$crate::ids::RollCallId>,
            ) -> $crate::store::StoreResult<Vec<$crate::email::StoredMail>> {
                let rows = sqlx::query(&super::shared::mails_sql())
                    .bind(roll_call.map(|r| r.0))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(super::shared::mail_from_row).collect()
            }

            async fn mail_by_key(
                &self,
                key: &str,
            ) -> $crate::store::StoreResult<Option<$crate::email::StoredMail>> {
                let row = sqlx::query(&super::shared::mail_by_key_sql())
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(super::shared::mail_from_row).transpose()
            }

            async fn next_mail_due(
                &self,
            ) -> $crate::store::StoreResult<Option<$crate::clock::Millis>> {
                Ok(
                    sqlx::query_scalar(super::shared::next_mail_due_sql($dialect))
                        .fetch_one(&self.pool)
                        .await?,
                )
            }

            async fn lease(
                &self,
                name: &str,
            ) -> $crate::store::StoreResult<Option<(String, $crate::clock::Millis)>> {
                Ok(sqlx::query_as(super::shared::LEASE_SQL)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            async fn take_lease(
                &self,
                name: &str,
                from: &str,
                to: &str,
                now: $crate::clock::Millis,
                ttl: std::time::Duration,
            ) -> $crate::store::StoreResult<bool> {
                let _w = self.write_lock().await;
                let n = sqlx::query(super::shared::TAKE_LEASE_SQL)
                    .bind(name)
                    .bind(from)
                    .bind(to)
                    .bind(now + ttl.as_millis() as i64)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                Ok(n > 0)
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                self.check().await
            }

            async fn jma_telegram_seen(
                &self,
                scope: &str,
                key: &str,
            ) -> $crate::store::StoreResult<Option<String>> {
                self.q_jma_telegram_seen(scope, key).await
            }

            async fn jma_events(
                &self,
                scope: &str,
                rule: &str,
                keys: &[String],
            ) -> $crate::store::StoreResult<Vec<$crate::jma::decide::EventState>> {
                self.q_jma_events(scope, rule, keys).await
            }

            async fn jma_last_start(
                &self,
                scope: &str,
                rule: &str,
                real_only: bool,
            ) -> $crate::store::StoreResult<Option<$crate::jma::decide::EventState>> {
                self.q_jma_last_start(scope, rule, real_only).await
            }

            async fn jma_record(
                &self,
                record: &$crate::jma::JmaRecord,
                updates: &[$crate::jma::decide::EventState],
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<Option<i64>> {
                self.q_jma_record(record, updates, now).await
            }

            async fn jma_log(
                &self,
                scope: Option<&str>,
                roll_call: Option<$crate::ids::RollCallId>,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::jma::JmaRecord>> {
                self.q_jma_log(scope, roll_call, limit).await
            }

            async fn jma_fetched(&self, url: &str) -> $crate::store::StoreResult<bool> {
                self.q_jma_fetched(url).await
            }

            async fn jma_mark_fetched(
                &self,
                url: &str,
                now: $crate::clock::Millis,
            ) -> $crate::store::StoreResult<()> {
                self.q_jma_mark_fetched(url, now).await
            }

            async fn notified_staff(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::ids::StaffId>> {
                self.q_notified_staff(id).await
            }

            async fn drill_rows(
                &self,
                id: $crate::ids::RollCallId,
            ) -> $crate::store::StoreResult<Vec<$crate::drills::DeliveryTimes>> {
                self.q_drill_rows(id).await
            }
        }

        super::jma_sql::jma_queries!($store);
    };
}

pub(super) use store_impl;
