//! Who does what in the simulated population: a [`Behaviour`] per chat handle (unknown to the
//! platform, reads after a delay, answers after a delay, or stays silent), and the
//! [`PopulationSpec`] that a scenario's `[simulation]` table uses to generate one.
//!
//! Invariant: [`Script::generate`] is a pure function of its inputs and the seed, so a demo or
//! benchmark run can be repeated exactly.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::ids::ChatHandle;

/// What one simulated person does with a message.
///
/// The default is a person the platform knows who never reads anything: the one case that
/// must always end on the phone-call list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// The platform does not know this user: sends get 404 `unknown_user` (permanent).
    pub unknown: bool,
    /// Clock time after receipt when a read receipt appears; `None` = never reads.
    pub read_after: Option<Duration>,
    /// A button tap / sticker / reply after this long. Answering implies reading: if no read
    /// is due earlier, a read receipt appears together with the answer.
    pub answer: Option<(Duration, SimAnswer)>,
    /// Answers after the first one (a sticker and a line of text after a tap), each at its
    /// own time after the message arrived.
    pub then: Vec<(Duration, SimAnswer)>,
}

impl Behaviour {
    /// Someone the platform does not know.
    pub fn unknown_user() -> Self {
        Self {
            unknown: true,
            ..Self::default()
        }
    }

    /// Someone who gets the message and never opens it.
    pub fn never_reads() -> Self {
        Self::default()
    }

    /// Someone who reads the message `d` after it arrives.
    pub fn reads_after(d: Duration) -> Self {
        Self {
            read_after: Some(d),
            ..Self::default()
        }
    }

    /// Adds an answer `d` after the message arrives.
    pub fn answering(mut self, d: Duration, answer: SimAnswer) -> Self {
        self.answer = Some((d, answer));
        self
    }

    /// Adds a later answer `d` after the message arrives.
    pub fn then_answering(mut self, d: Duration, answer: SimAnswer) -> Self {
        self.then.push((d, answer));
        self
    }
}

/// The kinds of answer a simulated person gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimAnswer {
    /// Taps the answer button with this value ("safe").
    Button(String),
    /// Sends the sticker with this id.
    Sticker(String),
    /// Types this reply.
    Reply(String),
}

/// A population script from a scenario's `[simulation]` table. Every key is optional; an
/// unknown key is an error so a typo does not silently fall back to a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopulationSpec {
    /// How many people the demo generates.
    pub population: usize,
    /// Share of the population that are shelter phones rather than staff (used by whoever
    /// generates the demo contacts; the script treats both alike).
    pub shelter_share: f64,
    /// Share of the people the platform knows who never read the message.
    pub never_read: f64,
    /// Median of the log-normal read delay.
    #[serde(with = "humantime_serde")]
    pub read_median: Duration,
    /// Spread of the log-normal read delay (sigma of the underlying normal).
    pub read_sigma: f64,
    /// Share of readers who tap an answer button soon after reading.
    pub answer_button: f64,
    /// Share of readers who send a sticker soon after reading.
    pub answer_sticker: f64,
    /// Share of the population the platform does not know (left the city, typo'd id).
    pub unknown_users: f64,
    /// Who answers what, in percent of the people who read: a button's value (`safe`,
    /// `need_help`), `text` (a free-text reply drawn from `texts`) or `sticker`; the rest only
    /// read. When given, it replaces `answer_button` and `answer_sticker`.
    pub answers: BTreeMap<String, f64>,
    /// Free-text replies for `text` answers (default: a few that ask for help and a few that
    /// do not).
    pub texts: Vec<String>,
}

/// Free-text replies a simulated person sends when the mix says `text` and none are given:
/// some ask for help, some only need reading.
pub const DEFAULT_TEXTS: &[&str] = &[
    "無事です。家族も大丈夫です",
    "道路が冠水していて出勤が遅れます",
    "足を怪我して家から出られない",
    "家が倒壊して閉じ込められた。助けて",
    "子どもを避難所に送ってから向かいます",
];

