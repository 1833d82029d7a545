//! The scanner image `scanner-analytics-integration`, built once per test process from the
//! repository's own `Dockerfile` (target `from-host`) and a static `imagetrail`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The tag the tests give the scanner image (prefix `it-img`, so no other part's test and no
/// user's `scanner-analytics-integration` is touched).
pub const TAG: &str = "it-img-scanner-analytics-integration:test";

/// The `git-sha` label the test build gives the image.
pub const GIT_SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The `org.opencontainers.image.created` label the test build gives the image.
pub const CREATED: &str = "2026-11-23T12:00:00Z";

/// A static-pie `imagetrail` (Cargo profile `image`, as the Dockerfile builds it): `IMAGETRAIL_STATIC_BIN` when `.ci/run` built one, else built
/// here with cargo into `target/static` (its own target dir: the outer `cargo test` holds
/// the lock on `target/`). Never skipped: a failure to build fails the test.
pub fn static_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("IMAGETRAIL_STATIC_BIN").filter(|v| !v.is_empty()) {
            let bin = PathBuf::from(bin);
            assert!(
                bin.is_file(),
                "IMAGETRAIL_STATIC_BIN={} is not a file",
                bin.display()
            );
            return bin;
        }
        let target_dir = repo().join("target").join("static");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!(
            "building the static imagetrail into {} (set IMAGETRAIL_STATIC_BIN to reuse one)",
            target_dir.display()
        );
        let status = Command::new(cargo)
            .current_dir(repo())
            .args([
                "build",
                "--locked",
                "--profile",
                "image",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--bin",
                "imagetrail",
                "--target-dir",
            ])
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of the static imagetrail failed"
        );
        target_dir.join("x86_64-unknown-linux-gnu/image/imagetrail")
    })
}

/// Build the scanner image from a context holding exactly what the Dockerfile's `from-host`
/// path needs (the repository's Dockerfile, .dockerignore, scanner-config, install.sh and a
/// rootfs staged by `.ci/image-rootfs`); returns its full id. Once per test process.
pub fn scanner_image() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let bin = static_binary();
        let ctx = tempfile::Builder::new()
            .prefix("it-img-ctx-")
            .tempdir()
            .unwrap();
        for f in [
            "Dockerfile",
            ".dockerignore",
            "scanner-config",
            "install.sh",
        ] {
            std::fs::copy(repo().join(f), ctx.path().join(f)).unwrap();
        }
        let out = Command::new(repo().join(".ci/image-rootfs"))
            .arg(bin)
            .arg(ctx.path().join("dist/rootfs"))
            .output()
            .expect("run .ci/image-rootfs");
        assert!(
            out.status.success(),
            ".ci/image-rootfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("docker")
            .args(["build", "-q", "--target", "from-host", "-t", TAG])
            .args(["--build-arg", &format!("GIT_SHA={GIT_SHA}")])
            .args(["--build-arg", &format!("CREATED={CREATED}")])
            .arg(ctx.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("run docker build");
        assert!(
            out.status.success(),
            "docker build of the scanner image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        super::docker::image_id(TAG)
    })
}

/// The image's labels.
pub fn labels(image: &str) -> std::collections::BTreeMap<String, String> {
    let json = super::docker::docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Labels}}",
        image,
    ]);
    serde_json::from_str(&json).unwrap()
}
