//! The dispatch planner: from a provider's declared routes and limits and the shape of the
//! audience, how long reaching everyone takes by each route, and which plan notifies everyone
//! first. Provider-neutral: it reads [`Capabilities`] and [`Route`]s, never a provider's name.
//!
//! A route that notifies without buttons (a must-read board post) is followed by the answer
//! buttons through the fastest route that carries them (department rooms where the whole
//! room is in the audience and under the push limit, else 1:1 talk, shelter phones first, then
//! by call priority), so a plan has two times: everyone notified, and everyone able to answer.
//!
//! Invariant: an estimate uses the same pacing model as the dispatcher's token bucket
//! ([`crate::ratelimit`]: a burst of a tenth of the limit, then 90% of it), so what HQ is told
//! before a roll call is what the dispatcher then does; a plan never needs more requests per
//! window than a route's limit allows.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::contacts::{Contact, ContactKind};
use crate::providers::{Capabilities, RateLimit, Route, RouteKind};
use crate::rollcall::{Progress, NO_DEPARTMENT, NO_SHELTER};

/// How many can be reached, per group, as the planner needs it (who is in a roll call at
/// all is [`crate::scenario::Audience`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// People with a chat id on the provider.
    pub reachable: usize,
    /// Reachable people per group ([`group_key`]: a department, or a shelter).
    pub by_group: BTreeMap<String, usize>,
    /// Everyone reachable on the provider, per group: who a board post or a room message
    /// really reaches. A board post is used only when the audience is everyone, and a room
    /// only when the audience holds the whole group, so a drill for one department never
    /// notifies another. Empty: the audience is the whole population.
    pub population: BTreeMap<String, usize>,
}

impl Reach {
    /// The planner's view of `audience` (contacts) on `provider`, with `everyone` (every
    /// contact) as the population. Groups are keyed as roll-call progress keys them (see
    /// [`group_key`]), so a plan worked out later from a roll call's progress agrees.
    pub fn of<'a>(
        audience: impl Iterator<Item = &'a Contact>,
        everyone: &[Contact],
        provider: &str,
    ) -> Self {
        Self::within(
            Self::population(everyone.iter(), provider),
            audience,
            provider,
        )
    }

    /// Every contact's count by group on `provider`: the population [`Reach::within`] takes.
    pub fn population<'a>(
        everyone: impl Iterator<Item = &'a Contact>,
        provider: &str,
    ) -> BTreeMap<String, usize> {
        count_by_group(everyone, provider)
    }

    /// [`Reach::of`] with the population counted beforehand (so the contacts need not be
    /// kept beside the audience taken from them).
    pub fn within<'a>(
        population: BTreeMap<String, usize>,
        audience: impl Iterator<Item = &'a Contact>,
        provider: &str,
    ) -> Self {
        let by_group = count_by_group(audience, provider);
        Self {
            population,
            reachable: by_group.values().sum(),
            by_group,
        }
    }

    /// Counts in one contact of the directory: into the population, and into the reach too
    /// when it is in the audience. [`Reach::within`] a contact at a time, for a directory
    /// read in pages.
    pub fn count(&mut self, c: &Contact, in_audience: bool, provider: &str) {
        let Some(key) = reachable_group(c, provider) else {
            return;
        };
        if in_audience {
            *self.by_group.entry(key.clone()).or_insert(0) += 1;
            self.reachable += 1;
        }
        *self.population.entry(key).or_insert(0) += 1;
    }

    /// The planner's view of a roll call from its progress (for a roll call HQ has not
    /// planned): who is not yet escalated is reachable.
    pub fn from_progress(p: &Progress, everyone: &[Contact], provider: &str) -> Self {
        let reachable = |c: &crate::rollcall::Counts| (c.total - c.escalated).max(0) as usize;
        let by_group: BTreeMap<String, usize> = p
            .by_department
            .iter()
            .map(|(g, c)| (g.clone(), reachable(c)))
            .chain(
                p.by_shelter
                    .iter()
                    .map(|(s, c)| (format!("{SHELTER_GROUP}{s}"), reachable(c))),
            )
            .collect();
        Self {
            reachable: reachable(&p.overall),
            by_group,
            population: count_by_group(everyone.iter(), provider),
        }
    }

    fn is_everyone(&self) -> bool {
        self.population.is_empty() || self.reachable >= self.population.values().sum()
    }

    /// Everyone in group `g` is in the audience.
    fn holds_group(&self, g: &str) -> bool {
        let ours = self.by_group.get(g).copied().unwrap_or(0);
        self.population.is_empty() || ours >= self.population.get(g).copied().unwrap_or(0)
    }
}

