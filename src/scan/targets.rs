//! The scan targets: one per directory under `/scanin` (atomic names each by the object's full
//! id; `_path` names are `--rootfs` targets), or the images named on the command line.

use std::path::Path;

use crate::error::Error;

/// Where a target's labels come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A `/scanin` directory named by a container or image id: container first, then image.
    ScanDir(String),
    /// A `--rootfs` directory: its labels come from `IMAGE_NAME`, when given.
    Rootfs(String),
    /// An image named on the command line, or `IMAGE_NAME` for an empty `/scanin`.
    Named(String),
}

/// One target.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `/scanin` directory name, which is also the output directory name; `None` for a
    /// named image (its output directory is its resolved id).
    pub dir: Option<String>,
    /// Where its labels come from.
    pub source: Source,
}

/// List the targets under `scanin`, sorted by name so output order is deterministic. Plain
/// files and dangling symlinks (ostree mounts that live outside the container) are skipped.
pub fn from_scanin(scanin: &Path, image_name: Option<&str>) -> Result<Vec<Target>, Error> {
    let entries = std::fs::read_dir(scanin).map_err(|e| {
        Error::Usage(format!(
            "cannot list {}: {e}; run under `atomic scan` (which mounts /scanin) or pass --scanin DIR",
            scanin.display()
        ))
    })?;
    let mut targets = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::Usage(format!("cannot list {}: {e}", scanin.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // metadata() follows symlinks: a dangling link fails here and is skipped.
        match std::fs::metadata(entry.path()) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                tracing::info!(entry = %crate::terminal::sanitize(&name), "skipping a plain file under /scanin");
                continue;
            }
            Err(e) => {
                tracing::info!(entry = %crate::terminal::sanitize(&name), error = %e, "skipping an entry that is not a readable directory");
                continue;
            }
        }
        let source = if name.starts_with('_') {
            Source::Rootfs(name.clone())
        } else {
            Source::ScanDir(name.clone())
        };
        targets.push(Target {
            dir: Some(name),
            source,
        });
    }
    targets.sort_by(|a, b| a.dir.cmp(&b.dir));
    if targets.is_empty() {
        match image_name {
            Some(name) => targets.push(Target {
                dir: None,
                source: Source::Named(name.to_string()),
            }),
            None => {
                return Err(Error::Usage(format!(
                    "nothing to scan: {} holds no target directory and IMAGE_NAME is not set; run `atomic scan IMAGE` or set IMAGE_NAME (or --image-name)",
                    scanin.display()
                )));
            }
        }
    }
    Ok(targets)
}

/// The images named on the command line, in the order given.
pub fn from_names(names: &[String]) -> Result<Vec<Target>, Error> {
    // The same name twice is one target (registered once).
    let mut seen = std::collections::HashSet::new();
    let names: Vec<&String> = names
        .iter()
        .filter(|n| !n.trim().is_empty() && seen.insert(n.trim().to_string()))
        .collect();
    if names.is_empty() {
        return Err(Error::Usage("name at least one image".into()));
    }
    Ok(names
        .into_iter()
        .map(|n| Target {
            dir: None,
            source: Source::Named(n.trim().to_string()),
        })
        .collect())
}
