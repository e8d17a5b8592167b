//! The CLI at a terminal and in pipes: a real roll call is confirmed first (through a real
//! pseudo-terminal, made by util-linux `script`), a closed pipe ends a command quietly,
//! colour codes appear only on a terminal without `NO_COLOR`, and `anpi serve` says what is
//! wrong once rather than at every retry.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::*;

fn anpi_bin() -> &'static str {
    env!("CARGO_BIN_EXE_anpi")
}

/// Runs `anpi ARGS` on a pseudo-terminal, typing `input`; the terminal's output comes back
/// in `stdout` (with `\r\n` line ends).
fn in_terminal(args: &[&str], input: &str, env: &[(&str, &str)], unset: &[&str]) -> Output {
    let mut words = vec![anpi_bin()];
    words.extend_from_slice(args);
    let line = shell_words::join(words);
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in unset {
        cmd.env_remove(k);
    }
    let mut child = cmd
        .spawn()
        .expect("util-linux `script` runs (it makes the pseudo-terminal; Debian: bsdutils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_roll_call_from_a_terminal_is_confirmed_first() {
    let app = spawn_app().await;
    let state = tempfile::tempdir().unwrap();
    let url = app.base_url.clone();
    let state_dir = state.path().display().to_string();
    let run = move |args: Vec<&'static str>, input: &'static str| {
        let (url, state_dir) = (url.clone(), state_dir.clone());
        tokio::task::spawn_blocking(move || {
            in_terminal(
                &args,
                input,
                &[
                    ("ANPI_URL", &url),
                    ("ANPI_TOKEN", HQ_TOKEN),
                    ("ANPI_STATE_DIR", &state_dir),
                ],
                &[],
            )
        })
    };
    let start = vec!["rollcall", "start", "--scenario", "earthquake"];

    // "no" (or anything but yes) sends nothing, after showing who, how long and what.
    let out = run(start.clone(), "no\n").await.unwrap();
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("This is a REAL roll call"), "{shown}");
    assert!(shown.contains("宛先 / to: 50 人"), "{shown}");
    assert!(shown.contains("all sent in"), "{shown}");
    assert!(
        shown.contains("市内で強い地震がありました"),
        "the message itself: {shown}"
    );
    assert!(shown.contains("cancelled: nothing was sent"), "{shown}");
    assert!(app.hq.list().await.unwrap().is_empty());

    // "yes" starts it.
    let out = run(start.clone(), "yes\n").await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("roll call #1 started"),
        "{}",
        text(&out)
    );

    // --yes and a drill start without the question.
    let mut yes = start.clone();
    yes.push("--yes");
    let out = run(yes, "").await.unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Type yes"), "{}", text(&out));
    let out = run(vec!["rollcall", "start", "earthquake", "--drill"], "")
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("Type yes"), "{}", text(&out));
    assert_eq!(app.hq.list().await.unwrap().len(), 3);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_the_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let app = spawn_app().await;
    app.start(&scenario()).await;
    let url = app.base_url.clone();
    let out = tokio::task::spawn_blocking(move || {
        // The reading end is gone before anpi writes a byte: every write meets a broken pipe,
        // as with `anpi rollcall status 1 | head -0`.
        let (write_end, read_end) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(read_end);
        Command::new(anpi_bin())
            .args(["rollcall", "status", "1"])
            .env("ANPI_URL", url)
            .env("ANPI_TOKEN", HQ_TOKEN)
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(write_end)))
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "nothing on stderr: {err}");
    assert!(
        out.status.success() || out.status.signal() == Some(13),
        "ends as a Unix tool does on SIGPIPE, not with a panic: {:?}",
        out.status
    );
    app.shutdown().await;
}

#[test]
fn logs_are_coloured_only_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();
    let db = |n: &str| format!("sqlite://{}", dir.path().join(n).display());
    // `RUST_LOG=debug anpi migrate` logs the database's statements, then exits.
    let args = |n: &str| vec!["migrate".to_string(), "--database".to_string(), db(n)];
    let esc = |o: &Output| o.stdout.contains(&0x1b) || o.stderr.contains(&0x1b);

    let a = args("a.db");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let on_terminal = in_terminal(&a, "", &[("RUST_LOG", "debug")], &["NO_COLOR"]);
    assert!(on_terminal.status.success(), "{}", text(&on_terminal));
    assert!(
        text(&on_terminal).contains("DEBUG"),
        "{}",
        text(&on_terminal)
    );
    assert!(esc(&on_terminal), "a terminal gets colour");

    let b = args("b.db");
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let no_color = in_terminal(&b, "", &[("RUST_LOG", "debug"), ("NO_COLOR", "1")], &[]);
    assert!(text(&no_color).contains("DEBUG"), "{}", text(&no_color));
    assert!(!esc(&no_color), "NO_COLOR: {}", text(&no_color));

    let to_file = Command::new(anpi_bin())
        .args(args("c.db"))
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(text(&to_file).contains("DEBUG"), "{}", text(&to_file));
    assert!(!esc(&to_file), "a pipe or file: {}", text(&to_file));
}

#[test]
fn serve_without_tokens_says_once_that_no_one_can_get_in_and_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sim_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let config = dir.path().join("anpi.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n\
             [providers.simulator]\nurl = \"{sim_url}\"\ntoken = \"t\"\npoll_wait = \"50ms\"\n",
            dir.path().join("anpi.db").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("anpi.log");
    let mut child = Command::new(anpi_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info,anpi=debug")
        .env_remove("ANPI_CONFIG")
        .env_remove("ANPI_API__HQ_TOKENS")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Debug level shows every retry of the unreachable chat feed; wait for several.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("event feed failed").count() >= 4 || std::time::Instant::now() > end {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    crate::crash::kill(&mut child);
    assert!(
        text.matches("event feed failed").count() >= 4,
        "the feed kept failing: {text}"
    );
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("no one can use the API"))
            .count(),
        1,
        "{text}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("ANPI_API__HQ_TOKENS")),
        "{text}"
    );
    assert_eq!(
        warnings
            .iter()
            .filter(|l| l.contains("event feed failed"))
            .count(),
        1,
        "a failing feed is said once, not at every retry: {text}"
    );
}
