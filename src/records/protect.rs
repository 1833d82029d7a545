//! Every digest the records name, for `registry prune`: what it must never delete.
//!
//! Why a module of its own rather than the readers `status` and `history` use: those answer
//! "what runs", and skip or report what they cannot read. Prune destroys data, so it needs the
//! opposite bias: every digest that appears in any byte of the state directory is protected,
//! whatever the state of the file it is in. So [`collect`] walks the whole state directory (every
//! environment, every app, `deploy-info.yml`, `deploy-history.yml`, `deploy-history.yml.torn`,
//! files set aside, temp files, anything else) and
//!
//! * extracts every `sha256:<64 hex>` / `sha512:<128 hex>` from the raw bytes of every file, so
//!   a hand-broken, torn or unparsable file still protects every digest it names;
//! * parses `deploy-info.yml` and `deploy-history.yml` besides, only to say *why* a digest is
//!   protected (deployed now, in the history, an index) and to name the files it cannot
//!   reconcile (a torn tail, an info whose deployment is not in its history);
//! * refuses ([`ProtectError::Unreadable`]) when any directory or file cannot be read: "could
//!   not read" is never taken for "no record".
//!
//! Protection is by digest alone: a record's repository spelling (`localhost:5000` or
//! `127.0.0.1:5000`, upper case, a default port) plays no part in it. The registry closure
//! (children of a protected index, tagged indexes holding a protected manifest) is prune's, as
//! it needs the registry.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{HISTORY, INFO, RecordsError, history, names, yaml};

/// The top-level directory of the server's callback log: scan reports, not deployment records,
/// and the one file under the state directory that grows without bound.
const ANALYTICS: &str = ".analytics";

/// How deep the walk goes below the state directory: records are `<env>/<app>/<file>`; one
/// level more is read too (a directory of copies someone made in an app directory). Deeper
/// trees are not records, and a symbolic link to `/` must not make prune read the machine.
const MAX_DEPTH: usize = 3;

/// Raw bytes are scanned in chunks of this size (a history can be hundreds of megabytes).
const CHUNK: usize = 1 << 20;

/// Why prune cannot know what the records protect.
#[derive(Debug, Error)]
pub enum ProtectError {
    /// The state directory does not exist: without records prune would keep only the newest
    /// tags, so a mistyped `--state-dir` must not look like "nothing is deployed".
    #[error(
        "the state directory {0} does not exist; prune keeps what the records there name, so it \
         will not run without them: point --state-dir (IMAGETRAIL_STATE_DIR) at the records, or \
         create the directory if nothing was ever recorded"
    )]
    NoStateDir(PathBuf),
    /// A file or directory under the state directory could not be read.
    #[error(
        "cannot read {path}: {source}; prune refuses to run while a record may be hidden from it \
         (it never takes \"could not read\" for \"no record\"): make it readable by this user \
         (or run prune as the user that writes the records), or remove it if it is not a record"
    )]
    Unreadable {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The PostgreSQL store could not be read whole (unreachable, a statement refused).
    #[error(
        "cannot read the deployments in PostgreSQL at {target}: {reason}; prune refuses to run \
         while a record may be hidden from it (it never takes \"could not read\" for \"no \
         record\"), nothing was deleted: start the database or fix --database-url \
         (IMAGETRAIL_DATABASE_URL), then run prune again"
    )]
    Database {
        /// host:port.
        target: String,
        /// What failed.
        reason: String,
    },
}

/// What a record says about a digest it names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The image `deploy-info.yml` names, and it agrees with the history.
    DeployedNow,
    /// The image of the history's last whole entry, when `deploy-info.yml` is missing or behind
    /// (a lost rename): what every reader takes as running.
    DeployedNowByHistory,
    /// The image `deploy-info.yml` names although the history has a later deployment.
    InfoBehind,
    /// The image `deploy-info.yml` names although its deployment is not in the history (a hand
    /// edit, or a torn history entry).
    InfoUnrecorded,
    /// An image in a whole history entry.
    InHistory,
    /// Found in the raw bytes of the file only (not parsed, or not in a field prune knows).
    NamedInFile,
    /// The app's current deployment in PostgreSQL.
    DeployedNowInDatabase,
    /// A deployment in the app's history in PostgreSQL.
    InDatabaseHistory,
}

/// One record naming a digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Named {
    /// The file, relative to the state directory.
    pub path: PathBuf,
    /// The environment and app the file belongs to, decoded from its directories, when it sits
    /// at `<env>/<app>/`.
    pub place: Option<(String, String)>,
    /// What the record says.
    pub role: Role,
    /// Whether the digest is the record's `index_digest` (the image's index), not its `digest`.
    pub index: bool,
    /// The repository the record names (as written), when parsed.
    pub repo: Option<String>,
}

