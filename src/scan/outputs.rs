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
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use chrono::{DateTime, Local};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::ScanType;
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

/// A JSON object whose keys keep the order they were added in: atomic prints `Custom` in the
/// file's order, so the order is part of what the operator reads.
#[derive(Debug, Default)]
struct Fields(Vec<(String, Value)>);

impl Fields {
    fn add(&mut self, key: &str, value: impl Into<Value>) {
        self.0.push((key.to_string(), value.into()));
    }
}

impl Serialize for Fields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// One entry of atomic's `Results`.
#[derive(Debug, Serialize)]
struct ResultEntry {
    #[serde(rename = "Title")]
    title: String,
    #[serde(rename = "Custom")]
    custom: Fields,
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
    custom: Fields,
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
///
/// `Successful` is `"false"` only for a target that could not be read at all: for `"false"`
/// atomic prints nothing but "<target> is not supported for this scan". A target that was read
/// but not registered is `"true"`, with `Registered: no` and each reason in `Results` (what
/// failed, the server's answer or the connection error, what to do), which atomic prints.
pub fn atomic_json(o: &Outcome, settings: &Settings, uuid_base: &str) -> Vec<u8> {
    let mut custom = Fields::default();
    if let Some(name) = &o.image_name {
        custom.add("Image", name.clone());
    }
    if let Some(obj) = &o.object {
        custom.add("Object", obj.kind.as_str());
        custom.add("ID", obj.id.clone());
    }
    match settings.scan_type {
        ScanType::Register => custom.add(
            "Registered",
            if o.successful && settings.server.is_some() {
                "yes"
            } else {
                "no"
            },
        ),
        ScanType::Deploy => custom.add(
            "Recorded as deployed",
            if o.successful { "yes" } else { "no" },
        ),
        ScanType::Verify => {}
    }
    custom.add("Summary", full_summary(o));
    if let Some(server) = server_url(settings) {
        custom.add("Server", server);
    }
    if let Some(answer) = &o.answer {
        custom.add("Server answer", answer.clone());
    }
    if let Some(report) = &o.error_report {
        custom.add("Error report", report.clone());
    }
    if let Some(labels) = &o.labels {
        custom.add("Labels", Value::Object(labels.to_json()));
    }
    let mut results: Vec<ResultEntry> = o
        .failures
        .iter()
        .map(|f| {
            let mut fields = Fields::default();
            fields.add("Failed", f.failed.clone());
            for (k, v) in &f.details {
                fields.add(k, v.clone());
            }
            fields.add("What to do", f.todo.clone());
            ResultEntry {
                title: f.message.clone(),
                custom: fields,
            }
        })
        .collect();
    results.extend(o.problems.iter().map(|p| {
        let mut fields = Fields::default();
        fields.add("Label", p.label.clone());
        fields.add("Problem", p.message.clone());
        ResultEntry {
            title: p.message.clone(),
            custom: fields,
        }
    }));
    let doc = AtomicJson {
        scanner: SCANNER_NAME,
        time: o.started.format(ATOMIC_TIME).to_string(),
        finished: o.finished.format(ATOMIC_TIME).to_string(),
        scan_type: scan_type_name(settings),
        uuid: format!("{}/{}", uuid_base.trim_end_matches('/'), o.dir),
        successful: if o.readable() { "true" } else { "false" },
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

/// Write `environment.json`: atomic's `{info, images, containers}` (inspects given as compact
/// JSON with `sha256:` already stripped), plus the `scanner` block. Each inspect is parsed,
/// pretty-printed and written one at a time, so memory holds one item, not the whole file.
pub fn write_environment_json(
    w: &mut dyn Write,
    mut info: Value,
    images: &[&str],
    containers: &[&str],
    settings: &Settings,
) -> std::io::Result<()> {
    strip_sha_fields(&mut info);
    // Python's layout: every line after the first of a nested value gets the parent's indent.
    let indented = |w: &mut dyn Write, v: &Value, pad: &[u8]| -> std::io::Result<()> {
        let text = python_json(v);
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if i > 0 {
                w.write_all(b"\n")?;
                w.write_all(pad)?;
            }
            w.write_all(line)?;
        }
        Ok(())
    };
    let list = |w: &mut dyn Write, items: &[&str]| -> std::io::Result<()> {
        if items.is_empty() {
            return w.write_all(b"[]");
        }
        w.write_all(b"[\n")?;
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                w.write_all(b",\n")?;
            }
            let v: Value = serde_json::from_str(item).unwrap_or_default();
            w.write_all(b"        ")?;
            indented(w, &v, b"        ")?;
        }
        w.write_all(b"\n    ]")
    };
    let scanner = json!({
        "name": SCANNER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "scan type": scan_type_name(settings),
        "server": server_url(settings),
    });
    w.write_all(b"{\n    \"info\": ")?;
    indented(w, &info, b"    ")?;
    w.write_all(b",\n    \"images\": ")?;
    list(w, images)?;
    w.write_all(b",\n    \"containers\": ")?;
    list(w, containers)?;
    w.write_all(b",\n    \"scanner\": ")?;
    indented(w, &scanner, b"    ")?;
    w.write_all(b"\n}")
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

/// The name the seed's README gives the legacy result file (the scanner's first versions wrote
/// it): a hard link to [`LEGACY_FILE`], so the bytes are written once.
pub const LEGACY_ALIAS: &str = "scanner-analytics-integration.json";

/// Up to this many staged files are fsynced one by one; more are synced with one `syncfs`.
const FSYNC_EACH_UP_TO: usize = 8;

/// One file written to a temporary name, waiting for the run's single sync and its rename.
struct Staged {
    /// The target directory name (`None` for a file directly in the results directory).
    target: Option<String>,
    /// The directory it lives in.
    dir: std::sync::Arc<OwnedFd>,
    /// The temporary name.
    tmp: String,
    /// The final name.
    name: &'static str,
}

/// The results directory (`/scanout`), opened once: everything is created relative to it with
/// `*at` calls, and a target directory that is a symlink or not a directory is never followed.
///
/// Durability costs one sync for the whole run: every file is first written under a
/// temporary name, then [`ResultsDir::commit`] syncs the file system once (or fsyncs each file
/// when there are only a few), renames each file
/// into place and syncs the directories. A crash leaves each result file old, new or absent,
/// never empty or half-written.
pub struct ResultsDir {
    path: PathBuf,
    fd: std::sync::Arc<OwnedFd>,
    staged: std::sync::Mutex<Vec<Staged>>,
}

/// A target's files could not be written (they belong to that target only).
fn output_error(path: PathBuf, source: std::io::Error) -> Error {
    Error::Output { path, source }
}

/// A suffix for a temporary name, unique in this run and, with high probability, against any
/// other process writing the same directory (an atomic scanner in another container may have
/// the same pid): one random prefix per process and a counter, instead of a `getrandom` call
/// per file (600 of them for 200 targets). `O_EXCL` still refuses a name that exists.
fn random_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
    format!("{prefix}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl ResultsDir {
    /// Open `path` (it must be a directory).
    pub fn open(path: &Path) -> Result<ResultsDir, Error> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| output_error(path.to_path_buf(), e.into()))?;
        Ok(ResultsDir {
            path: path.to_path_buf(),
            fd: std::sync::Arc::new(fd),
            staged: Default::default(),
        })
    }

    /// The results directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Open (creating it if needed) the target directory `name`, refusing a symlink or a
    /// non-directory: results are never written through a link planted in `/scanout`.
    fn target_dir(&self, name: &str) -> Result<OwnedFd, Error> {
        let path = self.path.join(name);
        match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(output_error(path, e.into())),
        }
        rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            let source = match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => std::io::Error::other(
                    "it is a symlink or not a directory, and is not followed; remove it and scan again",
                ),
                e => e.into(),
            };
            output_error(path, source)
        })
    }

    /// Write `bytes` under a temporary name in `dir`.
    fn stage(
        &self,
        target: Option<&str>,
        dir: &std::sync::Arc<OwnedFd>,
        dir_path: &Path,
        name: &'static str,
        bytes: &[u8],
    ) -> Result<(), Error> {
        self.stage_with(target, dir, dir_path, name, &mut |w| w.write_all(bytes))
    }

    /// Write a file under a temporary name in `dir`, its contents produced by `fill`.
    fn stage_with(
        &self,
        target: Option<&str>,
        dir: &std::sync::Arc<OwnedFd>,
        dir_path: &Path,
        name: &'static str,
        fill: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let tmp = format!(".{name}.{}.tmp", random_suffix());
        let fd = rustix::fs::openat(
            &**dir,
            tmp.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| output_error(dir_path.join(&tmp), e.into()))?;
        let mut file = std::io::BufWriter::with_capacity(64 * 1024, std::fs::File::from(fd));
        if let Err(e) = fill(&mut file).and_then(|()| file.flush()) {
            let _ = rustix::fs::unlinkat(&**dir, tmp.as_str(), AtFlags::empty());
            return Err(output_error(dir_path.join(&tmp), e));
        }
        self.staged.lock().expect("not poisoned").push(Staged {
            target: target.map(str::to_string),
            dir: dir.clone(),
            tmp,
            name,
        });
        Ok(())
    }

    /// Stage a target's files (`json`, the legacy file) in its directory.
    pub fn stage_target(
        &self,
        target: &str,
        files: &[(&'static str, Vec<u8>)],
    ) -> Result<(), Error> {
        let dir = std::sync::Arc::new(self.target_dir(target)?);
        let dir_path = self.path.join(target);
        for (name, bytes) in files {
            self.stage(Some(target), &dir, &dir_path, name, bytes)?;
        }
        Ok(())
    }

    /// Stage a file directly in the results directory (`environment.json`), written by `fill`.
    pub fn stage_top(
        &self,
        name: &'static str,
        fill: &mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let fd = self.fd.clone();
        self.stage_with(None, &fd, &self.path.clone(), name, fill)
    }

    /// Make every staged file durable and put it in place: one `syncfs`, then the renames
    /// (an existing file is first kept as `<name>.previous-<stamp>`, and the legacy file gets
    /// its second name), then one fsync per directory. Returns the failures, each with the
    /// target it belongs to (`None`: a file of the results directory itself).
    pub fn commit(&self, stamp: &DateTime<Local>) -> Vec<(Option<String>, Error)> {
        let staged = std::mem::take(&mut *self.staged.lock().expect("not poisoned"));
        let mut failures = vec![];
        if let Err(e) = self.sync(&staged) {
            // Without the sync a crash could leave empty files: nothing is renamed.
            for s in &staged {
                let _ = rustix::fs::unlinkat(&*s.dir, s.tmp.as_str(), AtFlags::empty());
            }
            let err = output_error(self.path.clone(), e.into());
            return vec![(None, err)];
        }
        let mut synced: Vec<std::sync::Arc<OwnedFd>> = vec![];
        let mut failed_targets = std::collections::HashSet::new();
        for s in &staged {
            let dir_path = match &s.target {
                Some(t) => self.path.join(t),
                None => self.path.clone(),
            };
            let result = self.put(s, &dir_path, stamp).and_then(|mut kept| {
                if s.name == LEGACY_FILE {
                    kept.extend(self.alias(s, &dir_path, kept.first(), stamp)?);
                }
                Ok(kept)
            });
            match result {
                Ok(kept) => {
                    for k in kept {
                        tracing::warn!(
                            "{} already held results; the old file was kept as {}",
                            crate::terminal::sanitize(&dir_path.join(s.name).display().to_string()),
                            crate::terminal::sanitize(&dir_path.join(k).display().to_string())
                        );
                    }
                }
                Err(e) => {
                    let _ = rustix::fs::unlinkat(&*s.dir, s.tmp.as_str(), AtFlags::empty());
                    // One failure per target is enough to say.
                    if failed_targets.insert(s.target.clone()) {
                        failures.push((s.target.clone(), e));
                    }
                }
            }
            if !synced.iter().any(|d| std::sync::Arc::ptr_eq(d, &s.dir)) {
                synced.push(s.dir.clone());
            }
        }
        if !synced.iter().any(|d| std::sync::Arc::ptr_eq(d, &self.fd)) {
            synced.push(self.fd.clone());
        }
        // The renames made durable: many directories with a second `syncfs` (an fsync per
        // target directory cost 40-200 ms for 200 targets), a few with an fsync each, all at
        // once. A lost directory sync only risks a rename; the files themselves are synced.
        let result = if staged.len() > FSYNC_EACH_UP_TO {
            rustix::fs::syncfs(&*self.fd)
        } else {
            fsync_all(synced.iter().map(|d| &**d))
        };
        if let Err(e) = result {
            tracing::warn!("could not sync the results directories: {e}");
        }
        failures
    }

    /// Make the staged files durable. Many files: one `syncfs`, far cheaper than an fsync
    /// each. A few files (a single-target run): an fsync each, because `syncfs` also flushes
    /// whatever else is dirty on that file system, which on a busy host costs more than a
    /// handful of fsyncs; and all at once, so the file system commits them together (one
    /// after the other, each waited for its own journal commit: 150 ms for three files on
    /// this busy host, measured with `strace -T`).
    fn sync(&self, staged: &[Staged]) -> rustix::io::Result<()> {
        if staged.len() > FSYNC_EACH_UP_TO {
            return rustix::fs::syncfs(&*self.fd);
        }
        let files = staged
            .iter()
            .map(|s| {
                rustix::fs::openat(
                    &*s.dir,
                    s.tmp.as_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            })
            .collect::<rustix::io::Result<Vec<OwnedFd>>>()?;
        fsync_all(files.iter())
    }

    /// Keep an existing `name` as `name.previous-<stamp>` (a hard link, so `name` stays in
    /// place until the rename swaps it), then rename `tmp` to `name`.
    fn rename_into_place(
        &self,
        dir: &OwnedFd,
        dir_path: &Path,
        tmp: &str,
        name: &str,
        stamp: &DateTime<Local>,
    ) -> Result<Option<String>, Error> {
        // The usual case, a fresh directory (atomic gives every scan a new one): one
        // `renameat2(RENAME_NOREPLACE)` instead of a `stat` that fails and a rename. It fails
        // when `name` exists (or the file system cannot refuse to replace); the general way
        // below then keeps the old file first.
        if rustix::fs::renameat_with(dir, tmp, dir, name, rustix::fs::RenameFlags::NOREPLACE)
            .is_ok()
        {
            return Ok(None);
        }
        let mut kept = None;
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {
                let backup = format!("{name}.previous-{}", stamp.format("%Y%m%dT%H%M%S%.6f"));
                rustix::fs::linkat(dir, name, dir, backup.as_str(), AtFlags::empty())
                    .map_err(|e| output_error(dir_path.join(name), e.into()))?;
                kept = Some(backup);
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(output_error(dir_path.join(name), e.into())),
        }
        rustix::fs::renameat(dir, tmp, dir, name)
            .map_err(|e| output_error(dir_path.join(name), e.into()))?;
        Ok(kept)
    }

    fn put(
        &self,
        s: &Staged,
        dir_path: &Path,
        stamp: &DateTime<Local>,
    ) -> Result<Vec<String>, Error> {
        Ok(self
            .rename_into_place(&s.dir, dir_path, &s.tmp, s.name, stamp)?
            .into_iter()
            .collect())
    }

    /// The legacy file's second name: a hard link made under a temporary name, then renamed
    /// over the alias, so the alias is always a whole file (and the same inode). An old alias
    /// that was a link to the old legacy file (kept as `kept_legacy`) needs no copy of its own.
    fn alias(
        &self,
        s: &Staged,
        dir_path: &Path,
        kept_legacy: Option<&String>,
        stamp: &DateTime<Local>,
    ) -> Result<Vec<String>, Error> {
        // No alias yet (a fresh directory): the link itself is made under the final name, in
        // one call that creates it whole or fails because something is there.
        if rustix::fs::linkat(
            &*s.dir,
            LEGACY_FILE,
            &*s.dir,
            LEGACY_ALIAS,
            AtFlags::empty(),
        )
        .is_ok()
        {
            return Ok(vec![]);
        }
        let same = |a: &rustix::fs::Stat, b: &rustix::fs::Stat| {
            a.st_dev == b.st_dev && a.st_ino == b.st_ino
        };
        let old_alias = rustix::fs::statat(&*s.dir, LEGACY_ALIAS, AtFlags::SYMLINK_NOFOLLOW).ok();
        let old_is_kept = match (&old_alias, kept_legacy) {
            (Some(a), Some(k)) => {
                rustix::fs::statat(&*s.dir, k.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|k| same(a, &k))
            }
            _ => false,
        };
        let tmp = format!(".{LEGACY_ALIAS}.{}.tmp", random_suffix());
        rustix::fs::linkat(
            &*s.dir,
            LEGACY_FILE,
            &*s.dir,
            tmp.as_str(),
            AtFlags::empty(),
        )
        .map_err(|e| output_error(dir_path.join(LEGACY_ALIAS), e.into()))?;
        let kept = if old_is_kept {
            rustix::fs::renameat(&*s.dir, tmp.as_str(), &*s.dir, LEGACY_ALIAS)
                .map_err(|e| output_error(dir_path.join(LEGACY_ALIAS), e.into()))
                .map(|()| None)
        } else {
            self.rename_into_place(&s.dir, dir_path, &tmp, LEGACY_ALIAS, stamp)
        }
        .inspect_err(|_| {
            let _ = rustix::fs::unlinkat(&*s.dir, tmp.as_str(), AtFlags::empty());
        })?;
        Ok(kept.into_iter().collect())
    }
}

/// fsync every file at once, one thread each: concurrent fsyncs share the file system's
/// journal commits instead of waiting for one each.
fn fsync_all<'a>(fds: impl Iterator<Item = &'a OwnedFd>) -> rustix::io::Result<()> {
    let fds: Vec<&OwnedFd> = fds.collect();
    if fds.len() <= 1 {
        return fds.iter().try_for_each(|fd| rustix::fs::fsync(*fd));
    }
    std::thread::scope(|scope| {
        let threads: Vec<_> = fds
            .iter()
            .map(|fd| scope.spawn(move || rustix::fs::fsync(*fd)))
            .collect();
        // The first error is the answer; the scope still waits for every other fsync.
        threads
            .into_iter()
            .try_for_each(|t| t.join().unwrap_or(Err(rustix::io::Errno::IO)))
    })
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
