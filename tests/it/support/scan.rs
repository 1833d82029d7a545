//! Helpers for the scanner tests: `/scanin` + `/scanout` temp dirs, time redaction, a
//! read-only directory that denies root, and the standard labels.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Labels a well-built image carries.
pub const GOOD: &[(&str, &str)] = &[
    ("git-url", "https://github.com/example/app"),
    ("git-sha", "46e443d"),
    ("email-ids", "dev@example.com"),
    ("org.opencontainers.image.created", "2026-01-24T22:41:03Z"),
    ("org.opencontainers.image.description", "add healthcheck"),
];

/// A temp dir holding `scanin/` and `scanout/`, as atomic mounts them.
pub struct ScanDirs {
    /// Keeps the directory alive.
    pub tmp: tempfile::TempDir,
    /// The `/scanin` stand-in.
    pub scanin: PathBuf,
    /// The `/scanout` stand-in.
    pub scanout: PathBuf,
}

impl ScanDirs {
    /// Fresh, empty dirs.
    pub fn new() -> ScanDirs {
        let tmp = tempfile::Builder::new()
            .prefix("it-scan")
            .tempdir()
            .unwrap();
        let scanin = tmp.path().join("scanin");
        let scanout = tmp.path().join("scanout");
        std::fs::create_dir(&scanin).unwrap();
        std::fs::create_dir(&scanout).unwrap();
        ScanDirs {
            tmp,
            scanin,
            scanout,
        }
    }

    /// Add a target directory named `name` under scanin.
    pub fn target(&self, name: &str) -> &Self {
        std::fs::create_dir(self.scanin.join(name)).unwrap();
        self
    }

    /// `imagetrail scan TYPE --scanin .. --scanout ..` with a clean environment.
    pub fn command(&self, scan_type: &str) -> Command {
        let mut cmd = super::imagetrail();
        cmd.arg("scan")
            .arg(scan_type)
            .arg("--scanin")
            .arg(&self.scanin)
            .arg("--scanout")
            .arg(&self.scanout);
        cmd
    }

    /// A result file of target `dir`.
    pub fn result(&self, dir: &str, file: &str) -> PathBuf {
        self.scanout.join(dir).join(file)
    }
}

/// Replace the values of the time keys with `TIME` after checking their format; returns the
/// redacted text. `keys` are e.g. `["Start Time", "Finished Time"]`.
pub fn redact_times(text: &str, keys: &[&str], check: fn(&str) -> bool) -> String {
    let v: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
    let mut out = text.to_string();
    for key in keys {
        let t = v[*key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {text}"));
        assert!(check(t), "{key} {t:?} has the wrong format");
        out = out.replace(
            &format!("\"{key}\": \"{t}\""),
            &format!("\"{key}\": \"TIME\""),
        );
    }
    out
}

/// `%Y-%m-%d-%H-%M-%S-%f` (6-digit microseconds).
pub fn legacy_time(t: &str) -> bool {
    t.len() == 26 && chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d-%H-%M-%S-%6f").is_ok()
}

/// `%Y-%m-%dT%H:%M:%S`.
pub fn atomic_time(t: &str) -> bool {
    t.len() == 19 && chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S").is_ok()
}

/// A directory that even root cannot write to: a read-only bind mount of itself.
/// Unmounted on drop.
pub struct ReadOnlyDir {
    /// The directory.
    pub path: PathBuf,
}

impl ReadOnlyDir {
    /// Make `path` (an existing directory) read-only; `None` when this machine cannot bind-mount.
    pub fn make(path: &Path) -> Option<ReadOnlyDir> {
        let ok = Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(path)
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| ReadOnlyDir {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A real `docker-registry` on a free loopback port, stopped on drop. Pushing an image there
/// gives it the `RepoDigests` a deploy scan needs.
pub struct LoopbackRegistry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl LoopbackRegistry {
    /// Start one and wait until it answers `/v2/`.
    pub fn start() -> LoopbackRegistry {
        let dir = tempfile::Builder::new()
            .prefix("it-scan-registry")
            .tempdir()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {addr}}}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let registry = LoopbackRegistry {
            addr,
            child,
            _dir: dir,
        };
        for _ in 0..200 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return registry;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("docker-registry did not start on {}", registry.addr);
    }
}

impl Drop for LoopbackRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The image ids an `environment.json` lists under `images`.
pub fn image_ids(env: &serde_json::Value) -> Vec<&str> {
    env["images"]
        .as_array()
        .expect("environment.json has an images list")
        .iter()
        .map(|i| i["Id"].as_str().expect("every image has an Id"))
        .collect()
}