/// One kind of answer in an answer mix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MixKind {
    Button(String),
    Text,
    Sticker,
}

impl PopulationSpec {
    /// Reads an answer mix written as `safe=60,injured=5,need_help=2,text=5,sticker=10`
    /// (percent of the people who read; the rest only read).
    pub fn parse_answers(mix: &str) -> Result<BTreeMap<String, f64>, String> {
        let mut out = BTreeMap::new();
        for part in mix.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                format!("{part:?}: write value=percent, e.g. safe=60,injured=5,text=5,sticker=10")
            })?;
            let k = k.trim();
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            {
                return Err(format!(
                    "{k:?} is not an answer: use a button value (a-z, 0-9, '_', '-'), text or sticker"
                ));
            }
            let pct: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: {:?} is not a number of percent", v.trim()))?;
            if out.insert(k.to_string(), pct).is_some() {
                return Err(format!("{k:?} is given twice"));
            }
        }
        Ok(out)
    }

    /// The kinds of answer of the mix with their upper bounds in [0, 1) (cumulative shares).
    fn mix(&self) -> Vec<(f64, MixKind)> {
        let mut acc = 0.0;
        self.answers
            .iter()
            .map(|(k, pct)| {
                acc += pct / 100.0;
                let kind = match k.as_str() {
                    "text" => MixKind::Text,
                    "sticker" => MixKind::Sticker,
                    v => MixKind::Button(v.to_string()),
                };
                (acc, kind)
            })
            .collect()
    }
}

impl Default for PopulationSpec {
    fn default() -> Self {
        Self {
            population: 1000,
            shelter_share: 0.05,
            never_read: 0.08,
            read_median: Duration::from_secs(90),
            read_sigma: 0.9,
            answer_button: 0.35,
            answer_sticker: 0.1,
            unknown_users: 0.005,
            answers: BTreeMap::new(),
            texts: Vec::new(),
        }
    }
}

impl PopulationSpec {
    /// Refuses a spec that cannot describe a population, naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.population < 1 {
            return Err("simulation.population must be at least 1".into());
        }
        for (key, v) in [
            ("shelter_share", self.shelter_share),
            ("never_read", self.never_read),
            ("answer_button", self.answer_button),
            ("answer_sticker", self.answer_sticker),
            ("unknown_users", self.unknown_users),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "simulation.{key} = {v} is not a share between 0 and 1"
                ));
            }
        }
        if self.answer_button + self.answer_sticker > 1.0 {
            return Err(format!(
                "simulation.answer_button + simulation.answer_sticker = {} is more than 1",
                self.answer_button + self.answer_sticker
            ));
        }
        let mut total = 0.0;
        for (k, pct) in &self.answers {
            if !(pct.is_finite() && (0.0..=100.0).contains(pct)) {
                return Err(format!(
                    "simulation.answers.{k} = {pct} is not a percentage between 0 and 100"
                ));
            }
            total += pct;
        }
        if total > 100.0 + 1e-9 {
            return Err(format!(
                "simulation.answers add up to {total}%, more than 100"
            ));
        }
        if let Some(t) = self.texts.iter().find(|t| t.trim().is_empty()) {
            return Err(format!("simulation.texts has an empty reply {t:?}"));
        }
        if !self.read_sigma.is_finite() || self.read_sigma < 0.0 {
            return Err(format!(
                "simulation.read_sigma = {} must be zero or more",
                self.read_sigma
            ));
        }
        Ok(())
    }
}

/// Stickers a generated population picks from.
const STICKERS: [&str; 3] = ["sticker-ok", "sticker-thumbs-up", "sticker-bow"];

/// Longest generated delay: the log-normal tail is cut here so a wild draw cannot overflow a
/// timestamp or keep a demo waiting for days.
const MAX_DELAY: Duration = Duration::from_secs(6 * 3600);

