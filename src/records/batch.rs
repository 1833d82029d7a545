//! Group commit: many deployments made durable by one sync round instead of three syncs per
//! deployment.
//!
//! [`Store::record_checked_many`] (and [`Store::record_many`], [`Store::record`] on top of it)
//! works in three steps:
//!
//! 1. **Lock and validate.** The environments of the batch are locked in sorted order (so two
//!    batches never wait for each other in a cycle), then every item is checked in batch order
//!    against the stored state *plus the items accepted before it*, so a name taken earlier in
//!    the same batch is refused like a stored one. A refused item gets its own error; the others
//!    go on.
//! 2. **Write, sync once, rename.** Each touched app gets its accepted entries appended to its
//!    history in one `write` (torn-tail rule as in [`super::history`]) and its final
//!    `deploy-info.yml` written to a temp file beside it. One sync round makes all of that
//!    durable, with the directories that gained a history file or an app directory. Only then
//!    is each temp file renamed over its `deploy-info.yml`, so no info ever names an entry the
//!    history may lose. A round is one `fsync` per file for a small batch, one `syncfs` of the
//!    state directory's file system for a larger one: syncing files one by one costs one
//!    journal commit and one disk flush each, even from several threads at once.
//! 3. **Unlock** and report one result per item, in the order given.
//!
//! The renames are not synced before the answer: the next batch's sync round (a `syncfs`
//! covers every earlier rename) or the kernel's own writeback makes them durable. What a power
//! loss in between can leave is a `deploy-info.yml` one replacement behind its history (or
//! none, after a first deployment), whole either way, and [`Store::current`] then answers from
//! the history's last entry ([`Store::infos_behind`] finds such files and
//! [`Store::replace_infos`] brings them up to date; the server does so when it starts).
//! Waiting for a second sync round would double the latency of every batch to protect a file
//! that the history can rebuild.
//!
//! A server under load can also pace the replaces ([`InfoFiles::AtMostEvery`]): creating,
//! syncing and renaming a new `deploy-info.yml`, and freeing the old one, cost more than the
//! history append, and an app deployed many times a second needs only its latest file.
//!
//! Every other guarantee of a single record holds: history first, append-only, the history
//! locked for the append, the info replaced atomically, nothing answered before the sync that
//! makes its history entry durable returned.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::info::{InfoFiles, info_temp, rename_over};
use super::{
    Deployment, HISTORY, INFO, Recorded, RecordsError, Store, fields, history, io_err, yaml,
};

/// Extra rules for one item of a batch, beyond the store's own (valid names, `name` unique per
/// repository per environment, a readable `deploy-info.yml`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Refuse a deployment without a `name` of a repository that runs in the environment as
    /// named instances ([`RecordsError::NameRequired`]): the other half of Atomist's rule.
    pub name_required_for_named_instances: bool,
    /// Write nothing when the app's current deployment already runs the same repository and
    /// digest (a Pod of a ReplicaSet admitted again).
    pub skip_if_current: bool,
    /// Where the entry's `deployed_at` comes from.
    pub stamp: Stamp,
}

/// Where a recorded deployment's `deployed_at` comes from.
///
/// Every app's history is kept in `deployed_at` order (readers bisect it), so a writer that
/// takes "now" must take it while it holds the environment's lock, not before it waits for it:
/// a time taken earlier can be overtaken by a racing writer's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Stamp {
    /// The deployment's own `deployed_at` (a backfill, or a time the caller vouches for).
    #[default]
    Given,
    /// The time of the write, taken under the environment's lock (see [`Recorded::stamped`]).
    WriteTime,
    /// [`Stamp::WriteTime`] in whole seconds, unless the app's last entry is within the
    /// current second: then with the fraction, so the history stays in order.
    WriteTimeSeconds,
}

/// What happened to one accepted item.
#[derive(Debug, Clone)]
pub enum Written {
    /// Appended to the history and made current.
    Recorded(Recorded),
    /// Nothing written: the app already runs this (see [`Checks::skip_if_current`]); the
    /// current deployment.
    AlreadyCurrent(Box<Deployment>),
}

