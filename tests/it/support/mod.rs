//! Shared test helpers: running the binary, building images, a recording HTTP server.

#![allow(dead_code)]

pub mod atomic;
pub mod browser;
pub mod docker;
pub mod http;
pub mod podman;
pub mod postgres;
pub mod proxy;
pub mod registry;
pub mod replicas;
pub mod scan;
pub mod scanner_image;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The real `imagetrail` executable with a clean environment (only PATH, HOME and TZ kept),
/// so no variable of the developer's shell changes what a test sees.
pub fn imagetrail() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagetrail"));
    cmd.env_clear();
    for key in ["PATH", "HOME", "TZ"] {
        if let Ok(v) = std::env::var(key) {
            cmd.env(key, v);
        }
    }
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        cmd.env("DOCKER_HOST", host);
    }
    cmd
}

/// Run a command and return its output, printing it when the test fails later.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run the command");
    eprintln!(
        "$ {cmd:?}\n--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Read a file as text, with the path in the panic message.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Spawn `cmd` (an `imagetrail serve` command line) with stdout piped and stderr inherited, and
/// read the base URL from its first stdout line, `listening on URL`.
pub fn spawn_serve(cmd: &mut Command) -> (Child, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start imagetrail serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve did not start; first stdout line: {line:?}"))
        .to_string();
    (child, url)
}
