//! Every `anpi` command written for people to type — in README.md, docs/, the example config
//! and contacts files, the scenarios and the `--help` texts — parses, and the ones that read a
//! file or talk to the daemon run successfully against a spawned app, in the order they are
//! written. A failure names the file, the line and the command.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};

use anpi::cli::Cli;
use anpi::ids::RollCallId;

use crate::support::*;

/// One command as written, and where.
#[derive(Debug, Clone)]
struct Written {
    place: String,
    text: String,
    /// The arguments after `anpi`.
    args: Vec<String>,
    /// Quoted in prose (`anpi contacts import`): it may name a command without its
    /// arguments, so missing required arguments are allowed and it is not run.
    mention: bool,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files people read commands from, in the order a newcomer meets them.
fn sources() -> Vec<PathBuf> {
    let sorted = |dir: &str, ext: &str| {
        let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        found.retain(|p| p.extension().is_some_and(|e| e == ext));
        found.sort();
        found
    };
    let mut files = vec![root().join("README.md")];
    files.extend(sorted("docs", "md"));
    files.push(root().join("anpi.example.toml"));
    files.push(root().join("contacts.example.toml"));
    files.extend(sorted("scenarios", "toml"));
    files
}

fn subcommands() -> Vec<String> {
    Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect()
}

/// Shell words of one command line, up to a comment, pipe, redirection or `&`; the part after
/// `anpi` (or `cargo run ... --`). `None` when the line does not run anpi.
fn anpi_args(line: &str) -> Option<Result<Vec<String>, String>> {
    let line = line.trim().trim_start_matches("$ ");
    let words = match shell_words::split(line) {
        Ok(w) => w,
        Err(e) => {
            return line
                .contains("anpi ")
                .then(|| Err(format!("cannot split into shell words: {e}")))
        }
    };
    let mut words: Vec<String> = words
        .into_iter()
        .take_while(|w| {
            !w.starts_with('#')
                && !matches!(
                    w.as_str(),
                    "|" | "||" | "&" | "&&" | ";" | ">" | ">>" | "2>"
                )
        })
        .collect();
    // Environment assignments before the command.
    while words.first().is_some_and(|w| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
    }) {
        words.remove(0);
    }
    let first = words.first()?.clone();
    if first == "anpi" || first.ends_with("/anpi") {
        return Some(Ok(words[1..].to_vec()));
    }
    if first == "cargo" && words.get(1).is_some_and(|w| w == "run") {
        let dash = words.iter().position(|w| w == "--")?;
        return Some(Ok(words[dash + 1..].to_vec()));
    }
    None
}

/// `[--no-board]` in a synopsis means the flag may be given: give it.
fn unbracket(args: Vec<String>) -> Vec<String> {
    args.into_iter()
        .map(|a| a.trim_matches(|c| c == '[' || c == ']').to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

/// Inline code spans that start with `anpi ` (or are `cargo run ... -- ...`).
fn spans(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("anpi ") || s.starts_with("cargo run"))
        .map(str::to_string)
        .collect()
}

fn push(
    found: &mut Vec<Written>,
    problems: &mut Vec<String>,
    place: String,
    text: &str,
    mention: bool,
) {
    match anpi_args(text) {
        Some(Ok(args)) => found.push(Written {
            place,
            text: text.trim().to_string(),
            args: unbracket(args),
            mention,
        }),
        Some(Err(e)) => problems.push(format!("{place}: `{}`: {e}", text.trim())),
        None => {}
    }
}

/// Every command in one file: code blocks of a shell language in Markdown, inline code spans,
/// and in comments of TOML files also plain `anpi <subcommand> ...` to the end of the line.
fn commands_in(path: &Path, found: &mut Vec<Written>, problems: &mut Vec<String>) {
    let name = path
        .strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string();
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let markdown = path.extension().is_some_and(|e| e == "md");
    let subs = subcommands();
    let mut fence: Option<String> = None;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let place = format!("{name}:{n}");
        if markdown && line.trim_start().starts_with("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(line.trim_start().trim_start_matches('`').trim().to_string()),
            };
            continue;
        }
        let shell_block = fence
            .as_deref()
            .is_some_and(|lang| matches!(lang, "" | "sh" | "bash" | "shell" | "console"));
        if shell_block {
            // Lines continued with a backslash form one command.
            let (start, mut joined) = pending.take().unwrap_or((n, String::new()));
            joined.push_str(line.trim_end().trim_end_matches('\\'));
            joined.push(' ');
            if line.trim_end().ends_with('\\') {
                pending = Some((start, joined));
            } else {
                push(found, problems, format!("{name}:{start}"), &joined, false);
            }
            continue;
        }
        let comment = !markdown && line.trim_start().starts_with('#');
        if markdown || comment || fence.is_some() {
            for span in spans(line) {
                push(found, problems, place.clone(), &span, true);
            }
        }
        if comment {
            // Outside backticks, after a colon: "Start it with: anpi rollcall start earthquake".
            let outside: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
            if let Some(at) = outside.find("anpi ") {
                let rest = &outside[at..];
                let sub = rest.split_whitespace().nth(1).unwrap_or_default();
                let after_colon = outside[..at].trim_end().ends_with(':');
                if after_colon && subs.iter().any(|s| s == sub) {
                    let cmd = rest.trim_end_matches(['.', ',', ';', ':', ')']);
                    push(found, problems, place, cmd, false);
                }
            }
        }
    }
}

