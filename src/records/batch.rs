//! Group commit: many deployments written with one sync per touched file instead of three syncs
//! per deployment.
//!
//! [`Store::record_checked_many`] (and [`Store::record_many`], [`Store::record`] on top of it)
//! works in three steps:
//!
//! 1. **Lock and validate.** The environments of the batch are locked in sorted order (so two
//!    batches never wait for each other in a cycle), then every item is checked in batch order
//!    against the stored state *plus the items accepted before it*, so a name taken earlier in
//!    the same batch is refused like a stored one. A refused item gets its own error; the others
//!    go on.
//! 2. **Write, one job per app.** Each touched app gets its accepted entries appended to its
//!    history in one `write` and one `fdatasync` (torn-tail rule as in [`super::history`]), then
//!    its `deploy-info.yml` replaced once with its final state (temp file, `fsync`, rename), then
//!    its directory `fsync`'d once. The jobs run on scoped threads: ext4 (and most journaling
//!    file systems) commit concurrent syncs together, so a batch of N apps costs about one
//!    journal commit, not N.
//! 3. **Unlock** and report one result per item, in the order given.
//!
//! Every guarantee of a single record holds: history first (a crash before the info replace
//! leaves the history with the deployment and the info whole), append-only, the history locked
//! for the append, the info replaced atomically, nothing answered before its sync returned.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::{Deployment, HISTORY, INFO, Recorded, RecordsError, Store, history, io_err, yaml};

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
struct AppJob {
    dir: PathBuf,
    items: Vec<usize>,
    entries: String,
    /// Index of the item whose state becomes `deploy-info.yml`.
    last: usize,
}

impl Store {
    fn lock_env(&self, env: &str) -> Result<(PathBuf, File), RecordsError> {
        let dir = self.env_dir(env)?;
        let created = create_dir(&dir)?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
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
        for app in self.apps(env)? {
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
        let app_dir = self.app_dir(env, &d.app)?;
        // A hand-edited deploy-info.yml that no longer parses is refused, not overwritten.
        let current = match own
            .entry((env.to_string(), d.app.clone()))
            .or_insert_with(|| self.read_info(&app_dir.join(INFO)))
        {
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
        let needs_others = d.deployment.name.is_some() || checks.name_required_for_named_instances;
        if needs_others {
            let currents = eb
                .currents
                .get_or_insert_with(|| self.load_currents(env))
                .as_ref()
                .map_err(duplicate)?;
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
    /// history write.
    pub fn record_checked_many(
        &self,
        items: &[(Deployment, Checks)],
    ) -> Vec<Result<Written, RecordsError>> {
        let mut results: Vec<Option<Result<Written, RecordsError>>> =
            items.iter().map(|_| None).collect();

        // Names first: an item with a name that cannot be stored creates no directory.
        for (i, (d, _)) in items.iter().enumerate() {
            if let Err(e) = self.app_dir(&d.deployment.workspace, &d.app) {
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

        // 2. One job per app, concurrently, so the file system commits the syncs together.
        let jobs: Vec<AppJob> = jobs.into_values().collect();
        let outcomes: Vec<Result<Recorded, RecordsError>> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|job| {
                    let info = yaml::info(&items[job.last].0);
                    s.spawn(move || write_app(job, &info))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a records write thread panicked"))
                .collect()
        });
        for (job, outcome) in jobs.iter().zip(outcomes) {
            match outcome {
                Ok(rec) => {
                    for (k, &i) in job.items.iter().enumerate() {
                        // The torn tail moved aside belongs to the first entry appended.
                        let r = if k == 0 {
                            rec.clone()
                        } else {
                            Recorded::default()
                        };
                        results[i] = Some(Ok(Written::Recorded(r)));
                    }
                }
                Err(e) => {
                    for &i in &job.items {
                        results[i] = Some(Err(duplicate(&e)));
                    }
                }
            }
        }
        // 3. The environment locks are released here, after every sync.
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

/// Append one app's entries (one write, one `fdatasync`), replace its `deploy-info.yml` and
/// `fsync` its directory once.
fn write_app(job: &AppJob, info: &str) -> Result<Recorded, RecordsError> {
    let created = create_dir(&job.dir)?;
    let history_path = job.dir.join(HISTORY);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(&history_path)
        .map_err(io_err(&history_path))?;
    file.lock().map_err(io_err(&history_path))?;
    let moved = history::append_locked(&file, &history_path, &job.entries)?;
    file.unlock().map_err(io_err(&history_path))?;
    drop(file);
    replace_info(&job.dir, &job.dir.join(INFO), info.as_bytes())?;
    // One directory sync covers the history's creation and the info's rename.
    sync_dir(&job.dir)?;
    if created && let Some(env_dir) = job.dir.parent() {
        // A new app directory must itself survive a crash.
        sync_dir(env_dir)?;
    }
    Ok(Recorded {
        moved_torn_tail: moved,
    })
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

/// Replace `path` with `bytes` through a temp file in `dir` (flushed, mode 0644 like the
/// history, since tempfile's default 0600 would hide the record from other users), renamed over
/// it. The caller syncs `dir` afterwards.
fn replace_info(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), RecordsError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut tmp = tempfile::Builder::new()
        .prefix(".deploy-info.")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}