/// Rebuild an error for each item that shares it (an I/O error is not `Clone`).
fn duplicate(e: &RecordsError) -> RecordsError {
    match e {
        RecordsError::InvalidName { what, name, reason } => RecordsError::InvalidName {
            what,
            name: name.clone(),
            reason,
        },
        RecordsError::Io { path, source } => RecordsError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        RecordsError::Malformed {
            path,
            line,
            message,
        } => RecordsError::Malformed {
            path: path.clone(),
            line: *line,
            message: message.clone(),
        },
        RecordsError::TornTail(t) => RecordsError::TornTail(t.clone()),
        RecordsError::InvalidField { field, reason } => RecordsError::InvalidField {
            field,
            reason: reason.clone(),
        },
        RecordsError::OutOfOrder {
            env,
            app,
            given,
            last,
        } => RecordsError::OutOfOrder {
            env: env.clone(),
            app: app.clone(),
            given: given.clone(),
            last: last.clone(),
        },
        RecordsError::NameTaken {
            env,
            name,
            repo,
            other_app,
        } => RecordsError::NameTaken {
            env: env.clone(),
            name: name.clone(),
            repo: repo.clone(),
            other_app: other_app.clone(),
        },
        RecordsError::NameRequired { env, repo, example } => RecordsError::NameRequired {
            env: env.clone(),
            repo: repo.clone(),
            example: example.clone(),
        },
        // Not an error of the files; rebuilt from its message.
        RecordsError::Database(e) => {
            RecordsError::Database(Box::new(super::postgres::PgError::Query(e.to_string())))
        }
    }
}

/// One environment of a batch while it is locked: its directory, its lock, and the current
/// deployment of every app as the batch so far leaves it (read lazily: only name rules need
/// the other apps).
struct EnvBatch {
    dir: PathBuf,
    _lock: File,
    /// Every app's current deployment; `None` until a rule needs it.
    currents: Option<Result<BTreeMap<String, Option<Deployment>>, RecordsError>>,
}

/// The accepted entries of one app, and which items they came from.
pub(super) struct AppJob {
    /// (environment, app).
    pub(super) key: (String, String),
    pub(super) dir: PathBuf,
    items: Vec<usize>,
    entries: String,
    /// Index of the item whose state becomes `deploy-info.yml`.
    last: usize,
}

impl Store {
    pub(super) fn lock_env(&self, env: &str) -> Result<(PathBuf, File), RecordsError> {
        let dir = self.env_dir(env)?;
        let created = create_dir(&dir)?;
        let lock_path = dir.join(".lock");
        let lock = open_locked(
            OpenOptions::new().create(true).truncate(false).write(true),
            &lock_path,
        )?;
        if created {
            sync_dir(&self.root)?;
        }
        Ok((dir, lock))
    }

    fn load_currents(
        &self,
        env: &str,
    ) -> Result<BTreeMap<String, Option<Deployment>>, RecordsError> {
        let mut map = BTreeMap::new();
        // Every app directory, not `apps()`: that checks for record files, which `current`
        // looks at anyway (an app without records has no current deployment).
        for app in super::list_dirs(&self.env_dir(env)?)? {
            let current = self.current(env, &app)?;
            map.insert(app, current);
        }
        Ok(map)
    }

