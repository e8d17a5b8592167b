#![forbid(unsafe_code)]
//! anpi (安否) — a disaster safety-check dispatch service.
//!
//! When disaster HQ starts a roll call, anpi sends one short message to every member of staff
//! and every shelter phone through the organisation's chat platform, watches read receipts and
//! answers, and when each person's deadline (5 minutes by default, counted from when their
//! message actually went out) passes unread, puts them on a phone-call list HQ works through.
//!
//! # Layout
//! Domain (what a roll call is; no I/O):
//! - [`ids`]: the identifiers that cross modules (staff id, chat id, roll call id).
//! - [`contacts`]: the contacts file (TOML, CSV in UTF-8 or Shift_JIS), phone numbers to E.164.
//! - [`scenario`]: roll-call templates: message, buttons, audience, deadline, drill flag.
//! - [`answers`]: what an answer means for HQ: levels (ok, attention, urgent), free-text
//!   words that ask for help.
//! - [`rollcall`]: roll calls, deliveries and their state machine, the action list's entries
//!   and their one order.
//! - [`calllist`]: HQ's action list (要対応) rendered for people: table, print, CSV.
//! - [`planner`]: how to reach an audience fastest within a provider's limits (board post,
//!   department rooms, 1:1), and how long it takes.
//! - [`announcement`]: HQ's instruction to all staff, sent as a roll call of one 確認 button.
//! - [`clock`]: the one source of time (real, scaled, manual).
//! - [`config`]: layered configuration and its validation.
//!
//! Workers (each a loop over the store, safe to run on several replicas):
//! - [`hq`]: what HQ does (start, status, close, call list, outcomes), for every interface.
//! - [`progress`]: roll-call progress computed once per change or short tick, shared by readers.
//! - [`dispatch`]: the outbox worker that claims and sends deliveries (1:1; board posts and
//!   department rooms in `dispatch::broadcast`, the buttons after a board post in
//!   `dispatch::follow_up`).
//! - [`receipts`]: read receipts and answers from providers into delivery state.
//! - [`escalation`]: the deadline worker that puts the unread on the call list.
//! - [`resend`]: the chat message once more to the unread (`resend_after`).
//! - [`email`]: the mail outbox: urgent answers at once, HQ's call list at each deadline (and
//!   one correction), reminders to the unconfirmed; each mail written once, sent and marked
//!   once.
//! - [`health`]: provider trouble HQ can see (degraded since when, why), mailed once.
//! - [`jma`]: roll calls started by JMA telegrams: parsing, rules, the decision, the feed
//!   watcher.
//! - [`drills`]: scheduled drills (once across replicas) and the drill report.
//! - [`singleton`]: runs the deadline timer and receipt watcher on one replica at a time.
//! - [`ratelimit`]: the per-provider token bucket.
//! - [`worker`], [`backoff`]: the shape shared by background workers, and how long one waits
//!   after the store failed (one rule for all).
//!
//! Adapters (the world outside):
//! - [`store`]: the storage trait and its backends (SQLite, PostgreSQL), schema versions.
//! - [`providers`]: the chat-provider trait and its adapters.
//! - [`simulator`]: the built-in stand-in chat server (demo, tests, benchmark).
//!
//! Interfaces:
//! - [`http`]: the JSON API, the HQ web page, live progress (SSE), `/healthz`, `/metrics`.
//! - [`metrics`]: Prometheus counters.
//! - [`cli`], [`demo`], [`bench`], [`telemetry`]: the command line and its one-process modes.
//! - [`cli_state`]: the CLI's own state (keys of unconfirmed roll-call starts, for retries).
//! - [`startup`]: builds and runs the application.

pub mod announcement;
pub mod answers;
pub mod backoff;
pub mod bench;
pub mod calllist;
pub mod cli;
pub mod cli_state;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod demo;
pub mod dispatch;
pub mod drills;
pub mod email;
pub mod escalation;
pub mod health;
pub mod hq;
pub mod http;
pub mod ids;
pub mod jma;
pub mod metrics;
pub mod planner;
pub mod progress;
pub mod providers;
pub mod ratelimit;
pub mod receipts;
pub mod resend;
pub mod rollcall;
pub mod scenario;
pub mod simulator;
pub mod singleton;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod worker;
