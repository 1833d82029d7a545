//! The scanner image end to end: the repository's Dockerfile built by the real engine,
//! `atomic install` done the way atomic does it, and `atomic scan`'s exact `docker run` line
//! reproduced from the installed config against a real HTTP server on 127.0.0.1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::support::atomic::{self, ScannerConfig};
use crate::support::docker;
use crate::support::http::RecordingServer;
use crate::support::scan::image_ids;
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
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || stderr.contains("operation not permitted"),
            "docker run --privileged failed for another reason than capabilities: {stderr}"
        );
        if !out.status.success() {
            eprintln!(
                "NOTE: this engine refuses --privileged ({}); running the INSTALL command without it",
                stderr.trim()
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

/// The config as `atomic install` leaves it in a fresh `/etc/atomic.d` (kept for the test).
fn installed_config() -> (tempfile::TempDir, ScannerConfig) {
    let atomic_d = temp("atomic.d");
    let out = atomic_install(atomic_d.path());
    assert!(out.status.success(), "atomic install failed");
    let mut scanners = atomic::load_scanners(atomic_d.path());
    assert_eq!(scanners.len(), 1, "one scanner in /etc/atomic.d");
    (atomic_d, scanners.remove(0))
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

/// One `atomic scan` run: its `/run/atomic/<ts>` and `/var/lib/atomic/<scanner>/<ts>`.
struct Scan {
    _dirs: tempfile::TempDir,
    scanin: PathBuf,
    scanout: PathBuf,
}

impl Scan {
    /// `/scanin` with one (empty) directory per target id, and an empty `/scanout`, as
    /// atomic prepares them (it mounts each target's rootfs there; the scanner only uses
    /// the names).
    fn new(ids: &[&str]) -> Scan {
        let dirs = temp("scan");
        let scanin = dirs.path().join("run-atomic");
        let scanout = dirs.path().join("results");
        for id in ids {
            std::fs::create_dir_all(scanin.join(id)).unwrap();
        }
        std::fs::create_dir_all(&scanout).unwrap();
        Scan {
            _dirs: dirs,
            scanin,
            scanout,
        }
    }

    /// Run atomic's `docker run` line for the installed config, with `env` as the caller's
    /// environment and `extra` docker args (`--network host` at least) before the image.
    fn run(
        &self,
        config: &ScannerConfig,
        env: &BTreeMap<String, String>,
        extra: &[&str],
    ) -> Output {
        self.run_type(config, None, env, extra)
    }

    /// The same with `atomic scan --scan_type T`.
    fn run_type(
        &self,
        config: &ScannerConfig,
        scan_type: Option<&str>,
        env: &BTreeMap<String, String>,
        extra: &[&str],
    ) -> Output {
        let mut config = config.clone();
        // The test image's tag stands in for the default `scanner-analytics-integration`.
        assert_eq!(config.image_name, "scanner-analytics-integration");
        config.image_name = TAG.to_string();
        let mut argv =
            atomic::scan_argv(&config, scan_type, &self.scanin, &self.scanout, env, extra);
        // The config mounts /var/run/docker.sock; when this machine's engine listens
        // elsewhere (DOCKER_HOST=unix://...), mount that socket at the same place inside.
        if let Some(sock) = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        {
            for a in argv.iter_mut() {
                if a == "/var/run/docker.sock:/var/run/docker.sock" {
                    *a = format!("{sock}:/var/run/docker.sock");
                }
            }
        }
        run(Command::new(&argv[0]).args(&argv[1..]))
    }

    fn json(&self, rel: &str) -> serde_json::Value {
        serde_json::from_str(&read(&self.scanout.join(rel)))
            .unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
    }
}

/// Targets of a scan: a labelled image, a container of it with labels of its own, and the
/// scanner image itself (which carries its own labels).
struct Targets {
    tag: String,
    image: String,
    container: String,
    scanner: String,
}

impl Targets {
    fn new(name: &str) -> Targets {
        let tag = format!("it-img-target-{name}:1");
        let image = docker::build_image(
            &tag,
            &[
                ("git-url", "https://github.com/example/app"),
                ("git-sha", "46e443d"),
                ("email-ids", "dev@example.com"),
                ("org.opencontainers.image.created", "2026-01-24T22:41:03Z"),
            ],
        );
        let container = docker::create_container(&tag, &[("git-sha", "a1b2c3d4")]);
        Targets {
            tag,
            image,
            container,
            scanner: scanner_image::scanner_image().to_string(),
        }
    }

    fn ids(&self) -> Vec<&str> {
        vec![&self.image, &self.container, &self.scanner]
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.tag])
            .output();
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The three files for one target, checked for what atomic and the pipelines read.
fn check_target_files(scan: &Scan, id: &str, successful: bool) {
    check_target_files_registered(scan, id, successful, successful);
}

/// [`check_target_files`] where `Registered` may differ from success: without a server a
/// target is a success (its labels were read and checked) and was registered nowhere.
fn check_target_files_registered(scan: &Scan, id: &str, successful: bool, registered: bool) {
    let json = scan.json(&format!("{id}/json"));
    assert_eq!(json["Scanner"], "analytics-integration");
    assert_eq!(json["Scan Type"], "register");
    assert_eq!(json["UUID"], format!("/scanin/{id}"));
    // Every target here was read: atomic shows it (and why it was not registered).
    assert_eq!(json["Successful"], "true");
    assert_eq!(
        json["Custom"]["Registered"],
        if registered { "yes" } else { "no" }
    );
    assert!(json["Time"].is_string() && json["Finished Time"].is_string());

    let legacy_text = read(&scan.scanout.join(id).join("analytics_scanner_results.json"));
    let legacy: serde_json::Value = serde_json::from_str(&legacy_text).unwrap();
    assert_eq!(legacy["Scanner"], "scanner-analytics-integration");
    assert_eq!(legacy["UUID"], id);
    assert_eq!(legacy["Successful"], successful);
    // The seed's key order, which pipelines that read the text rely on.
    let order = [
        "Scan Type",
        "CVE Feed Last Updated",
        "UUID",
        "Scan Results",
        "Successful",
        "Finished Time",
        "Summary",
        "Start Time",
        "Scanner",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|k| {
            legacy_text
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{legacy_text}");
}

fn check_environment(scan: &Scan, targets: &Targets, server: Option<&str>) {
    let env = scan.json("environment.json");
    assert!(env["info"].is_object());
    let image_ids = image_ids(&env);
    assert!(image_ids.contains(&targets.image.as_str()), "{image_ids:?}");
    assert!(
        image_ids.contains(&targets.scanner.as_str()),
        "{image_ids:?}"
    );
    let container_ids: Vec<&str> = env["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Id"].as_str().unwrap())
        .collect();
    assert_eq!(container_ids, [targets.container.as_str()]);
    let scanner_server = &env["scanner"]["server"];
    match server {
        Some(url) => assert!(
            scanner_server.as_str().is_some_and(|s| s.starts_with(url)),
            "{scanner_server}"
        ),
        None => assert!(
            scanner_server.is_null() || scanner_server == "",
            "{scanner_server}"
        ),
    }
}

/// `-t` gives the container a TTY: its output arrives with CRLF line ends, as atomic shows it.
fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

fn status_lines(out: &Output) -> Vec<String> {
    lines(out)
        .into_iter()
        .filter(|l| l.starts_with("Scanner execution status:"))
        .collect()
}

#[test]
fn atomic_scan_registers_every_target_with_the_server() {
    let targets = Targets::new("ok");
    let (_atomic_d, config) = installed_config();
    let server = RecordingServer::analytics_ok();
    let scan = Scan::new(&targets.ids());
    let out = scan.run(
        &config,
        &env(&[
            ("IMAGE_NAME", "it-img-target-ok:1"),
            ("SERVER", &server.url()),
        ]),
        &["--network", "host"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        status_lines(&out),
        ["Scanner execution status: True"; 3],
        "one status line per target"
    );

    let requests = server.requests();
    assert_eq!(requests.len(), 3, "one register call per target");
    let mut by_sha = BTreeMap::new();
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v1/register");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            r.header("user-agent"),
            Some(format!("imagetrail/{}", env!("CARGO_PKG_VERSION")))
        );
        // SERVER_TOKEN was unset, so atomic passed it empty: no Authorization at all.
        assert_eq!(r.header("authorization"), None);
        let body = r.json();
        by_sha.insert(body["git-sha"].as_str().unwrap().to_string(), body);
    }
    let image = &by_sha["46e443d"];
    assert_eq!(image["git-url"], "https://github.com/example/app");
    assert_eq!(image["email-ids"], "dev@example.com");
    assert!(
        image["image-id"]
            .as_str()
            .is_some_and(|i| i.ends_with(&targets.image)),
        "{image}"
    );
    // The container's own label wins over its image's.
    let container = &by_sha["a1b2c3d4"];
    assert_eq!(container["git-url"], "https://github.com/example/app");
    // The scanner image registered itself from its own labels.
    let scanner = &by_sha[GIT_SHA];
    assert_eq!(
        scanner["git-url"],
        "https://github.com/imagetrail/imagetrail"
    );
    assert_eq!(scanner["email-ids"], "imagetrail@example.com");
    assert_eq!(
        scanner["labels"]["org.opencontainers.image.created"],
        CREATED
    );

    for id in targets.ids() {
        check_target_files(&scan, id, true);
    }
    check_environment(&scan, &targets, Some(&server.url()));
}

#[test]
fn atomic_scan_with_the_server_down_records_the_failure() {
    let targets = Targets::new("down");
    let (_atomic_d, config) = installed_config();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let scan = Scan::new(&targets.ids());
    let out = scan.run(
        &config,
        &env(&[("IMAGE_NAME", "it-img-target-down:1"), ("SERVER", &url)]),
        &["--network", "host"],
    );
    // Exit 0 once the files are written, or atomic shows nothing at all.
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status_lines(&out), ["Scanner execution status: False"; 3]);
    for id in targets.ids() {
        check_target_files(&scan, id, false);
        let json = scan.json(&format!("{id}/json"));
        let text = json.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{port}")),
            "the failure names the server: {text}"
        );
    }
    check_environment(&scan, &targets, Some(&url));
}

#[test]
fn atomic_scan_without_server_registers_nothing() {
    let targets = Targets::new("noserver");
    let (_atomic_d, config) = installed_config();
    let scan = Scan::new(&targets.ids());
    // SERVER not in the caller's environment: atomic passes `-e SERVER=`.
    let out = scan.run(
        &config,
        &env(&[("IMAGE_NAME", "it-img-target-noserver:1")]),
        &["--network", "host"],
    );
    // No server is not a failure of the scan: the labels are read and checked, and each
    // result says that nothing was registered and how to give a server.
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status_lines(&out), ["Scanner execution status: True"; 3]);
    for id in targets.ids() {
        check_target_files_registered(&scan, id, true, false);
        let json = scan.json(&format!("{id}/json"));
        let summary = json["Custom"]["Summary"].as_str().unwrap_or_default();
        assert!(
            summary.contains("nothing was registered") && summary.contains("SERVER"),
            "{json}"
        );
        let legacy = scan.json(&format!("{id}/analytics_scanner_results.json"));
        assert_eq!(legacy["Summary"], summary);
    }
    check_environment(&scan, &targets, None);
}