/// A file prune could not parse or reconcile: every digest in it is protected, and the dry run
/// names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Doubt {
    /// The file, relative to the state directory.
    pub path: PathBuf,
    /// Why it is in doubt.
    pub why: String,
}

/// Everything the records protect.
#[derive(Debug, Default)]
pub struct Protection {
    /// Every digest named anywhere, with every record naming it.
    pub digests: BTreeMap<String, BTreeSet<Named>>,
    /// Files that could not be parsed or reconciled.
    pub doubts: Vec<Doubt>,
    /// How many files were read.
    pub files: usize,
    /// The PostgreSQL database (host:port) the digests were read from, when they were.
    pub database: Option<String>,
}

impl Protection {
    fn add(&mut self, digest: &str, named: Named) {
        self.digests
            .entry(digest.to_string())
            .or_default()
            .insert(named);
    }

    fn doubt(&mut self, path: PathBuf, why: String) {
        self.doubts.push(Doubt { path, why });
    }
}

/// Every digest the deployments in PostgreSQL at `target` name (as read by
/// [`crate::records::postgres::PgStore::digests`]), each with the apps naming it: the whole
/// history protects, as in the files.
pub fn from_database(
    target: &str,
    digests: BTreeMap<String, Vec<crate::records::postgres::StoredDigest>>,
) -> Protection {
    let mut p = Protection {
        database: Some(target.to_string()),
        ..Protection::default()
    };
    for (digest, names) in digests {
        for n in names {
            p.add(
                &digest,
                Named {
                    path: PathBuf::from(format!("PostgreSQL at {target}")),
                    place: Some((n.environment, n.app)),
                    role: if n.current {
                        Role::DeployedNowInDatabase
                    } else {
                        Role::InDatabaseHistory
                    },
                    index: n.index,
                    repo: Some(n.repo),
                },
            );
        }
    }
    p
}

/// Walk the state directory `root` and collect every digest it names (see the module
/// documentation). A missing `root` is refused ([`ProtectError::NoStateDir`]).
pub fn collect(root: &Path) -> Result<Protection, ProtectError> {
    let mut p = Protection::default();
    let meta = match std::fs::metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProtectError::NoStateDir(root.to_path_buf()));
        }
        Err(source) => {
            return Err(ProtectError::Unreadable {
                path: root.to_path_buf(),
                source,
            });
        }
    };
    if !meta.is_dir() {
        return Err(ProtectError::Unreadable {
            path: root.to_path_buf(),
            source: std::io::Error::other("not a directory"),
        });
    }
    let mut seen = HashSet::new();
    walk(root, root, 0, &mut seen, &mut p)?;
    p.doubts.sort();
    Ok(p)
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    seen: &mut HashSet<(u64, u64)>,
    p: &mut Protection,
) -> Result<(), ProtectError> {
    let unreadable = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ProtectError::Unreadable { path, source }
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let meta = std::fs::metadata(dir).map_err(unreadable(dir))?;
    // A directory reached twice (a symbolic-link loop, or a link to another environment) is
    // read once. Checked after the depth, so a link found too deep never hides the directory
    // it points at from its own place.
    if !seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable(dir))? {
        entries.push(entry.map_err(unreadable(dir))?.path());
    }
    entries.sort();
    let mut app_files = false;
    for path in entries {
        let name = path.file_name().unwrap_or_default();
        if depth == 0 && name == ANALYTICS {
            continue;
        }
        // Followed: a record behind a link is a record. A dangling link is refused, like any
        // path that cannot be read.
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            // Gone since the listing (a temp file renamed over deploy-info.yml by a writer):
            // what it held is in the file it was renamed to, read on its own.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&path).is_err() =>
            {
                continue;
            }
            Err(e) => return Err(unreadable(&path)(e)),
        };
        if meta.is_dir() {
            walk(root, &path, depth + 1, seen, p)?;
        } else if meta.is_file() {
            scan_raw(root, &path, p)?;
            app_files |= name == INFO || name == HISTORY;
        }
        // Sockets, fifos, devices: not records, and reading a fifo would block.
    }
    if app_files {
        reconcile(root, dir, p)?;
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

/// The environment and app of the app directory `dir`, when it is `<root>/<env>/<app>`.
fn place_of(root: &Path, dir: &Path) -> Option<(String, String)> {
    let rel = dir.strip_prefix(root).ok()?;
    let mut parts = rel.components();
    let env = parts.next()?.as_os_str().to_str()?;
    let app = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return None;
    }
    Some((names::decode(env)?, names::decode(app)?))
}