/// Behaviours by chat handle. Handles without an entry follow the simulator's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script(HashMap<ChatHandle, Behaviour>);

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Draws a behaviour for each handle from `spec`. Readers who answer do so 5-60 s after
    /// reading; button answers pick uniformly among `buttons` (no buttons: no button taps).
    /// The same handles, spec, buttons and seed always give the same script.
    pub fn generate(
        handles: &[ChatHandle],
        spec: &PopulationSpec,
        buttons: &[String],
        seed: u64,
    ) -> Script {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut map = HashMap::with_capacity(handles.len());
        for h in handles {
            // Draw the same number of values for every handle so that one person's fate does
            // not shift everyone after them when a share changes.
            let b = spec.draw(Draws::new(&mut rng), buttons);
            map.insert(h.clone(), b);
        }
        Script(map)
    }

    /// Sets one person's behaviour, returning the one it replaces.
    pub fn insert(&mut self, handle: ChatHandle, behaviour: Behaviour) -> Option<Behaviour> {
        self.0.insert(handle, behaviour)
    }

    pub fn get(&self, handle: &ChatHandle) -> Option<&Behaviour> {
        self.0.get(handle)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ChatHandle, &Behaviour)> {
        self.0.iter()
    }
}

impl FromIterator<(ChatHandle, Behaviour)> for Script {
    fn from_iter<I: IntoIterator<Item = (ChatHandle, Behaviour)>>(iter: I) -> Self {
        Script(iter.into_iter().collect())
    }
}

/// The random numbers one person's behaviour is drawn from.
struct Draws {
    unknown: f64,
    read: f64,
    /// A standard normal draw for the read delay.
    z: f64,
    answer: f64,
    lag: Duration,
    pick: usize,
}

impl Draws {
    fn new(rng: &mut SmallRng) -> Self {
        Self {
            unknown: rng.gen(),
            read: rng.gen(),
            z: standard_normal(rng),
            answer: rng.gen(),
            lag: Duration::from_millis(rng.gen_range(5_000..=60_000)),
            pick: rng.gen(),
        }
    }
}

impl PopulationSpec {
    /// One person's behaviour from their draws; `buttons` are the values they can tap.
    fn draw(&self, d: Draws, buttons: &[String]) -> Behaviour {
        if d.unknown < self.unknown_users {
            return Behaviour::unknown_user();
        }
        if d.read < self.never_read {
            return Behaviour::never_reads();
        }
        let secs = self.read_median.as_secs_f64() * (self.read_sigma * d.z).exp();
        let read = Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY);
        let b = Behaviour::reads_after(read);
        let at = read + d.lag;
        if !self.answers.is_empty() {
            let kind = self
                .mix()
                .into_iter()
                .find(|(upto, _)| d.answer < *upto)
                .map(|(_, k)| k);
            return match kind {
                // A value this person was not sent (a shelter phone has its own buttons):
                // they only read.
                Some(MixKind::Button(v)) if buttons.contains(&v) => {
                    b.answering(at, SimAnswer::Button(v))
                }
                Some(MixKind::Button(_)) | None => b,
                Some(MixKind::Sticker) => b.answering(
                    at,
                    SimAnswer::Sticker(STICKERS[d.pick % STICKERS.len()].into()),
                ),
                Some(MixKind::Text) => {
                    let text = if self.texts.is_empty() {
                        DEFAULT_TEXTS[d.pick % DEFAULT_TEXTS.len()].to_string()
                    } else {
                        self.texts[d.pick % self.texts.len()].clone()
                    };
                    b.answering(at, SimAnswer::Reply(text))
                }
            };
        }
        if d.answer < self.answer_button {
            if !buttons.is_empty() {
                let value = buttons[d.pick % buttons.len()].clone();
                return b.answering(at, SimAnswer::Button(value));
            }
            b
        } else if d.answer < self.answer_button + self.answer_sticker {
            let id = STICKERS[d.pick % STICKERS.len()].to_string();
            b.answering(at, SimAnswer::Sticker(id))
        } else {
            b
        }
    }

    /// One person's behaviour drawn from `seed` and their chat id alone, for a population
    /// whose members are not known in advance (`anpi simulator` meets them as messages come).
    pub fn draw_for(&self, handle: &ChatHandle, buttons: &[String], seed: u64) -> Behaviour {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        handle.as_str().hash(&mut h);
        let mut rng = SmallRng::seed_from_u64(seed ^ h.finish());
        self.draw(Draws::new(&mut rng), buttons)
    }
}

