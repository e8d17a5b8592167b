//! Fictional staff populations for the demo, the benchmarks and the chaos tests.
//!
//! Invariant: `generate(n, seed)` returns exactly `n` contacts, is the same for the same
//! seed, has unique ids and unique phone numbers, and passes
//! [`Directory::validate`](super::Directory::validate) — the demo never runs on data the
//! loader would refuse. Every number is in the unassigned 090-0xxx / 070-0xxx ranges and
//! every mail domain is `.example.jp`, so nothing real is ever dialled or mailed.

use std::collections::BTreeMap;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{Contact, ContactKind, Directory, EmailAddress, PhoneNumber};
use crate::ids::{ChatHandle, StaffId};

const DEPARTMENTS: [&str; 12] = [
    "総務課",
    "防災対策室",
    "建設課",
    "福祉課",
    "市民課",
    "税務課",
    "上下水道課",
    "教育総務課",
    "商工課",
    "農林課",
    "環境課",
    "消防本部",
];

/// (kanji, kana, romaji)
const SURNAMES: [(&str, &str, &str); 24] = [
    ("佐藤", "さとう", "sato"),
    ("鈴木", "すずき", "suzuki"),
    ("高橋", "たかはし", "takahashi"),
    ("田中", "たなか", "tanaka"),
    ("渡辺", "わたなべ", "watanabe"),
    ("伊藤", "いとう", "ito"),
    ("山本", "やまもと", "yamamoto"),
    ("中村", "なかむら", "nakamura"),
    ("小林", "こばやし", "kobayashi"),
    ("加藤", "かとう", "kato"),
    ("吉田", "よしだ", "yoshida"),
    ("山田", "やまだ", "yamada"),
    ("佐々木", "ささき", "sasaki"),
    ("山口", "やまぐち", "yamaguchi"),
    ("松本", "まつもと", "matsumoto"),
    ("井上", "いのうえ", "inoue"),
    ("木村", "きむら", "kimura"),
    ("五十嵐", "いがらし", "igarashi"),
    ("阿部", "あべ", "abe"),
    ("長谷川", "はせがわ", "hasegawa"),
    ("小川", "おがわ", "ogawa"),
    ("近藤", "こんどう", "kondo"),
    ("本間", "ほんま", "homma"),
    ("丸山", "まるやま", "maruyama"),
];

const GIVEN_NAMES: [(&str, &str); 24] = [
    ("一郎", "いちろう"),
    ("健太", "けんた"),
    ("大輔", "だいすけ"),
    ("翔", "しょう"),
    ("拓也", "たくや"),
    ("誠", "まこと"),
    ("浩二", "こうじ"),
    ("直樹", "なおき"),
    ("隆", "たかし"),
    ("和也", "かずや"),
    ("亮", "りょう"),
    ("修", "おさむ"),
    ("花子", "はなこ"),
    ("美咲", "みさき"),
    ("陽子", "ようこ"),
    ("由美", "ゆみ"),
    ("恵", "めぐみ"),
    ("真由美", "まゆみ"),
    ("明美", "あけみ"),
    ("さくら", "さくら"),
    ("愛", "あい"),
    ("裕子", "ゆうこ"),
    ("智子", "ともこ"),
    ("彩", "あや"),
];

/// (role, lowest priority number it gets): managers are called first.
const ROLES: [(&str, u8); 6] = [
    ("主事", 5),
    ("主任", 4),
    ("係長", 3),
    ("課長補佐", 2),
    ("課長", 1),
    ("部長", 1),
];

/// Place names for shelters; combined with facility types to stay unique at any size.
const AREAS: [&str; 16] = [
    "三条",
    "嵐南",
    "裏館",
    "大島",
    "月岡",
    "井栗",
    "大崎",
    "保内",
    "一ノ木戸",
    "上林",
    "四日町",
    "須頃",
    "栄",
    "下田",
    "旭",
    "本成寺",
];
const FACILITIES: [&str; 4] = ["小学校", "中学校", "体育館", "公民館"];

fn shelter_name(i: usize) -> String {
    let area = AREAS[i % AREAS.len()];
    let facility = FACILITIES[(i / AREAS.len()) % FACILITIES.len()];
    let round = i / (AREAS.len() * FACILITIES.len());
    if round == 0 {
        format!("{area}{facility}")
    } else {
        format!("{area}第{}{facility}", round + 1)
    }
}

/// A fictional number unique per index: an odd multiplier not divisible by 5 permutes
/// 0..10^7, so numbers look scattered yet never repeat below ten million people.
fn fictional_number(prefix: &str, i: usize, offset: u64) -> PhoneNumber {
    let n = (i as u64).wrapping_mul(7_368_787).wrapping_add(offset) % 10_000_000;
    let text = format!("{prefix}-0{:03}-{:04}", n / 10_000, n % 10_000);
    PhoneNumber::parse(&text).expect("generated numbers have a valid shape")
}

fn id(prefix: char, n: usize, width: usize) -> StaffId {
    StaffId::parse(&format!("{prefix}{n:0width$}")).expect("generated ids are valid")
}

