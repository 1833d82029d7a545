//! `deploy-info.yml` replaces that are not part of a batch's own: paced ones under load
//! ([`InfoFiles::AtMostEvery`]), the ones a crash left behind ([`Store::infos_behind`]), and the
//! closing of replaced files off the writer's path ([`Releaser`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::{INFO, RecordsError, Store, io_err, yaml};

/// When a batch replaces the `deploy-info.yml` of the apps it deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoFiles {
    /// In the batch: written and synced with the history entries, then renamed.
    Replace,
    /// In the batch, unless this store replaced the app's info less than this long ago: then
    /// later, by [`Store::replace_due_infos`], with whatever is current by then. A server
    /// under load so coalesces an app's many deployments into one replace per interval (a
    /// replace is a new file, a sync and a rename: most of a deployment's cost). Until then
    /// [`Store::current`] answers from the history.
    AtMostEvery(Duration),
}

impl Store {
    /// Every (environment, app) whose `deploy-info.yml` is missing or behind its history: what
    /// a crash or power loss before a replace can leave (see [`Store::current`]), for
    /// [`Store::replace_infos`]. Apps whose records cannot be read are left out: every reader
    /// reports them.
    pub fn infos_behind(&self) -> Result<BTreeSet<(String, String)>, RecordsError> {
        let mut behind = BTreeSet::new();
        for env in self.environments()? {
            for app in self.apps(&env)? {
                let dir = self.app_dir(&env, &app)?;
                if let Ok((Some(_), true)) = self.read_current(&dir, &env, &app) {
                    behind.insert((env.clone(), app));
                }
            }
        }
        Ok(behind)
    }

