//! The three result files, each written atomically (a temporary file in the same directory,
//! then a rename), so a reader sees the old file or the new one, never half of one:
//!
//! 1. `<out>/<dir>/json`: atomic's format (`Successful` a string), so `atomic scan` shows it.
//! 2. `<out>/<dir>/analytics_scanner_results.json`: the original scanner's format and key order.
//! 3. `<out>/environment.json`: atomic's `{info, images, containers}` limited to the targets,
//!    plus a `scanner` block.
//!
//! A target directory that already holds results (a CI job reusing its output directory) keeps
//! them: each old file is hard-linked to `<name>.previous-<time>` before the new one replaces it.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::engine::strip_sha_fields;
use crate::error::Error;
use crate::scan::outcome::Outcome;
use crate::scan::settings::Settings;

/// atomic's name for this scanner (`scanner_name` in `scanner-config`).
pub const SCANNER_NAME: &str = "analytics-integration";

/// The original scanner's `Scanner` value in its own result file.
pub const LEGACY_SCANNER: &str = "scanner-analytics-integration";

/// The original scanner's result file name.
pub const LEGACY_FILE: &str = "analytics_scanner_results.json";

/// atomic's time format in `json` (local time).
const ATOMIC_TIME: &str = "%Y-%m-%dT%H:%M:%S";

/// The original scanner's time format (local time, microseconds).
const LEGACY_TIME: &str = "%Y-%m-%d-%H-%M-%S-%6f";

/// One entry of atomic's `Results`.
#[derive(Debug, Serialize)]
struct ResultEntry {
    #[serde(rename = "Title")]
    title: String,
    #[serde(rename = "Custom")]
    custom: Map<String, Value>,
}

/// atomic's `json` file, keys in the order of atomic's own template.
#[derive(Debug, Serialize)]
struct AtomicJson {
    #[serde(rename = "Scanner")]
    scanner: &'static str,
    #[serde(rename = "Time")]
    time: String,
    #[serde(rename = "Finished Time")]
    finished: String,
    #[serde(rename = "Scan Type")]
    scan_type: String,
    #[serde(rename = "UUID")]
    uuid: String,
    /// A string: atomic calls `.upper()` on it.
    #[serde(rename = "Successful")]
    successful: &'static str,
    #[serde(rename = "CVE Feed Last Updated")]
    cve_feed: &'static str,
    #[serde(rename = "Custom")]
    custom: Map<String, Value>,
    #[serde(rename = "Results")]
    results: Vec<ResultEntry>,
}

/// The original's `Scan Results` for a first registration or a failure.
#[derive(Debug, Serialize)]
struct LegacyData {
    #[serde(rename = "email-ids", skip_serializing_if = "Option::is_none")]
    email_ids: Option<String>,
    #[serde(rename = "git-sha", skip_serializing_if = "Option::is_none")]
    git_sha: Option<String>,
    #[serde(rename = "git-url", skip_serializing_if = "Option::is_none")]
    git_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_url: Option<String>,
}

/// The original's result file, keys in its (CPython 2 dict) order.
#[derive(Debug, Serialize)]
struct LegacyJson {
    #[serde(rename = "Scan Type")]
    scan_type: String,
    #[serde(rename = "CVE Feed Last Updated")]
    cve_feed: &'static str,
    #[serde(rename = "UUID")]
    uuid: String,
    #[serde(rename = "Scan Results")]
    scan_results: Value,
    /// A JSON boolean here, as the original wrote it.
    #[serde(rename = "Successful")]
    successful: bool,
    #[serde(rename = "Finished Time")]
    finished: String,
    #[serde(rename = "Summary")]
    summary: String,
    #[serde(rename = "Start Time")]
    started: String,
    #[serde(rename = "Scanner")]
    scanner: &'static str,
}

