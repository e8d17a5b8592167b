//! `anpi demo`: a whole roll call in one process — a temporary SQLite file, the built-in chat
//! simulator with a scripted population, and a clock sped up so the 5-minute deadline passes
//! in seconds. It shows live progress, then the phone-call list and a summary per department.
//!
//! It goes through the same `Application` as `anpi serve`; only the clock and the chat server
//! are stand-ins. `--provider lineworks` runs the real LINE WORKS adapter against the LINE
//! WORKS-compatible stand-in ([`crate::simulator::lineworks`]), limits counted in clock time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::clock::{from_millis, ScaledClock, SharedClock};
use crate::config::Config;
use crate::contacts::synthetic;
use crate::escalation::{pad, render_table, ListScope};
use crate::ids::ChatHandle;
use crate::providers::RateLimit;
use crate::scenario::Scenario;
use crate::simulator::{Behaviour, Faults, PopulationSpec, Script, SimConfig, Simulator};
use crate::startup::Application;

/// The drill scenario shipped with anpi, used when no --scenario is given.
const BUILTIN_DRILL: &str = include_str!("../scenarios/drill.toml");

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many simulated staff and shelter phones.
    #[arg(long, default_value_t = 1000)]
    pub size: usize,
    /// How many times faster than real time the clock runs (60: a 5-minute deadline passes
    /// in 5 seconds).
    #[arg(long, default_value_t = 60.0)]
    pub speed: f64,
    /// Seed for the simulated population: the same seed gives the same people and read times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Scenario file (default: the built-in drill).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// The simulated platform's rate limit, requests per minute (0 = none).
    #[arg(long, default_value_t = 0)]
    pub rate_limit_per_minute: u32,
    /// Keep the database here instead of in a temporary folder.
    #[arg(long)]
    pub database: Option<PathBuf>,
    /// Print plain progress lines instead of progress bars.
    #[arg(long)]
    pub plain: bool,
    /// Which provider: `simulator`, or `lineworks` (the real adapter against a stand-in).
    #[arg(long, default_value = "simulator")]
    pub provider: String,
    /// LINE WORKS: no must-read board (the planner then chooses rooms or 1:1).
    #[arg(long)]
    pub no_board: bool,
    /// LINE WORKS: give every department a bot room.
    #[arg(long)]
    pub rooms: bool,
    /// Who answers what, in percent of the people who read (button values, `text`,
    /// `sticker`), e.g. safe=60,injured=5,need_help=2,text=5,sticker=10. Default: the
    /// scenario's [simulation] answers.
    #[arg(long)]
    pub answers: Option<String>,
    /// A free-text reply for `text` answers (repeat for several).
    #[arg(long = "text")]
    pub texts: Vec<String>,
}

/// What a demo run measured, for the tests.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The planner's estimate, seconds of clock time.
    pub estimate_seconds: f64,
    pub route: crate::providers::RouteKind,
    /// From start to the last message out, clock time.
    pub measured_seconds: Option<f64>,
    /// Requests the stand-in refused because anpi went over its limit.
    pub limit_exceeded: u64,
    pub to_call: i64,
    /// Rows in the printed action list; always `to_call + urgent`.
    pub listed: usize,
    /// Urgent answers HQ has not closed (on the list besides those to call).
    pub urgent: i64,
    pub confirmed: i64,
}

/// The stand-in chat server a demo talks to.
enum Stand {
    Sim(crate::simulator::SimHandle),
    Lw(crate::simulator::lineworks::LwSimHandle),
}