/// Prefix of a shelter phone's group, so no shelter is taken for a department's room.
const SHELTER_GROUP: &str = "避難所:";

/// The group `c` counts in: a member of staff by department, a shelter phone by shelter.
pub fn group_key(c: &Contact) -> String {
    group_key_of(c.kind, c.department.as_deref(), c.shelter.as_deref())
}

/// [`group_key`] from a recipient's snapshot (kind, department, shelter).
pub fn group_key_of(kind: ContactKind, department: Option<&str>, shelter: Option<&str>) -> String {
    match kind {
        ContactKind::Staff => department.unwrap_or(NO_DEPARTMENT).to_string(),
        ContactKind::ShelterPhone => {
            format!("{SHELTER_GROUP}{}", shelter.unwrap_or(NO_SHELTER))
        }
    }
}

fn count_by_group<'a>(
    contacts: impl Iterator<Item = &'a Contact>,
    provider: &str,
) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for key in contacts.filter_map(|c| reachable_group(c, provider)) {
        *by.entry(key).or_insert(0) += 1;
    }
    by
}

/// `c`'s group, if `provider` can reach `c` at all.
fn reachable_group(c: &Contact, provider: &str) -> Option<String> {
    c.chat.contains_key(provider).then(|| group_key(c))
}

/// How one route would do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteEstimate {
    pub route: RouteKind,
    /// Requests needed to reach everyone (room messages plus 1:1 for people no room covers).
    pub requests: usize,
    /// Seconds from start until the last person has been sent the message.
    pub seconds_to_all_notified: f64,
    /// Seconds from start until the last person has the answer buttons.
    #[serde(default)]
    pub seconds_to_all_able_to_answer: f64,
}

/// How the answer buttons follow a broadcast that carries none (a board post).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ButtonsPlan {
    /// Groups whose room message carries the buttons; everyone else gets them 1:1.
    pub groups: Vec<String>,
    /// Room messages plus 1:1 messages.
    pub requests: usize,
}

/// The chosen way to reach an audience, stored with each roll call (`roll_calls.dispatch_plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub route: RouteKind,
    /// Rooms plan: the groups a room message covers; everyone else gets 1:1 talk.
    #[serde(default)]
    pub groups: Vec<String>,
    pub requests: usize,
    pub seconds_to_all_notified: f64,
    /// The route tells anpi who has read the message.
    pub read_signal: bool,
    /// Seconds from start until the last person has the answer buttons: the same as
    /// notified where the notifying message carries them.
    #[serde(default)]
    pub seconds_to_all_able_to_answer: f64,
    /// Broadcast plan: how the buttons follow the post (None: they travel with the message).
    #[serde(default)]
    pub buttons: Option<ButtonsPlan>,
    /// Every route considered, fastest first.
    pub alternatives: Vec<RouteEstimate>,
}

impl Plan {
    /// The plan of a provider with no routes: 1:1 to everyone.
    pub fn direct(caps: &Capabilities, reachable: usize) -> Self {
        let secs = seconds_for(reachable, caps.rate_limit);
        Self {
            route: RouteKind::Direct,
            groups: Vec::new(),
            requests: reachable,
            seconds_to_all_notified: secs,
            read_signal: caps.read_receipts,
            seconds_to_all_able_to_answer: secs,
            buttons: None,
            alternatives: vec![RouteEstimate {
                route: RouteKind::Direct,
                requests: reachable,
                seconds_to_all_notified: secs,
                seconds_to_all_able_to_answer: secs,
            }],
        }
    }

    /// One line for HQ: route, requests, time.
    pub fn describe(&self) -> String {
        let route = match self.route {
            RouteKind::Broadcast => "必読掲示板 1 件 / one must-read board post".to_string(),
            RouteKind::Rooms => format!(
                "部署ルーム {} 件 + 個別 / {} department rooms, 1:1 for the rest",
                self.groups.len(),
                self.groups.len()
            ),
            RouteKind::Direct => "個別トーク / 1:1 talk".to_string(),
        };
        match &self.buttons {
            Some(b) => format!(
                "{route}: {} requests; 回答ボタンは部署ルーム {} 件 + 個別 {} 件 / answer \
                 buttons by {} rooms and {} 1:1 messages",
                self.requests,
                b.groups.len(),
                b.requests - b.groups.len(),
                b.groups.len(),
                b.requests - b.groups.len()
            ),
            None => format!("{route}: {} requests", self.requests),
        }
    }
}

