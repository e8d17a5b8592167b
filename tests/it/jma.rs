//! JMA triggers end to end: every telegram in the shared JMA folder through the Sanjo rules
//! (the decision per file is asserted against a table), retraction on 取消, drills from 訓練,
//! the VPWW53/54 twins, restarts, and the feed watcher against a loopback feed server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The shared JMA telegram folder: `ANPI_JMA_DATA`, else `shared/data/jma` in the nearest
/// ancestor of this repository that has one (`../shared/data/jma` from the repo root on CI).
/// Missing, the test fails: it never skips.
pub fn jma_data() -> PathBuf {
    if let Some(p) = std::env::var_os("ANPI_JMA_DATA") {
        let p = PathBuf::from(p);
        assert!(p.is_dir(), "ANPI_JMA_DATA={} is not a folder", p.display());
        return p;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in repo.ancestors() {
        let p = dir.join("shared").join("data").join("jma");
        if p.is_dir() {
            return p;
        }
    }
    panic!(
        "the JMA telegram folder is missing: expected shared/data/jma beside an ancestor of {} \
         (../shared/data/jma from the repository root), or set ANPI_JMA_DATA",
        repo.display()
    );
}

/// Every file under `dir`, as paths relative to it, sorted.
fn all_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub const SANJO_RULES: &str = r#"
[[triggers]]
name = "sanjo-quake"
family = "earthquake"
areas = ["1520400", "371"]
intensity = "5-"
scenario = "earthquake"
aftershock_window = "2h"

[[triggers]]
name = "sanjo-tsunami"
family = "tsunami"
areas = ["340"]
level = 3
scenario = "earthquake"

[[triggers]]
name = "sanjo-rain"
family = "warning"
areas = ["1520400"]
level = 4
scenario = "flood"

[[triggers]]
name = "sanjo-landslide"
family = "landslide"
areas = ["1520400"]
codes = ["3"]
scenario = "flood"

[[triggers]]
name = "sanjo-river"
family = "river"
areas = ["1520400"]
level = 4
scenario = "flood"
"#;

pub async fn replay(app: &TestApp, dir: &Path, names: &[String], dry_run: bool) -> Vec<Value> {
    let files: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join(n)).unwrap();
            (n.clone(), String::from_utf8_lossy(&bytes).into_owned())
        })
        .collect();
    replay_xml(app, &files, dry_run).await
}

/// Replays telegrams given as (name, XML), such as edited copies of the shared files.
pub async fn replay_xml(app: &TestApp, files: &[(String, String)], dry_run: bool) -> Vec<Value> {
    let files: Vec<Value> = files
        .iter()
        .map(|(n, xml)| json!({"name": n, "xml": xml}))
        .collect();
    let res = app
        .http
        .post(format!("{}/api/jma/replay", app.base_url))
        .bearer_auth(HQ_TOKEN)
        .json(&json!({"files": files, "dry_run": dry_run}))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let v: Value = res.json().await.unwrap();
    v["results"].as_array().unwrap().clone()
}

/// The decision that matters most for a result: (action, why, drill).
pub fn primary(r: &Value) -> (String, String, bool) {
    let ds = r["decisions"].as_array().unwrap();
    let order = ["ignore", "notify", "upgrade", "retract", "start"];
    let d = ds
        .iter()
        .max_by_key(|d| order.iter().position(|a| d["action"] == *a))
        .unwrap();
    (
        d["action"].as_str().unwrap().to_string(),
        d["why"].as_str().unwrap().to_string(),
        d["drill"].as_bool().unwrap_or(false),
    )
}

