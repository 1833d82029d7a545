//! Podman's Docker-compatible API as a second real engine, one service per test process on
//! its own storage under a temp dir (vfs, so it needs no kernel features).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A running `podman system service`.
pub struct Podman {
    /// Keeps the storage alive.
    pub dir: tempfile::TempDir,
    /// The API socket.
    pub socket: PathBuf,
    /// The service process (it exits by itself when idle).
    _service: Option<std::process::Child>,
}

impl Podman {
    fn podman(&self) -> Command {
        let mut cmd = Command::new("podman");
        cmd.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    /// Copy an image from the Docker engine into this Podman (`docker save | podman load`).
    pub fn load_from_docker(&self, tag: &str) {
        let tar = self
            .dir
            .path()
            .join(format!("{}.tar", tag.replace(['/', ':'], "_")));
        super::docker::docker(&["save", "-o", tar.to_str().unwrap(), tag]);
        let out = self
            .podman()
            .arg("load")
            .arg("-i")
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The shared Podman service, started on first use. It stops by itself 60 s after its last
/// request (`--time 60`), so no process outlives the tests for long.
pub fn podman() -> &'static Podman {
    static PODMAN: OnceLock<Podman> = OnceLock::new();
    PODMAN.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("it-scan-podman")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("podman.sock");
        let mut p = Podman {
            dir,
            socket,
            _service: None,
        };
        let child = p
            .podman()
            .args(["system", "service", "--time", "60"])
            .arg(format!("unix://{}", p.socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start podman system service");
        p._service = Some(child);
        wait_for(&p.socket);
        p
    })
}

fn wait_for(socket: &Path) {
    for _ in 0..200 {
        if socket.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("podman did not create {}", socket.display());
}
