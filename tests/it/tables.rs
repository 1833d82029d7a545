//! What the readers print from stored text: no reader panics on a long value, every cell is
//! escaped (newlines, CR, control and Unicode format characters) and cut with `…`, so one row
//! of output is always one record.
//!
//! The records are written by `imagetrail deploy` against the tests' registry and then edited
//! by hand, as a person or an older version (before the field limits) could have left them:
//! the writer refuses such values now, the readers must still answer.
//!
//! Files only: such values reach the readers only through a hand-edited YAML file; the
//! database is written by the writer alone, which refuses them (the readers' printing is the
//! same code for both backends, see the `postgres` comparison test).

use std::path::Path;

use crate::deploy::{deploy_to, it};
use crate::support::registry::{shared, unique_repo};
use crate::support::{read, stderr, stdout};

/// A deployment of a fresh image tagged `placeholdertag` by `PLACEHOLDERBY` to app `hello`
/// in `prod`, with the two values then replaced in both record files by the YAML scalars
/// `tag` and `by` (written as they appear between the quotes). Returns the image digest.
fn deploy_then_edit(state: &Path, tag: &str, by: &str) -> String {
    let reg = shared();
    let repo = unique_repo("tables");
    let digest = reg.push_ci_image(
        &repo,
        "placeholdertag",
        "2026-01-24T22:41:03Z",
        "1f3a9c2",
        "hostile",
    );
    let image = format!("{}/{repo}:placeholdertag", reg.addr);
    let out = deploy_to(
        state,
        "prod",
        &image,
        &["--app", "hello", "--by", "PLACEHOLDERBY"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for file in ["deploy-info.yml", "deploy-history.yml"] {
        let path = state.join("prod/hello").join(file);
        let text = read(&path)
            .replace("\"placeholdertag\"", &format!("\"{tag}\""))
            .replace("\"PLACEHOLDERBY\"", &format!("\"{by}\""));
        std::fs::write(&path, text).unwrap();
    }
    digest
}

/// Each reader's stdout, after checking that it exited 0 (no panic, no refusal).
fn readers(state: &Path, digest: &str) -> Vec<(&'static str, String)> {
    let runs: [(&str, Vec<&str>); 4] = [
        ("history", vec!["history"]),
        ("status", vec!["status"]),
        ("where", vec!["where", digest]),
        ("at", vec!["at", "2100-01-01T00:00:00Z"]),
    ];
    runs.into_iter()
        .map(|(name, args)| {
            let out = it(state, &args);
            assert_eq!(out.status.code(), Some(0), "{name}: {}", stderr(&out));
            (name, stdout(&out))
        })
        .collect()
}

/// The data rows of a table (the lines after the header).
fn rows(table: &str) -> Vec<&str> {
    table.lines().skip(1).collect()
}

#[test]
fn a_70000_character_stored_value_is_cut_and_no_reader_panics() {
    let st = tempfile::Builder::new().prefix("it-tab").tempdir().unwrap();
    let tag = "t".repeat(70_000);
    let by = "b".repeat(70_000);
    let digest = deploy_then_edit(st.path(), &tag, &by);
    for (name, out) in readers(st.path(), &digest) {
        assert!(
            !out.contains(&"b".repeat(3000)),
            "{name} printed the whole value"
        );
        assert!(
            out.contains(&format!("{}…", "b".repeat(200))),
            "{name}: no cut value"
        );
        assert!(
            out.contains(&format!("{}…", "t".repeat(200))),
            "{name}: no cut tag"
        );
        if name != "at" {
            assert_eq!(rows(&out).len(), 1, "{name}");
        }
    }
}

#[test]
fn a_newline_in_a_stored_value_cannot_forge_a_row() {
    let st = tempfile::Builder::new().prefix("it-tab").tempdir().unwrap();
    let forged = "mallory\\nprod  hello  v9  sha256:000000000000  -  2026-01-01T00:00:00Z  root";
    let digest = deploy_then_edit(st.path(), "v1", forged);
    for (name, out) in readers(st.path(), &digest) {
        assert!(
            out.contains("mallory\\nprod  hello  v9"),
            "{name} did not show the newline escaped:\n{out}"
        );
        assert!(
            !out.lines().any(|l| l.starts_with("prod  hello  v9")),
            "{name} printed a forged row:\n{out}"
        );
        if name != "at" {
            assert_eq!(rows(&out).len(), 1, "{name}:\n{out}");
        }
    }
    // A carriage return cannot overwrite a row either.
    let st = tempfile::Builder::new().prefix("it-tab").tempdir().unwrap();
    let digest = deploy_then_edit(st.path(), "v1", "mallory\\rroot");
    for (name, out) in readers(st.path(), &digest) {
        assert!(!out.contains('\r'), "{name} printed a raw CR");
        assert!(out.contains("mallory\\rroot"), "{name}:\n{out}");
    }
}

#[test]
fn bidi_and_zero_width_characters_in_stored_values_are_shown_escaped() {
    let st = tempfile::Builder::new().prefix("it-tab").tempdir().unwrap();
    // `\u202E` and `\u200B` are YAML escapes: the records hold the characters themselves.
    let digest = deploy_then_edit(st.path(), "v1", "evil\\u202Egnp.exe\\u200B\\u2066x");
    for (name, out) in readers(st.path(), &digest) {
        for raw in ['\u{202e}', '\u{200b}', '\u{2066}'] {
            assert!(!out.contains(raw), "{name} printed {raw:?} raw");
        }
        assert!(
            out.contains("evil\\u{202e}gnp.exe\\u{200b}\\u{2066}x"),
            "{name}:\n{out}"
        );
    }
}