pub async fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    run_measured(args).await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// Runs the demo and returns what it measured.
pub async fn run_measured(args: DemoArgs) -> anyhow::Result<DemoReport> {
    if !matches!(args.provider.as_str(), "simulator" | "lineworks") {
        anyhow::bail!("--provider {:?}: use simulator or lineworks", args.provider);
    }
    if args.size == 0 || args.size > 1_000_000 {
        anyhow::bail!("--size {} must be between 1 and 1000000", args.size);
    }
    if !(args.speed.is_finite() && args.speed >= 1.0 && args.speed <= 10_000.0) {
        anyhow::bail!("--speed {} must be between 1 and 10000", args.speed);
    }
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::parse(BUILTIN_DRILL, "scenarios/drill.toml (built in)")?,
    };
    let mut spec: PopulationSpec = scenario.simulation.clone().unwrap_or_default();
    spec.population = args.size;
    if let Some(mix) = &args.answers {
        spec.answers =
            PopulationSpec::parse_answers(mix).map_err(|e| anyhow::anyhow!("--answers: {e}"))?;
        // A value that is no button of the scenario would silently make people only read.
        let known: Vec<&str> = scenario
            .buttons
            .iter()
            .chain(&scenario.shelter_buttons)
            .map(|b| b.value.as_str())
            .collect();
        if let Some(bad) = spec
            .answers
            .keys()
            .find(|k| !matches!(k.as_str(), "text" | "sticker") && !known.contains(&k.as_str()))
        {
            anyhow::bail!(
                "--answers: {bad:?} is not a button of scenario {:?}; use one of {}, text or sticker",
                scenario.name,
                known.join(", ")
            );
        }
    }
    if !args.texts.is_empty() {
        spec.texts = args.texts.clone();
    }
    spec.validate().map_err(anyhow::Error::msg)?;

    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let db_path = args
        .database
        .clone()
        .unwrap_or_else(|| tmp.path().join("anpi-demo.db"));
    let epoch = Utc::now();
    let scaled = ScaledClock::new(epoch, args.speed);
    let clock: SharedClock = Arc::new(scaled.clone());

    let mut directory = synthetic::generate(args.size, args.seed);
    if args.provider == "lineworks" {
        // The same stand-in person, known to LINE WORKS by the same id.
        for c in &mut directory.contacts {
            if let Some(h) = c.chat.get("simulator").cloned() {
                c.chat.insert("lineworks".into(), h);
            }
        }
    }
    let handles: Vec<ChatHandle> = directory
        .contacts
        .iter()
        .filter_map(|c| c.chat.get("simulator").cloned())
        .collect();
    let script = population_script(&directory.contacts, &scenario, &spec, args.seed);
    let rate_limit = (args.rate_limit_per_minute > 0).then(|| RateLimit {
        requests: args.rate_limit_per_minute,
        per: Duration::from_secs(60),
    });
    let (stand, config) = if args.provider == "lineworks" {
        let lw = lineworks_stand(
            &args,
            &directory.contacts,
            &handles,
            script,
            &clock,
            rate_limit,
        )
        .await?;
        let key_file = tmp.path().join("lineworks-test-key.pem");
        std::fs::write(&key_file, crate::simulator::lineworks::TEST_PRIVATE_KEY_PEM)
            .context("writing the test key")?;
        let c = lw.config();
        let mut rooms = String::new();
        for channel in c.rooms.keys() {
            // Channel ids are "room-<department>".
            let dept = channel.trim_start_matches("room-");
            rooms.push_str(&format!("\"{dept}\" = \"{channel}\"\n"));
        }
        let config = Config::from_toml(&format!(
            r#"
            provider = "lineworks"
            [server]
            listen = "127.0.0.1:0"
            [database]
            url = "sqlite://{}"
            [time]
            speed = {}
            epoch = "{}"
            [providers.lineworks]
            api_url = "{}"
            token_url = "{}"
            client_id = "{}"
            client_secret = "{}"
            service_account = "{}"
            private_key_file = "{}"
            bot_id = "{}"
            bot_secret = "{}"
            {}
            rate_limit_per_minute = {}
            [providers.lineworks.rooms]
            {}
            "#,
            db_path.display(),
            args.speed,
            epoch.to_rfc3339(),
            lw.api_base(),
            lw.token_url(),
            c.client_id,
            c.client_secret,
            c.service_account,
            key_file.display(),
            c.bot_id,
            c.bot_secret,
            if args.no_board {
                String::new()
            } else {
                format!("board_id = \"{}\"", c.board_id)
            },
            c.rate_limit.requests,
            rooms,
        ))?;
        (Stand::Lw(lw), config)
    } else {
        let sim = Simulator::start(
            SimConfig {
                token: "demo-token".into(),
                rate_limit,
                faults: Faults::default(),
                default_behaviour: Behaviour::default(),
                population: None,
            },
            script,
            clock.clone(),
        )
        .await
        .context("starting the chat simulator")?;
        let config = Config::from_toml(&format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [database]
            url = "sqlite://{}"
            [time]
            speed = {}
            epoch = "{}"
            [providers.simulator]
            url = "{}"
            token = "demo-token"
            rate_limit_per_minute = {}
            poll_wait = "200ms"
            "#,
            db_path.display(),
            args.speed,
            epoch.to_rfc3339(),
            sim.base_url(),
            args.rate_limit_per_minute,
        ))?;
        (Stand::Sim(sim), config)
    };
    let tz = config.zone()?;
    let app = Application::build_with_clock(config, clock.clone()).await?;
    if let Stand::Lw(lw) = &stand {
        lw.set_callback_url(format!("http://{}/callbacks/lineworks", app.local_addr()));
    }
    let hq = app.hq();
    hq.import_contacts(&directory.contacts).await?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(cancel.clone()));

    println!(
        "anpi demo — {} 人 (職員と避難所の電話), 時計 {}倍速 / clock x{}",
        args.size, args.speed, args.speed
    );
    let started_wall = Instant::now();
    let (rc, est) = hq.start(&scenario, None, None).await?;
    println!(
        "安否確認 #{} 「{}」 締切 {} 秒 / deadline {} s; 送信完了見込み {:.1} 秒 / all sent in ~{:.1}s (sim time)",
        rc.id,
        rc.title,
        rc.deadline_ms / 1000,
        rc.deadline_ms / 1000,
        est.seconds_to_all_sent,
        est.seconds_to_all_sent
    );
    println!(
        "配信計画 / plan: {} — 全員に届くまで 約 {:.0} 秒 / everyone notified in ~{:.0}s",
        est.plan.describe(),
        est.seconds_to_all_sent,
        est.seconds_to_all_sent
    );
    println!(
        "メッセージ / message:\n  {}\n",
        rc.message.replace('\n', "\n  ")
    );

    let multi = MultiProgress::with_draw_target(if args.plain {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let style = ProgressStyle::with_template("{prefix:>22} [{bar:40}] {pos:>6}/{len:6} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = |name: &str| {
        let b = multi.add(ProgressBar::new(rc.recipients.max(0) as u64));
        b.set_style(style.clone());
        b.set_prefix(name.to_string());
        b
    };
    let b_sent = bar("送信 sent");
    let b_read = bar("既読 read");
    let b_ans = bar("回答 answered");
    let b_esc = bar("要電話 to call");
    let grace = chrono::Duration::seconds(30);
    let mut all_sent_at: Option<(i64, Duration)> = None;
    let mut last_plain = Instant::now() - Duration::from_secs(10);
    loop {
        let st = hq.status(rc.id).await?;
        let o = &st.progress.overall;
        let elapsed = clock.now() - from_millis(rc.created_at);
        b_sent.set_position((o.delivered() + o.failed) as u64);
        b_read.set_position(o.confirmed() as u64);
        b_ans.set_position(o.answered as u64);
        b_esc.set_position(o.to_call as u64);
        b_esc.set_message(format!(
            "経過 {}:{:02}",
            elapsed.num_minutes(),
            elapsed.num_seconds() % 60
        ));
        if args.plain && last_plain.elapsed() >= Duration::from_secs(1) {
            last_plain = Instant::now();
            println!(
                "  {}:{:02} sent {} read {} answered {} to-call {} failed {}",
                elapsed.num_minutes(),
                elapsed.num_seconds() % 60,
                o.delivered(),
                o.confirmed(),
                o.answered,
                o.to_call,
                o.failed
            );
        }
        let unsent = o.pending + o.sending;
        if unsent == 0 && all_sent_at.is_none() {
            let last = st.progress.last_sent_at.unwrap_or(rc.created_at);
            all_sent_at = Some((last - rc.created_at, started_wall.elapsed()));
        }
        let done = unsent == 0
            && st.progress.next_deadline_at.is_none()
            && st
                .progress
                .last_sent_at
                .is_none_or(|t| clock.now() >= from_millis(t + rc.deadline_ms) + grace);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for b in [&b_sent, &b_read, &b_ans, &b_esc] {
        b.abandon();
    }
    // The summary and the list are read from one moment: with the daemon stopped no late
    // read can land between them (reads keep arriving after the deadline, and at 60x a late
    // read between two queries took people off the list after the summary had counted them).
    cancel.cancel();
    let _ = running.await;
    let status = hq.status(rc.id).await?;
    let list = hq.call_list(rc.id).await?;
    let listed = list.iter().filter(|e| e.to_call()).count();
    let now = clock.now_millis();
    println!(
        "\n要対応 / HQ's action list (#{}): 救助要請・負傷などの回答が先、次に応答のない避難所、\
         未読、送信できなかった人 / urgent answers first, then silent shelters, never read, not sent",
        rc.id
    );
    print!("{}", render_table(&list, ListScope::ToCall, now, tz));
    print_actions(&list);
    print_summary(&status.progress);
    if let Some((sim_ms, wall)) = all_sent_at {
        println!(
            "\n全員へ送信完了 / all sent: {:.1}s after start (sim time, estimate {:.1}s), {:.2}s real",
            sim_ms as f64 / 1000.0,
            est.seconds_to_all_sent,
            wall.as_secs_f64()
        );
        if args.speed > 1.0 {
            println!(
                "  (the demo clock runs {}x: a platform's rate limit is paced on it, but anpi's own \
                 work shows {}x longer on it than it took)",
                args.speed, args.speed
            );
        }
    }
    let limit_exceeded = match &stand {
        Stand::Sim(sim) => {
            let stats = sim.stats();
            println!(
                "simulator: {} messages accepted, {} duplicates, {} over the rate limit",
                stats.accepted, stats.duplicates, stats.limit_exceeded
            );
            stats.limit_exceeded
        }
        Stand::Lw(lw) => {
            let st = lw.stats();
            println!(
                "LINE WORKS stand-in: {} board posts, {} room messages, {} 1:1 messages, {} readers pages, {} callbacks, {} tokens, {} over the rate limit",
                st.board_posts, st.channel_messages, st.user_messages, st.readers_requests,
                st.callbacks_sent, st.tokens_issued, st.limit_exceeded
            );
            st.limit_exceeded
        }
    };
    match stand {
        Stand::Sim(sim) => sim.shutdown().await,
        Stand::Lw(lw) => lw.shutdown(),
    }
    Ok(DemoReport {
        estimate_seconds: est.seconds_to_all_sent,
        route: est.plan.route,
        measured_seconds: all_sent_at.map(|(ms, _)| ms as f64 / 1000.0),
        limit_exceeded,
        to_call: status.progress.overall.to_call,
        urgent: status.progress.overall.urgent_open,
        listed,
        confirmed: status.progress.overall.confirmed(),
    })
}

/// Starts the LINE WORKS stand-in for the demo population: every contact gets a LINE WORKS
/// id (the same handle), every department a room when `--rooms` is given.
async fn lineworks_stand(
    args: &DemoArgs,
    contacts: &[crate::contacts::Contact],
    handles: &[ChatHandle],
    script: Script,
    clock: &SharedClock,
    rate_limit: Option<RateLimit>,
) -> anyhow::Result<crate::simulator::lineworks::LwSimHandle> {
    use crate::simulator::lineworks::{self as lws, LwSimConfig};
    let mut c = LwSimConfig::new(handles.to_vec());
    if let Some(l) = rate_limit {
        c.rate_limit = l;
    }
    if args.rooms {
        for contact in contacts {
            if let (Some(d), Some(h)) = (&contact.department, contact.chat.get("simulator")) {
                c.rooms
                    .entry(format!("room-{d}"))
                    .or_default()
                    .push(h.clone());
            }
        }
    }
    lws::start(c, script, clock.clone())
        .await
        .context("starting the LINE WORKS stand-in")
}

/// Staff answer with the scenario's buttons as the spec's mix says; shelter phones with the
/// shelter buttons: mostly the first "ok" one, a few of the others.
fn population_script(
    contacts: &[crate::contacts::Contact],
    scenario: &Scenario,
    spec: &PopulationSpec,
    seed: u64,
) -> Script {
    use crate::answers::AnswerLevel;
    use crate::contacts::ContactKind;
    let handles = |kind: ContactKind| -> Vec<ChatHandle> {
        contacts
            .iter()
            .filter(|c| c.kind == kind)
            .filter_map(|c| c.chat.get("simulator").cloned())
            .collect()
    };
    let values = |choices: &[crate::answers::Choice]| -> Vec<String> {
        choices.iter().map(|b| b.value.clone()).collect()
    };
    let staff = Script::generate(
        &handles(ContactKind::Staff),
        spec,
        &values(&scenario.buttons),
        seed,
    );
    let mut shelter_spec = spec.clone();
    shelter_spec.answers = BTreeMap::new();
    let mut first_ok = true;
    for c in &scenario.shelter_buttons {
        let pct = match c.level {
            AnswerLevel::Ok if first_ok => {
                first_ok = false;
                70.0
            }
            AnswerLevel::Ok => 0.0,
            AnswerLevel::Attention => 8.0,
            AnswerLevel::Urgent => 4.0,
        };
        shelter_spec.answers.insert(c.value.clone(), pct);
    }
    let shelters = Script::generate(
        &handles(ContactKind::ShelterPhone),
        &shelter_spec,
        &values(&scenario.shelter_buttons),
        seed.wrapping_add(1),
    );
    staff
        .iter()
        .chain(shelters.iter())
        .map(|(h, b)| (h.clone(), b.clone()))
        .collect()
}

/// The action list's counts, from the list itself, so they always agree with it.
fn print_actions(list: &[crate::rollcall::CallListEntry]) {
    use crate::rollcall::Action;
    let n = |a: Action| list.iter().filter(|e| e.action() == Some(a)).count();
    let total = list.iter().filter(|e| e.to_call()).count();
    println!(
        "要対応 {total} 名 / {total} need HQ: 救助要請・負傷 {} / urgent, 避難所応答なし {} / silent \
         shelters, 未読 {} / never read, 送信できず {} / not sent",
        n(Action::Urgent),
        n(Action::SilentShelter),
        n(Action::NeverRead),
        n(Action::NotSent)
    );
}

fn print_summary(p: &crate::rollcall::Progress) {
    let o = &p.overall;
    println!(
        "\n集計 / summary: 対象 {}  既読 {}  回答 {}  送信失敗 {}  要電話 {}  要対応の回答 {}  要確認の回答 {}",
        o.total,
        o.confirmed(),
        o.answered,
        o.failed,
        o.to_call,
        o.urgent_open,
        o.answered_attention
    );
    println!(
        "\n{:<14} {:>6} {:>8} {:>6} {:>8}",
        "所属 / dept", "対象", "確認済", "要電話", "確認率"
    );
    let row = |name: &str, c: &crate::rollcall::Counts| {
        let rate = if c.total > 0 {
            100.0 * c.confirmed() as f64 / c.total as f64
        } else {
            0.0
        };
        println!(
            "{}{:>6} {:>8} {:>6} {:>7.0}%",
            pad(name, 15),
            c.total,
            c.confirmed(),
            c.to_call,
            rate
        );
    };
    for (name, c) in &p.by_department {
        row(name, c);
    }
    if !p.by_shelter.is_empty() {
        let silent: Vec<&String> = p
            .shelters_silent_first()
            .into_iter()
            .filter(|(_, c)| c.shelter_silent())
            .map(|(n, _)| n)
            .collect();
        // Shelter phones only: staff assigned to a shelter are counted under their department.
        let phones = p.overall.shelter_phones;
        let silent_phones: i64 = p.by_shelter.values().map(|c| c.shelter_phones_silent).sum();
        println!(
            "{}{:>6} {:>8} {:>6}",
            pad("避難所の電話 / shelter phones", 15),
            phones,
            phones - silent_phones,
            silent_phones
        );
        if !silent.is_empty() {
            println!(
                "避難所 応答なし / silent shelters ({}): {}",
                silent.len(),
                silent
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !p.answers.is_empty() {
        let answers: BTreeMap<_, _> = p.answers.iter().collect();
        println!(
            "\n回答 / answers: {}",
            answers
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
