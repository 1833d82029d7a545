//! The dashboard, delivery metrics and history range reads, through the real binary and the
//! real server: `imagetrail history --last/--since/--until` on a generated history,
//! `imagetrail metrics`, and the pages in headless Chromium (see `support::browser`).

use std::path::Path;

use crate::support::{imagetrail, run, stderr, stdout};

/// A history of `n` entries (one every 10 minutes from 2020-01-01T00:00:00Z, tag = index in
/// hex, 7 digits) written by bench/gen-history.py under `state`/prod/hello.
fn generated_history(state: &Path, n: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen-history.py");
    let out = run(std::process::Command::new("python3")
        .arg(script)
        .arg(state)
        .arg(n.to_string())
        .arg("reg.example/hello"));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn history(state: &Path, args: &[&str]) -> String {
    let out = run(imagetrail()
        .arg("history")
        .arg("--state-dir")
        .arg(state)
        .args(args));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The TAG column of a history table, header dropped.
fn tags(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_string())
        .collect()
}

#[test]
fn history_reads_the_last_entries_and_time_bounds_of_a_long_history() {
    let st = tempfile::tempdir().unwrap();
    generated_history(st.path(), 3000);

    let last = history(st.path(), &["--last", "3"]);
    assert_eq!(tags(&last), ["0000bb5", "0000bb6", "0000bb7"], "{last}");
    assert!(last.starts_with("DEPLOYED "), "{last}");

    // Entry i is at i*10 minutes: 2020-01-05T00:00 is entry 576 (0x240); until 00:30 is 579.
    let bounded = history(
        st.path(),
        &[
            "--since",
            "2020-01-05T00:00:00Z",
            "--until",
            "2020-01-05T00:30:00Z",
        ],
    );
    assert_eq!(tags(&bounded), ["0000240", "0000241", "0000242", "0000243"]);
    let bounded_last = history(
        st.path(),
        &[
            "--since",
            "2020-01-05T00:00:00Z",
            "--until",
            "2020-01-05T00:30:00Z",
            "--last",
            "2",
        ],
    );
    assert_eq!(tags(&bounded_last), ["0000242", "0000243"]);

    // The whole history, streamed: every entry once, in order, in text and JSON.
    let all = history(st.path(), &[]);
    let all_tags = tags(&all);
    assert_eq!(all_tags.len(), 3000);
    assert_eq!(all_tags[0], "0000000");
    assert_eq!(all_tags[2999], "0000bb7");
    let json: serde_json::Value =
        serde_json::from_str(&history(st.path(), &["--format", "json", "--last", "2"])).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["image"]["tag"], "0000bb7");
    assert_eq!(list[1]["deployment"]["workspace"], "prod");
    let json_all: serde_json::Value =
        serde_json::from_str(&history(st.path(), &["--format", "json"])).unwrap();
    assert_eq!(json_all.as_array().unwrap().len(), 3000);
    let none: serde_json::Value = serde_json::from_str(&history(
        st.path(),
        &["--format", "json", "--until", "2019-01-01T00:00:00Z"],
    ))
    .unwrap();
    assert_eq!(none, serde_json::json!([]));
}
