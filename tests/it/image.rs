//! The scanner image end to end: the repository's Dockerfile built by the real engine,
//! `atomic install` done the way atomic does it, and `atomic scan`'s exact `docker run` line
//! reproduced from the installed config against a real HTTP server on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::atomic::{self, ScannerConfig};
use crate::support::docker;
use crate::support::scanner_image::{self, CREATED, GIT_SHA, TAG};
use crate::support::{read, run};

const INSTALL: &str =
    "docker run --rm --privileged -v /etc/atomic.d/:/host/etc/atomic.d/ $IMAGE sh /install.sh";

fn temp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("it-img-{prefix}-"))
        .tempdir()
        .unwrap()
}

/// Whether this engine can start a `--privileged` container. Some development machines run
/// the engine without every capability, and runc then refuses `--privileged` ("unable to
/// apply caps"); the install step does not need the privilege (it only writes to a bind
/// mount), so there the test runs the label's command without that one flag and says so.
fn privileged_works() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let out = Command::new("docker")
            .args(["run", "--rm", "--privileged", "--network", "none"])
            .arg(scanner_image::scanner_image())
            .args(["sh", "-c", "exit 0"])
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "NOTE: this engine refuses --privileged ({}); running the INSTALL command without it",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        out.status.success()
    })
}

/// `atomic install <TAG>` with `atomic_d` standing in for the host's `/etc/atomic.d`.
fn atomic_install(atomic_d: &Path) -> Output {
    let labels = scanner_image::labels(TAG);
    let label = atomic::install_label(&labels).expect("the image has an INSTALL label");
    let mut argv = atomic::install_argv(&label, TAG);
    // The one change: the host side of the /etc/atomic.d mount.
    let mount = argv
        .iter_mut()
        .find(|a| a.starts_with("/etc/atomic.d/:"))
        .expect("the INSTALL command mounts /etc/atomic.d/");
    *mount = mount.replacen("/etc/atomic.d/", &format!("{}/", atomic_d.display()), 1);
    if !privileged_works() {
        argv.retain(|a| a != "--privileged");
    }
    assert_eq!(argv[0], "docker");
    run(Command::new(&argv[0]).args(&argv[1..]))
}

#[test]
fn the_image_carries_its_labels_and_stays_small() {
    let image = scanner_image::scanner_image();
    let labels = scanner_image::labels(image);
    // Single-quoted in the Dockerfile: `$IMAGE` must reach atomic unexpanded.
    assert_eq!(labels["INSTALL"], INSTALL);
    assert_eq!(
        labels["git-url"],
        "https://github.com/imagetrail/imagetrail"
    );
    assert_eq!(labels["git-sha"], GIT_SHA);
    assert_eq!(labels["email-ids"], "imagetrail@example.com");
    assert_eq!(labels["org.opencontainers.image.revision"], GIT_SHA);
    assert_eq!(labels["org.opencontainers.image.created"], CREATED);
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/imagetrail/imagetrail"
    );
    assert_eq!(
        labels["org.opencontainers.image.title"],
        "scanner-analytics-integration"
    );
    let size: u64 = docker::docker(&["image", "inspect", "--format", "{{.Size}}", image])
        .parse()
        .unwrap();
    assert!(size <= 20_000_000, "image is {size} bytes, target 20 MB");

    // The files the scan and the install need, and nothing of a distribution besides busybox.
    let out = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "/bin/busybox",
        "find",
        "/",
        "-xdev",
        "(",
        "-type",
        "f",
        "-o",
        "-type",
        "l",
        ")",
    ]));
    assert!(out.status.success());
    let mut files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|f| !f.starts_with("/proc") && !f.starts_with("/sys") && !f.starts_with("/dev"))
        .filter(|f| {
            ![
                "/etc/hosts",
                "/etc/hostname",
                "/etc/resolv.conf",
                "/etc/mtab",
            ]
            .contains(&f.as_str())
        })
        .filter(|f| f != "/.dockerenv")
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "/analytics-integration",
            "/bin/busybox",
            "/bin/sh",
            "/etc/ssl/certs/ca-certificates.crt",
            "/imagetrail",
            "/install.sh",
        ]
    );

    // The binary runs in the empty image: static, no loader needed.
    let out = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "/imagetrail",
        "--version",
    ]));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("imagetrail {}\n", env!("CARGO_PKG_VERSION"))
    );
}

