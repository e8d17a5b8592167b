//! The HTTP rules every adapter shares: the shape of its client, what a request that got no
//! answer is, how long a refused answer asks anpi to wait, which refusals mean "not now"
//! rather than "never", and how much of an error body a reason quotes. What a platform's own
//! error body means (an unknown user, a refused token) stays in its adapter.
//!
//! Invariant: one condition is one [`ProviderError`] variant in every adapter: no answer at
//! all is `Retryable` (`Permanent` only when the request could not even be built); a 429 is
//! `RateLimited` for the wait the answer gives (or the platform's default); a 5xx or 408 is
//! `Retryable`, not before the answer's `Retry-After`.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, DATE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;

use super::ProviderError;

/// How much of an unexpected error body goes into a reason.
pub const EXCERPT_CHARS: usize = 200;

/// One HTTP client for an adapter's whole life: a keep-alive pool of `idle` connections (as
/// many as it has requests in flight, so the hot path never opens one), `timeout` per request.
pub fn client(idle: usize, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(idle)
        .timeout(timeout)
        .tcp_nodelay(true)
        .build()
        // Fails only when the TLS backend cannot start: nothing anpi could run without.
        .expect("building the HTTP client")
}

/// The platform at the other end, as an adapter's reasons name it, and how it paces anpi.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// As a subject: "LINE WORKS", "homeserver", "simulator".
    pub name: &'static str,
    /// As an object: "LINE WORKS", "the homeserver", "the simulator".
    pub the: &'static str,
    /// A header the platform puts on a 429 with the seconds until its window resets, read
    /// before `Retry-After` (LINE WORKS: `rateLimit-reset`).
    pub reset_header: Option<&'static str>,
    /// How long a 429 lasts when the answer does not say.
    pub default_reset: Duration,
}

impl Platform {
    /// A request that got no HTTP answer: worth trying again (timeout, refused connection,
    /// broken stream), unless it could not be built at all (a URL or header anpi made wrong).
    pub fn transport_error(&self, e: reqwest::Error) -> ProviderError {
        if e.is_builder() {
            return ProviderError::Permanent(format!("{} request cannot be built: {e}", self.name));
        }
        let reason = if e.is_timeout() {
            format!("{} did not answer in time", self.name)
        } else if e.is_connect() {
            format!("cannot connect to {}: {e}", self.the)
        } else {
            format!("{} request failed: {e}", self.name)
        };
        ProviderError::Retryable {
            after: None,
            reason,
        }
    }

    /// How long a 429 lasts: the platform's own reset header, else `Retry-After`, else the
    /// platform's default.
    pub fn rate_limit_reset(&self, headers: &HeaderMap) -> Duration {
        let names: &[&str] = match self.reset_header {
            Some(name) => &[name, RETRY_AFTER.as_str()],
            None => &[RETRY_AFTER.as_str()],
        };
        wait_from(headers, names).unwrap_or(self.default_reset)
    }

    /// The refusals that mean "not now": a 429 is the platform pacing anpi
    /// ([`ProviderError::RateLimited`] for [`Self::rate_limit_reset`]); a 5xx or 408 is a
    /// passing failure ([`ProviderError::Retryable`], not before the answer's `Retry-After`).
    /// `None` for every other status, which the adapter reads from the body.
    pub fn temporary(&self, status: StatusCode, headers: &HeaderMap) -> Option<ProviderError> {
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Some(ProviderError::RateLimited {
                reset: self.rate_limit_reset(headers),
            });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Some(ProviderError::Retryable {
                after: retry_after(headers),
                reason: format!("{} answered {status}", self.name),
            });
        }
        None
    }

    /// The JSON body of an answer the platform gave as a success. One that cannot be read (cut
    /// off, or not what was asked for) is worth asking again: `what` names it for the reason.
    pub async fn read_json<T: DeserializeOwned>(
        &self,
        resp: Response,
        what: &str,
    ) -> Result<T, ProviderError> {
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ProviderError::Retryable {
            after: None,
            reason: format!("{} sent an unreadable {what}: {e}", self.name),
        })
    }

    /// A refusal the adapter has no better words for: permanent, naming the status and the
    /// start of the body.
    pub fn refused(&self, status: StatusCode, body: &str) -> ProviderError {
        ProviderError::Permanent(format!(
            "{} answered {status}: {}",
            self.name,
            excerpt(body)
        ))
    }
}

/// The answer's `Retry-After`, as a wait (see [`wait_from`]).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    wait_from(headers, &[RETRY_AFTER.as_str()])
}

/// The wait the first of `names` gives that holds one: seconds, whole or fractional ("3",
/// "2.5"), or an HTTP date ("Wed, 21 Oct 2015 07:28:00 GMT", and the two obsolete forms). A
/// date is measured from the answer's own `Date`, the server's clock against itself, so
/// neither clock skew nor anpi's clock (which the demo runs fast) bends it; an answer with a
/// date but no `Date` gives no wait it can be trusted for, and one already past is no wait.
pub fn wait_from(headers: &HeaderMap, names: &[&str]) -> Option<Duration> {
    names.iter().find_map(|name| {
        let raw = headers.get(*name)?.to_str().ok()?.trim();
        if let Ok(secs) = raw.parse::<f64>() {
            return Duration::try_from_secs_f64(secs).ok();
        }
        let at = http_date(raw)?;
        let sent = http_date(headers.get(DATE)?.to_str().ok()?.trim())?;
        Some((at - sent).to_std().unwrap_or(Duration::ZERO))
    })
}

