//! Who does what in the simulated population: a [`Behaviour`] per chat handle (unknown to the
//! platform, reads after a delay, answers after a delay, or stays silent), and the
//! [`PopulationSpec`] that a scenario's `[simulation]` table uses to generate one.
//!
//! Invariant: [`Script::generate`] is a pure function of its inputs and the seed, so a demo or
//! benchmark run can be repeated exactly.

use std::collections::HashMap;
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
        let median = spec.read_median.as_secs_f64();
        let mut map = HashMap::with_capacity(handles.len());
        for h in handles {
            // Draw the same number of values for every handle so that one person's fate does
            // not shift everyone after them when a share changes.
            let u_unknown: f64 = rng.gen();
            let u_read: f64 = rng.gen();
            let z = standard_normal(&mut rng);
            let u_answer: f64 = rng.gen();
            let answer_lag = Duration::from_millis(rng.gen_range(5_000..=60_000));
            let pick: usize = rng.gen();

            let b = if u_unknown < spec.unknown_users {
                Behaviour::unknown_user()
            } else if u_read < spec.never_read {
                Behaviour::never_reads()
            } else {
                let secs = median * (spec.read_sigma * z).exp();
                let read = Duration::try_from_secs_f64(secs)
                    .unwrap_or(MAX_DELAY)
                    .min(MAX_DELAY);
                let mut b = Behaviour::reads_after(read);
                if u_answer < spec.answer_button {
                    if !buttons.is_empty() {
                        let value = buttons[pick % buttons.len()].clone();
                        b = b.answering(read + answer_lag, SimAnswer::Button(value));
                    }
                } else if u_answer < spec.answer_button + spec.answer_sticker {
                    let id = STICKERS[pick % STICKERS.len()].to_string();
                    b = b.answering(read + answer_lag, SimAnswer::Sticker(id));
                }
                b
            };
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
    fn toml_rejects_unknown_keys() {
        let err = toml::from_str::<PopulationSpec>("populaton = 10\n").unwrap_err();
        assert!(err.to_string().contains("populaton"), "{err}");
    }
}