    /// Replace the `deploy-info.yml` of each of `apps` (environment, app) with its current
    /// deployment as one group commit: the new files written, one sync round, the renames.
    /// For what [`InfoFiles::AtMostEvery`] left behind, and for what a power loss left behind (see
    /// [`Store::infos_behind`]). An app without a deployment, or whose records cannot be read
    /// (they are reported wherever they are read), is skipped with a warning.
    pub fn replace_infos(&self, apps: &BTreeSet<(String, String)>) -> Result<(), RecordsError> {
        // Sorted by environment first: the locks are taken in the same order as a batch's.
        let mut locks = BTreeMap::new();
        for (env, _) in apps {
            if !locks.contains_key(env) {
                locks.insert(env, self.lock_env(env)?);
            }
        }
        let mut staged = Vec::new();
        for (env, app) in apps {
            if let Err(e) = self.set_aside_if_unrecorded(env, app) {
                tracing::warn!("{e}; deploy-info.yml not replaced");
                continue;
            }
            let current = self.current(env, app).and_then(|d| {
                let dir = self.app_dir(env, app)?;
                d.map(|d| Ok((info_temp(&dir, &yaml::info(&d))?, dir, d)))
                    .transpose()
            });
            match current {
                Ok(Some(new)) => staged.push(new),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}; deploy-info.yml not replaced"),
            }
        }
        let files: Vec<(&File, &Path)> = staged
            .iter()
            .map(|(tmp, _, _)| (tmp.as_file(), tmp.path()))
            .collect();
        self.sync_all_of(&files)?;
        let mut replaced = Vec::new();
        for (tmp, dir, d) in staged {
            self.pacer.replaced(&dir);
            if rename_over(tmp, &dir.join(INFO), &mut replaced) {
                self.remember_written(&dir, &d);
            }
        }
        self.release.close_later(replaced);
        Ok(())
    }

    /// Move the app's `deploy-info.yml` aside to `deploy-info.yml.unrecorded-<UTC time>` when
    /// its deployment (by `event_id`) is not among the history's whole entries, so replacing
    /// it never destroys the only copy of a record (a hand-written file, or one whose history
    /// entry was torn). Cost: a bisection by its `deployed_at` (the usual case: the info is an
    /// older deployment of this history); a search of the whole file only when that misses.
    fn set_aside_if_unrecorded(&self, env: &str, app: &str) -> Result<(), RecordsError> {
        let info_path = self.info_path(env, app)?;
        let text = match std::fs::read_to_string(&info_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&info_path)(e)),
        };
        // A file that does not parse is refused by `current`, and so never replaced.
        let Ok(info) = yaml::parse::<yaml::InfoFile>(&text) else {
            return Ok(());
        };
        let info = info.into_deployment();
        if !info.deployment.event_id.is_nil() && self.in_history(env, app, &info)? {
            return Ok(());
        }
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.fZ");
        let aside = info_path.with_file_name(format!("{INFO}.unrecorded-{stamp}"));
        std::fs::rename(&info_path, &aside).map_err(io_err(&info_path))?;
        tracing::warn!(
            "{}: its deployment (event_id {}, {}@{}) is not in deploy-history.yml; moved it to {} \
             instead of replacing it with the history's last entry: it may be the only copy of \
             that record (add it to the history by hand, or remove it once it is not needed)",
            info_path.display(),
            info.deployment.event_id,
            info.image.repo,
            info.image.digest,
            aside.display()
        );
        Ok(())
    }

    /// Whether `d`'s deployment is a whole entry of the app's history.
    fn in_history(
        &self,
        env: &str,
        app: &str,
        d: &super::Deployment,
    ) -> Result<bool, RecordsError> {
        let path = self.history_path(env, app)?;
        let Some(file) = super::open_existing(&path)? else {
            return Ok(false);
        };
        let h = super::history::HistoryFile::new(&file, &path)?;
        let end = h.check_tail()?.map_or(h.len(), |t| t.offset);
        let id = d.deployment.event_id;
        let t = d.deployment.deployed_at;
        // The entries deployed at exactly `t`, from the last one back.
        let mut at = h.at(t, end)?;
        while let Some(start) = at {
            if h.deployed_at(start)? != Some(t) {
                break;
            }
            if h.parse_entry(start)?.deployment.event_id == id {
                return Ok(true);
            }
            at = h.prev_start(start)?;
        }
        // Out of order or a different time written: look for the id itself.
        let mut end_at = end;
        let needle = id.to_string();
        while let Some(start) = h.last_containing(needle.as_bytes(), end_at)? {
            if h.parse_entry(start)?.deployment.event_id == id {
                return Ok(true);
            }
            end_at = start;
        }
        Ok(false)
    }

    /// When the first `deploy-info.yml` left behind by [`InfoFiles::AtMostEvery`] is due to
    /// be replaced, if any is.
    pub fn infos_due_at(&self) -> Option<Instant> {
        self.pacer.lock().due.values().min().copied()
    }

    /// Replace every `deploy-info.yml` left behind by [`InfoFiles::AtMostEvery`] whose time has
    /// come (see [`Store::replace_infos`]).
    pub fn replace_due_infos(&self) -> Result<(), RecordsError> {
        self.replace_left_behind(Some(Instant::now()))
    }

    /// Replace every `deploy-info.yml` left behind by [`InfoFiles::AtMostEvery`], due or not:
    /// for a server shutting down.
    pub fn replace_all_left_behind(&self) -> Result<(), RecordsError> {
        self.replace_left_behind(None)
    }

    /// Replace the infos left behind that are due by `by` (all of them for `None`).
    fn replace_left_behind(&self, by: Option<Instant>) -> Result<(), RecordsError> {
        let apps: BTreeSet<(String, String)> = {
            let mut pacer = self.pacer.lock();
            let apps: BTreeSet<(String, String)> = pacer
                .due
                .iter()
                .filter(|(_, at)| by.is_none_or(|by| **at <= by))
                .map(|(app, _)| app.clone())
                .collect();
            pacer.due.retain(|app, _| !apps.contains(app));
            apps
        };
        if apps.is_empty() {
            return Ok(());
        }
        self.replace_infos(&apps)
    }
}