/// Seconds to make `requests` requests under `limit`, paced like the dispatcher's bucket.
/// Without a limit, anpi's own pace (~10,000 sends a second on the simulator) bounds it.
pub fn seconds_for(requests: usize, limit: Option<RateLimit>) -> f64 {
    let secs = match limit {
        Some(l) => {
            let burst = crate::ratelimit::burst(l);
            (requests as f64 - burst).max(0.0) / crate::ratelimit::sustained_per_second(l).max(1e-9)
        }
        None => requests as f64 / 10_000.0,
    };
    (secs * 10.0).round() / 10.0
}

/// anpi's own pace at writing a roll call's deliveries, which comes before the first request
/// (deliveries a second, measured on SQLite with `anpi demo --provider lineworks --speed 1`:
/// 40,000 written and the board post out 0.5 s after start). It bounds a broadcast, whose one
/// request covers everyone: the deliveries it covers are recorded after the post is out.
const START_PACE: f64 = 80_000.0;

fn start_seconds(deliveries: usize) -> f64 {
    ((deliveries as f64 / START_PACE) * 10.0).round() / 10.0
}

/// The groups a rooms route can reach whole: a room is configured for the group, the whole
/// group is in the audience (so no one outside it is messaged), and it is smaller than the
/// push limit (a room of 500 or more gets no push notification).
pub fn room_groups(audience: &Reach, r: &Route) -> Vec<String> {
    let max = r.max_members.unwrap_or(usize::MAX);
    audience
        .by_group
        .iter()
        .filter(|(g, size)| {
            **size > 0 && audience.holds_group(g) && **size < max && r.groups.contains(g)
        })
        .map(|(g, _)| g.clone())
        .collect()
}

/// Requests to reach the audience by `groups`' rooms and 1:1 for everyone else.
fn rooms_and_rest(audience: &Reach, groups: &[String]) -> usize {
    let covered: usize = groups.iter().map(|g| audience.by_group[g]).sum();
    groups.len() + audience.reachable.saturating_sub(covered)
}

