//! The command line. `serve` runs the daemon; `demo` and `bench` run everything in one
//! process; the roll-call, escalation and call commands talk to a running daemon over its
//! HTTP API; `contacts check` works offline.
//!
//! Invariant: every failure ends with a message saying what went wrong and a non-zero exit.

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
    /// Run the built-in stand-in chat server on its own (to try `anpi serve` without a real
    /// chat platform). Everyone reads after --read-after; nobody answers.
    Simulator(SimulatorArgs),
    /// Start, list, follow and close roll calls on a running daemon.
    Rollcall {
        #[command(subcommand)]
        command: RollcallCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show a roll call's phone-call list.
    Escalations {
        /// Roll call number.
        id: String,
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        /// Show everyone ever escalated, with what became of them, not only those to call.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Work the call queue: take the next person to ring (--next), record how the call went
    /// (STAFF --outcome), or hand a person back to the queue (STAFF --release).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["next", "outcome", "release"])))]
    Call {
        /// Roll call number.
        id: String,
        /// Staff id of the person called (with --outcome or --release).
        #[arg(required_unless_present = "next", conflicts_with = "next")]
        staff: Option<String>,
        /// Take the next person to ring: shelter phones first, then call priority, then
        /// longest unread; nobody is given to two callers.
        #[arg(long)]
        next: bool,
        /// safe, injured, needs-help, no-answer or unreachable.
        #[arg(long)]
        outcome: Option<String>,
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
    /// How long after receiving a message every simulated person reads it ("never" for nobody).
    #[arg(long, default_value = "90s")]
    pub read_after: String,
    /// Requests per minute the simulated platform accepts (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_minute: u32,
    /// Print the URL on the first line of standard output once listening.
    #[arg(long)]
    pub print_url: bool,
}

#[derive(Debug, Subcommand)]
pub enum RollcallCommand {
    /// Start a roll call from a scenario (a name in the daemon's scenarios folder, or a file).
    Start {
        #[arg(long)]
        scenario: String,
        /// Run it as a drill (messages are marked 【訓練】).
        #[arg(long)]
        drill: bool,
        /// Only show how many people it would reach and how long that would take.
        #[arg(long)]
        dry_run: bool,
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
        Command::Simulator(args) => simulator(args).await,
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
            release,
            desk,
            remote,
        } => {
            let id = id.trim_start_matches('#').to_string();
            let client = Client::new(&remote)?;
            let desk_body = json!({ "desk": desk });
            match (staff, outcome) {
                _ if next => call_next(&client, &id, &desk_body).await,
                (Some(staff), Some(outcome)) => {
                    crate::rollcall::CallOutcome::parse(&outcome).map_err(anyhow::Error::msg)?;
                    let v = client
                        .post(
                            &format!("/api/rollcalls/{id}/calls/{staff}"),
                            &json!({ "outcome": outcome, "desk": desk }),
                            None,
                        )
                        .await?;
                    let still = v["to_call"].as_bool().unwrap_or(false);
                    println!(
                        "{} {}: {} — {}",
                        v["entry"]["staff_id"].as_str().unwrap_or(&staff),
                        v["entry"]["name"].as_str().unwrap_or(""),
                        outcome,
                        if still {
                            "まだ電話リストに残ります / stays on the list"
                        } else {
                            "電話リストから外れました / off the list"
                        }
                    );
                    Ok(ExitCode::SUCCESS)
                }
                (Some(staff), None) if release => {
                    let v = client
                        .post(
                            &format!("/api/rollcalls/{id}/calls/{staff}/release"),
                            &desk_body,
                            None,
                        )
                        .await?;
                    if v["released"].as_bool().unwrap_or(false) {
                        println!("{staff}: キューに戻しました / back in the queue");
                    } else {
                        println!("{staff}: このデスクは保留していません / not held by this desk");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                _ => anyhow::bail!("give --next, or a staff id with --outcome or --release"),
            }
        }
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
    let place = e["shelter"]
        .as_str()
        .or_else(|| e["department"].as_str())
        .unwrap_or("");
    println!("{staff} {} ({place})", e["name"].as_str().unwrap_or(""));
    for phone in e["phones"].as_array().into_iter().flatten() {
        println!("  tel: {}", phone.as_str().unwrap_or("?"));
    }
    if let Some(m) = v["minutes_waiting"].as_i64() {
        println!("  {m} 分未読 / minutes unread");
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

/// `anpi matrix prepare`: makes the missing DM rooms and reports who could not be reached.
async fn matrix_prepare(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = Config::load(config.as_deref())?;
    let report = prepare_matrix_rooms(&config).await?;
    println!(
        "Matrix DM rooms: {} already there, {} created (each person accepts the invite once), {} failed",
        report.existing,
        report.created,
        report.failed.len()
    );
    for (who, why) in &report.failed {
        println!("  {who}: {why}");
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Creates a DM room for every contact with a Matrix id and no room yet (contacts from the
/// configured contacts file, else the stored ones) and stores the map in the database.
pub async fn prepare_matrix_rooms(
    config: &Config,
) -> anyhow::Result<crate::providers::matrix::PrepareReport> {
    let store = crate::store::open(&config.database.url)
        .await
        .with_context(|| format!("opening the database {}", config.database.url))?;
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
    if config.api.hq_tokens.is_empty() {
        tracing::warn!("no [api] hq_tokens configured: the HTTP API will refuse every request");
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
    let mut wait = Duration::from_secs(1);
    let app = loop {
        match Application::build(config.clone()).await {
            Ok(app) => break app,
            Err(e) if database_may_come_back(&e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    retry_in = ?wait,
                    "the database is unreachable; waiting for it"
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(ExitCode::FAILURE),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    };
    app.run_until_stopped(cancel).await?;
    Ok(ExitCode::SUCCESS)
}

fn database_may_come_back(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<crate::store::StoreError>()
            .is_some_and(|s| s.may_pass())
    })
}

async fn simulator(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    use crate::simulator::{Behaviour, Script, SimConfig, Simulator};
    let read_after = match args.read_after.trim() {
        "never" | "none" => None,
        raw => Some(
            humantime::parse_duration(raw)
                .with_context(|| format!("--read-after {raw:?}: write e.g. 90s, 2m or never"))?,
        ),
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
            scenario,
            drill,
            dry_run,
        } => {
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
            let key = format!("cli-{}-{}", std::process::id(), rand::random::<u64>());
            let v = client.post("/api/rollcalls", &body, Some(&key)).await?;
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
                print_status(&v);
                if let Ok(t) = client
                    .get_json(&format!("/api/rollcalls/{id}/trigger"))
                    .await
                {
                    for r in t["telegrams"].as_array().into_iter().flatten() {
                        println!("気象庁情報 / JMA: {}", trigger_line(r));
                    }
                }
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
    // The routes the planner weighed, fastest first (the first is the one it will use).
    if let Some(alts) = e["plan"]["alternatives"].as_array().filter(|a| a.len() > 1) {
        for a in alts {
            println!(
                "  {:<10} {:>7} requests  {}",
                a["route"].as_str().unwrap_or("?"),
                a["requests"],
                human_secs(a["seconds_to_all_notified"].as_f64().unwrap_or(0.0))
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
    if let Some(depts) = v["progress"]["by_department"].as_object() {
        if !depts.is_empty() {
            println!(
                "\n{:<16} {:>6} {:>6} {:>6}",
                "所属", "対象", "確認済", "要電話"
            );
        }
        for (name, c) in depts {
            let confirmed = c["read"].as_i64().unwrap_or(0) + c["answered"].as_i64().unwrap_or(0);
            println!(
                "{:<16} {:>6} {:>6} {:>6}",
                name, c["total"], confirmed, c["to_call"]
            );
        }
    }
    if let Some(sh) = v["progress"]["by_shelter"].as_object() {
        for (name, c) in sh {
            let confirmed = c["read"].as_i64().unwrap_or(0) + c["answered"].as_i64().unwrap_or(0);
            println!(
                "避難所 {:<16} {:>3}/{:<3} {}",
                name,
                confirmed,
                c["total"],
                if confirmed == 0 {
                    "応答なし / silent"
                } else {
                    ""
                }
            );
        }
    }
}

async fn contacts(command: ContactsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ContactsCommand::Check { file } => match crate::contacts::load_file(&file) {
            Ok(dir) => {
                let shelters = dir
                    .contacts
                    .iter()
                    .filter(|c| c.kind == crate::contacts::ContactKind::ShelterPhone)
                    .count();
                println!(
                    "{}: OK — {} contacts ({} staff, {} shelter phones)",
                    file.display(),
                    dir.contacts.len(),
                    dir.contacts.len() - shelters,
                    shelters
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        ContactsCommand::Import { file, remote } => {
            let dir = match crate::contacts::load_file(&file) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("nothing was imported / 取り込みは行っていません");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let client = Client::new(&remote)?;
            let v = client
                .put("/api/contacts", &serde_json::to_value(&dir.contacts)?)
                .await?;
            println!("{}: imported {} contacts", file.display(), v["imported"]);
            Ok(ExitCode::SUCCESS)
        }
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
