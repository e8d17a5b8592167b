//! The command line. `serve` runs the daemon; `demo` and `bench` run everything in one
//! process; the roll-call, escalation and call commands talk to a running daemon over its
//! HTTP API; `contacts check` works offline.
//!
//! Invariant: every failure ends with a message saying what went wrong and a non-zero exit.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::startup::Application;

/// anpi — 安否確認. Sends one short message to every member of staff and every shelter phone,
/// watches who reads it, and puts everyone still unread at the deadline on a phone-call list.
#[derive(Debug, Parser)]
#[command(name = "anpi", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (HTTP API, dispatcher, receipt watcher, deadline timer).
    Serve {
        /// Configuration file (see anpi.example.toml for every setting).
        #[arg(long, short, env = "ANPI_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address, overriding the configuration (e.g. 127.0.0.1:8425).
        #[arg(long)]
        listen: Option<String>,
        /// Database URL, overriding the configuration (e.g. sqlite://anpi.db).
        #[arg(long)]
        database: Option<String>,
    },
    /// Bring the database schema up to date, then exit. `serve` does the same at start unless
    /// [database] migrate = "refuse"; run this first when upgrading several replicas.
    Migrate {
        /// Configuration file whose [database] url to use.
        #[arg(long, short, env = "ANPI_CONFIG")]
        config: Option<PathBuf>,
        /// Database URL, overriding the configuration (e.g. postgres://anpi@db/anpi).
        #[arg(long)]
        database: Option<String>,
    },
    /// Run a whole simulated roll call in one process: a temporary SQLite database, the
    /// built-in chat simulator and a clock sped up so the deadline passes in seconds.
    Demo(crate::demo::DemoArgs),
    /// Measure throughput: 10,000 and 100,000 simulated recipients with no rate limit.
    Bench(crate::bench::BenchArgs),
    /// Run a stand-in chat server on its own (to rehearse `anpi serve` without a real chat
    /// platform): the built-in simulator (people read after about --read-after and answer as
    /// --answers says), or with --platform lineworks a LINE WORKS API 2.0 stand-in whose
    /// members, read times and answers come from a contacts file and a scenario's
    /// [simulation] table.
    Simulator(Box<SimulatorArgs>),
    /// Start, list, follow and close roll calls on a running daemon.
    Rollcall {
        #[command(subcommand)]
        command: RollcallCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a roll call's action list (要対応): urgent answers (救助要請, 負傷, a reply asking
    /// for help) first, then silent shelters, never read, not sent.
    Escalations {
        /// Roll call number.
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        /// Show everyone ever on the list, with what became of them, not only those HQ must
        /// still act on.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Work the call queue: take the next person (--next), record how a call went or a note
    /// for any named person (STAFF --outcome and/or --note), find someone who phoned in
    /// (--find), or hand a person back to the queue (STAFF --release).
    #[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["next", "outcome", "note", "release", "find"])))]
    Call {
        /// Roll call number.
        id: String,
        /// Staff id of the person (with --outcome, --note or --release).
        #[arg(required_unless_present_any = ["next", "find"], conflicts_with_all = ["next", "find"])]
        staff: Option<String>,
        /// Take the next person to ring: urgent answers first, then silent shelters, never
        /// read, not sent; nobody is given to two callers.
        #[arg(long)]
        next: bool,
        /// safe, injured, needs-help, no-answer or unreachable.
        #[arg(long)]
        outcome: Option<String>,
        /// What the call found, where the person is, what was done. Closing an urgent answer
        /// needs one.
        #[arg(long)]
        note: Option<String>,
        /// Find people by part of a name, ふりがな, staff id or phone number.
        #[arg(long, conflicts_with_all = ["next", "outcome", "note", "release"])]
        find: Option<String>,
        /// Hand the person back to the queue without a call outcome.
        #[arg(long)]
        release: bool,
        /// This desk's name, when several callers share one token (e.g. tablet-1).
        #[arg(long)]
        desk: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Check or import a contacts file (TOML, or CSV in UTF-8 or Shift_JIS).
    Contacts {
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// JMA triggers: run telegram files through the rules, or see recent decisions.
    Jma {
        #[command(subcommand)]
        command: JmaCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Drills: a drill's report (time to read and answer per department and shelter, people
    /// never reached).
    Drill {
        #[command(subcommand)]
        command: DrillCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// One-time Matrix set-up, run ahead of time (never during a roll call).
    Matrix {
        #[command(subcommand)]
        command: MatrixCommand,
    },
    /// Urgent answers outside any open roll call: those that came after their roll call
    /// closed while none of the person's was open, and those HQ had not closed when their roll
    /// call was closed. List them, or close one with a note of what was done.
    Late {
        #[command(subcommand)]
        command: LateCommand,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Subcommand)]
pub enum LateCommand {
    /// The late urgent answers HQ has not closed (--all: every one, with how it was closed).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Close a late urgent answer with a note of what was done.
    Close {
        /// Its number, from `anpi late list`.
        id: i64,
        #[arg(long)]
        note: String,
        /// This desk's name (e.g. 受付1).
        #[arg(long)]
        desk: Option<String>,
    },
}

impl Command {
    /// Commands that print a result and exit, writing nothing a signal could interrupt
    /// half-way (they talk to the daemon or read a file, or run in a throwaway database).
    fn prints_and_exits(&self) -> bool {
        matches!(
            self,
            Command::Rollcall { .. }
                | Command::Escalations { .. }
                | Command::Call { .. }
                | Command::Late { .. }
                | Command::Contacts { .. }
                | Command::Demo(_)
                | Command::Bench(_)
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum MatrixCommand {
    /// Create a direct-message room with every contact who has a Matrix id and no room yet
    /// (the person is invited and accepts once), and store the map in anpi's database.
    Prepare {
        /// Configuration file with [providers.matrix] and the database.
        #[arg(long, short, env = "ANPI_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum JmaCommand {
    /// Feed telegram files (or every file in folders) through the daemon's decision path, in
    /// path order, and print each file's decision and reason. Replayed telegrams only ever
    /// start drills and are kept apart from the live feed's state.
    Replay {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Decide from a fresh state of this run's own; start nothing, record nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The latest telegrams (from the feed, and replays marked as such) and what was decided.
    Log {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum DrillCommand {
    /// A roll call's drill report.
    Report {
        /// Roll call number.
        id: String,
        #[arg(long, value_enum, default_value = "text")]
        format: ReportFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Text,
    Csv,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct SimulatorArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8426")]
    pub listen: std::net::SocketAddr,
    /// The bearer token anpi must send (its providers.simulator.token).
    #[arg(
        long,
        env = "ANPI_SIM_TOKEN",
        default_value = "simulator-token",
        hide_env_values = true
    )]
    pub token: String,
    /// How long after receiving a message a simulated person reads it ("never" for nobody).
    /// With --answers this is the median of a spread of read times, and some never read.
    #[arg(long, default_value = "90s")]
    pub read_after: String,
    /// Who answers what, in percent of the people who read: button values, `text` (a
    /// free-text reply) and `sticker`; the rest only read.
    /// E.g. safe=60,injured=5,need_help=2,text=5,sticker=10.
    #[arg(long)]
    pub answers: Option<String>,
    /// A free-text reply for `text` answers (repeat for several; default: a few samples, some
    /// asking for help).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// Share of people who never read, with --answers (0 to 1).
    #[arg(long, default_value_t = 0.08)]
    pub never_read: f64,
    /// Requests per minute the simulated platform accepts (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_minute: u32,
    /// Print the URL on the first line of standard output once listening.
    #[arg(long)]
    pub print_url: bool,
    /// Which platform to stand in for.
    #[arg(long, value_enum, default_value = "simulator")]
    pub platform: SimPlatform,
    #[command(flatten)]
    pub lineworks: crate::simulator::lineworks_cli::LineWorksArgs,
}

/// The platforms `anpi simulator` can stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimPlatform {
    /// anpi's own simulator API (providers.simulator).
    Simulator,
    /// LINE WORKS API 2.0 (providers.lineworks).
    Lineworks,
}

#[derive(Debug, Subcommand)]
pub enum RollcallCommand {
    /// Start a roll call from a scenario (a name in the daemon's scenarios folder, or a file).
    /// A real (non-drill) roll call started from a terminal asks for confirmation first.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["name", "scenario"])))]
    Start {
        /// The scenario, e.g. `anpi rollcall start earthquake` (the same as --scenario).
        #[arg(value_name = "SCENARIO")]
        name: Option<String>,
        /// The scenario: a name in the daemon's scenarios folder, or a scenario file.
        #[arg(long, conflicts_with = "name")]
        scenario: Option<String>,
        /// Run it as a drill (messages are marked 【訓練】).
        #[arg(long)]
        drill: bool,
        /// Only show how many people it would reach and how long that would take.
        #[arg(long)]
        dry_run: bool,
        /// Start a real roll call without asking (for scripts run from a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// List roll calls.
    List,
    /// Show a roll call's progress.
    Status {
        id: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close a roll call: nothing more is sent or escalated.
    Close { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Check a file and report every problem with its line and field. Changes nothing.
    Check { file: PathBuf },
    /// Check a file and, if it is entirely valid, replace the daemon's contacts with it.
    Import {
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Csv,
    Json,
}

/// Where the daemon is and how to prove who you are.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The daemon's address.
    #[arg(
        long,
        env = "ANPI_URL",
        default_value = "http://127.0.0.1:8425",
        global = true
    )]
    pub url: String,
    /// A bearer token from the daemon's [api] settings.
    #[arg(long, env = "ANPI_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Runs a command and turns any error into a message and exit code 1.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init(matches!(cli.command, Command::Serve { .. }));
    if cli.command.prints_and_exits() {
        // `anpi rollcall status 2 | head -3`: end quietly when the reader goes away, as other
        // Unix tools do, instead of panicking on the broken pipe. Long-running and
        // database-writing commands keep Rust's default (ignore SIGPIPE, handle EPIPE).
        sigpipe::reset();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("anpi: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("anpi: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            database,
        } => serve(config, listen, database).await,
        Command::Migrate { config, database } => migrate(config, database).await,
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
        Command::Simulator(args) => simulator(*args).await,
        Command::Rollcall { command, remote } => rollcall(command, &remote).await,
        Command::Escalations {
            id,
            format,
            all,
            remote,
        } => {
            let fmt = match format {
                ListFormat::Table => "table",
                ListFormat::Csv => "csv",
                ListFormat::Json => "json",
            };
            let scope = if all { "all" } else { "to_call" };
            let client = Client::new(&remote)?;
            let body = client
                .get_text(&format!(
                    "/api/rollcalls/{}/escalations?format={fmt}&scope={scope}",
                    id.trim_start_matches('#')
                ))
                .await?;
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            id,
            staff,
            next,
            outcome,
            note,
            find,
            release,
            desk,
            remote,
        } => {
            let id = id.trim_start_matches('#').to_string();
            let client = Client::new(&remote)?;
            let desk_body = json!({ "desk": desk });
            if next {
                return call_next(&client, &id, &desk_body).await;
            }
            if let Some(q) = find {
                return call_find(&client, &id, &q).await;
            }
            let Some(staff) = staff else {
                bail!("give --next, --find, or a staff id with --outcome, --note or --release");
            };
            // Typed at a keyboard: `１００１` with the IME on is 1001.
            let staff = crate::ids::StaffId::typed(&staff)?.to_string();
            // One path segment, whatever the id holds (`#`, `?`, `/`).
            let in_path =
                percent_encoding::utf8_percent_encode(&staff, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            if release {
                let v = client
                    .post(
                        &format!("/api/rollcalls/{id}/calls/{in_path}/release"),
                        &desk_body,
                        None,
                    )
                    .await?;
                if v["released"].as_bool().unwrap_or(false) {
                    println!("{staff}: キューに戻しました / back in the queue");
                } else {
                    println!("{staff}: このデスクは保留していません / not held by this desk");
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(o) = &outcome {
                crate::rollcall::CallOutcome::parse(o).map_err(anyhow::Error::msg)?;
            }
            let v = client
                .post(
                    &format!("/api/rollcalls/{id}/calls/{in_path}"),
                    &json!({ "outcome": outcome, "note": note, "desk": desk }),
                    None,
                )
                .await?;
            let still = v["to_call"].as_bool().unwrap_or(false);
            println!(
                "{} {}: {} — {}",
                v["entry"]["staff_id"].as_str().unwrap_or(&staff),
                v["entry"]["name"].as_str().unwrap_or(""),
                outcome.as_deref().unwrap_or("メモ / note"),
                if still {
                    "まだ要対応です / still needs HQ"
                } else {
                    "要対応から外れました / off the action list"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Late { command, remote } => late(command, &remote).await,
        Command::Contacts { command } => contacts(command).await,
        Command::Jma { command, remote } => jma(command, &remote).await,
        Command::Drill {
            command: DrillCommand::Report { id, format },
            remote,
        } => {
            let fmt = match format {
                ReportFormat::Text => "text",
                ReportFormat::Csv => "csv",
                ReportFormat::Json => "json",
            };
            let client = Client::new(&remote)?;
            let body = client
                .get_text(&format!(
                    "/api/rollcalls/{}/drill-report?format={fmt}",
                    id.trim_start_matches('#')
                ))
                .await?;
            print!("{body}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Matrix {
            command: MatrixCommand::Prepare { config },
        } => matrix_prepare(config).await,
    }
}

/// Every file under `path` (or `path` itself), in path order.
fn telegram_files(path: &std::path::Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading folder {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading folder {}", path.display()))?;
        entries.sort();
        for e in entries {
            telegram_files(&e, out)?;
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    } else {
        bail!("{}: no such file or folder", path.display());
    }
    Ok(())
}

async fn jma(command: JmaCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        JmaCommand::Replay { paths, dry_run } => {
            let mut files = Vec::new();
            for p in &paths {
                telegram_files(p, &mut files)?;
            }
            let mut body = Vec::new();
            for f in &files {
                let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                body.push(json!({
                    "name": f.display().to_string(),
                    "xml": String::from_utf8_lossy(&bytes),
                }));
            }
            let v = client
                .post(
                    "/api/jma/replay",
                    &json!({ "files": body, "dry_run": dry_run }),
                    None,
                )
                .await?;
            if dry_run {
                println!("試行（何も開始しません）/ dry run: nothing is started or recorded");
            }
            for r in v["results"].as_array().into_iter().flatten() {
                let t = &r["telegram"];
                println!(
                    "{}{}",
                    r["source"].as_str().unwrap_or("?"),
                    if t.is_null() {
                        String::new()
                    } else {
                        format!(
                            "  [{} {} {}・{}]",
                            t["code"].as_str().unwrap_or(""),
                            t["kind"].as_str().unwrap_or(""),
                            t["status"].as_str().unwrap_or(""),
                            t["info_type"].as_str().unwrap_or("")
                        )
                    }
                );
                for d in r["decisions"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<8}{} {}",
                        d["action"].as_str().unwrap_or("?"),
                        d["rule"]
                            .as_str()
                            .map(|r| format!(" [{r}]"))
                            .unwrap_or_default(),
                        d["reason"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JmaCommand::Log { limit } => {
            let v = client.get_json("/api/jma").await?;
            if let Some(h) = v["health"].as_object() {
                println!(
                    "気象庁フィード / JMA feed: {}",
                    h.get("status").and_then(Value::as_str).unwrap_or("?")
                );
            } else {
                println!(
                    "気象庁フィードの監視は無効です / the JMA feed watcher is off ([jma] enabled)"
                );
            }
            for r in v["recent"].as_array().into_iter().flatten().take(limit) {
                let replay = if r["scope"] == "replay" {
                    "[replay] "
                } else {
                    ""
                };
                println!("{replay}{}", trigger_line(r));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One recorded telegram: type, headline, time, decision and reason.
fn trigger_line(r: &Value) -> String {
    let at = r["reported_at"]
        .as_i64()
        .map(|ms| {
            crate::clock::from_millis(ms)
                .with_timezone(&chrono_tz::Asia::Tokyo)
                .format("%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "{at} {} {}（{}・{}）{} — {}: {}",
        r["code"].as_str().unwrap_or(""),
        r["kind"].as_str().unwrap_or(""),
        r["status"].as_str().unwrap_or(""),
        r["info_type"].as_str().unwrap_or(""),
        r["headline"].as_str().unwrap_or("").replace('\n', " "),
        r["action"].as_str().unwrap_or(""),
        r["reason"].as_str().unwrap_or("")
    )
}

/// The dispatch plan and what is left of it (`GET /api/rollcalls/{id}/plan`).
fn print_plan(v: &Value) {
    let unsent = v["unsent"].as_u64().unwrap_or(0);
    let p = &v["plan"];
    if !p.is_null() {
        println!(
            "経路 / route: {} — {} requests, estimate {:.1}s to reach everyone",
            p["route"].as_str().unwrap_or("?"),
            p["requests"],
            p["seconds_to_all_notified"].as_f64().unwrap_or(0.0)
        );
    }
    if unsent > 0 {
        println!(
            "未送信 {unsent} 件、あと約 {:.0} 秒 / {unsent} not yet sent, about {:.0}s to go",
            v["seconds_remaining"].as_f64().unwrap_or(0.0),
            v["seconds_remaining"].as_f64().unwrap_or(0.0)
        );
    }
}

/// `anpi call ID --next`: claims the next person and shows who to ring and how.
async fn call_next(client: &Client, id: &str, desk: &Value) -> anyhow::Result<ExitCode> {
    let v = client
        .post(&format!("/api/rollcalls/{id}/calls/next"), desk, None)
        .await?;
    let e = &v["entry"];
    if e.is_null() {
        println!("電話する人はいません / nobody left to call");
        return Ok(ExitCode::SUCCESS);
    }
    let staff = e["staff_id"].as_str().unwrap_or("?");
    print_person(e);
    if let Some(m) = v["minutes_waiting"].as_i64() {
        println!("  {m} 分経過 / minutes waiting");
    }
    let desk = desk["desk"]
        .as_str()
        .map(|d| format!(" --desk {d}"))
        .unwrap_or_default();
    println!(
        "held by {}: record the call with `anpi call {id} {staff}{desk} --outcome safe|injured|needs-help|no-answer|unreachable`",
        v["caller"].as_str().unwrap_or("you")
    );
    Ok(ExitCode::SUCCESS)
}

/// One person as a caller needs them: name and ふりがな, 役職, where, what they answered, the
/// numbers to ring and HQ's notes so far.
fn print_person(e: &Value) {
    let s = |k: &str| e[k].as_str().unwrap_or("");
    let kana = if s("kana").is_empty() {
        String::new()
    } else {
        format!(" ({})", s("kana"))
    };
    let place = e["shelter"]
        .as_str()
        .map(|sh| format!("避難所 {sh}"))
        .or_else(|| e["department"].as_str().map(str::to_string))
        .unwrap_or_default();
    println!(
        "{} {}{kana} {} [{place}]",
        s("staff_id"),
        s("name"),
        s("role")
    );
    if let Some(a) = e["standing"].as_object() {
        let text = a
            .get("text")
            .and_then(Value::as_str)
            .map(|t| format!(" 「{t}」"))
            .unwrap_or_default();
        println!(
            "  回答 / answered: {}{text}",
            a.get("label").and_then(Value::as_str).unwrap_or("")
        );
    }
    for phone in e["phones"].as_array().into_iter().flatten() {
        let phone = phone.as_str().unwrap_or("?");
        // As dialled in Japan, with the tel: form a phone app opens.
        println!(
            "  電話 / tel: {}  (tel:{phone})",
            crate::calllist::national(phone)
        );
    }
    for n in e["notes"].as_array().into_iter().flatten() {
        println!(
            "  メモ / note ({}): {}",
            crate::calllist::desk_of(n["by"].as_str().unwrap_or("")),
            n["text"].as_str().unwrap_or("")
        );
    }
}

/// `anpi call ID --find TEXT`: who matches, to record a call for someone who phoned in.
async fn call_find(client: &Client, id: &str, q: &str) -> anyhow::Result<ExitCode> {
    let mut url = reqwest::Url::parse("http://x/")?;
    url.query_pairs_mut().append_pair("q", q);
    let v = client
        .get_json(&format!(
            "/api/rollcalls/{id}/people?{}",
            url.query().unwrap_or_default()
        ))
        .await?;
    let people = v["people"].as_array().cloned().unwrap_or_default();
    if people.is_empty() {
        println!("見つかりません / nobody matches {q:?}");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &people {
        print_person(p);
    }
    println!(
        "record a call: `anpi call {id} STAFF --outcome safe|injured|needs-help|no-answer|unreachable --note \"...\"`"
    );
    Ok(ExitCode::SUCCESS)
}

/// `anpi late list|close`.
async fn late(command: LateCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        LateCommand::List { all } => {
            let scope = if all { "all" } else { "open" };
            let v = client
                .get_json(&format!("/api/late-answers?scope={scope}"))
                .await?;
            let entries = v["entries"].as_array().cloned().unwrap_or_default();
            if entries.is_empty() {
                println!("終了後に届いた要対応の回答はありません / no late urgent answers");
            }
            for a in &entries {
                let ans = &a["answer"];
                let text = ans["text"]
                    .as_str()
                    .map(|t| format!(" 「{t}」"))
                    .unwrap_or_default();
                let closed = match a["closed_by"].as_str() {
                    Some(by) => format!(
                        " [対応済み / closed by {}: {}]",
                        crate::calllist::desk_of(by),
                        a["note"].as_str().unwrap_or("")
                    ),
                    None => String::new(),
                };
                let phones: Vec<String> = a["phones"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(crate::calllist::national)
                    .collect();
                println!(
                    "{:>4}  #{} {} {}  {}{text}  tel: {}{closed}",
                    a["id"],
                    a["roll_call_id"],
                    a["staff_id"].as_str().unwrap_or(""),
                    a["name"].as_str().unwrap_or(""),
                    ans["label"].as_str().unwrap_or(""),
                    phones.join(", ")
                );
            }
        }
        LateCommand::Close { id, note, desk } => {
            client
                .post(
                    &format!("/api/late-answers/{id}/close"),
                    &json!({ "note": note, "desk": desk }),
                    None,
                )
                .await?;
            println!("{id}: 対応済みにしました / closed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `anpi matrix prepare`: makes the missing DM rooms, invites again whoever left, and prints
/// who a message would not reach and why; exits non-zero when anyone is not reachable.
async fn matrix_prepare(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
    let report = prepare_matrix_rooms(&config).await?;
    print!("{}", prepare_summary(&report));
    Ok(
        if report.failed.is_empty() && report.unreachable.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// What `anpi matrix prepare` prints: counts, then a table of who cannot be reached and why,
/// then the encrypted rooms and what that means.
pub fn prepare_summary(report: &crate::providers::matrix::PrepareReport) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "Matrix DM ルーム / rooms: {} 既存 / already there, {} 作成 / created, {} 再招待 / \
         invited again, {} 届かない / not reachable, {} 失敗 / failed\n",
        report.existing,
        report.created,
        report.reinvited.len(),
        report.unreachable.len(),
        report.failed.len()
    );
    if !report.unreachable.is_empty() || !report.failed.is_empty() {
        let width = report
            .unreachable
            .iter()
            .map(|(w, _)| w.as_str().len())
            .chain(report.failed.iter().map(|(w, _)| w.as_str().len()))
            .max()
            .unwrap_or(0)
            .max(9);
        let _ = writeln!(
            out,
            "\n届かない人 / not reachable (安否確認では電話リストに載ります / on the call list \
             during a roll call):"
        );
        let _ = writeln!(out, "  {:width$}  理由 / reason", "Matrix ID");
        for (who, why) in &report.unreachable {
            let again = if report.reinvited.contains(who) {
                "（再招待済み / invited again）"
            } else {
                ""
            };
            let _ = writeln!(out, "  {:width$}  {why}{again}", who.as_str());
        }
        for (who, why) in &report.failed {
            let _ = writeln!(out, "  {:width$}  失敗 / failed: {why}", who.as_str());
        }
    }
    if !report.encrypted.is_empty() {
        let _ = writeln!(
            out,
            "\n暗号化されたルーム {} 件: 返信の内容は anpi には読めません（既読とリアクションは数えます）。\n\
             {} rooms are end-to-end encrypted (the homeserver forces it): anpi cannot read \
             replies there; read receipts and reactions still count, and an encrypted reply is \
             shown as unreadable.",
            report.encrypted.len(),
            report.encrypted.len()
        );
        for (who, room) in &report.encrypted {
            let _ = writeln!(out, "  {}  {room}", who.as_str());
        }
    }
    out
}

/// Creates a DM room for every contact with a Matrix id and no room yet (contacts from the
/// configured contacts file, else the stored ones) and stores the map in the database.
pub async fn prepare_matrix_rooms(
    config: &Config,
) -> anyhow::Result<crate::providers::matrix::PrepareReport> {
    let store = crate::store::open(&config.database.url)
        .await
        .with_context(|| format!("opening the database {}", config.redacted_database_url()))?;
    let contacts = match config.contacts_file() {
        Some(path) => {
            crate::contacts::load_file(path)
                .with_context(|| format!("loading contacts from {}", path.display()))?
                .contacts
        }
        None => store.contacts().await?,
    };
    let people: Vec<_> = contacts
        .iter()
        .filter_map(|c| c.chat.get(crate::providers::matrix::NAME).cloned())
        .collect();
    let clock = crate::startup::clock_from(config);
    let provider = crate::startup::matrix_provider(config, &store, &clock)?;
    Ok(provider.prepare(&people).await?)
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<String>,
    database: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(config.as_deref())?;
    if let Some(l) = listen {
        config.server.listen = l
            .parse()
            .with_context(|| format!("--listen {l:?} is not an address like 127.0.0.1:8425"))?;
    }
    if let Some(d) = database {
        config.database.url = d;
    }
    config.validate()?;
    if let Some(advice) = token_advice(&config) {
        tracing::warn!("{advice}");
    }
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        c2.cancel();
    });
    // A replica started while its database is down (or restarting) waits for it rather than
    // exit; a wrong URL, password or schema still stops it at once.
    let mut failures = 0;
    let app = loop {
        match Application::build(config.clone()).await {
            Ok(app) => break app,
            Err(e) if database_may_come_back(&e) => {
                failures += 1;
                let wait = crate::backoff::OPENING.wait(failures);
                tracing::warn!(
                    error = %format!("{e:#}"),
                    retry_in = ?wait,
                    "the database is unreachable; waiting for it"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(ExitCode::FAILURE),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    app.run_until_stopped(cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// Said once at start when the configured tokens leave people unable to use the API.
fn token_advice(config: &Config) -> Option<String> {
    const HOW: &str = "add one in the config file ([api] hq_tokens = [\"<16 or more random \
                       characters>\"]) or as ANPI_API__HQ_TOKENS='[\"...\"]', restart, and give \
                       the same token to the CLI as ANPI_TOKEN";
    let api = &config.api;
    if api.hq_tokens.is_empty() && api.caller_tokens.is_empty() && api.shelter_tokens.is_empty() {
        Some(format!(
            "no API tokens are configured, so no one can use the API, the CLI or the HQ page; \
             {HOW}"
        ))
    } else if api.hq_tokens.is_empty() {
        Some(format!(
            "no [api] hq_tokens are configured, so no one can start a roll call; {HOW}"
        ))
    } else {
        None
    }
}

fn database_may_come_back(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::store::StoreError>()
            .is_some_and(|s| s.may_pass())
    })
}

/// `anpi simulator --platform lineworks`: the LINE WORKS stand-in until interrupted.
async fn lineworks_simulator(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    let started = crate::simulator::lineworks_cli::start(
        &args.lineworks,
        args.listen,
        args.rate_limit_per_minute,
    )
    .await?;
    let h = &started.handle;
    let base = format!("http://{}", h.addr());
    if args.print_url {
        println!("{base}");
    }
    eprintln!(
        "LINE WORKS stand-in listening on {base}: {} members, {} rooms, board {}\n  \
         providers.lineworks.api_url = \"{}\"\n  providers.lineworks.token_url = \"{}\"\n  \
         callbacks to {}",
        started.members,
        started.rooms,
        h.config().board_id,
        h.api_base(),
        h.token_url(),
        h.config()
            .callback_url
            .as_deref()
            .unwrap_or("(none: pass --callback-url)")
    );
    shutdown_signal().await;
    h.shutdown();
    Ok(ExitCode::SUCCESS)
}

async fn simulator(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    if args.platform == SimPlatform::Lineworks {
        return lineworks_simulator(args).await;
    }
    use crate::simulator::{Behaviour, Script, SimConfig, Simulator};
    let read_after = match args.read_after.trim() {
        "never" | "none" => None,
        raw => Some(
            humantime::parse_duration(raw)
                .with_context(|| format!("--read-after {raw:?}: write e.g. 90s, 2m or never"))?,
        ),
    };
    let population = match &args.answers {
        None if !args.texts.is_empty() => {
            bail!("--text needs --answers with a share for text (e.g. --answers safe=80,text=10)")
        }
        None => None,
        Some(mix) => {
            let median = read_after.ok_or_else(|| {
                anyhow::anyhow!("--answers needs people who read: give --read-after a time")
            })?;
            let spec = crate::simulator::PopulationSpec {
                read_median: median,
                never_read: args.never_read,
                unknown_users: 0.0,
                answers: crate::simulator::PopulationSpec::parse_answers(mix)
                    .map_err(|e| anyhow::anyhow!("--answers: {e}"))?,
                texts: args.texts.clone(),
                ..Default::default()
            };
            spec.validate()
                .map_err(|e| anyhow::anyhow!("{}", e.replace("simulation.", "--")))?;
            Some((spec, args.lineworks.seed))
        }
    };
    let config = SimConfig {
        token: args.token,
        rate_limit: (args.rate_limit_per_minute > 0).then(|| crate::providers::RateLimit {
            requests: args.rate_limit_per_minute,
            per: Duration::from_secs(60),
        }),
        faults: Default::default(),
        default_behaviour: Behaviour {
            read_after,
            ..Behaviour::default()
        },
        population,
    };
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
    let sim = Simulator::start_on(args.listen, config, Script::default(), clock)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    if args.print_url {
        println!("{}", sim.base_url());
    } else {
        eprintln!("chat simulator listening on {}", sim.base_url());
    }
    shutdown_signal().await;
    sim.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn migrate(config: Option<PathBuf>, database: Option<String>) -> anyhow::Result<ExitCode> {
    let url = match database {
        Some(url) => url,
        None => Config::load(config.as_deref())?.database.url,
    };
    let shown = crate::config::redact_url(&url);
    let (before, applied) = crate::store::migrate_url(&url)
        .await
        .with_context(|| format!("migrating {shown}"))?;
    let was = before
        .database
        .map_or_else(|| "empty".to_string(), |v| format!("version {v}"));
    if applied.is_empty() {
        println!("{shown}: schema is current ({was})");
    } else {
        println!(
            "{shown}: {was} -> version {}; applied {:?}",
            before.binary, applied
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn rollcall(command: RollcallCommand, remote: &Remote) -> anyhow::Result<ExitCode> {
    let client = Client::new(remote)?;
    match command {
        RollcallCommand::Start {
            name,
            scenario,
            drill,
            dry_run,
            yes,
        } => {
            let scenario = scenario.or(name).unwrap_or_default();
            let path = PathBuf::from(&scenario);
            let mut body = if path.is_file() {
                // Check the file here first, so a mistake is reported with this file's name.
                crate::scenario::Scenario::load(&path)?;
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                json!({"scenario_toml": text, "origin": path.display().to_string()})
            } else {
                json!({ "scenario": scenario })
            };
            if drill {
                body["drill"] = json!(true);
            }
            let est = client.post("/api/estimate", &body, None).await?;
            print_estimate(&est["estimate"]);
            if dry_run {
                return Ok(ExitCode::SUCCESS);
            }
            let real = !drill && est["drill"].as_bool() != Some(true);
            if real && !yes && std::io::stdin().is_terminal() && !confirm_real_start(&est)? {
                eprintln!("取り消しました。何も送っていません / cancelled: nothing was sent");
                return Ok(ExitCode::FAILURE);
            }
            start_roll_call(&client, &body).await
        }
        RollcallCommand::List => {
            let v = client.get_json("/api/rollcalls").await?;
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("安否確認はまだありません / no roll calls yet");
            }
            for rc in list {
                println!(
                    "#{:<5} {:<7} {:>6} 人  {}{}",
                    rc["id"],
                    rc["state"].as_str().unwrap_or(""),
                    rc["recipients"],
                    rc["title"].as_str().unwrap_or(""),
                    if rc["drill"].as_bool() == Some(true) {
                        " (訓練)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RollcallCommand::Status { id, json } => {
            let id = id.trim_start_matches('#');
            let v = client.get_json(&format!("/api/rollcalls/{id}")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                // Provider trouble first: it changes how the numbers below are to be read.
                if let Ok(h) = client.get_json("/api/health").await {
                    print_health(&h);
                }
                print_status(&v);
                if let Ok(t) = client
                    .get_json(&format!("/api/rollcalls/{id}/trigger"))
                    .await
                {
                    for r in t["telegrams"].as_array().into_iter().flatten() {
                        println!("気象庁情報 / JMA: {}", trigger_line(r));
                    }
                }
                let list = client
                    .get_json(&format!("/api/rollcalls/{id}/escalations"))
                    .await?;
                print_urgent(&list);
                let plan = client
                    .get_json(&format!("/api/rollcalls/{id}/plan"))
                    .await?;
                print_plan(&plan);
            }
            Ok(ExitCode::SUCCESS)
        }
        RollcallCommand::Close { id } => {
            let v = client
                .post(
                    &format!("/api/rollcalls/{}/close", id.trim_start_matches('#')),
                    &json!({}),
                    None,
                )
                .await?;
            if v["was_open"].as_bool() == Some(true) {
                println!("roll call #{} closed", v["roll_call"]);
            } else {
                println!("roll call #{} was already closed", v["roll_call"]);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Shows what a real roll call will do and asks for a typed yes. `false` for anything else,
/// including end of input.
fn confirm_real_start(est: &Value) -> anyhow::Result<bool> {
    let e = &est["estimate"];
    let mut err = std::io::stderr().lock();
    writeln!(
        err,
        "\n本番の安否確認です（訓練ではありません） / This is a REAL roll call, not a drill"
    )?;
    writeln!(
        err,
        "  宛先 / to: {} 人 / people (チャット / chat {}, 電話リストへ直行 / straight to the call list {})",
        e["recipients"], e["reachable"], e["no_chat_id"]
    )?;
    writeln!(
        err,
        "  全員へ送信 / all sent in: 約 / about {}",
        human_secs(e["seconds_to_all_sent"].as_f64().unwrap_or(0.0))
    )?;
    if let Some(title) = est["title"].as_str() {
        writeln!(err, "  件名 / title: {title}")?;
    }
    if let Some(message) = est["message"].as_str() {
        writeln!(err, "  本文 / message:")?;
        for line in message.lines() {
            writeln!(err, "    {line}")?;
        }
    }
    write!(err, "送信しますか？ yes と入力 / Send it now? Type yes: ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_lowercase().as_str(),
        "y" | "yes" | "はい"
    ))
}

/// Sends the start with a key kept in the CLI's state directory, so that running the same
/// command again after a failure starts one roll call, not two; and when the daemon drops
/// the connection, asks again with the same key to learn whether the roll call exists.
async fn start_roll_call(client: &Client, body: &Value) -> anyhow::Result<ExitCode> {
    use crate::cli_state::{default_dir, fingerprint, StartKeys, KEEP};
    let now_ms = || chrono::Utc::now().timestamp_millis();
    let shown_time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%H:%M:%S")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let fp = fingerprint(&client.base, body);
    let keys = default_dir().map(StartKeys::new);
    let start = keys.as_ref().map(|k| (k, k.key_for(&fp, now_ms())));
    let (key, since) = match start {
        Some((_, Ok(k))) => {
            if let Some(first) = k.retry_of_ms {
                eprintln!(
                    "{} の開始要求を同じキーで送り直します（二重には始まりません） / retrying the \
                     start from {} with the same key: it cannot start a second roll call",
                    shown_time(first),
                    shown_time(first)
                );
            }
            (k.key, k.retry_of_ms.unwrap_or_else(now_ms))
        }
        Some((k, Err(e))) => {
            eprintln!(
                "anpi: cannot keep this start's key in {} ({e}); if this attempt fails, check \
                 `anpi rollcall list` before starting again",
                k.dir().display()
            );
            (format!("cli-{:032x}", rand::random::<u128>()), now_ms())
        }
        None => (format!("cli-{:032x}", rand::random::<u128>()), now_ms()),
    };
    let settle = || {
        if let Some(k) = &keys {
            let _ = k.settled(&fp, now_ms());
        }
    };
    let mut result = client.post("/api/rollcalls", body, Some(&key)).await;
    // Lost on the way: the daemon may have written the roll call before it went away. The
    // same key makes asking again safe, and the answer says which roll call it is.
    let mut wait = Duration::from_millis(500);
    for _ in 0..3 {
        match &result {
            Err(e) if unanswered(e) => {
                eprintln!("anpi: no answer to the start ({e:#}); asking again with the same key …");
                tokio::time::sleep(wait).await;
                wait *= 2;
                result = client.post("/api/rollcalls", body, Some(&key)).await;
            }
            _ => break,
        }
    }
    let v = match result {
        Ok(v) => {
            settle();
            v
        }
        Err(e) if unanswered(&e) => {
            let until = shown_time(since + KEEP.as_millis() as i64);
            bail!(
                "{e:#}\nThe roll call may or may not have started. Run the same command again \
                 once anpi is back, before {until}: it sends the same key, so it cannot start a \
                 second roll call. `anpi rollcall list` shows what has started."
            );
        }
        Err(e) => {
            // Refused (wrong scenario, no contacts, ...): nothing started, nothing to retry.
            settle();
            return Err(e);
        }
    };
    let rc = &v["roll_call"];
    println!(
        "安否確認を開始しました / roll call #{} started: {} ({} 人 / recipients{})",
        rc["id"],
        rc["title"].as_str().unwrap_or(""),
        rc["recipients"],
        if rc["drill"].as_bool() == Some(true) {
            ", 訓練 / drill"
        } else {
            ""
        }
    );
    println!("進捗 / progress: anpi rollcall status {}", rc["id"]);
    Ok(ExitCode::SUCCESS)
}

/// The request got no answer: the connection failed or dropped, or the answer was cut off.
/// A status the daemon sent (4xx, 5xx) is an answer.
fn unanswered(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<reqwest::Error>().is_some())
}

fn print_estimate(e: &Value) {
    let secs = e["seconds_to_all_sent"].as_f64().unwrap_or(0.0);
    println!(
        "対象 {} 人 (チャット送信 {} 人, チャット未登録 {} 人は最初から電話リスト) / {} recipients",
        e["recipients"], e["reachable"], e["no_chat_id"], e["recipients"]
    );
    println!(
        "全員への送信完了まで 約 {} / all sent in about {} ({})",
        human_secs(secs),
        human_secs(secs),
        e["basis"].as_str().unwrap_or("")
    );
    // A board post notifies at once; its answer buttons follow by rooms and 1:1.
    if let Some(able) = e["plan"]["seconds_to_all_able_to_answer"].as_f64() {
        println!(
            "全員が回答ボタンを受け取るまで 約 {} / everyone able to answer in about {}",
            human_secs(able.max(secs)),
            human_secs(able.max(secs))
        );
    }
    // The routes the planner weighed, fastest first (the first is the one it will use).
    if let Some(alts) = e["plan"]["alternatives"].as_array().filter(|a| a.len() > 1) {
        for a in alts {
            println!(
                "  {:<10} {:>7} requests  notified {}  able to answer {}",
                a["route"].as_str().unwrap_or("?"),
                a["requests"],
                human_secs(a["seconds_to_all_notified"].as_f64().unwrap_or(0.0)),
                human_secs(a["seconds_to_all_able_to_answer"].as_f64().unwrap_or(0.0))
            );
        }
    }
}

fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.0}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

/// The banner of `GET /api/health`: what is failing, since when, what it means.
fn print_health(h: &Value) {
    for d in h["degraded"].as_array().into_iter().flatten() {
        println!(
            "!! 障害 / TROUBLE since {}: {}",
            d["since_local"].as_str().unwrap_or("?"),
            d["label"].as_str().unwrap_or("?")
        );
        println!("   {}", d["reason"].as_str().unwrap_or(""));
    }
}

fn print_status(v: &Value) {
    let rc = &v["roll_call"];
    let o = &v["progress"]["overall"];
    println!(
        "#{} {} [{}]{}",
        rc["id"],
        rc["title"].as_str().unwrap_or(""),
        rc["state"].as_str().unwrap_or(""),
        if rc["drill"].as_bool() == Some(true) {
            " 訓練 / drill"
        } else {
            ""
        }
    );
    let n = |k: &str| o[k].as_i64().unwrap_or(0);
    println!(
        "対象 {}  送信待ち {}  送信済 {}  既読 {}  回答 {}  送信失敗 {}  要電話 {}",
        n("total"),
        n("pending") + n("sending"),
        n("sent"),
        n("read"),
        n("answered"),
        n("failed"),
        n("to_call")
    );
    println!(
        "total {}  waiting {}  sent {}  read {}  answered {}  failed {}  to call {}",
        n("total"),
        n("pending") + n("sending"),
        n("sent"),
        n("read"),
        n("answered"),
        n("failed"),
        n("to_call")
    );
    if n("reached") > 0 {
        println!(
            "電話対応済み {} (うち負傷 {} 要救助 {} 不通 {}) / closed by phone {} (injured {}, needs help {}, unreachable {})",
            n("reached"),
            n("injured"),
            n("needs_help"),
            n("unreachable"),
            n("reached"),
            n("injured"),
            n("needs_help"),
            n("unreachable")
        );
    }
    // 要対応 is the action list's count, as in HQ's mail and the page's title: open urgent
    // answers and everyone still to call (the two never overlap: an answer confirms).
    let to_act = n("urgent_open") + n("to_call");
    println!(
        "要対応 {} (救助要請・負傷 {} 要電話 {})  回答: 負傷・救助要請 {} 要確認 {}  再送 {}",
        to_act,
        n("urgent_open"),
        n("to_call"),
        n("answered_urgent"),
        n("answered_attention"),
        n("resent")
    );
    println!(
        "needs HQ {} (urgent answers open {}, to call {})  answered: urgent {}, attention {}  sent again {}",
        to_act,
        n("urgent_open"),
        n("to_call"),
        n("answered_urgent"),
        n("answered_attention"),
        n("resent")
    );
    use crate::calllist::{pad, pad_left};
    // Counts right-aligned by display width under their (double-width) headers.
    let row = |cells: &[String]| -> String { cells.iter().map(|c| pad_left(c, 6)).collect() };
    let count = |c: &Value, key: &str| c[key].as_i64().unwrap_or(0);
    if let Some(depts) = v["progress"]["by_department"].as_object() {
        if !depts.is_empty() {
            println!(
                "\n{}{}",
                pad("所属", 16),
                row(&["対象", "確認済", "要電話", "要対応"].map(String::from))
            );
        }
        for (name, c) in depts {
            let confirmed = count(c, "read") + count(c, "answered");
            println!(
                "{}{}",
                pad(name, 16),
                row(&[
                    count(c, "total").to_string(),
                    confirmed.to_string(),
                    count(c, "to_call").to_string(),
                    count(c, "urgent_open").to_string(),
                ])
            );
        }
    }
    if let Some(sh) = v["progress"]["by_shelter"].as_object() {
        // Silent shelters first: a phone that has not answered by its deadline.
        let mut shelters: Vec<(&String, &Value)> = sh.iter().collect();
        let silent = |c: &Value| c["shelter_phones_silent"].as_i64().unwrap_or(0) > 0;
        shelters.sort_by_key(|(name, c)| (!silent(c), (*name).clone()));
        if !shelters.is_empty() {
            println!(
                "\n{}{}",
                pad("避難所 (電話と担当職員)", 24),
                row(&["対象", "確認済", "要対応"].map(String::from))
            );
        }
        for (name, c) in shelters {
            let confirmed = count(c, "read") + count(c, "answered");
            println!(
                "{}{}{}",
                pad(name, 24),
                row(&[
                    count(c, "total").to_string(),
                    confirmed.to_string(),
                    count(c, "urgent_open").to_string(),
                ]),
                if silent(c) {
                    "  応答なし / silent"
                } else {
                    ""
                }
            );
        }
    }
}

/// The urgent entries of an action list (`GET .../escalations`), by name, with what they said.
fn print_urgent(list: &Value) {
    let urgent: Vec<&Value> = list["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["action"] == "urgent")
        .collect();
    if urgent.is_empty() {
        return;
    }
    println!(
        "\n■ 要対応（救助要請・負傷など）/ urgent answers — {}名 (`anpi escalations ID` for the whole list)",
        urgent.len()
    );
    for x in urgent {
        print_person(&x["entry"]);
    }
}

/// `n` and `noun`, with an "s" unless there is exactly one.
fn counted(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

async fn contacts(command: ContactsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContactsCommand::Check { file } => match crate::contacts::load_file_read(&file) {
            Ok(read) => {
                let dir = &read.directory;
                let shelters = dir
                    .contacts
                    .iter()
                    .filter(|c| c.kind == crate::contacts::ContactKind::ShelterPhone)
                    .count();
                println!(
                    "{}: OK — {} ({} staff, {})",
                    file.display(),
                    counted(dir.contacts.len(), "contact"),
                    dir.contacts.len() - shelters,
                    counted(shelters, "shelter phone")
                );
                print_ignored_columns(&read.ignored_columns);
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        ContactsCommand::Import { file, remote } => {
            let read = match crate::contacts::load_file_read(&file) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("nothing was imported / 取り込みは行っていません");
                    return Ok(ExitCode::FAILURE);
                }
            };
            print_ignored_columns(&read.ignored_columns);
            let client = Client::new(&remote)?;
            let v = client
                .put(
                    "/api/contacts",
                    &serde_json::to_value(&read.directory.contacts)?,
                )
                .await?;
            println!("{}: imported {} contacts", file.display(), v["imported"]);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_ignored_columns(columns: &[String]) {
    if !columns.is_empty() {
        println!(
            "使わない列 / columns not used: {} (anpi has no use for them)",
            columns.join(", ")
        );
    }
}

/// A small client for the daemon's API that turns error bodies into messages.
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(remote: &Remote) -> anyhow::Result<Self> {
        let Some(token) = remote.token.clone() else {
            bail!("no token: pass --token or set ANPI_TOKEN (an hq or caller token from the daemon's [api] settings)");
        };
        Ok(Self {
            base: remote.url.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    async fn check(
        &self,
        res: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<reqwest::Response> {
        let res = res.with_context(|| {
            format!(
                "cannot reach anpi at {} — is `anpi serve` running?",
                self.base
            )
        })?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let text = res.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("{} ({})", msg, status)
    }

    async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await;
        Ok(self.check(res).await?.json().await?)
    }

    async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await;
        Ok(self.check(res).await?.text().await?)
    }

    async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        Ok(self.check(req.send().await).await?.json().await?)
    }

    async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let res = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        Ok(self.check(res).await?.json().await?)
    }
}