/// Every digest in the bytes of `path`, protected as [`Role::NamedInFile`] (the parse, if any,
/// adds what it knows beside).
fn scan_raw(root: &Path, path: &Path, p: &mut Protection) -> Result<(), ProtectError> {
    let unreadable = |source| ProtectError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    p.files += 1;
    let rel = relative(root, path);
    let place = path.parent().and_then(|d| place_of(root, d));
    let mut found = BTreeSet::new();
    // A digest cut by a chunk boundary is found whole in the next round: the tail of each
    // chunk (longer than the longest digest) is kept in front of the next.
    const KEEP: usize = "sha512:".len() + 128;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + KEEP);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = loop {
            match file.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(unreadable(e)),
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        digests_in(&buf, &mut found);
        if n == 0 {
            break;
        }
        let cut = buf.len().saturating_sub(KEEP);
        buf.drain(..cut);
    }
    for d in found {
        p.add(
            &d,
            Named {
                path: rel.clone(),
                place: place.clone(),
                role: Role::NamedInFile,
                index: false,
                repo: None,
            },
        );
    }
    Ok(())
}

/// Every `sha256:<64 hex>` and `sha512:<128 hex>` in `bytes`, lower-cased (registries write
/// digests in lower case; a hand-typed upper-case one still protects what it means).
pub fn digests_in(bytes: &[u8], out: &mut BTreeSet<String>) {
    for (algo, len) in [("sha256:", 64usize), ("sha512:", 128)] {
        for at in memchr::memmem::find_iter(bytes, algo.as_bytes()) {
            let hex = &bytes[at + algo.len()..];
            if hex.len() >= len && hex[..len].iter().all(u8::is_ascii_hexdigit) {
                let hex = String::from_utf8_lossy(&hex[..len]).to_ascii_lowercase();
                out.insert(format!("{algo}{hex}"));
            }
        }
    }
}

