//! Counters for `/metrics`, in Prometheus text format. Delivery counts by state are read from
//! the store when scraped (the database is the truth); this module keeps only what the
//! database does not: send results and latency per provider, callback refusals, store errors.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::providers::{ProviderError, Sent};

/// The `# HELP` and `# TYPE` lines of one metric.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Values read from the store at each scrape.
#[derive(Debug, Default)]
pub struct Gauges {
    /// (open|closed, drill) -> roll calls.
    pub roll_calls: BTreeMap<(&'static str, bool), i64>,
    /// Deliveries of open roll calls by state.
    pub deliveries: BTreeMap<&'static str, i64>,
    /// Call-list figures of open roll calls.
    pub call_list: BTreeMap<&'static str, i64>,
    /// Urgent answers HQ has not closed: open roll calls' and late ones.
    pub urgent_open: i64,
    /// The same two for open drills, kept apart from real roll calls.
    pub drill_deliveries: BTreeMap<&'static str, i64>,
    pub drill_call_list: BTreeMap<&'static str, i64>,
    /// JMA feeds: name, whether it is read fine, seconds since the last good read.
    pub jma_feeds: Vec<(String, bool, Option<f64>)>,
}

/// Upper bounds (seconds) of the send latency histogram.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
struct ProviderStats {
    results: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    providers: Mutex<BTreeMap<String, ProviderStats>>,
    callback_rejections: Mutex<BTreeMap<String, u64>>,
    store_errors: AtomicU64,
    events_applied: AtomicU64,
    emails_sent: AtomicU64,
    emails_failed: AtomicU64,
    /// Re-sends (`resend_after`) by result: sent, retry, failed.
    resends: Mutex<BTreeMap<&'static str, u64>>,
    /// JMA telegram decisions by action.
    jma_decisions: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn observe_send(&self, provider: &str, res: &Result<Sent, ProviderError>, took: Duration) {
        let result = match res {
            Ok(_) => "sent",
            Err(ProviderError::Retryable { .. }) => "retryable",
            Err(ProviderError::RateLimited { .. }) => "rate_limited",
            Err(ProviderError::Permanent(_)) => "permanent",
            Err(ProviderError::Unauthorized { .. }) => "unauthorized",
        };
        let mut map = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(provider) {
            map.insert(provider.to_string(), ProviderStats::default());
        }
        let Some(st) = map.get_mut(provider) else {
            return;
        };
        *st.results.entry(result).or_default() += 1;
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                st.buckets[i] += 1;
            }
        }
        st.count += 1;
        st.sum += secs;
    }

    pub fn callback_rejected(&self, reason: &str) {
        let mut map = self
            .callback_rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *map.entry(reason.to_string()).or_default() += 1;
    }

    pub fn store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// One e-mail delivered to the SMTP server (`ok`) or given up after its retries.
    pub fn email(&self, ok: bool) {
        let c = if ok {
            &self.emails_sent
        } else {
            &self.emails_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// One re-send finished with `result` (sent, retry, failed).
    pub fn resend(&self, result: &'static str) {
        let mut map = self.resends.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(result).or_default() += 1;
    }

    /// One rule's decision on a JMA telegram (start, upgrade, notify, retract, ignore).
    pub fn jma_decision(&self, action: &'static str) {
        let mut m = self.jma_decisions.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(action).or_default() += 1;
    }

    pub fn events_applied(&self, n: u64) {
        self.events_applied.fetch_add(n, Ordering::Relaxed);
    }

    /// Renders the counters, plus the given gauges read from the store.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let open: i64 = g
            .roll_calls
            .iter()
            .filter(|((state, _), _)| *state == "open")
            .map(|(_, n)| n)
            .sum();
        header(
            &mut out,
            "anpi_roll_calls_open",
            "gauge",
            "Roll calls not yet closed.",
        );
        let _ = writeln!(out, "anpi_roll_calls_open {open}");
        header(
            &mut out,
            "anpi_roll_calls",
            "gauge",
            "Roll calls ever started, by state and drill flag.",
        );
        for ((state, drill), n) in &g.roll_calls {
            let _ = writeln!(
                out,
                "anpi_roll_calls{{state=\"{state}\",drill=\"{drill}\"}} {n}"
            );
        }
        header(
            &mut out,
            "anpi_deliveries",
            "gauge",
            "Deliveries of open roll calls by state.",
        );
        for (state, n) in &g.deliveries {
            let _ = writeln!(out, "anpi_deliveries{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "anpi_call_list",
            "gauge",
            "People escalated in open roll calls, by what became of them.",
        );
        for (status, n) in &g.call_list {
            let _ = writeln!(out, "anpi_call_list{{status=\"{status}\"}} {n}");
        }
        header(
            &mut out,
            "anpi_urgent_open",
            "gauge",
            "Urgent answers (injured, needs help, a reply asking for help) HQ has not closed yet, \
             including those that came after their roll call closed.",
        );
        let _ = writeln!(out, "anpi_urgent_open {}", g.urgent_open);
        header(
            &mut out,
            "anpi_drill_deliveries",
            "gauge",
            "Deliveries of open drills by state (not in anpi_deliveries).",
        );
        for (state, n) in &g.drill_deliveries {
            let _ = writeln!(out, "anpi_drill_deliveries{{state=\"{state}\"}} {n}");
        }
        header(
            &mut out,
            "anpi_drill_call_list",
            "gauge",
            "People escalated in open drills (not in anpi_call_list).",
        );
        for (status, n) in &g.drill_call_list {
            let _ = writeln!(out, "anpi_drill_call_list{{status=\"{status}\"}} {n}");
        }
        if !g.jma_feeds.is_empty() {
            header(
                &mut out,
                "anpi_jma_feed_up",
                "gauge",
                "1 while the JMA feed is read fine, 0 when stale or failing.",
            );
            for (feed, up, _) in &g.jma_feeds {
                let _ = writeln!(out, "anpi_jma_feed_up{{feed=\"{feed}\"}} {}", u8::from(*up));
            }
            header(
                &mut out,
                "anpi_jma_feed_age_seconds",
                "gauge",
                "Seconds since the JMA feed was last read successfully.",
            );
            for (feed, _, age) in &g.jma_feeds {
                if let Some(a) = age {
                    let _ = writeln!(out, "anpi_jma_feed_age_seconds{{feed=\"{feed}\"}} {a:.0}");
                }
            }
        }
        header(
            &mut out,
            "anpi_jma_decisions_total",
            "counter",
            "Decisions on JMA telegrams by action (per rule), in this process.",
        );
        for (a, n) in self
            .jma_decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "anpi_jma_decisions_total{{action=\"{a}\"}} {n}");
        }
        let providers = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        header(
            &mut out,
            "anpi_sends_total",
            "counter",
            "Send attempts by provider and result.",
        );
        for (p, st) in providers.iter() {
            for (r, n) in &st.results {
                let _ = writeln!(
                    out,
                    "anpi_sends_total{{provider=\"{p}\",result=\"{r}\"}} {n}"
                );
            }
        }
        header(
            &mut out,
            "anpi_send_seconds",
            "histogram",
            "Send latency by provider.",
        );
        for (p, st) in providers.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "anpi_send_seconds_bucket{{provider=\"{p}\",le=\"{b}\"}} {}",
                    st.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "anpi_send_seconds_bucket{{provider=\"{p}\",le=\"+Inf\"}} {}",
                st.count
            );
            let _ = writeln!(out, "anpi_send_seconds_sum{{provider=\"{p}\"}} {}", st.sum);
            let _ = writeln!(
                out,
                "anpi_send_seconds_count{{provider=\"{p}\"}} {}",
                st.count
            );
        }
        drop(providers);
        header(
            &mut out,
            "anpi_callback_rejections_total",
            "counter",
            "Refused provider callbacks by reason.",
        );
        for (r, n) in self
            .callback_rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "anpi_callback_rejections_total{{reason=\"{r}\"}} {n}");
        }
        header(
            &mut out,
            "anpi_store_errors_total",
            "counter",
            "Database operations that failed and were retried.",
        );
        let _ = writeln!(
            out,
            "anpi_store_errors_total {}",
            self.store_errors.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "anpi_events_applied_total",
            "counter",
            "Inbound chat events logged.",
        );
        let _ = writeln!(
            out,
            "anpi_events_applied_total {}",
            self.events_applied.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "anpi_emails_total",
            "counter",
            "Deadline e-mails by result (failed = given up after retries).",
        );
        for (r, c) in [("sent", &self.emails_sent), ("failed", &self.emails_failed)] {
            let _ = writeln!(
                out,
                "anpi_emails_total{{result=\"{r}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "anpi_resends_total",
            "counter",
            "Messages sent a second time to the unread (resend_after), by result.",
        );
        for (r, n) in self
            .resends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(out, "anpi_resends_total{{result=\"{r}\"}} {n}");
        }
        out
    }
}