/// An HTTP date (RFC 9110 §5.6.7): IMF-fixdate, or the obsolete RFC 850 and asctime forms a
/// recipient must also read. Always GMT.
fn http_date(s: &str) -> Option<DateTime<Utc>> {
    const FORMS: [&str; 3] = [
        "%a, %d %b %Y %H:%M:%S GMT",
        "%A, %d-%b-%y %H:%M:%S GMT",
        "%a %b %e %H:%M:%S %Y",
    ];
    FORMS
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
}

/// The start of an error body for a reason: at most [`EXCERPT_CHARS`] characters, with an
/// ellipsis when there was more.
pub fn excerpt(body: &str) -> String {
    let mut s: String = body.chars().take(EXCERPT_CHARS).collect();
    if body.chars().nth(EXCERPT_CHARS).is_some() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    const LW: Platform = Platform {
        name: "LINE WORKS",
        the: "LINE WORKS",
        reset_header: Some("ratelimit-reset"),
        default_reset: Duration::from_secs(5),
    };
    const SIM: Platform = Platform {
        name: "simulator",
        the: "the simulator",
        reset_header: None,
        default_reset: Duration::from_secs(1),
    };

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn retry_after_in_whole_and_fractional_seconds() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", " 2.5 ")])),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "0")])),
            Some(Duration::ZERO)
        );
        for bad in ["-1", "soon", "", "NaN", "inf"] {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_str(bad).unwrap());
            assert_eq!(retry_after(&h), None, "{bad:?}");
        }
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_as_an_http_date_is_measured_from_the_answers_own_date() {
        let date = ("date", "Wed, 21 Oct 2015 07:28:00 GMT");
        for later in [
            "Wed, 21 Oct 2015 07:28:30 GMT",
            "Wednesday, 21-Oct-15 07:28:30 GMT",
            "Wed Oct 21 07:28:30 2015",
        ] {
            assert_eq!(
                retry_after(&headers(&[date, ("retry-after", later)])),
                Some(Duration::from_secs(30)),
                "{later}"
            );
        }
        assert_eq!(
            retry_after(&headers(&[
                ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
                ("retry-after", "Sun Nov  6 08:49:40 1994")
            ])),
            Some(Duration::from_secs(3)),
            "asctime pads a one-digit day with a space"
        );
        // Already past: try now.
        assert_eq!(
            retry_after(&headers(&[
                date,
                ("retry-after", "Wed, 21 Oct 2015 07:27:00 GMT")
            ])),
            Some(Duration::ZERO)
        );
        // No `Date` to measure from: no wait anpi could trust.
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Wed, 21 Oct 2015 07:28:30 GMT"
            )])),
            None
        );
    }

    #[test]
    fn a_platforms_reset_header_comes_first_and_the_default_last() {
        let both = headers(&[("ratelimit-reset", "7"), ("retry-after", "2")]);
        assert_eq!(LW.rate_limit_reset(&both), Duration::from_secs(7));
        // A reset header anpi cannot read falls back to Retry-After.
        let unreadable = headers(&[("ratelimit-reset", "later"), ("retry-after", "2")]);
        assert_eq!(LW.rate_limit_reset(&unreadable), Duration::from_secs(2));
        assert_eq!(
            LW.rate_limit_reset(&HeaderMap::new()),
            Duration::from_secs(5)
        );
        // A platform without one reads only Retry-After.
        assert_eq!(SIM.rate_limit_reset(&both), Duration::from_secs(2));
        assert_eq!(
            SIM.rate_limit_reset(&HeaderMap::new()),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn only_429_5xx_and_408_are_temporary() {
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(
            SIM.temporary(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(ProviderError::RateLimited {
                reset: Duration::from_secs(3)
            })
        );
        assert_eq!(
            SIM.temporary(StatusCode::SERVICE_UNAVAILABLE, &h),
            Some(ProviderError::Retryable {
                after: Some(Duration::from_secs(3)),
                reason: "simulator answered 503 Service Unavailable".into()
            })
        );
        assert!(matches!(
            LW.temporary(StatusCode::REQUEST_TIMEOUT, &HeaderMap::new()),
            Some(ProviderError::Retryable { after: None, .. })
        ));
        for status in [
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
        ] {
            assert_eq!(LW.temporary(status, &h), None, "{status}");
        }
    }

    #[test]
    fn a_refusal_quotes_at_most_the_start_of_the_body() {
        assert_eq!(excerpt("short"), "short");
        let long = "あ".repeat(EXCERPT_CHARS + 1);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(
            excerpt(&"x".repeat(EXCERPT_CHARS)),
            "x".repeat(EXCERPT_CHARS)
        );
        assert_eq!(
            SIM.refused(StatusCode::BAD_REQUEST, "after must be a number"),
            ProviderError::Permanent(
                "simulator answered 400 Bad Request: after must be a number".into()
            )
        );
    }

    #[tokio::test]
    async fn no_answer_is_retryable_and_an_unbuildable_request_is_permanent() {
        // Connection refused: a port that was just free.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let c = client(1, Duration::from_secs(5));
        let e = c.get(&url).send().await.unwrap_err();
        match SIM.transport_error(e) {
            ProviderError::Retryable {
                after: None,
                reason,
            } => {
                assert!(
                    reason.starts_with("cannot connect to the simulator"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A server that never answers.
        let silent = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let c = client(1, Duration::from_millis(200));
        let e = c.get(&url).send().await.unwrap_err();
        assert_eq!(
            LW.transport_error(e),
            ProviderError::Retryable {
                after: None,
                reason: "LINE WORKS did not answer in time".into()
            }
        );
        drop(silent);
        // Not a URL at all.
        let e = c.get("http://[::1").send().await.unwrap_err();
        assert!(matches!(
            LW.transport_error(e),
            ProviderError::Permanent(r) if r.starts_with("LINE WORKS request cannot be built")
        ));
    }
}