/// The outcome's readable summary, including what went wrong and what became of the report.
pub fn full_summary(o: &Outcome) -> String {
    if o.successful {
        return o.summary.clone();
    }
    let mut text = format!("Error: {}", o.errors.join(" "));
    if let Some(report) = &o.error_report {
        text.push(' ');
        text.push_str(report);
    }
    text
}

fn server_url(settings: &Settings) -> Option<String> {
    settings.server.as_ref().map(crate::analytics::redacted)
}

/// The bytes of atomic's `json` for one outcome (`uuid_base` is the `/scanin` path).
pub fn atomic_json(o: &Outcome, settings: &Settings, uuid_base: &str) -> Vec<u8> {
    let mut custom = Map::new();
    if let Some(name) = &o.image_name {
        custom.insert("Image".into(), name.clone().into());
    }
    if let Some(obj) = &o.object {
        custom.insert("Object".into(), obj.kind.as_str().into());
        custom.insert("ID".into(), obj.id.clone().into());
    }
    if let Some(labels) = &o.labels {
        custom.insert("Labels".into(), Value::Object(labels.to_json()));
    }
    if let Some(server) = server_url(settings) {
        custom.insert("Server".into(), server.into());
    }
    custom.insert("Summary".into(), full_summary(o).into());
    if let Some(answer) = &o.answer {
        custom.insert("Server answer".into(), answer.clone());
    }
    let mut results: Vec<ResultEntry> = o
        .errors
        .iter()
        .map(|e| ResultEntry {
            title: e.clone(),
            custom: Map::from_iter([("Error".to_string(), Value::from(e.clone()))]),
        })
        .collect();
    results.extend(o.problems.iter().map(|p| ResultEntry {
        title: p.message.clone(),
        custom: Map::from_iter([
            ("Label".to_string(), Value::from(p.label.clone())),
            ("Problem".to_string(), Value::from(p.message.clone())),
        ]),
    }));
    let doc = AtomicJson {
        scanner: SCANNER_NAME,
        time: o.started.format(ATOMIC_TIME).to_string(),
        finished: o.finished.format(ATOMIC_TIME).to_string(),
        scan_type: scan_type_name(settings),
        uuid: format!("{}/{}", uuid_base.trim_end_matches('/'), o.dir),
        successful: if o.successful { "true" } else { "false" },
        cve_feed: "NA",
        custom,
        results,
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("serialises");
    bytes.push(b'\n');
    bytes
}

fn scan_type_name(settings: &Settings) -> String {
    match settings.scan_type {
        crate::cli::ScanType::Register => "register",
        crate::cli::ScanType::Verify => "verify",
        crate::cli::ScanType::Deploy => "deploy",
    }
    .to_string()
}

/// The bytes of the original scanner's result file for one outcome: `indent=4`, ASCII only,
/// no final newline, like Python's `json.dump(..., indent=4, separators=(",", ": "))`.
pub fn legacy_json(o: &Outcome, settings: &Settings) -> Vec<u8> {
    let scan_results = match &o.answer {
        Some(answer) if o.successful && answer.get("last_scan_report").is_some() => answer.clone(),
        _ => {
            let labels = o.labels.as_ref();
            serde_json::to_value(LegacyData {
                email_ids: labels.and_then(|l| l.email_ids.clone()),
                git_sha: labels.and_then(|l| l.git_sha.clone()),
                git_url: labels.and_then(|l| l.git_url.clone()),
                image_name: o.image_name.clone(),
                server_url: server_url(settings),
            })
            .expect("serialises")
        }
    };
    let doc = LegacyJson {
        scan_type: scan_type_name(settings),
        cve_feed: "NA",
        uuid: o.dir.clone(),
        scan_results,
        successful: o.successful,
        finished: o.finished.format(LEGACY_TIME).to_string(),
        summary: full_summary(o),
        started: o.started.format(LEGACY_TIME).to_string(),
        scanner: LEGACY_SCANNER,
    };
    python_json(&doc)
}

/// Python's `json.dump(x, indent=4, separators=(",", ": "))` with `ensure_ascii`: serde's
/// pretty printer with a 4-space indent, then every non-ASCII character as `\uXXXX` (they can
/// only occur inside strings, so this is safe on the whole text).
fn python_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    value.serialize(&mut ser).expect("serialises");
    let text = String::from_utf8(buf).expect("serde_json writes UTF-8");
    if text.is_ascii() {
        return text.into_bytes();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out.into_bytes()
}

/// The bytes of `environment.json`: atomic's `{info, images, containers}` (inspects given as
/// compact JSON with `sha256:` already stripped, parsed one at a time so memory stays flat),
/// plus the `scanner` block.
pub fn environment_json(
    mut info: Value,
    images: &[&str],
    containers: &[&str],
    settings: &Settings,
) -> Vec<u8> {
    strip_sha_fields(&mut info);
    let indent_item = |compact: &str| -> String {
        let v: Value = serde_json::from_str(compact).unwrap_or_default();
        let text = String::from_utf8(python_json(&v)).expect("ASCII");
        text.lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let list = |items: &[&str]| -> String {
        if items.is_empty() {
            return "[]".into();
        }
        let body: Vec<String> = items.iter().map(|i| indent_item(i)).collect();
        format!("[\n{}\n    ]", body.join(",\n"))
    };
    let indent_value = |v: &Value| -> String {
        let text = String::from_utf8(python_json(v)).expect("ASCII");
        text.lines().collect::<Vec<_>>().join("\n    ")
    };
    let scanner = json!({
        "name": SCANNER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "scan type": scan_type_name(settings),
        "server": server_url(settings),
    });
    format!(
        "{{\n    \"info\": {},\n    \"images\": {},\n    \"containers\": {},\n    \"scanner\": {}\n}}",
        indent_value(&info),
        list(images),
        list(containers),
        indent_value(&scanner)
    )
    .into_bytes()
}

/// Check that results can be written under `dir` (creating it when `create`), before any work
/// is done, so a read-only or missing output directory fails fast and registers nothing.
pub fn check_writable(dir: &Path, create: bool) -> Result<(), Error> {
    let err = |source: std::io::Error| Error::Output {
        path: dir.to_path_buf(),
        source,
    };
    if create {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let probe = tempfile::Builder::new()
        .prefix(".imagetrail-probe")
        .tempfile_in(dir)
        .map_err(err)?;
    drop(probe);
    Ok(())
}

/// Write `bytes` to `dir/name` atomically; an existing file is kept as
/// `name.previous-<stamp>` first. Returns the name the old file was kept under, if any.
pub fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    stamp: &DateTime<Local>,
) -> Result<Option<PathBuf>, Error> {
    let path = dir.join(name);
    let err = |p: &Path, source: std::io::Error| Error::Output {
        path: p.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .map_err(|e| err(dir, e))?;
    tmp.write_all(bytes).map_err(|e| err(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| err(tmp.path(), e))?;
    let mut kept = None;
    if path.exists() {
        let backup = dir.join(format!(
            "{name}.previous-{}",
            stamp.format("%Y%m%dT%H%M%S%.6f")
        ));
        // A hard link keeps the old bytes under a second name; the rename below then swaps
        // the new file in, so at every moment `name` is the old file or the new one.
        std::fs::hard_link(&path, &backup).map_err(|e| err(&backup, e))?;
        kept = Some(backup);
    }
    tmp.persist(&path).map_err(|e| err(&path, e.error))?;
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_style_json() {
        let v = json!({"a": ["é", {}], "b": []});
        assert_eq!(
            String::from_utf8(python_json(&v)).unwrap(),
            "{\n    \"a\": [\n        \"\\u00e9\",\n        {}\n    ],\n    \"b\": []\n}"
        );
        assert_eq!(
            String::from_utf8(python_json(&json!("\u{1F600}"))).unwrap(),
            "\"\\ud83d\\ude00\""
        );
    }
}