/// The config parsed by python3's yaml with the loader atomic uses, then checked the way
/// atomic's `get_scanners`, `get_scan_type` and `--list` use it.
#[test]
fn scanner_config_loads_as_atomic_loads_it() {
    let script = r#"
import json, sys, yaml
with open(sys.argv[1]) as f:
    conf = yaml.load(f, Loader=getattr(yaml, "FullLoader", yaml.Loader))
assert conf.get("type") == "scanner", "not a scanner"
names = [s["name"] for s in conf["scans"]]
for s in conf["scans"]:
    assert isinstance(s["args"], list), "The scanner arguments for %s must be in list ([]) form." % s["name"]
    assert isinstance(s["description"], str)
assert conf["default_scan"] in names, "default_scan not among the scans"
assert isinstance(conf["custom_args"], list)
json.dump(conf, sys.stdout)
"#;
    let out = run(Command::new("python3")
        .args(["-c", script])
        .arg(scanner_image::repo().join("scanner-config")));
    assert!(
        out.status.success(),
        "python3 with yaml (Debian: python3-yaml) must load scanner-config"
    );
    let py: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        py,
        serde_json::json!({
            "type": "scanner",
            "scanner_name": "analytics-integration",
            "image_name": "scanner-analytics-integration",
            "default_scan": "register",
            "custom_args": [
                "-v", "/var/run/docker.sock:/var/run/docker.sock",
                "-e", "IMAGE_NAME=$IMAGE_NAME",
                "-e", "SERVER=$SERVER",
                "-e", "SERVER_TOKEN=$SERVER_TOKEN",
                "-e", "ENVIRONMENT=$ENVIRONMENT",
            ],
            "scans": [
                {"name": "register", "args": ["/imagetrail", "scan", "register"], "description": py["scans"][0]["description"]},
                {"name": "verify", "args": ["/imagetrail", "scan", "verify"], "description": py["scans"][1]["description"]},
                {"name": "deploy", "args": ["/imagetrail", "scan", "deploy"], "description": py["scans"][2]["description"]},
            ],
        })
    );

    // The same file through serde-saphyr gives the same answer.
    let text = read(&scanner_image::repo().join("scanner-config"));
    let conf = ScannerConfig::parse(&text);
    assert_eq!(conf.kind, "scanner");
    assert_eq!(conf.scan(None).name, "register");
    for (scan, py_scan) in conf.scans.iter().zip(py["scans"].as_array().unwrap()) {
        assert_eq!(scan.name, py_scan["name"]);
        assert_eq!(
            scan.args,
            py_scan["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect::<Vec<_>>()
        );
        assert_eq!(scan.description, py_scan["description"]);
        assert!(!scan.description.is_empty());
    }

    // What atomic makes of custom_args when the operator set only IMAGE_NAME and SERVER.
    let env = BTreeMap::from([
        ("IMAGE_NAME".to_string(), "myapp:1.2".to_string()),
        (
            "SERVER".to_string(),
            "https://analytics.example.com".to_string(),
        ),
    ]);
    let argv = atomic::scan_argv(
        &conf,
        Some("verify"),
        Path::new("/run/atomic/T"),
        Path::new("/var/lib/atomic/analytics-integration/T"),
        &env,
        &[],
    );
    assert_eq!(
        argv.join(" "),
        "docker run -t --rm -v /etc/localtime:/etc/localtime -v /run/atomic/T:/scanin \
         -v /var/lib/atomic/analytics-integration/T:/scanout:rw,Z \
         -v /var/run/docker.sock:/var/run/docker.sock -e IMAGE_NAME=myapp:1.2 \
         -e SERVER=https://analytics.example.com -e SERVER_TOKEN= -e ENVIRONMENT= \
         scanner-analytics-integration /imagetrail scan verify"
    );
}

#[test]
fn atomic_install_puts_the_config_in_atomic_d() {
    scanner_image::scanner_image();
    let atomic_d = temp("atomic.d");
    let out = atomic_install(atomic_d.path());
    assert!(out.status.success(), "atomic install failed");
    let installed = atomic_d.path().join("analytics-integration");
    let scanners = atomic::load_scanners(atomic_d.path());
    assert_eq!(
        scanners.len(),
        1,
        "atomic finds one scanner in /etc/atomic.d"
    );
    assert_eq!(scanners[0].scanner_name, "analytics-integration");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(scanner_image::repo().join("scanner-config")).unwrap(),
        "the installed config is the repository's scanner-config, byte for byte"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // No temporary file left behind for atomic to trip over.
    let names: Vec<_> = std::fs::read_dir(atomic_d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["analytics-integration"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "Installed /analytics-integration to /host/etc/atomic.d/analytics-integration"
        ),
        "{stdout}"
    );

    // Installing again replaces the file (atomic install is rerun after image updates).
    std::fs::write(&installed, "stale").unwrap();
    assert!(atomic_install(atomic_d.path()).status.success());
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(scanner_image::repo().join("scanner-config")).unwrap()
    );

    // Run without the mount, install.sh says what to do and fails.
    let out = run(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        TAG,
        "sh",
        "/install.sh",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/host/etc/atomic.d is not mounted"),
        "{stderr}"
    );
    assert!(
        stderr.contains("-v /etc/atomic.d/:/host/etc/atomic.d/"),
        "{stderr}"
    );
}

#[test]
fn atomic_expands_unset_variables_to_empty() {
    let vars = BTreeMap::from([("SERVER".to_string(), "http://a b".to_string())]);
    assert_eq!(
        atomic::sub_env_strings("-e IMAGE_NAME=$IMAGE_NAME -e SERVER=${SERVER} x$Y/z", &vars),
        "-e IMAGE_NAME= -e SERVER=http://a b x"
    );
    assert_eq!(
        atomic::shlex_split("a 'b c' \"d\\\"e\" f\\ g"),
        ["a", "b c", "d\"e", "f g"]
    );
}
