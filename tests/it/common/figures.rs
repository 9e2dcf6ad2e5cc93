//! The reliability suite's scale and its published figures (RELIABILITY.md).
//!
//! The randomised and soak tests run quickly in `.ci/run` and at full size
//! under `scripts/reliability.sh`, which sets `BENCHWARDEN_RELIABILITY=long`.
//! Each such test tells what it did as one JSON line: on stderr always, and
//! appended to `$BENCHWARDEN_FIGURES` when set, so the script can put the
//! last results into RELIABILITY.md without anyone copying numbers by hand.

use std::io::Write;

/// How many times (or how many tasks): `quick` in `.ci/run`, `long` under
/// `scripts/reliability.sh`.
pub fn count(quick: usize, long: usize) -> usize {
    match std::env::var("BENCHWARDEN_RELIABILITY").as_deref() {
        Ok("long") => long,
        Ok("quick") | Err(_) => quick,
        Ok(other) => panic!("BENCHWARDEN_RELIABILITY={other:?}: expected `quick` or `long`"),
    }
}

/// Tells one case's figures: `{"case": case, ...fields}`.
pub fn record(case: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({ "case": case });
    if let (Some(line), serde_json::Value::Object(fields)) = (line.as_object_mut(), fields) {
        line.extend(fields);
    }
    let line = line.to_string();
    eprintln!("figures: {line}");
    let Ok(path) = std::env::var("BENCHWARDEN_FIGURES") else { return };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|error| panic!("cannot open BENCHWARDEN_FIGURES={path}: {error}"));
    writeln!(file, "{line}").unwrap_or_else(|error| panic!("cannot write {path}: {error}"));
}
