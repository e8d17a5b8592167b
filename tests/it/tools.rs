//! External tools some tests need (Chromium, chromedriver, an SMTP server from PyPI). In CI
//! (`CI=true`) a missing tool fails the test loudly; elsewhere the test is skipped with the
//! reason printed.

/// True when running in CI, where every tool must be present.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns the tool's path if it exists; otherwise panics in CI, or prints why the test is
/// skipped and returns `None`.
pub fn require(
    what: &str,
    path: Option<std::path::PathBuf>,
    how: &str,
) -> Option<std::path::PathBuf> {
    match path.filter(|p| p.exists()) {
        Some(p) => Some(p),
        None if in_ci() => panic!("{what} is missing, and CI=true requires it: {how}"),
        None => {
            eprintln!("SKIPPED: {what} is missing ({how})");
            None
        }
    }
}

/// A free port on loopback (bound, then let go for the tool to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local address")
        .port()
}

/// Polls `check` until it gives `Some`, for at most 30 s of real time.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if std::time::Instant::now() > give_up {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