    /// Check one item against the environment as the batch leaves it so far.
    fn validate(
        &self,
        eb: &mut EnvBatch,
        d: &Deployment,
        checks: Checks,
        own: &mut HashMap<(String, String), Result<Option<Deployment>, RecordsError>>,
    ) -> Result<Option<Deployment>, RecordsError> {
        let env = d.deployment.workspace.as_str();
        let needs_others = d.deployment.name.is_some() || checks.name_required_for_named_instances;
        if needs_others && eb.currents.is_none() {
            // Loaded late: the items accepted earlier in this batch are not on disk yet.
            let mut loaded = self.load_currents(env);
            if let Ok(map) = &mut loaded {
                for ((e, app), r) in own.iter() {
                    if let (true, Ok(Some(d))) = (e == env, r) {
                        map.insert(app.clone(), Some(d.clone()));
                    }
                }
            }
            eb.currents = Some(loaded);
        }
        // A hand-edited deploy-info.yml that no longer parses is refused, not overwritten.
        // (Every info file was just read for the name rules when they apply: not twice.)
        let current = match own
            .entry((env.to_string(), d.app.clone()))
            .or_insert_with(|| match &eb.currents {
                Some(Ok(currents)) => Ok(currents.get(&d.app).cloned().flatten()),
                _ => self.current(env, &d.app),
            }) {
            Ok(c) => c.clone(),
            Err(e) => return Err(duplicate(e)),
        };
        if checks.skip_if_current
            && let Some(c) = &current
            && c.image.digest == d.image.digest
            && c.image.repo == d.image.repo
        {
            let mut c = c.clone();
            c.app = d.app.clone();
            c.deployment.workspace = env.to_string();
            return Ok(Some(c));
        }
        // Append-only and in time order: readers bisect the history by deployed_at.
        if let Some(c) = &current
            && d.deployment.deployed_at < c.deployment.deployed_at
        {
            return Err(RecordsError::OutOfOrder {
                env: env.to_string(),
                app: d.app.clone(),
                given: yaml::time(&d.deployment.deployed_at),
                last: yaml::time(&c.deployment.deployed_at),
            });
        }
        if let Some(currents) = &eb.currents
            && needs_others
        {
            let currents = currents.as_ref().map_err(duplicate)?;
            for (other, o) in currents {
                let Some(o) = o else { continue };
                if *other == d.app || o.image.repo != d.image.repo {
                    continue;
                }
                match (&d.deployment.name, &o.deployment.name) {
                    (Some(name), Some(theirs)) if name == theirs => {
                        return Err(RecordsError::NameTaken {
                            env: env.to_string(),
                            name: name.clone(),
                            repo: d.image.repo.clone(),
                            other_app: other.clone(),
                        });
                    }
                    (None, Some(theirs)) if checks.name_required_for_named_instances => {
                        return Err(RecordsError::NameRequired {
                            env: env.to_string(),
                            repo: d.image.repo.clone(),
                            example: theirs.clone(),
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Record every deployment of `items` with its [`Checks`], as one group commit (see the
    /// module documentation): one result per item, in order. An item refused (a name taken,
    /// also by an earlier item of the batch) or whose write failed gets its own error and does
    /// not fail the others, except that items of the same app share the fate of their one
    /// history write. Returns once every `deploy-info.yml` is in place.
    pub fn record_checked_many(
        &self,
        items: &[(Deployment, Checks)],
    ) -> Vec<Result<Written, RecordsError>> {
        self.record_checked_many_with(items, InfoFiles::Replace)
    }

    /// [`Store::record_checked_many`], replacing each app's `deploy-info.yml` as `info` says.
    /// A rename that fails once the history entries are durable is logged, not returned: the
    /// deployment is recorded, and [`Store::current`] goes by the history while the info is
    /// behind it.
    pub fn record_checked_many_with(
        &self,
        items: &[(Deployment, Checks)],
        info: InfoFiles,
    ) -> Vec<Result<Written, RecordsError>> {
        let mut results: Vec<Option<Result<Written, RecordsError>>> =
            items.iter().map(|_| None).collect();

        // Names and fields first: an item that cannot be stored creates no directory.
        for (i, (d, _)) in items.iter().enumerate() {
            if let Err(e) =
                fields::check(d).and_then(|()| self.app_dir(&d.deployment.workspace, &d.app))
            {
                results[i] = Some(Err(e));
            }
        }
        // 1. Lock each environment once, in sorted order.
        let names: std::collections::BTreeSet<&str> = items
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_none())
            .map(|((d, _), _)| d.deployment.workspace.as_str())
            .collect();
        let mut envs: BTreeMap<&str, Result<EnvBatch, RecordsError>> = names
            .into_iter()
            .map(|env| {
                let locked = self.lock_env(env).map(|(dir, lock)| EnvBatch {
                    dir,
                    _lock: lock,
                    currents: None,
                });
                (env, locked)
            })
            .collect();

        // Stamped now, under the locks (see `Stamp`): the items as they will be written.
        let mut stamped: Vec<Option<DateTime<Utc>>> = items.iter().map(|_| None).collect();
        let mut items_owned: Option<Vec<(Deployment, Checks)>> = None;
        let mut last_stamp: HashMap<(&str, &str), DateTime<Utc>> = HashMap::new();
        for (i, (d, checks)) in items.iter().enumerate() {
            if checks.stamp == Stamp::Given || results[i].is_some() {
                continue;
            }
            let key = (d.deployment.workspace.as_str(), d.app.as_str());
            let now = Utc::now();
            let t = match checks.stamp {
                Stamp::WriteTimeSeconds => {
                    let secs = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
                    let last = match last_stamp.get(&key) {
                        Some(t) => Some(*t),
                        // A history that cannot be read is reported by the validation below.
                        None => self
                            .current(key.0, key.1)
                            .ok()
                            .flatten()
                            .map(|c| c.deployment.deployed_at),
                    };
                    if last.is_some_and(|l| secs < l && l <= now) {
                        now
                    } else {
                        secs
                    }
                }
                _ => now,
            };
            last_stamp.insert(key, t);
            let owned = items_owned.get_or_insert_with(|| items.to_vec());
            owned[i].0.deployment.deployed_at = t;
            stamped[i] = Some(t);
        }
        let items: &[(Deployment, Checks)] = items_owned.as_deref().unwrap_or(items);

        // Validate in batch order; accepted items join their app's job and the view.
        let mut own: HashMap<(String, String), Result<Option<Deployment>, RecordsError>> =
            HashMap::new();
        let mut jobs: BTreeMap<(String, String), AppJob> = BTreeMap::new();
        for (i, (d, checks)) in items.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let env = d.deployment.workspace.as_str();
            let eb = match envs.get_mut(env).expect("every environment was locked") {
                Ok(eb) => eb,
                Err(e) => {
                    results[i] = Some(Err(duplicate(e)));
                    continue;
                }
            };
            let outcome = self.validate(eb, d, *checks, &mut own);
            match outcome {
                Err(e) => results[i] = Some(Err(e)),
                Ok(Some(current)) => {
                    results[i] = Some(Ok(Written::AlreadyCurrent(Box::new(current))))
                }
                Ok(None) => {
                    let dir = eb
                        .dir
                        .join(super::names::encode("app", &d.app).expect("validated by validate"));
                    let job = jobs
                        .entry((env.to_string(), d.app.clone()))
                        .or_insert_with(|| AppJob {
                            key: (env.to_string(), d.app.clone()),
                            dir,
                            items: Vec::new(),
                            entries: String::new(),
                            last: i,
                        });
                    job.items.push(i);
                    job.entries.push_str(&yaml::history_entry(d));
                    job.last = i;
                    // Later items see this one as the app's current deployment.
                    own.insert((env.to_string(), d.app.clone()), Ok(Some(d.clone())));
                    if let Some(Ok(currents)) = &mut eb.currents {
                        currents.insert(d.app.clone(), Some(d.clone()));
                    }
                }
            }
        }

        // 2. Write every app's entries and new info, and sync them.
        let jobs: Vec<AppJob> = jobs.into_values().collect();
        let staged = self.write_jobs(&jobs, items, info);
        for (job, outcome) in jobs.iter().zip(&staged) {
            match outcome {
                Ok(staged) => {
                    for (k, &i) in job.items.iter().enumerate() {
                        let r = Recorded {
                            // The torn tail moved aside belongs to the first entry appended.
                            moved_torn_tail: if k == 0 { staged.moved.clone() } else { None },
                            stamped: stamped[i],
                        };
                        results[i] = Some(Ok(Written::Recorded(r)));
                    }
                }
                Err(e) => {
                    for &i in &job.items {
                        results[i] = Some(Err(duplicate(e)));
                    }
                }
            }
        }
        // 3. Put each new info in place, then release the environment locks.
        self.put_in_place(staged, &jobs, items);
        drop(envs);
        results
            .into_iter()
            .map(|r| r.expect("every item has a result"))
            .collect()
    }

    /// Record every deployment of `ds` as one group commit, with the store's rules only: one
    /// result per item, in order (see [`Store::record_checked_many`]).
    pub fn record_many(&self, ds: &[Deployment]) -> Vec<Result<(), RecordsError>> {
        let items: Vec<(Deployment, Checks)> =
            ds.iter().map(|d| (d.clone(), Checks::default())).collect();
        self.record_checked_many(&items)
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect()
    }
}

/// One app's writes between staging and the answer: its history (open and locked until
/// synced) and its new `deploy-info.yml`, written but not yet renamed.
struct Staged {
    history: File,
    history_path: PathBuf,
    /// The new info, unless it is left to [`Store::replace_infos`].
    info: Option<tempfile::NamedTempFile>,
    info_path: PathBuf,
    moved: Option<super::TornTail>,
    /// The app directory gained an entry that must survive a crash: a new history file, or a
    /// `deploy-history.yml.torn` with a torn tail moved aside.
    dir_changed: bool,
}

/// Above this many files to sync, one `syncfs` of the state directory's file system is cheaper
/// than one `fsync` each (measured: 16 files synced one by one, even from 16 threads, take
/// about 6x as long as one `syncfs`), and it gives the same guarantee: every written byte and
/// every metadata change on that file system is on stable storage when it returns.
const SYNCFS_ABOVE: usize = 2;

impl Store {
    /// Stage `jobs` (each history appended, each new info in a temp file) and make all of it
    /// durable with one sync round.
    fn write_jobs(
        &self,
        jobs: &[AppJob],
        items: &[(Deployment, Checks)],
        info: InfoFiles,
    ) -> Vec<Result<Staged, RecordsError>> {
        // Stage: append each history (one write) and write each new info to a temp file.
        let mut dirs: Vec<PathBuf> = Vec::new();
        let staged: Vec<Result<Staged, RecordsError>> = jobs
            .iter()
            .map(|job| {
                let created = create_dir(&job.dir)?;
                if created && let Some(env_dir) = job.dir.parent() {
                    // A new app directory must itself survive a crash.
                    dirs.push(env_dir.to_path_buf());
                }
                let replace = match info {
                    InfoFiles::Replace => true,
                    InfoFiles::AtMostEvery(every) => {
                        self.pacer.replace_now(&job.key, &job.dir, every)
                    }
                };
                let text = replace.then(|| yaml::info(&items[job.last].0));
                let s = stage(job, text.as_deref())?;
                if created || s.dir_changed {
                    dirs.push(job.dir.clone());
                }
                Ok(s)
            })
            .collect();
        dirs.sort();
        dirs.dedup();

        // The one sync round: histories, info temp files and changed directories.
        let dir_files: Result<Vec<File>, RecordsError> = dirs
            .iter()
            .map(|d| File::open(d).map_err(io_err(d)))
            .collect();
        let synced = dir_files.and_then(|dir_files| {
            let files: Vec<(&File, &Path)> = staged
                .iter()
                .flatten()
                .flat_map(|s| {
                    let info = s
                        .info
                        .as_ref()
                        .map(|i| (i.as_file(), s.info_path.as_path()));
                    std::iter::once((&s.history, s.history_path.as_path())).chain(info)
                })
                .chain(dir_files.iter().zip(dirs.iter().map(PathBuf::as_path)))
                .collect();
            self.sync_all_of(&files)
        });
        match synced {
            Ok(()) => staged,
            Err(e) => jobs.iter().map(|_| Err(duplicate(&e))).collect(),
        }
    }

    /// Rename each synced info over its `deploy-info.yml` (made durable by the next sync round,
    /// see the module documentation) and unlock each history. Nothing here can undo a
    /// recorded deployment, so a failure is logged, not returned.
    fn put_in_place(
        &self,
        staged: Vec<Result<Staged, RecordsError>>,
        jobs: &[AppJob],
        items: &[(Deployment, Checks)],
    ) {
        let mut replaced = Vec::new();
        for (s, job) in staged.into_iter().zip(jobs) {
            let Ok(s) = s else { continue };
            if let Err(e) = s.history.unlock() {
                tracing::warn!("{}: cannot unlock: {e}", s.history_path.display());
            }
            let in_place = match s.info {
                Some(tmp) => {
                    self.pacer.replaced(&job.dir);
                    rename_over(tmp, &s.info_path, &mut replaced)
                }
                // Left to replace_due_infos: the history alone moved on.
                None => true,
            };
            if in_place {
                self.remember_written(&job.dir, &items[job.last].0);
            }
        }
        self.release.close_later(replaced);
    }

    /// `fsync` each of `files`, or one `syncfs` when there are many.
    pub(super) fn sync_all_of(&self, files: &[(&File, &Path)]) -> Result<(), RecordsError> {
        if files.len() > SYNCFS_ABOVE {
            let (root, _) = files[0];
            return rustix::fs::syncfs(root).map_err(|e| RecordsError::Io {
                path: self.root.clone(),
                source: e.into(),
            });
        }
        for (f, path) in files {
            f.sync_all().map_err(io_err(path))?;
        }
        Ok(())
    }
}

/// Append one app's entries (one write, history locked) and write its new info to a temp file
/// (mode 0644 like the history: tempfile's default 0600 would hide the record from other
/// users), nothing synced yet.
fn stage(job: &AppJob, info: Option<&str>) -> Result<Staged, RecordsError> {
    let history_path = job.dir.join(HISTORY);
    // No race with another writer: the environment is locked.
    let new_history = !history_path.exists();
    let history = open_locked(
        OpenOptions::new().create(true).append(true).read(true),
        &history_path,
    )?;
    let moved = history::append_locked(&history, &history_path, &job.entries)?;
    Ok(Staged {
        history,
        history_path,
        info: info.map(|text| info_temp(&job.dir, text)).transpose()?,
        info_path: job.dir.join(INFO),
        dir_changed: new_history || moved.is_some(),
        moved,
    })
}

/// Open `path` with `options` and take an exclusive lock on it (waits for other holders).
fn open_locked(options: &OpenOptions, path: &Path) -> Result<File, RecordsError> {
    let file = options.open(path).map_err(io_err(path))?;
    file.lock().map_err(io_err(path))?;
    Ok(file)
}

/// Create `dir` (and its parents); whether `dir` itself was new.
fn create_dir(dir: &Path) -> Result<bool, RecordsError> {
    if dir.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    Ok(true)
}

fn sync_dir(dir: &Path) -> Result<(), RecordsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