/// Parse the app directory's `deploy-info.yml` and `deploy-history.yml` to say why their digests
/// are protected, and name what cannot be parsed or reconciled. Never removes protection: the
/// raw scan has already protected every digest in both files.
fn reconcile(root: &Path, dir: &Path, p: &mut Protection) -> Result<(), ProtectError> {
    let place = place_of(root, dir);
    let info_path = dir.join(INFO);
    let history_path = dir.join(HISTORY);
    let info_rel = relative(root, &info_path);
    let history_rel = relative(root, &history_path);

    let info = match std::fs::read_to_string(&info_path) {
        Ok(text) => match yaml::parse::<yaml::InfoFile>(&text) {
            Ok(f) => Some(f.into_deployment()),
            Err((line, message)) => {
                p.doubt(
                    info_rel.clone(),
                    format!("line {line}: {message}; every digest in it is kept"),
                );
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            p.doubt(
                info_rel.clone(),
                "not UTF-8 text; every digest in it is kept".into(),
            );
            None
        }
        Err(source) => {
            return Err(ProtectError::Unreadable {
                path: info_path,
                source,
            });
        }
    };
    let entries = match read_history(&history_path) {
        Ok((entries, torn)) => {
            if let Some(t) = torn {
                p.doubt(
                    history_rel.clone(),
                    format!(
                        "line {}: the last entry is incomplete (a cut-off append or a hand edit); \
                         every digest in it is kept",
                        t.line
                    ),
                );
            }
            entries
        }
        Err(RecordsError::Io { path, source }) => {
            return Err(ProtectError::Unreadable { path, source });
        }
        Err(e) => {
            p.doubt(
                history_rel.clone(),
                format!("{}; every digest in it is kept", short_error(&e)),
            );
            vec![]
        }
    };

    let name = |path: &PathBuf, role: Role, index: bool, repo: &str| Named {
        path: path.clone(),
        place: place.clone(),
        role,
        index,
        repo: Some(repo.to_string()),
    };
    let add_image = |p: &mut Protection, path: &PathBuf, role: Role, d: &super::Deployment| {
        p.add(
            &d.image.digest.to_ascii_lowercase(),
            name(path, role.clone(), false, &d.image.repo),
        );
        if let Some(i) = &d.image.index_digest {
            p.add(
                &i.to_ascii_lowercase(),
                name(path, role, true, &d.image.repo),
            );
        }
    };

    // Where deploy-info.yml's deployment sits in the history decides what runs now (as
    // `Store::current` does, but without its tie on equal times: an entry is identified by its
    // event id, not by when it was deployed).
    let at = info.as_ref().and_then(|i| {
        entries
            .iter()
            .rposition(|e| e.deployment.event_id == i.deployment.event_id)
    });
    let last = entries.len().checked_sub(1);
    if let Some(i) = &info {
        let role = match at {
            Some(k) if Some(k) == last => {
                if entries[k].image != i.image {
                    p.doubt(
                        info_rel.clone(),
                        "it names another image than its deployment's history entry; every \
                         digest in both is kept"
                            .into(),
                    );
                }
                Role::DeployedNow
            }
            Some(_) => Role::InfoBehind,
            None => {
                p.doubt(
                    info_rel.clone(),
                    format!(
                        "its deployment (event_id {}) is not among the whole entries of {HISTORY} \
                         (written by hand, or its entry is torn); every digest in it is kept",
                        i.deployment.event_id
                    ),
                );
                Role::InfoUnrecorded
            }
        };
        add_image(p, &info_rel, role, i);
    }
    for (k, e) in entries.iter().enumerate() {
        let role = if Some(k) == last && (info.is_none() || at.is_some_and(|a| a < k)) {
            Role::DeployedNowByHistory
        } else {
            Role::InHistory
        };
        add_image(p, &history_rel, role, e);
    }
    Ok(())
}

/// The whole entries of the history at `path` and its torn tail, if any (none for no file).
fn read_history(
    path: &Path,
) -> Result<(Vec<super::Deployment>, Option<history::TornTail>), RecordsError> {
    let Some(file) = super::open_existing(path)? else {
        return Ok((vec![], None));
    };
    let h = history::HistoryFile::new(&file, path)?;
    let torn = h.check_tail()?;
    let end = torn.as_ref().map_or(h.len(), |t| t.offset);
    let entries = h
        .range(0, end)?
        .into_iter()
        .map(|e| super::to_deployment("", e))
        .collect();
    Ok((entries, torn))
}

/// A records error without the file name (the doubt names the file already).
fn short_error(e: &RecordsError) -> String {
    match e {
        RecordsError::Malformed { line, message, .. } => format!("line {line}: {message}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_found_in_any_bytes_and_cut_ones_are_not_invented() {
        let a = format!("sha256:{}", "ab".repeat(32));
        let b = format!("sha512:{}", "0F".repeat(64));
        let text = format!(
            "junk \u{202e}{a}\"x\n  index: '{b}'\nsha256:{}\nsha256:xyz",
            "1".repeat(63)
        );
        let mut out = BTreeSet::new();
        digests_in(text.as_bytes(), &mut out);
        let b_lower = b.to_ascii_lowercase();
        assert_eq!(out, BTreeSet::from([a, b_lower]));
    }

    #[test]
    fn a_digest_across_a_chunk_boundary_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("prod/hello");
        std::fs::create_dir_all(&app).unwrap();
        let d = format!("sha256:{}", "cd".repeat(32));
        let mut bytes = vec![b'x'; CHUNK - 20];
        bytes.extend_from_slice(d.as_bytes());
        std::fs::write(app.join("notes.txt"), &bytes).unwrap();
        let p = collect(dir.path()).unwrap();
        let named = &p.digests[&d];
        assert!(
            named
                .iter()
                .any(|n| n.path == Path::new("prod/hello/notes.txt")
                    && n.place == Some(("prod".into(), "hello".into())))
        );
    }

    #[test]
    fn a_missing_state_directory_is_refused_and_a_link_loop_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let e = collect(&dir.path().join("typo")).unwrap_err();
        assert!(matches!(e, ProtectError::NoStateDir(_)), "{e}");
        let app = dir.path().join("prod/hello");
        std::fs::create_dir_all(&app).unwrap();
        std::os::unix::fs::symlink(dir.path(), app.join("loop")).unwrap();
        let d = format!("sha256:{}", "ef".repeat(32));
        std::fs::write(app.join("deploy-info.yml"), format!("image: {d}\n")).unwrap();
        let p = collect(dir.path()).unwrap();
        assert!(p.digests.contains_key(&d));
        assert!(
            p.doubts
                .iter()
                .any(|x| x.path == Path::new("prod/hello/deploy-info.yml")),
            "{:?}",
            p.doubts
        );
    }

    #[test]
    fn a_dangling_link_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("prod")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("prod/hello")).unwrap();
        let e = collect(dir.path()).unwrap_err();
        assert!(e.to_string().contains("prod/hello"), "{e}");
    }
}