/// What the Sanjo rules decide for every file in the shared folder, replayed in path order
/// into a fresh state: (file, action of the decision that matters most, why).
const SANJO_TABLE: &[(&str, &str, &str)] = &[
    ("20210216071046_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210216140226_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210216143410_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210216221043_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210216233339_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210217033548_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210217053107_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210217140808_0_VXSE51_010000.xml", "ignore", "other_area"),
    (
        "20210217140847_0_VXSE52_010000.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("20210217140958_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210217164825_0_VXSE51_010000.xml", "ignore", "other_area"),
    (
        "20210217164941_0_VXSE52_270000.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("20210217165040_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210217173157_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210217190009_0_VXSE51_010000.xml", "ignore", "other_area"),
    (
        "20210217190122_0_VXSE52_010000.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("20210217190220_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210217204607_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210217225533_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210218025543_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218031241_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218060544_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218070411_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218075357_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218101232_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210218104033_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218124610_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218151358_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210218161514_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210218201118_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210219010440_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210219010859_0_VXSE51_010000.xml", "ignore", "other_area"),
    (
        "20210219010945_0_VXSE52_010000.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("20210219011051_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210219012705_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210219091253_0_VXSE51_010000.xml", "ignore", "other_area"),
    (
        "20210219091354_0_VXSE52_010000.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("20210219091451_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210219101650_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210219190413_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210220012142_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210220032912_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210220120037_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210220132532_0_VXSE51_010000.xml", "ignore", "other_area"),
    (
        "20210220132643_0_VXSE52_010000.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("20210220132753_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20210220144313_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210220150950_0_VXSE53_270000.xml", "ignore", "other_area"),
    ("20210220160204_0_VXSE53_010000.xml", "ignore", "other_area"),
    ("20220918154907_08013775_VTSE41.xml", "ignore", "other_area"),
    ("20220918171502_07401528_VTSE41.xml", "ignore", "other_area"),
    ("20230410231623_04156158_VXSE53.xml", "ignore", "other_area"),
    ("20230411000017_05859620_VXSE53.xml", "ignore", "other_area"),
    ("20230411013014_06861143_VXSE53.xml", "ignore", "other_area"),
    ("20230411030007_08933757_VXSE53.xml", "ignore", "other_area"),
    ("20230411050043_01977411_VXSE53.xml", "ignore", "other_area"),
    ("20231009064018_06274659_VTSE41.xml", "ignore", "other_area"),
    ("20231009072652_07314633_VTSE41.xml", "ignore", "other_area"),
    ("20231009074440_07748424_VTSE41.xml", "ignore", "other_area"),
    ("20231009075134_09107320_VTSE41.xml", "ignore", "other_area"),
    ("20231009082436_00085500_VTSE41.xml", "ignore", "other_area"),
    ("20231009120003_08446949_VTSE41.xml", "ignore", "other_area"),
    ("20231120170318_06797589_VXSE53.xml", "ignore", "other_area"),
    ("20231120190010_00518357_VXSE53.xml", "ignore", "other_area"),
    ("20231120210006_04874005_VXSE53.xml", "ignore", "other_area"),
    ("20231120230009_04124250_VXSE53.xml", "ignore", "other_area"),
    ("20231203181616_04485779_VXSE53.xml", "ignore", "other_area"),
    ("20231203213012_09651888_VXSE53.xml", "ignore", "other_area"),
    ("20231204000011_03693006_VXSE53.xml", "ignore", "other_area"),
    ("20231204030009_09362324_VXSE53.xml", "ignore", "other_area"),
    (
        "20240116184225_02245216_VXSE43.xml",
        "ignore",
        "not_a_trigger",
    ),
    ("32-35_01_01_100806_VXSE51.xml", "ignore", "other_area"),
    ("32-35_01_02_100514_VXSE52.xml", "ignore", "not_a_trigger"),
    ("32-35_01_03_100514_VXSE53.xml", "ignore", "other_area"),
    ("32-35_01_03_100806_VXSE53.xml", "ignore", "other_area"),
    ("32-35_03_01_100514_VXSE60.xml", "ignore", "unknown_type"),
    ("32-35_03_02_100514_VXSE61.xml", "ignore", "unknown_type"),
    ("32-35_04_01_100831_VXSE51.xml", "ignore", "other_area"),
    ("32-35_04_02_100831_VXSE51.xml", "ignore", "other_area"),
    ("32-35_04_03_100831_VXSE52.xml", "ignore", "not_a_trigger"),
    ("32-35_04_04_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-35_04_05_100831_VXSE51.xml", "ignore", "other_area"),
    ("32-35_04_06_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-35_06_01_100915_VXSE52.xml", "ignore", "not_a_trigger"),
    ("32-35_06_02_100915_VXSE52.xml", "ignore", "not_a_trigger"),
    ("32-35_06_03_100915_VXSE53.xml", "notify", "below_threshold"), // 新潟県中越 震度3: 震度5弱以上に達しません: 本部へ通知のみ
    (
        "32-35_06_04_100915_VXSE53.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度3、三条市 震度3: 通知済みの程度以下
    (
        "32-35_06_05_100915_VXSE53.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度3、三条市 震度3: 通知済みの程度以下
    (
        "32-35_06_06_100915_VXSE53.xml",
        "notify",
        "cancelled_notice",
    ), // 先にお知らせした「震源・震度に関する情報」は取り消されました
    ("32-35_06_09_100915_VXSE61.xml", "ignore", "unknown_type"),
    ("32-35_06_10_100915_VXSE61.xml", "ignore", "unknown_type"),
    ("32-35_07_01_100915_VXSE51.xml", "ignore", "already_seen"), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    ("32-35_07_02_100915_VXSE51.xml", "ignore", "other_area"),
    ("32-35_07_03_100915_VXSE51.xml", "notify", "below_threshold"), // 新潟県中越 震度3: 震度5弱以上に達しません: 本部へ通知のみ
    (
        "32-35_07_04_100915_VXSE51.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度3: 通知済みの程度以下
    (
        "32-35_07_05_100915_VXSE51.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度3: 通知済みの程度以下
    (
        "32-35_07_06_100915_VXSE53.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度3、三条市 震度2: 通知済みの程度以下
    (
        "32-35_07_07_100915_VXSE53.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度3、三条市 震度2: 通知済みの程度以下
    ("32-35_07_09_100915_VXSE61.xml", "ignore", "unknown_type"),
    ("32-35_08_01_100915_VXSE51.xml", "ignore", "other_area"),
    ("32-35_08_02_100915_VXSE51.xml", "ignore", "other_area"),
    ("32-35_08_03_100915_VXSE51.xml", "ignore", "other_area"),
    ("32-35_08_04_100915_VXSE51.xml", "ignore", "other_area"),
    ("32-35_08_05_100915_VXSE51.xml", "ignore", "other_area"),
    ("32-35_08_06_100915_VXSE52.xml", "ignore", "not_a_trigger"),
    ("32-35_08_07_100915_VXSE53.xml", "notify", "below_threshold"), // 新潟県中越 震度2: 震度5弱以上に達しません: 本部へ通知のみ
    (
        "32-35_08_08_100915_VXSE53.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県中越 震度2: 通知済みの程度以下
    ("32-35_09_01_191111_VXSE56.xml", "ignore", "unknown_type"),
    ("32-39_05_01_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_02_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_04_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_05_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_06_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_07_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_08_100831_VXSE53.xml", "ignore", "other_area"),
    ("32-39_05_12_100831_VXSE53.xml", "ignore", "other_area"),
    (
        "32-39_05_12_100915_VXSE53.xml",
        "ignore",
        "cancelled_unknown",
    ), // 対象地域で扱っていない事象の取消
    ("32-39_11_01_120615_VXSE51.xml", "ignore", "other_area"),
    ("32-39_11_02_120615_VTSE41.xml", "ignore", "other_area"),
    ("32-39_11_05_120615_VXSE53.xml", "start", "reached"), // 新潟県中越 震度5弱、三条市 震度4: 震度5弱以上に達しました: 安否確認を開始
    ("32-39_11_06_120615_VTSE41.xml", "ignore", "other_area"),
    ("32-39_11_09_120615_VTSE41.xml", "ignore", "other_area"),
    ("32-39_11_11_120615_VTSE41.xml", "notify", "below_threshold"), // 新潟県上中下越 津波予報（若干の海面変動）: 津波警報以上に達しません: 本部へ通知のみ
    (
        "32-39_11_13_120615_VTSE41.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県上中下越 津波予報（若干の海面変動）: 通知済みの程度以下
    ("32-39_12_02_191025_VTSE41.xml", "notify", "below_threshold"), // 【訓練電文】新潟県上中下越 津波注意報: 津波警報以上に達しません: 本部へ通知のみ
    (
        "32-39_12_07_191025_VTSE41.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県上中下越 津波注意報: 通知済みの程度以下
    ("32-39_12_13_191025_VTSE41.xml", "notify", "lowered"), // 【訓練電文】新潟県上中下越 津波注意報解除: 通知済みの発表が下がりました・解除されました
    ("32-39_13_02_191025_VTSE41.xml", "ignore", "other_area"),
    ("32-39_13_07_191025_VTSE41.xml", "ignore", "other_area"),
    ("33_12_01_120615_VXSE52.xml", "ignore", "not_a_trigger"),
    ("36_02_01_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_02_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_03_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_04_110223_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_05_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_06_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_07_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_08_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_09_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_10_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_02_11_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_01_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_02_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_03_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_04_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_05_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_06_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_07_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_08_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_09_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_10_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_03_11_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_04_01_110223_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_04_02_110223_VXSE41.xml", "ignore", "not_a_trigger"),
    ("36_04_03_100915_VXSE41.xml", "ignore", "not_a_trigger"),
    ("37_02_01_100915_VXSE40.xml", "ignore", "not_a_trigger"),
    ("37_02_02_100915_VXSE40.xml", "ignore", "not_a_trigger"),
    ("37_02_03_100915_VXSE40.xml", "ignore", "not_a_trigger"),
    ("37_03_01_100915_VXSE40.xml", "ignore", "not_a_trigger"),
    ("37_03_02_100915_VXSE40.xml", "ignore", "not_a_trigger"),
    ("37_04_01_110311_VXSE43.xml", "ignore", "not_a_trigger"),
    ("37_04_02_110311_VXSE43.xml", "ignore", "not_a_trigger"),
    ("38-39_02_01_191025_VTSE41.xml", "ignore", "other_area"),
    ("38-39_02_04_191025_VTSE41.xml", "ignore", "other_area"),
    ("54_01_01_100514_VXSE42.xml", "ignore", "not_a_trigger"),
    ("74_02_01_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("74_02_02_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("74_02_03_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("74_02_04_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("74_02_05_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("74_02_06_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("74_02_07_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("75_02_01_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("75_02_02_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("75_02_03_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("75_02_04_200512_VXSE56.xml", "ignore", "unknown_type"),
    ("README.md", "ignore", "not_telegram"), // 電文として読めません
    ("eew/36_01_01_240613_VXSE44.xml", "ignore", "not_a_trigger"),
    ("eew/36_01_33_240613_VXSE44.xml", "ignore", "not_a_trigger"),
    ("eew/37_01_01_240613_VXSE43.xml", "ignore", "not_a_trigger"),
    ("eew/37_01_02_240613_VXSE43.xml", "ignore", "not_a_trigger"),
    ("eew/37_01_03_240613_VXSE43.xml", "ignore", "not_a_trigger"),
    ("eew/77_01_01_240613_VXSE45.xml", "ignore", "not_a_trigger"),
    ("eew/77_01_33_240613_VXSE45.xml", "ignore", "not_a_trigger"),
    ("feeds/eqvol.xml", "ignore", "not_telegram"), // 電文として読めません
    ("feeds/extra_l.xml", "ignore", "not_telegram"), // 電文として読めません
    ("flood/16_01_01_220728_VXKOii.xml", "ignore", "other_area"),
    ("flood/16_02_01_220728_VXKOii.xml", "ignore", "other_area"),
    ("flood/16_02_02_220728_VXKOii.xml", "ignore", "other_area"),
    ("flood/16_03_01_220728_VXKOii.xml", "ignore", "already_seen"), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    ("flood/16_04_01_220728_VXKOii.xml", "ignore", "already_seen"), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    ("flood/16_05_01_210630_VXKOii.xml", "ignore", "already_seen"), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    ("flood/16_06_01_220728_VXKOii.xml", "ignore", "other_area"),
    ("flood/16_07_01_220728_VXKOii.xml", "ignore", "already_seen"), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    ("flood/16_08_01_260312_VXKOii.xml", "ignore", "other_area"),
    ("flood/91_01_01_241031_VXSUii.xml", "ignore", "other_area"),
    (
        "landslide/17_01_01_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_02_01_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_02_02_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_02_03_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_01_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_02_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_03_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_04_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_05_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_06_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_07_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_08_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_09_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_03_10_190529_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_04_01_250630_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_04_02_250630_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "landslide/17_04_03_250630_VXWW50.xml",
        "ignore",
        "other_area",
    ),
    (
        "tsunami/32-39_11_11_250206_VTSE41.xml",
        "ignore",
        "already_seen",
    ), // 受信済みの電文（前回: notify, 2026-03-11 05:46:00 UTC）/ already seen
    (
        "tsunami/32-39_11_13_250206_VTSE41.xml",
        "ignore",
        "already_seen",
    ), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    (
        "tsunami/32-39_12_02_250206_VTSE41.xml",
        "ignore",
        "already_seen",
    ), // 受信済みの電文（前回: notify, 2026-03-11 05:46:00 UTC）/ already seen
    (
        "tsunami/32-39_12_03_250206_VTSE51.xml",
        "ignore",
        "below_already_told",
    ), // 新潟県上中下越 津波注意報: 通知済みの程度以下
    (
        "tsunami/32-39_12_13_250206_VTSE41.xml",
        "ignore",
        "already_seen",
    ), // 受信済みの電文（前回: notify, 2026-03-11 05:46:00 UTC）/ already seen
    (
        "tsunami/38-39_02_01_250206_VTSE41.xml",
        "ignore",
        "already_seen",
    ), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    (
        "tsunami/38-39_02_04_250206_VTSE41.xml",
        "ignore",
        "already_seen",
    ), // 受信済みの電文（前回: ignore, 2026-03-11 05:46:00 UTC）/ already seen
    (
        "tsunami/38-39_03_01_210805_VTSE41.xml",
        "ignore",
        "cancelled_unknown",
    ), // 対象地域で扱っていない事象の取消
    (
        "tsunami/38-39_03_02_210805_VTSE51.xml",
        "ignore",
        "cancelled_unknown",
    ), // 対象地域で扱っていない事象の取消
    (
        "weather/06_02_01_100514_VPTI50.xml",
        "ignore",
        "unknown_type",
    ),
    ("weather/15_08_03_160628_VPWW53.xml", "ignore", "other_area"),
    ("weather/15_08_05_130412_VPWW53.xml", "ignore", "other_area"),
    ("weather/15_09_03_130826_VPWW53.xml", "ignore", "other_area"),
    ("weather/15_12_01_161130_VPWW53.xml", "ignore", "other_area"),
    ("weather/15_12_01_161130_VPWW54.xml", "ignore", "other_area"),
    ("weather/15_14_01_170216_VPWW53.xml", "ignore", "other_area"),
    ("weather/15_14_01_170216_VPWW54.xml", "ignore", "other_area"),
    ("weather/15_16_01_241031_VPWW56.xml", "ignore", "other_area"),
    ("weather/15_16_03_241226_VPWW55.xml", "ignore", "other_area"),
    ("weather/15_17_01_250630_VPWW55.xml", "ignore", "other_area"),
    ("weather/15_17_01_250630_VPWW56.xml", "ignore", "other_area"),
    (
        "weather/18_01_01_100806_VPOA50.xml",
        "ignore",
        "unknown_type",
    ),
    (
        "weather/18_02_01_111226_VPOA50.xml",
        "ignore",
        "unknown_type",
    ),
    (
        "weather/18_03_01_190412_VPOA50.xml",
        "ignore",
        "unknown_type",
    ),
    (
        "weather/82_01_01_241031_VPBS50.xml",
        "ignore",
        "unknown_type",
    ),
    (
        "weather/82_01_02_250630_VPBS50.xml",
        "ignore",
        "unknown_type",
    ),
];

#[tokio::test]
async fn every_shared_telegram_gives_the_tabled_decision_under_the_sanjo_rules() {
    let app = spawn_app_with(Options {
        extra_config: SANJO_RULES.into(),
        ..Options::default()
    })
    .await;
    let dir = jma_data();
    let names = all_files(&dir);
    let tabled: Vec<&str> = SANJO_TABLE.iter().map(|(f, _, _)| *f).collect();
    assert_eq!(names, tabled, "the folder's files and the table differ");

    // A dry run decides from a fresh state of its own and starts nothing.
    let dry = replay(&app, &dir, &names, true).await;
    assert!(
        app.hq.list().await.unwrap().is_empty(),
        "a dry run started something"
    );
    let results = replay(&app, &dir, &names, false).await;
    for (run, rs) in [("dry run", &dry), ("replay", &results)] {
        for ((file, action, why), r) in SANJO_TABLE.iter().zip(rs.iter()) {
            let (a, w, drill) = primary(r);
            assert_eq!(
                (a.as_str(), w.as_str()),
                (*action, *why),
                "{run}: {file}: {}",
                r["decisions"]
            );
            // 訓練 and 試験 telegrams never start anything real.
            let status = r["telegram"]["status"].as_str().unwrap_or("");
            if status == "訓練" || status == "試験" {
                assert!(a != "start" || drill, "{file} started a real roll call");
            }
        }
    }
    let starts = SANJO_TABLE.iter().filter(|(_, a, _)| *a == "start").count();
    assert_eq!(
        starts, 1,
        "one event in the folder reaches 震度5弱 for Sanjo"
    );
    // One roll call per start, a drill because replayed telegrams only ever start drills.
    let rcs = app.hq.list().await.unwrap();
    assert_eq!(rcs.len(), starts);
    assert!(rcs.iter().all(|rc| rc.drill && rc.scenario == "earthquake"));
    let started = results.iter().find(|r| primary(r).0 == "start").unwrap();
    assert_eq!(started["decisions"][0]["roll_call"], json!(rcs[0].id.0));

    // HQ sees why: the telegram behind the roll call.
    let v: Value = app
        .http
        .get(format!(
            "{}/api/rollcalls/{}/trigger",
            app.base_url, rcs[0].id
        ))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = &v["telegrams"][0];
    assert_eq!(t["code"], "VXSE53");
    assert_eq!(t["action"], "start");
    assert!(t["reason"].as_str().unwrap().contains("震度5弱"), "{t}");

    // The same folder again: every telegram was seen, nothing starts twice.
    let again = replay(&app, &dir, &names, false).await;
    for (file, r) in names.iter().zip(&again) {
        let (a, w, _) = primary(r);
        assert!(
            a == "ignore"
                && matches!(
                    w.as_str(),
                    "already_seen" | "not_telegram" | "unknown_type" | "not_a_trigger"
                ),
            "{file}: {a} {w}"
        );
    }
    assert_eq!(app.hq.list().await.unwrap().len(), starts);
    app.shutdown().await;
}

#[tokio::test]
async fn a_cancel_retracts_the_roll_call_it_started_and_tells_everyone_it_reached() {
    // A rule that starts at 震度3 in 新潟県中越: the 2008-06-14 series starts it, and JMA's
    // 取消 of the VXSE53 that started it withdraws it.
    let app = spawn_app_with(Options {
        extra_config: r#"
[[triggers]]
name = "chuetsu-3"
family = "earthquake"
areas = ["371"]
intensity = "3"
scenario = "earthquake"
"#
        .into(),
        ..Options::default()
    })
    .await;
    let dir = jma_data();
    let r = replay(
        &app,
        &dir,
        &["32-35_06_03_100915_VXSE53.xml".to_string()],
        false,
    )
    .await;
    assert_eq!(primary(&r[0]).0, "start");
    let rc = app.hq.list().await.unwrap()[0].clone();
    app.all_sent(rc.id).await;
    let r = replay(
        &app,
        &dir,
        &[
            "32-35_06_04_100915_VXSE53.xml".to_string(),
            "32-35_06_05_100915_VXSE53.xml".to_string(),
            "32-35_06_06_100915_VXSE53.xml".to_string(),
        ],
        false,
    )
    .await;
    assert_eq!(
        primary(&r[0]),
        ("ignore".into(), "already_started".into(), false)
    );
    assert_eq!(
        primary(&r[1]),
        ("ignore".into(), "already_started".into(), false)
    );
    assert_eq!(primary(&r[2]).0, "retract");
    let list = app.hq.list().await.unwrap();
    assert_eq!(list.len(), 2, "the roll call and its retraction message");
    let first = list.iter().find(|x| x.id == rc.id).unwrap();
    assert_eq!(first.state, anpi::rollcall::RollCallState::Closed);
    let msg = list.iter().find(|x| x.id != rc.id).unwrap();
    assert!(msg.message.contains("【取消】"), "{}", msg.message);
    assert_eq!(
        msg.recipients, rc.recipients,
        "everyone who was sent the check"
    );
    assert!(
        msg.drill,
        "a replayed retraction is a drill like its roll call"
    );
    app.all_sent(msg.id).await;
    // The trigger view of both names the 取消.
    let v: Value = app
        .http
        .get(format!("{}/api/rollcalls/{}/trigger", app.base_url, msg.id))
        .bearer_auth(HQ_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["telegrams"][0]["info_type"], "取消");
    assert_eq!(v["telegrams"][0]["action"], "retract");
    app.shutdown().await;
}

#[tokio::test]
async fn a_vpww54_twin_of_a_seen_vpww53_decides_nothing_and_a_drill_telegram_starts_a_drill() {
    let app = spawn_app_with(Options {
        extra_config: r#"
[[triggers]]
name = "shinjuku-rain"
family = "warning"
areas = ["1310400"]
level = 5
scenario = "flood"

[[triggers]]
name = "niigata-tsunami-watch"
family = "tsunami"
areas = ["340"]
level = 2
scenario = "earthquake"
"#
        .into(),
        ..Options::default()
    })
    .await;
    let dir = jma_data();
    let names: Vec<String> = [
        "weather/15_14_01_170216_VPWW53.xml",
        "weather/15_14_01_170216_VPWW54.xml",
        "weather/15_12_01_161130_VPWW53.xml",
        "tsunami/32-39_12_02_250206_VTSE41.xml",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = replay(&app, &dir, &names, true).await;
    assert_eq!(
        primary(&r[0]),
        ("start".into(), "reached".into(), false),
        "{}",
        r[0]
    );
    assert_eq!(
        primary(&r[1]),
        ("ignore".into(), "twin".into(), false),
        "{}",
        r[1]
    );
    assert_eq!(primary(&r[2]).1, "other_area", "島根県 is another office");
    assert_eq!(
        primary(&r[3]),
        ("start".into(), "reached".into(), true),
        "{}",
        r[3]
    );
    app.shutdown().await;
}
#[tokio::test]
async fn a_drill_telegrams_start_does_not_hold_back_the_real_quake_that_follows() {
    let app = spawn_app_with(Options {
        extra_config: SANJO_RULES.into(),
        ..Options::default()
    })
    .await;
    let name = "32-39_11_05_120615_VXSE53.xml";
    let real = std::fs::read_to_string(jma_data().join(name)).unwrap();
    let drill = real
        .replace("<Status>通常</Status>", "<Status>訓練</Status>")
        .replace("<EventID>20110311144640<", "<EventID>20110311140000<");
    assert_ne!(drill, real);
    let files = [(format!("drill-{name}"), drill), (name.to_string(), real)];
    for dry_run in [true, false] {
        let r = replay_xml(&app, &files, dry_run).await;
        assert_eq!(
            primary(&r[0]),
            ("start".into(), "reached".into(), true),
            "dry run {dry_run}: {}",
            r[0]
        );
        assert_eq!(
            primary(&r[1]),
            ("start".into(), "reached".into(), false),
            "dry run {dry_run}: the real 新潟県中越 震度5弱 is judged against real starts only: {}",
            r[1]
        );
    }
    // Both started (replays start drills only); the real telegram's roll call is its own.
    let rcs = app.hq.list().await.unwrap();
    assert_eq!(rcs.len(), 2, "{rcs:?}");
    app.shutdown().await;
}

/// A telegram file made current: its send, report and target times set to `at` (and, when
/// given, its EventID replaced), so the live path judges it fresh. Test data only.
pub fn fresh(xml: &str, at: chrono::DateTime<chrono::Utc>, event_id: Option<&str>) -> String {
    let set = |xml: &str, tag: &str, value: &str| -> String {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let mut out = String::new();
        let mut rest = xml;
        while let Some(i) = rest.find(&open) {
            let Some(j) = rest[i..].find(&close) else {
                break;
            };
            out.push_str(&rest[..i + open.len()]);
            out.push_str(value);
            rest = &rest[i + j..];
        }
        out.push_str(rest);
        out
    };
    let jst = at.with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).unwrap());
    let mut x = set(
        xml,
        "DateTime",
        &at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    x = set(&x, "ReportDateTime", &jst.to_rfc3339());
    x = set(&x, "TargetDateTime", &jst.to_rfc3339());
    if let Some(id) = event_id {
        x = set(&x, "EventID", id);
    }
    x
}

/// A loopback stand-in for JMA's server: feeds with ETags (304 on a match) and telegram
/// files, counting every request; it can be stopped (503 for everything).
pub mod feed_server {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Path, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;

    #[derive(Default)]
    pub struct Inner {
        pub feeds: HashMap<String, String>,
        pub data: HashMap<String, String>,
        pub hits: HashMap<String, u32>,
        pub not_modified: u32,
        pub stopped: bool,
    }

    #[derive(Clone, Default)]
    pub struct FeedServer(pub Arc<Mutex<Inner>>);

    impl FeedServer {
        pub async fn start(&self) -> String {
            let app = Router::new()
                .route("/feed/{name}", get(feed))
                .route("/data/{name}", get(data))
                .with_state(self.clone());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/", l.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
            url
        }

        pub fn hits(&self, path: &str) -> u32 {
            self.0.lock().unwrap().hits.get(path).copied().unwrap_or(0)
        }
    }

    async fn feed(State(s): State<FeedServer>, Path(name): Path<String>, h: HeaderMap) -> Response {
        let mut g = s.0.lock().unwrap();
        *g.hits.entry(format!("feed/{name}")).or_default() += 1;
        if g.stopped {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let Some(body) = g.feeds.get(&name).cloned() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let etag = format!(
            "\"{:x}\"",
            body.len() * 31 + body.bytes().map(usize::from).sum::<usize>()
        );
        if h.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
            g.not_modified += 1;
            return StatusCode::NOT_MODIFIED.into_response();
        }
        ([("etag", etag)], body).into_response()
    }

    async fn data(State(s): State<FeedServer>, Path(name): Path<String>) -> Response {
        let mut g = s.0.lock().unwrap();
        *g.hits.entry(format!("data/{name}")).or_default() += 1;
        if g.stopped {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        match g.data.get(&name) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

/// An Atom entry for a telegram file, as JMA writes them.
pub fn entry(title: &str, file: &str, updated: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "  <entry>\n    <title>{title}</title>\n    <id>https://www.data.jma.go.jp/developer/xml/data/{file}</id>\n    <updated>{}</updated>\n    <author><name>気象庁</name></author>\n    <link type=\"application/xml\" href=\"https://www.data.jma.go.jp/developer/xml/data/{file}\"/>\n  </entry>\n",
        updated.format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// `feed` with `entries` listed first (newest first, as JMA lists them).
pub fn with_entries(feed: &str, entries: &[String]) -> String {
    let i = feed.find("<entry>").unwrap();
    format!("{}{}{}", &feed[..i], entries.concat(), &feed[i..])
}

#[tokio::test]
async fn the_feed_watcher_fetches_each_telegram_once_honours_304_catches_up_and_degrades_health_when_the_feed_stops(
) {
    let dir = jma_data();
    let now = start_time();
    let server = feed_server::FeedServer::default();
    let quake = "20260311054500_0_VXSE53_010000.xml";
    let drill = "20260311054530_0_VTSE41_010000.xml";
    let later = "20260311055000_0_VXSE51_010000.xml";
    {
        let eqvol = std::fs::read_to_string(dir.join("feeds/eqvol.xml")).unwrap();
        let short = with_entries(
            &eqvol,
            &[
                entry("津波警報・注意報・予報a", drill, now),
                entry("震源・震度に関する情報", quake, now),
            ],
        );
        let long = with_entries(&short, &[entry("震度速報", later, now)]);
        let mut g = server.0.lock().unwrap();
        g.feeds.insert("eqvol.xml".into(), short);
        g.feeds.insert("eqvol_l.xml".into(), long);
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        g.data.insert(
            quake.into(),
            fresh(&read("32-39_11_05_120615_VXSE53.xml"), now, None),
        );
        g.data.insert(
            drill.into(),
            fresh(&read("tsunami/32-39_12_02_250206_VTSE41.xml"), now, None),
        );
        g.data.insert(
            later.into(),
            fresh(
                &read("32-35_07_03_100915_VXSE51.xml"),
                now + chrono::Duration::minutes(10),
                None,
            ),
        );
    }
    let base = server.start().await;
    let app = spawn_app_with(Options {
        extra_config: format!(
            "{SANJO_RULES}\n[[triggers]]\nname = \"coast-watch\"\nfamily = \"tsunami\"\nareas = [\"340\"]\nlevel = 2\nscenario = \"earthquake\"\n\n[jma]\nenabled = true\nbase_url = \"{base}\"\nfeeds = [\"eqvol\"]\npoll_interval = \"1s\"\nstale_after = \"2m\"\n"
        ),
        ..Options::default()
    })
    .await;

    // The quake (中越 5弱) starts the real roll call; the 訓練 tsunami only a drill.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while app.hq.list().await.unwrap().len() < 2 || server.0.lock().unwrap().not_modified < 2 {
        assert!(
            std::time::Instant::now() < end,
            "the watcher did not start both roll calls"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = app.hq.list().await.unwrap();
    let real = list.iter().find(|r| !r.drill).expect("a real roll call");
    let drilled = list.iter().find(|r| r.drill).expect("a drill");
    assert_eq!(real.scenario, "earthquake");
    assert_eq!(drilled.scenario, "earthquake");
    // Each telegram fetched once, though the feed was polled again (and answered 304).
    assert_eq!(server.hits(&format!("data/{quake}")), 1);
    assert_eq!(server.hits(&format!("data/{drill}")), 1);
    assert!(server.hits("feed/eqvol.xml") >= 3);
    assert_eq!(server.hits("feed/eqvol_l.xml"), 0, "no gap yet");
    // Telegrams the feed lists but the server lacks are tried a few times, then given up.
    let missing = "data/20211123192802_0_VXSE53_010000.xml";
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while server.hits(missing) < 3 {
        assert!(
            std::time::Instant::now() < end,
            "a missing telegram was not retried"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(server.hits(missing), 3, "given up after three tries");

    let v: Value = app
        .http
        .get(format!("{}/api/jma", app.base_url))
        .bearer_auth(CALLER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["health"]["status"], "ok", "{v}");
    assert!(v["recent"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["code"] == "VXSE53" && r["action"] == "start"));

    // A gap longer than the short feed lists: the long feed is read once, and what only it
    // lists is decided (here a 震度速報 for 中越 3: HQ is told).
    app.advance(mins(10));
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while server.hits(&format!("data/{later}")) == 0 {
        assert!(
            std::time::Instant::now() < end,
            "the long feed was not read after the gap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.hits("feed/eqvol_l.xml"), 1);
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = app.store.jma_log(Some("live"), None, 100).await.unwrap();
        if let Some(r) = log.iter().find(|r| r.code == "VXSE51") {
            assert_eq!(r.action, "notify", "{r:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the long feed's telegram was not decided"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The feed stops answering: /healthz says degraded (still 200: every replica sees the
    // same feed), /metrics and the API say which feed.
    server.0.lock().unwrap().stopped = true;
    let end = std::time::Instant::now() + Duration::from_secs(30);
    let health = loop {
        // Details (which feed) for a token holder; anyone sees the problem's name.
        let res = app
            .http
            .get(format!("{}/healthz", app.base_url))
            .bearer_auth(HQ_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let h: Value = res.json().await.unwrap();
        if h["status"] == "degraded" {
            let anonymous: Value = app
                .http
                .get(format!("{}/healthz", app.base_url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(anonymous["problems"][0]["name"], "jma_feed", "{anonymous}");
            assert!(anonymous.get("jma").is_none(), "{anonymous}");
            break h;
        }
        assert!(
            std::time::Instant::now() < end,
            "a stopped feed never degraded /healthz: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health["jma"]["stale"], json!(["eqvol"]), "{health}");
    let m = app
        .http
        .get(format!("{}/metrics", app.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("anpi_jma_feed_up{feed=\"eqvol\"} 0"), "{m}");
    assert!(
        m.contains("anpi_jma_decisions_total{action=\"start\"} 2"),
        "{m}"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn anpi_jma_replay_prints_each_files_decision_and_status_shows_the_telegram() {
    let app = spawn_app_with(Options {
        extra_config: SANJO_RULES.into(),
        ..Options::default()
    })
    .await;
    let dir = jma_data();
    let run = |args: Vec<String>| {
        let base = app.base_url.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_anpi"))
                    .args(&args)
                    .env("ANPI_URL", base)
                    .env("ANPI_TOKEN", HQ_TOKEN)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let quake = dir
        .join("32-39_11_05_120615_VXSE53.xml")
        .display()
        .to_string();
    let tsunami = dir.join("tsunami").display().to_string();
    let out = run(vec![
        "jma".into(),
        "replay".into(),
        "--dry-run".into(),
        quake.clone(),
        tsunami,
    ])
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("dry run"), "{text}");
    assert!(
        text.contains("start    [sanjo-quake]") && text.contains("震度5弱"),
        "{text}"
    );
    assert!(
        text.contains("32-39_12_02_250206_VTSE41.xml  [VTSE41 津波警報・注意報・予報a 訓練・発表]"),
        "{text}"
    );
    assert!(
        app.hq.list().await.unwrap().is_empty(),
        "a dry run starts nothing"
    );

    let out = run(vec!["jma".into(), "replay".into(), quake]).await;
    assert!(out.status.success());
    let rc = app.hq.list().await.unwrap()[0].clone();
    let out = run(vec!["rollcall".into(), "status".into(), rc.id.to_string()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("気象庁情報 / JMA:") && text.contains("VXSE53 震源・震度に関する情報"),
        "{text}"
    );
    let out = run(vec![
        "jma".into(),
        "replay".into(),
        "/nonexistent/telegram.xml".into(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file or folder"));
    app.shutdown().await;
}

#[tokio::test]
async fn a_trigger_naming_an_unknown_scenario_or_code_stops_the_daemon_with_the_key_named() {
    let tmp = tempfile::tempdir().unwrap();
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[scenarios]\ndir = \"{}\"\n",
        tmp.path().join("a.db").display(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
    );
    let config = anpi::config::Config::from_toml(&format!(
        "{base}[[triggers]]\nfamily = \"earthquake\"\nareas = [\"1520400\"]\nintensity = \"5-\"\nscenario = \"volcano\"\n"
    ))
    .unwrap();
    let err = match anpi::startup::Application::build(config).await {
        Ok(_) => panic!("a trigger with a missing scenario must not build"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("triggers[0].scenario") && err.contains("volcano"),
        "{err}"
    );
    let err = anpi::config::Config::from_toml(&format!(
        "{base}[[triggers]]\nfamily = \"warning\"\nareas = [\"1520400\"]\ncodes = [\"44\"]\nscenario = \"flood\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("triggers[0].codes[0]"), "{err}");
}

#[tokio::test]
async fn two_replicas_watching_one_feed_fetch_each_telegram_once_and_start_once_across_a_takeover()
{
    init_logs();
    use anpi::clock::{ManualClock, SharedClock};
    use std::sync::Arc;
    let dir = jma_data();
    let now = start_time();
    let server = feed_server::FeedServer::default();
    let quake = "20260311054500_0_VXSE53_010000.xml";
    {
        let mut g = server.0.lock().unwrap();
        let empty = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">\n<entry></entry></feed>";
        g.feeds.insert(
            "eqvol.xml".into(),
            with_entries(empty, &[entry("震源・震度に関する情報", quake, now)]),
        );
        let xml = std::fs::read_to_string(dir.join("32-39_11_05_120615_VXSE53.xml")).unwrap();
        g.data.insert(quake.into(), fresh(&xml, now, None));
    }
    let base = server.start().await;
    let tmp = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(now));
    let sim = anpi::simulator::Simulator::start(
        anpi::simulator::SimConfig {
            token: SIM_TOKEN.into(),
            rate_limit: None,
            faults: Default::default(),
            default_behaviour: Default::default(),
            population: None,
        },
        Default::default(),
        clock.clone(),
    )
    .await
    .unwrap();
    let mut replicas = Vec::new();
    for i in 0..2 {
        let config = anpi::config::Config::from_toml(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n[scenarios]\ndir = \"{}\"\n[providers.simulator]\nurl = \"{}\"\ntoken = \"{SIM_TOKEN}\"\npoll_wait = \"50ms\"\n[replicas]\nlease_ttl = \"1s\"\n{SANJO_RULES}\n[jma]\nenabled = true\nbase_url = \"{base}\"\nfeeds = [\"eqvol\"]\npoll_interval = \"1s\"\nstale_after = \"2m\"\n",
            tmp.path().join("shared.db").display(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"),
            sim.base_url(),
        ))
        .unwrap();
        let app = anpi::startup::Application::build_with_clock(config, clock.clone())
            .await
            .unwrap();
        if i == 0 {
            app.hq()
                .import_contacts(&anpi::contacts::synthetic::generate(20, 1).contacts)
                .await
                .unwrap();
        }
        let hq = app.hq();
        let cancel = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(app.run_until_stopped(cancel.clone()));
        replicas.push((hq, cancel, run));
    }
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while replicas[0].0.list().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < end, "no roll call started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both replicas run for several polls; then the first stops and the other takes over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (hq0, cancel0, run0) = replicas.remove(0);
    cancel0.cancel();
    let _ = run0.await;
    let polls = server.hits("feed/eqvol.xml");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while server.hits("feed/eqvol.xml") < polls + 3 {
        assert!(
            std::time::Instant::now() < end,
            "the other replica never took over the feed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.hits(&format!("data/{quake}")),
        1,
        "fetched once in all"
    );
    let (hq1, cancel1, run1) = replicas.remove(0);
    assert_eq!(hq1.list().await.unwrap().len(), 1, "started once in all");
    drop(hq0);
    cancel1.cancel();
    let _ = run1.await;
    sim.shutdown().await;
}