/// One draw from N(0, 1) by Box-Muller (rand 0.8 alone has no normal distribution).
fn standard_normal(rng: &mut SmallRng) -> f64 {
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handles(n: usize) -> Vec<ChatHandle> {
        (0..n)
            .map(|i| ChatHandle::parse(&format!("sim-S{i:05}")).unwrap())
            .collect()
    }

    fn buttons() -> Vec<String> {
        vec!["safe".into(), "injured".into(), "available".into()]
    }

    #[test]
    fn generate_is_deterministic_per_seed() {
        let hs = handles(2_000);
        let spec = PopulationSpec::default();
        let a = Script::generate(&hs, &spec, &buttons(), 7);
        let b = Script::generate(&hs, &spec, &buttons(), 7);
        let c = Script::generate(&hs, &spec, &buttons(), 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 2_000);
    }

    #[test]
    fn generated_shares_match_the_spec_for_ten_thousand_people() {
        let hs = handles(10_000);
        let spec = PopulationSpec {
            unknown_users: 0.02,
            ..PopulationSpec::default()
        };
        let s = Script::generate(&hs, &spec, &buttons(), 42);
        let all: Vec<&Behaviour> = hs.iter().map(|h| s.get(h).unwrap()).collect();
        let unknown = all.iter().filter(|b| b.unknown).count() as f64;
        let known: Vec<&&Behaviour> = all.iter().filter(|b| !b.unknown).collect();
        let never = known.iter().filter(|b| b.read_after.is_none()).count() as f64;
        let readers: Vec<&&&Behaviour> = known.iter().filter(|b| b.read_after.is_some()).collect();
        let button = readers
            .iter()
            .filter(|b| matches!(b.answer, Some((_, SimAnswer::Button(_)))))
            .count() as f64;
        let sticker = readers
            .iter()
            .filter(|b| matches!(b.answer, Some((_, SimAnswer::Sticker(_)))))
            .count() as f64;
        let near = |got: f64, want: f64, tol: f64, what: &str| {
            assert!(
                (got - want).abs() <= tol,
                "{what}: got {got:.4}, want {want}"
            );
        };
        near(unknown / 10_000.0, 0.02, 0.005, "unknown");
        near(never / known.len() as f64, 0.08, 0.012, "never read");
        near(button / readers.len() as f64, 0.35, 0.02, "button");
        near(sticker / readers.len() as f64, 0.10, 0.015, "sticker");

        let mut delays: Vec<Duration> = readers.iter().map(|b| b.read_after.unwrap()).collect();
        delays.sort();
        let median = delays[delays.len() / 2].as_secs_f64();
        assert!(
            (80.0..=100.0).contains(&median),
            "median read delay {median}"
        );
        // Answering implies having read first.
        for b in &readers {
            if let Some((d, _)) = &b.answer {
                assert!(*d > b.read_after.unwrap());
            }
        }
    }

    #[test]
    fn without_buttons_nobody_taps_one() {
        let hs = handles(1_000);
        let s = Script::generate(&hs, &PopulationSpec::default(), &[], 1);
        assert!(s
            .iter()
            .all(|(_, b)| !matches!(b.answer, Some((_, SimAnswer::Button(_))))));
    }

    #[test]
    fn validation_names_the_bad_key() {
        assert!(PopulationSpec::default().validate().is_ok());
        let bad = |f: fn(&mut PopulationSpec)| {
            let mut s = PopulationSpec::default();
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert!(bad(|s| s.population = 0).contains("population"));
        assert!(bad(|s| s.never_read = 1.5).contains("never_read"));
        assert!(bad(|s| s.unknown_users = -0.1).contains("unknown_users"));
        assert!(bad(|s| s.shelter_share = f64::NAN).contains("shelter_share"));
        assert!(bad(|s| {
            s.answer_button = 0.7;
            s.answer_sticker = 0.4;
        })
        .contains("more than 1"));
        assert!(bad(|s| s.read_sigma = -1.0).contains("read_sigma"));
    }

    #[test]
    fn toml_takes_humantime_durations_and_defaults_the_rest() {
        let s: PopulationSpec = toml::from_str(
            r#"
            population = 250
            read_median = "4m"
            never_read = 0.2
            "#,
        )
        .unwrap();
        assert_eq!(s.population, 250);
        assert_eq!(s.read_median, Duration::from_secs(240));
        assert_eq!(s.never_read, 0.2);
        assert_eq!(s.read_sigma, 0.9);
        assert_eq!(s.answer_button, 0.35);
    }

    #[test]
    fn an_answer_mix_gives_its_shares_of_the_readers_and_texts_verbatim() {
        let hs = handles(10_000);
        let spec = PopulationSpec {
            never_read: 0.0,
            unknown_users: 0.0,
            answers: PopulationSpec::parse_answers(
                "safe=60, injured=5,need_help=2,text=5,sticker=10",
            )
            .unwrap(),
            texts: vec!["閉じ込められた".into()],
            ..PopulationSpec::default()
        };
        spec.validate().unwrap();
        let s = Script::generate(
            &hs,
            &spec,
            &["safe".into(), "injured".into(), "need_help".into()],
            3,
        );
        let share = |f: &dyn Fn(&Behaviour) -> bool| {
            hs.iter().filter(|h| f(s.get(h).unwrap())).count() as f64 / 10_000.0
        };
        let button = |v: &'static str| move |b: &Behaviour| matches!(&b.answer, Some((_, SimAnswer::Button(x))) if x == v);
        assert!((share(&button("safe")) - 0.60).abs() < 0.02);
        assert!((share(&button("injured")) - 0.05).abs() < 0.01);
        assert!((share(&button("need_help")) - 0.02).abs() < 0.006);
        let texts = share(
            &|b| matches!(&b.answer, Some((_, SimAnswer::Reply(t))) if t == "閉じ込められた"),
        );
        assert!((texts - 0.05).abs() < 0.01, "{texts}");
        let none = share(&|b| b.answer.is_none());
        assert!((none - 0.18).abs() < 0.02, "{none}");
    }

    #[test]
    fn an_answer_mix_is_checked_and_draws_are_stable_per_person() {
        assert!(PopulationSpec::parse_answers("safe=60,safe=1")
            .unwrap_err()
            .contains("twice"));
        assert!(PopulationSpec::parse_answers("safe")
            .unwrap_err()
            .contains("value=percent"));
        assert!(PopulationSpec::parse_answers("Safe=1")
            .unwrap_err()
            .contains("not an answer"));
        let too_much = PopulationSpec {
            answers: PopulationSpec::parse_answers("safe=90,text=20").unwrap(),
            ..PopulationSpec::default()
        };
        assert!(too_much.validate().unwrap_err().contains("more than 100"));
        let spec = PopulationSpec {
            answers: PopulationSpec::parse_answers("text=100").unwrap(),
            never_read: 0.0,
            unknown_users: 0.0,
            ..PopulationSpec::default()
        };
        let h = &handles(1)[0];
        let a = spec.draw_for(h, &[], 9);
        assert_eq!(a, spec.draw_for(h, &[], 9));
        assert!(matches!(a.answer, Some((_, SimAnswer::Reply(_)))));
    }

    #[test]
    fn toml_rejects_unknown_keys() {
        let err = toml::from_str::<PopulationSpec>("populaton = 10\n").unwrap_err();
        assert!(err.to_string().contains("populaton"), "{err}");
    }
}