/// A new `deploy-info.yml` for the app directory `dir`, written to a temp file beside it (mode
/// 0644 like the history: tempfile's default 0600 would hide the record from other users),
/// not synced yet.
pub(super) fn info_temp(dir: &Path, text: &str) -> Result<tempfile::NamedTempFile, RecordsError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(".deploy-info.")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(text.as_bytes()).map_err(io_err(tmp.path()))?;
    Ok(tmp)
}

/// Rename the synced `tmp` over `info_path`, keeping the file it replaces open in `replaced`
/// (see [`Releaser`]). A failure is logged: the history, synced before, already holds the
/// deployment and readers go by it until the next replace.
pub(super) fn rename_over(
    tmp: tempfile::NamedTempFile,
    info_path: &Path,
    replaced: &mut Vec<File>,
) -> bool {
    if let Ok(old) = File::open(info_path) {
        replaced.push(old);
    }
    match tmp.persist(info_path) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(
                "{}: cannot replace it ({}); the deployment is in the history, which readers go \
                 by until the next deployment replaces this file",
                info_path.display(),
                e.error
            );
            false
        }
    }
}

/// Replaced `deploy-info.yml` files, closed on a thread of their own.
///
/// Why: the last close of a replaced file frees its inode and blocks, and on a file system
/// mounted with `discard` that waits for the device to discard them. Done by the rename
/// itself, that was the largest part of a batch's time (measured with `perf` under
/// `bench/serve.sh`); holding the old file open until this thread closes it takes it off the
/// path that answers requests. The thread starts on first use and is shared by the clones of
/// a store.
#[derive(Debug, Clone, Default)]
pub(super) struct Releaser(Arc<OnceLock<Option<mpsc::SyncSender<Vec<File>>>>>);

/// How many batches of replaced files may wait for the releaser thread.
const RELEASE_QUEUE: usize = 64;

impl Releaser {
    /// Close `files` on the releaser thread (here, if it could not be started).
    pub(super) fn close_later(&self, files: Vec<File>) {
        if files.is_empty() {
            return;
        }
        let thread = self.0.get_or_init(|| {
            // Bounded: if closing ever falls behind, the writer waits instead of piling up
            // open files until it runs out of descriptors.
            let (tx, rx) = mpsc::sync_channel::<Vec<File>>(RELEASE_QUEUE);
            std::thread::Builder::new()
                .name("records-release".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| tx)
        });
        if let Some(tx) = thread {
            // A send error hands the files back inside it: closed here.
            let _ = tx.send(files);
        }
    }
}

/// When this store last replaced each app's `deploy-info.yml`, and which are left behind until
/// when (see [`InfoFiles::AtMostEvery`]); shared by the clones of a store.
#[derive(Debug, Clone, Default)]
pub(super) struct Pacer(Arc<Mutex<PacerState>>);

#[derive(Debug, Default)]
pub(super) struct PacerState {
    /// Last replace, by app directory.
    last: HashMap<PathBuf, Instant>,
    /// Left behind: (environment, app) and when it is due.
    due: BTreeMap<(String, String), Instant>,
}

impl Pacer {
    fn lock(&self) -> MutexGuard<'_, PacerState> {
        self.0.lock().expect("pacer lock")
    }

    /// Whether the app `key` (environment, app), in the directory `dir`, gets its info
    /// replaced in this batch; if not, it is noted as due `every` after its last replace.
    /// (Given the key and directory rather than the batch's job, so this module does not
    /// depend on the batch module that calls it.)
    pub(super) fn replace_now(&self, key: &(String, String), dir: &Path, every: Duration) -> bool {
        let mut state = self.lock();
        match state.last.get(dir).copied() {
            Some(last) if last.elapsed() < every => {
                state.due.entry(key.clone()).or_insert(last + every);
                false
            }
            _ => {
                state.due.remove(key);
                true
            }
        }
    }

    pub(super) fn replaced(&self, dir: &Path) {
        self.lock().last.insert(dir.to_path_buf(), Instant::now());
    }
}