#[test]
fn atomic_scan_resolves_the_server_by_name_inside_the_image() {
    let targets = Targets::new("byname");
    let (_atomic_d, config) = installed_config();
    let server = RecordingServer::analytics_ok();
    let url = format!("http://analytics.test:{}/tracker", server.addr.port());
    let scan = Scan::new(&[&targets.image]);
    // The name exists only in the container's /etc/hosts, which the runtime writes: glibc's
    // NSS is not in the image, so this proves the binary's own resolver reads it.
    let out = scan.run(
        &config,
        &env(&[("IMAGE_NAME", "it-img-target-byname:1"), ("SERVER", &url)]),
        &[
            "--network",
            "host",
            "--add-host",
            "analytics.test:127.0.0.1",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status_lines(&out), ["Scanner execution status: True"]);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    // The path inside SERVER is kept as a prefix; the Host header names the server.
    assert_eq!(requests[0].path, "/tracker/api/v1/register");
    assert_eq!(
        requests[0].header("host"),
        Some(format!("analytics.test:{}", server.addr.port()))
    );
    assert_eq!(requests[0].json()["git-sha"], "46e443d");
    check_target_files(&scan, &targets.image, true);
}

/// `--scan_type verify` picks the config's `verify` entry: labels checked with no network at
/// all (`--network none`), each problem one `Results` entry of a successful scan.
#[test]
fn atomic_scan_type_verify_checks_labels_without_network() {
    let bad = docker::build_image(
        "it-img-target-verify:1",
        &[
            ("git-url", "https://github.com/example/app"),
            ("git-sha", "xyz"),
            ("email-ids", "not-an-address"),
        ],
    );
    let scanner = scanner_image::scanner_image();
    let (_atomic_d, config) = installed_config();
    let scan = Scan::new(&[&bad, scanner]);
    let out = scan.run_type(&config, Some("verify"), &env(&[]), &["--network", "none"]);
    let _ = Command::new("docker")
        .args(["rmi", "-f", "it-img-target-verify:1"])
        .output();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status_lines(&out), ["Scanner execution status: True"; 2]);

    let json = scan.json(&format!("{bad}/json"));
    assert_eq!(json["Scan Type"], "verify");
    assert_eq!(json["Successful"], "true");
    let problems: Vec<&str> = json["Results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["Custom"]["Label"].as_str().unwrap())
        .collect();
    assert_eq!(problems, ["git-sha", "email-ids"], "{json}");

    // The scanner image's own labels pass its own checks.
    let json = scan.json(&format!("{scanner}/json"));
    assert_eq!(json["Scan Type"], "verify");
    assert_eq!(json["Successful"], "true");
    assert_eq!(json["Results"], serde_json::json!([]), "{json}");
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

/// The README's CI recipe: the image run directly, no atomic, an empty `/scanin` so that
/// `IMAGE_NAME` names the one target, the token handed over by name only (`-e SERVER_TOKEN`,
/// so it is not on the command line) and `--exit-code` failing the job.
#[test]
fn the_image_runs_directly_in_a_ci_job() {
    let targets = Targets::new("ci");
    let server = RecordingServer::analytics_ok();
    let dirs = temp("ci");
    let (scanin, scanout) = (dirs.path().join("scanin"), dirs.path().join("scanout"));
    std::fs::create_dir_all(&scanin).unwrap();
    std::fs::create_dir_all(&scanout).unwrap();
    let sock = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let ci_run = |server_url: &str, scanout: &Path| {
        let mut cmd = Command::new("docker");
        cmd.args(["run", "--rm", "--network", "host", "-v"])
            .arg(format!("{sock}:/var/run/docker.sock"))
            .arg("-v")
            .arg(format!("{}:/scanin", scanin.display()))
            .arg("-v")
            .arg(format!("{}:/scanout", scanout.display()))
            .args(["-e", "IMAGE_NAME=it-img-target-ci:1", "-e"])
            .arg(format!("SERVER={server_url}"))
            .args(["-e", "SERVER_TOKEN", TAG])
            .args(["/imagetrail", "scan", "register", "--exit-code", "3"])
            .env("SERVER_TOKEN", "s3cret-token");
        run(&mut cmd)
    };

    let out = ci_run(&server.url(), &scanout);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status_lines(&out), ["Scanner execution status: True"]);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].header("authorization").as_deref(),
        Some("Bearer s3cret-token")
    );
    assert_eq!(requests[0].json()["git-sha"], "46e443d");
    let json = scan_json_files(&scanout);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["Successful"], "true");

    // The server down: the job fails with the exit code asked for, the results are written.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let scanout_down = dirs.path().join("scanout-down");
    std::fs::create_dir_all(&scanout_down).unwrap();
    let out = ci_run(&format!("http://127.0.0.1:{port}"), &scanout_down);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(status_lines(&out), ["Scanner execution status: False"]);
    let json = scan_json_files(&scanout_down);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["Successful"], "true", "read, not registered");
    assert_eq!(json[0]["Custom"]["Registered"], "no");
    drop(targets);
}