/// Weighs every route and picks the one that notifies everyone first; on a tie, the one that
/// shows reads, then the one that has everyone able to answer first, then the one with fewer
/// requests. A board post, which carries no buttons, is followed by them through the rooms
/// the provider offers and 1:1 for the rest.
pub fn plan(audience: &Reach, caps: &Capabilities, routes: &[Route]) -> Plan {
    let n = audience.reachable;
    let mut candidates: Vec<Plan> = vec![Plan::direct(caps, n)];
    let rooms_route = routes.iter().find(|r| r.kind == RouteKind::Rooms);
    for r in routes {
        match r.kind {
            RouteKind::Broadcast if n > 0 && audience.is_everyone() => {
                let limit = r.rate_limit.or(caps.rate_limit);
                // The roll call is written, then one request reaches everyone.
                let notified = seconds_for(1, limit) + start_seconds(n);
                // Then the buttons: room and 1:1 messages share the dispatcher's bucket.
                let buttons = caps.buttons.then(|| {
                    let groups = rooms_route
                        .map(|rr| room_groups(audience, rr))
                        .unwrap_or_default();
                    let requests = rooms_and_rest(audience, &groups);
                    ButtonsPlan { groups, requests }
                });
                let able = match &buttons {
                    Some(b) => {
                        (seconds_for(b.requests, caps.rate_limit) + start_seconds(n)).max(notified)
                    }
                    None => notified,
                };
                candidates.push(Plan {
                    route: RouteKind::Broadcast,
                    groups: Vec::new(),
                    requests: 1,
                    seconds_to_all_notified: notified,
                    read_signal: r.read_signal,
                    seconds_to_all_able_to_answer: able,
                    buttons,
                    alternatives: Vec::new(),
                });
            }
            RouteKind::Rooms => {
                let groups = room_groups(audience, r);
                if groups.is_empty() {
                    continue;
                }
                let requests = rooms_and_rest(audience, &groups);
                // Room and 1:1 messages share the dispatcher's bucket.
                let limit = caps.rate_limit;
                let secs = seconds_for(requests, limit) + start_seconds(n);
                candidates.push(Plan {
                    route: RouteKind::Rooms,
                    groups,
                    requests,
                    seconds_to_all_notified: secs,
                    read_signal: r.read_signal && caps.read_receipts,
                    seconds_to_all_able_to_answer: secs,
                    buttons: None,
                    alternatives: Vec::new(),
                });
            }
            _ => {}
        }
    }
    candidates.sort_by(|a, b| {
        a.seconds_to_all_notified
            .total_cmp(&b.seconds_to_all_notified)
            .then(b.read_signal.cmp(&a.read_signal))
            .then(
                a.seconds_to_all_able_to_answer
                    .total_cmp(&b.seconds_to_all_able_to_answer),
            )
            .then(a.requests.cmp(&b.requests))
    });
    let alternatives: Vec<RouteEstimate> = candidates
        .iter()
        .map(|p| RouteEstimate {
            route: p.route,
            requests: p.requests,
            seconds_to_all_notified: p.seconds_to_all_notified,
            seconds_to_all_able_to_answer: p.seconds_to_all_able_to_answer,
        })
        .collect();
    let mut best = candidates.swap_remove(0);
    best.alternatives = alternatives;
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn per_min(n: u32) -> RateLimit {
        RateLimit {
            requests: n,
            per: Duration::from_secs(60),
        }
    }

    fn caps() -> Capabilities {
        Capabilities {
            read_receipts: false,
            buttons: true,
            idempotent_sends: false,
            rate_limit: Some(per_min(240)),
            max_in_flight: 16,
        }
    }

    fn board() -> Route {
        Route {
            kind: RouteKind::Broadcast,
            rate_limit: Some(per_min(60)),
            groups: vec![],
            max_members: None,
            read_signal: true,
        }
    }

    fn rooms(groups: &[&str]) -> Route {
        Route {
            kind: RouteKind::Rooms,
            rate_limit: Some(per_min(240)),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            max_members: Some(500),
            read_signal: false,
        }
    }

    /// `n` people spread evenly over `groups` departments.
    fn audience(n: usize, groups: usize) -> Reach {
        let mut by_group = BTreeMap::new();
        for i in 0..n {
            *by_group.entry(format!("d{:03}", i % groups)).or_insert(0) += 1;
        }
        Reach {
            reachable: n,
            by_group,
            population: BTreeMap::new(),
        }
    }

    #[test]
    fn one_to_one_at_240_per_minute_takes_minutes_for_a_thousand() {
        let p = plan(&audience(1_000, 10), &caps(), &[]);
        assert_eq!(p.route, RouteKind::Direct);
        assert_eq!(p.requests, 1_000);
        // 24 in the first burst, the other 976 at 3.6/s.
        assert!((p.seconds_to_all_notified - 271.1).abs() < 0.2, "{p:?}");
    }

    #[test]
    fn board_post_reaches_1000_10000_and_40000_at_once() {
        for n in [1_000, 10_000, 40_000] {
            let p = plan(&audience(n, 100), &caps(), &[board()]);
            assert_eq!(p.route, RouteKind::Broadcast, "{n}");
            assert_eq!(p.requests, 1);
            assert!(p.seconds_to_all_notified < 120.0);
            // The roll call is written at ~80,000 deliveries/s, then one request from the burst.
            let expect = [(1_000, 0.0), (10_000, 0.1), (40_000, 0.5)]
                .iter()
                .find(|(m, _)| *m == n)
                .unwrap()
                .1;
            assert!((p.seconds_to_all_notified - expect).abs() < 0.01, "{p:?}");
            assert!(p.read_signal);
            let direct = p
                .alternatives
                .iter()
                .find(|a| a.route == RouteKind::Direct)
                .unwrap();
            assert_eq!(direct.requests, n);
            let expect = (n as f64 - 24.0) / 3.6;
            assert!(
                (direct.seconds_to_all_notified - expect).abs() < 0.2,
                "{direct:?}"
            );
        }
    }

    #[test]
    fn department_rooms_under_500_beat_one_to_one() {
        // 40,000 staff in 100 departments of 400: 100 room messages.
        let names: Vec<String> = (0..100).map(|i| format!("d{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = plan(&audience(40_000, 100), &caps(), &[rooms(&refs)]);
        assert_eq!(p.route, RouteKind::Rooms);
        assert_eq!(p.requests, 100);
        // 0.5 s to write 40,000, then 24 at once, 76 at 3.6/s: about 22 s, inside 2 minutes.
        assert!((p.seconds_to_all_notified - 21.6).abs() < 0.05, "{p:?}");
    }

    #[test]
    fn rooms_of_500_or_more_are_not_used() {
        // 10,000 in 10 departments of 1,000: rooms would get no push.
        let names: Vec<String> = (0..10).map(|i| format!("d{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = plan(&audience(10_000, 10), &caps(), &[rooms(&refs)]);
        assert_eq!(p.route, RouteKind::Direct);
        assert_eq!(p.alternatives.len(), 1);
    }

    #[test]
    fn a_board_post_beats_rooms_and_shows_reads() {
        let p = plan(
            &audience(1_000, 10),
            &caps(),
            &[rooms(&["d000", "d001"]), board()],
        );
        assert_eq!(p.route, RouteKind::Broadcast);
        let rooms = p
            .alternatives
            .iter()
            .find(|a| a.route == RouteKind::Rooms)
            .unwrap();
        // Two rooms of 100, 800 people 1:1.
        assert_eq!(rooms.requests, 802);
    }

    #[test]
    fn a_board_post_or_room_is_used_only_when_it_reaches_no_one_outside_the_audience() {
        let whole = audience(1_000, 10);
        // A drill for d000 alone: 100 of the 1,000.
        let mut part = Reach {
            reachable: 100,
            by_group: BTreeMap::from([("d000".to_string(), 100)]),
            population: whole.by_group.clone(),
        };
        let p = plan(&part, &caps(), &[board(), rooms(&["d000", "d001"])]);
        assert_eq!(p.route, RouteKind::Rooms, "{p:?}");
        assert_eq!(p.groups, vec!["d000".to_string()]);
        assert!(p
            .alternatives
            .iter()
            .all(|a| a.route != RouteKind::Broadcast));
        // Half of d000 (say, only its managers): its room would reach the other half too.
        part.reachable = 50;
        part.by_group.insert("d000".into(), 50);
        let p = plan(&part, &caps(), &[board(), rooms(&["d000"])]);
        assert_eq!(p.route, RouteKind::Direct, "{p:?}");
        // Everyone: the board post.
        let mut all = whole.clone();
        all.population = whole.by_group.clone();
        assert_eq!(plan(&all, &caps(), &[board()]).route, RouteKind::Broadcast);
    }

    #[test]
    fn a_board_post_notifies_in_seconds_and_the_buttons_follow_by_rooms_within_a_minute() {
        // 40,000 staff in 100 departments of 400, each with a room, and a board.
        let names: Vec<String> = (0..100).map(|i| format!("d{i:03}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let p = plan(&audience(40_000, 100), &caps(), &[board(), rooms(&refs)]);
        assert_eq!(p.route, RouteKind::Broadcast);
        assert!(p.seconds_to_all_notified < 1.0, "{p:?}");
        let b = p.buttons.as_ref().expect("buttons follow the post");
        assert_eq!(b.groups.len(), 100);
        assert_eq!(b.requests, 100);
        // 0.5 s to write, 24 at once, 76 at 3.6/s: about 22 s.
        assert!(
            (p.seconds_to_all_able_to_answer - 21.6).abs() < 0.05,
            "{p:?}"
        );
        assert!(p.seconds_to_all_able_to_answer < 60.0);
        assert!(
            p.describe().contains("100 rooms and 0 1:1"),
            "{}",
            p.describe()
        );
        // The same without rooms: buttons 1:1 to all 40,000, about three hours at 240/min.
        let p = plan(&audience(40_000, 100), &caps(), &[board()]);
        let b = p.buttons.as_ref().unwrap();
        assert!(b.groups.is_empty());
        assert_eq!(b.requests, 40_000);
        let expect = 0.5 + (40_000.0 - 24.0) / 3.6;
        assert!(
            (p.seconds_to_all_able_to_answer - expect).abs() < 0.2,
            "{p:?}"
        );
        assert!(p.seconds_to_all_notified < 1.0);
        // A provider without buttons has nothing to follow with.
        let mut c = caps();
        c.buttons = false;
        let p = plan(&audience(1_000, 10), &c, &[board()]);
        assert!(p.buttons.is_none());
        assert_eq!(p.seconds_to_all_able_to_answer, p.seconds_to_all_notified);
    }

    #[test]
    fn rooms_of_500_or_more_do_not_carry_the_buttons_either() {
        let p = plan(&audience(10_000, 10), &caps(), &[board(), rooms(&["d000"])]);
        let b = p.buttons.as_ref().unwrap();
        assert!(b.groups.is_empty(), "{b:?}");
        assert_eq!(b.requests, 10_000);
    }

    #[test]
    fn no_limit_is_bounded_by_anpi() {
        let mut c = caps();
        c.rate_limit = None;
        let p = plan(&audience(40_000, 10), &c, &[]);
        assert_eq!(p.route, RouteKind::Direct);
        assert_eq!(p.seconds_to_all_notified, 4.0);
    }
}