/// Commands quoted in `--help` texts, for every subcommand.
fn commands_in_help(found: &mut Vec<Written>, problems: &mut Vec<String>) {
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        out.push((path.to_string(), cmd.render_long_help().to_string()));
        for sub in cmd.get_subcommands_mut() {
            let p = format!("{path} {}", sub.get_name());
            walk(sub, &p, out);
        }
    }
    let mut helps = Vec::new();
    let mut cmd = Cli::command();
    cmd.build();
    walk(&mut cmd, "anpi", &mut helps);
    for (path, help) in helps {
        for line in help.lines() {
            for span in spans(line) {
                push(found, problems, format!("`{path} --help`"), &span, true);
            }
        }
    }
}

/// Commands worth running here: they read a file or talk to the daemon, and finish.
fn runs_here(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
        || matches!(
            args.first().map(String::as_str),
            Some("contacts" | "rollcall" | "escalations" | "call")
        )
}

#[test]
fn the_readme_installs_anpi_before_using_it() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    commands_in(&root().join("README.md"), &mut found, &mut problems);
    let install = readme
        .lines()
        .position(|l| l.trim_start().starts_with("cargo install --path ."))
        .expect("README.md has a `cargo install --path .` line");
    let first_use = found
        .iter()
        .find(|w| w.text.starts_with("anpi "))
        .map(|w| w.place.clone())
        .expect("README.md uses anpi");
    let first_line: usize = first_use.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        install + 1 < first_line,
        "README.md:{} installs anpi, but {first_use} uses it before",
        install + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_the_docs_and_help_parses_and_runs() {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for file in sources() {
        commands_in(&file, &mut found, &mut problems);
    }
    commands_in_help(&mut found, &mut problems);
    assert!(
        found.len() >= 20,
        "only {} commands found; is the extraction broken? {found:?}",
        found.len()
    );

    // Every one parses as the binary would parse it.
    for w in &found {
        let argv = std::iter::once("anpi".to_string()).chain(w.args.iter().cloned());
        if let Err(e) = Cli::try_parse_from(argv) {
            use clap::error::ErrorKind::{
                DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
                MissingRequiredArgument, MissingSubcommand,
            };
            let named_only = w.mention
                && matches!(
                    e.kind(),
                    MissingRequiredArgument
                        | MissingSubcommand
                        | DisplayHelpOnMissingArgumentOrSubcommand
                );
            if !named_only && !matches!(e.kind(), DisplayHelp | DisplayVersion) {
                let why = e.to_string();
                let why = why.lines().next().unwrap_or_default();
                problems.push(format!("{}: `{}` does not parse: {why}", w.place, w.text));
            }
        }
    }

    // The ones that finish run against a daemon that has roll calls #1..#12, everyone on #12
    // unread past the deadline, and files named as the docs name them.
    let app = spawn_app().await;
    for _ in 0..12 {
        let rc = app.start(&scenario()).await;
        app.all_sent(rc.id).await;
    }
    app.advance(mins(6));
    app.wait_for(RollCallId(12), "escalation", |p| p.overall.to_call == 50)
        .await;
    let dir = tempfile::tempdir().unwrap();
    for file in ["contacts.example.toml", "anpi.example.toml"] {
        std::fs::copy(root().join(file), dir.path().join(file)).unwrap();
    }
    std::fs::copy(
        root().join("anpi.example.toml"),
        dir.path().join("anpi.toml"),
    )
    .unwrap();
    std::fs::copy(
        root().join("contacts.example.toml"),
        dir.path().join("contacts.toml"),
    )
    .unwrap();
    let csv = anpi::contacts::synthetic::generate(50, 1)
        .contacts
        .iter()
        .map(|c| format!("{},{},{}\r\n", c.id, c.name, c.phones[0].national()))
        .collect::<String>();
    std::fs::write(
        dir.path().join("staff.csv"),
        format!("職員番号,氏名,電話番号\r\n{csv}"),
    )
    .unwrap();
    let state = dir.path().join("state");
    let runnable = |w: &&Written| {
        runs_here(&w.args)
            && Cli::try_parse_from(std::iter::once("anpi".into()).chain(w.args.clone())).is_ok()
            || w.args.iter().any(|a| a == "--help")
    };
    for w in found.iter().filter(runnable) {
        let (args, cwd, url) = (
            w.args.clone(),
            dir.path().to_path_buf(),
            app.base_url.clone(),
        );
        let state = state.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_anpi"))
                .args(&args)
                .current_dir(cwd)
                .env("ANPI_URL", url)
                .env("ANPI_TOKEN", HQ_TOKEN)
                .env("ANPI_STATE_DIR", state)
                .env_remove("ANPI_CONFIG")
                .output()
                .expect("anpi runs")
        })
        .await
        .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.lines().take(3).collect::<Vec<_>>().join(" / ");
            problems.push(format!(
                "{}: `{}` failed ({}): {err}",
                w.place, w.text, out.status
            ));
        }
    }
    app.shutdown().await;
    assert!(
        problems.is_empty(),
        "commands written for people that do not work:\n  {}",
        problems.join("\n  ")
    );
}
