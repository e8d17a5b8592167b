//! No secret in any error or log line the CLI prints: every command that takes a database URL
//! is run with URLs holding a password (in the authority and in the query string) that fail
//! in every way a URL can (refused, malformed, bad port, no such database), and its whole
//! output is searched for the password.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

const PASSWORD: &str = "Pw-S3cret-41";

fn urls() -> Vec<String> {
    let mut urls = vec![
        format!("postgres://anpi:{PASSWORD}@127.0.0.1:1/anpi"),
        format!("postgres://anpi:{PASSWORD}@[bad/anpi"),
        format!("postgres://anpi:{PASSWORD}@127.0.0.1:99999/anpi"),
        format!("postgresql://127.0.0.1:1/anpi?user=anpi&password={PASSWORD}"),
        format!("postgres://anpi:{PASSWORD}@127.0.0.1:1/anpi?sslmode=bogus"),
    ];
    // A real server (CI's) refusing the database by name.
    let admin = pg_admin_url();
    if let Some((scheme, rest)) = admin.split_once("://") {
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        let host = host.split('/').next().unwrap_or(host);
        urls.push(format!(
            "{scheme}://root:{PASSWORD}@{host}/anpi_no_such_database_x"
        ));
    }
    urls
}

/// Runs anpi to the end (or, for a daemon that keeps waiting, until it has logged `until`)
/// and returns everything it printed.
fn run(args: &[String], until: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_anpi"))
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("ANPI_CONFIG")
        .env_remove("ANPI_DATABASE__URL")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let so_far = std::fs::read_to_string(&err_path).unwrap_or_default();
        if until.is_some_and(|u| so_far.contains(u)) || Instant::now() > end {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out + &std::fs::read_to_string(&err_path).unwrap_or_default()
}

#[test]
fn no_command_prints_a_database_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut runs: Vec<(String, Vec<String>, Option<&str>)> = Vec::new();
    for (i, url) in urls().into_iter().enumerate() {
        let config = dir.path().join(format!("anpi-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = {:?}\nacquire_timeout = \"1s\"\n\
                 [api]\nhq_tokens = [\"{HQ_TOKEN}\"]\n",
                url
            ),
        )
        .unwrap();
        let config = config.display().to_string();
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        runs.push((url.clone(), s(&["migrate", "--database", &url]), None));
        runs.push((url.clone(), s(&["migrate", "--config", &config]), None));
        runs.push((
            url.clone(),
            s(&["matrix", "prepare", "--config", &config]),
            None,
        ));
        runs.push((
            url.clone(),
            s(&["serve", "--config", &config]),
            Some("waiting for it"),
        ));
        runs.push((
            url.clone(),
            s(&[
                "serve",
                "--config",
                &config,
                "--database",
                &url,
                "--listen",
                "127.0.0.1:0",
            ]),
            Some("waiting for it"),
        ));
        runs.push((
            url.clone(),
            s(&["bench", "--sizes", "10", "--database", &url]),
            None,
        ));
    }
    // In parallel: each refused connection waits out its timeout.
    let outputs: Vec<(String, Vec<String>, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .iter()
            .map(|(url, args, until)| {
                scope.spawn(move || (url.clone(), args.clone(), run(args, *until)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut leaks = Vec::new();
    let mut said_nothing = Vec::new();
    for (url, args, output) in &outputs {
        if output.contains(PASSWORD) {
            let line = output
                .lines()
                .find(|l| l.contains(PASSWORD))
                .unwrap_or_default();
            leaks.push(format!("anpi {} ({url}):\n    {line}", args.join(" ")));
        }
        if output.trim().is_empty() {
            said_nothing.push(format!("anpi {}", args.join(" ")));
        }
    }
    assert!(
        leaks.is_empty(),
        "the password was printed:\n  {}",
        leaks.join("\n  ")
    );
    assert!(
        said_nothing.is_empty(),
        "failed without saying why (so the check above proves nothing): {said_nothing:?}"
    );
}