/// Every `<dir>/json` under a `/scanout`.
fn scan_json_files(scanout: &Path) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(scanout).unwrap() {
        let path = entry.unwrap().path().join("json");
        if path.is_file() {
            found.push(serde_json::from_str(&read(&path)).unwrap());
        }
    }
    found
}

/// The from-source path cannot be built here (no `rust` image can be pulled), so its build
/// step is run as written in the Dockerfile, on the host (the same Debian and toolchain
/// family): it must build and stage the same rootfs the from-host path uses.
#[test]
fn dockerfile_source_stage_stages_the_same_rootfs() {
    let dockerfile = read(&scanner_image::repo().join("Dockerfile"));
    assert!(dockerfile.contains("FROM ${RUST_IMAGE} AS build"));
    assert!(dockerfile.contains("FROM common AS from-source\nCOPY --from=build /rootfs/ /"));
    let start = dockerfile
        .find("RUN target=")
        .expect("the build stage's RUN");
    let end = start + dockerfile[start..].find("\n\n").unwrap();
    let out_dir = temp("source-rootfs");
    let rootfs = out_dir.path().join("rootfs");
    let script = dockerfile[start + "RUN ".len()..end]
        .replace(" /rootfs", &format!(" {}", rootfs.display()));
    let out = run(Command::new("sh")
        .args(["-c", &script])
        .current_dir(scanner_image::repo())
        .env(
            "CARGO_TARGET_DIR",
            scanner_image::repo().join("target").join("static"),
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS"));
    assert!(out.status.success(), "the build stage's RUN failed");
    let listing = |dir: &Path| {
        let out = Command::new("find")
            .arg(".")
            .args(["-printf", "%p %y %m %l\n"])
            .current_dir(dir)
            .output()
            .unwrap();
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    let host = temp("host-rootfs");
    let staged = Command::new(scanner_image::repo().join(".ci/image-rootfs"))
        .arg(scanner_image::static_binary())
        .arg(host.path().join("rootfs"))
        .output()
        .unwrap();
    assert!(staged.status.success());
    assert_eq!(listing(&rootfs), listing(&host.path().join("rootfs")));
    assert_eq!(
        listing(&rootfs),
        [
            ". d 755 ",
            "./bin d 755 ",
            "./bin/busybox f 755 ",
            "./bin/sh l 777 busybox",
            "./etc d 755 ",
            "./etc/ssl d 755 ",
            "./etc/ssl/certs d 755 ",
            "./etc/ssl/certs/ca-certificates.crt f 644 ",
            "./imagetrail f 755 ",
            "./tmp d 1777 ",
        ]
    );
}