/// `n` fictional contacts: about 95% staff in 12 departments and about 5% shelter phones
/// (at least one from 20 people up), deterministic for a given seed.
pub fn generate(n: usize, seed: u64) -> Directory {
    let mut rng = SmallRng::seed_from_u64(seed);
    let offset = rng.gen_range(0..10_000_000u64);
    let shelters = n / 20;
    let staff = n - shelters;
    let staff_width = staff.to_string().len().max(5);
    let shelter_width = shelters.to_string().len().max(4);
    let shelter_names: Vec<String> = (0..shelters).map(shelter_name).collect();

    let mut contacts = Vec::with_capacity(n);
    for i in 0..staff {
        let id = id('S', i + 1, staff_width);
        let (surname, surname_kana, romaji) = SURNAMES[rng.gen_range(0..SURNAMES.len())];
        let (given, given_kana) = GIVEN_NAMES[rng.gen_range(0..GIVEN_NAMES.len())];
        // Most staff are 主事/主任; a few hold a post.
        let role_index = match rng.gen_range(0..100) {
            0..=54 => 0,
            55..=79 => 1,
            80..=91 => 2,
            92..=95 => 3,
            96..=98 => 4,
            _ => 5,
        };
        let (role, min_priority) = ROLES[role_index];
        let email = (rng.gen_range(0..10) < 7).then(|| {
            EmailAddress::parse(&format!(
                "{romaji}.{}@city.example.jp",
                id.as_str().to_ascii_lowercase()
            ))
            .expect("generated addresses are valid")
        });
        let shelter = (!shelter_names.is_empty() && rng.gen_range(0..10) == 0)
            .then(|| shelter_names[rng.gen_range(0..shelter_names.len())].clone());
        contacts.push(Contact {
            name: format!("{surname} {given}"),
            kana: Some(format!("{surname_kana} {given_kana}")),
            department: Some(DEPARTMENTS[rng.gen_range(0..DEPARTMENTS.len())].to_string()),
            role: Some(role.to_string()),
            call_priority: rng.gen_range(min_priority..=9),
            phones: vec![fictional_number("090", i, offset)],
            email,
            chat: simulator_handle(&id),
            kind: ContactKind::Staff,
            shelter,
            id,
        });
    }
    for (i, shelter) in shelter_names.into_iter().enumerate() {
        let id = id('P', i + 1, shelter_width);
        contacts.push(Contact {
            name: format!("{shelter}避難所"),
            kana: None,
            department: None,
            role: None,
            call_priority: 1,
            phones: vec![fictional_number("070", i, offset)],
            email: None,
            chat: simulator_handle(&id),
            kind: ContactKind::ShelterPhone,
            shelter: Some(shelter),
            id,
        });
    }
    Directory { contacts }
}

fn simulator_handle(id: &StaffId) -> BTreeMap<String, ChatHandle> {
    let handle = ChatHandle::parse(&format!("sim-{id}")).expect("generated handles are valid");
    BTreeMap::from([("simulator".to_string(), handle)])
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Instant;

    use super::*;

    #[test]
    fn output_validates_and_has_the_requested_size() {
        for n in [1, 19, 20, 1_000] {
            let dir = generate(n, 42);
            assert_eq!(dir.len(), n);
            dir.validate("synthetic").unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn about_five_percent_are_shelter_phones_with_a_shelter() {
        let dir = generate(1_000, 1);
        let shelters: Vec<_> = dir
            .iter()
            .filter(|c| c.kind == ContactKind::ShelterPhone)
            .collect();
        assert_eq!(shelters.len(), 50);
        assert_eq!(shelters[0].id.as_str(), "P0001");
        assert_eq!(shelters[0].name, "三条小学校避難所");
        assert!(shelters
            .iter()
            .all(|c| c.department.is_none() && c.shelter.is_some() && c.call_priority == 1));
        assert_eq!(
            generate(20, 1)
                .iter()
                .filter(|c| c.kind == ContactKind::ShelterPhone)
                .count(),
            1
        );
        assert_eq!(
            generate(19, 1)
                .iter()
                .filter(|c| c.kind == ContactKind::ShelterPhone)
                .count(),
            0
        );
    }

    #[test]
    fn staff_ids_are_zero_padded_and_departments_varied() {
        let dir = generate(1_000, 1);
        assert_eq!(dir.contacts[0].id.as_str(), "S00001");
        let departments: HashSet<_> = dir.iter().filter_map(|c| c.department.as_deref()).collect();
        assert_eq!(departments.len(), DEPARTMENTS.len());
        let with_mail = dir.iter().filter(|c| c.email.is_some()).count();
        assert!(
            (600..=750).contains(&with_mail),
            "{with_mail} of 950 staff have mail"
        );
        assert!(dir
            .iter()
            .all(|c| c.chat_handle("simulator").unwrap().as_str() == format!("sim-{}", c.id)));
    }

    #[test]
    fn same_seed_same_people_other_seed_other_people() {
        assert_eq!(generate(500, 9), generate(500, 9));
        assert_ne!(generate(500, 9), generate(500, 10));
    }

    #[test]
    fn ids_and_numbers_are_unique_at_benchmark_size() {
        let start = Instant::now();
        let dir = generate(100_000, 5);
        let elapsed = start.elapsed();
        let ids: HashSet<_> = dir.iter().map(|c| &c.id).collect();
        let phones: HashSet<_> = dir.iter().map(|c| &c.phones[0]).collect();
        assert_eq!(ids.len(), 100_000);
        assert_eq!(phones.len(), 100_000);
        assert_eq!(dir.contacts[94_999].id.as_str(), "S95000");
        dir.validate("synthetic").unwrap_or_else(|e| panic!("{e}"));
        // Generous for an unoptimised test build; release is far below a second.
        assert!(elapsed.as_secs_f64() < 5.0, "took {elapsed:?}");
    }
}
