//! `registry prune` never deletes a digest a record names, whatever the records look like
//! (issue 11): another spelling of the registry, an index recorded through the API, an
//! unreadable app directory, a hand-broken or torn history, a hand-written `deploy-info.yml`;
//! plus a registry that never answers and `--keep` with date-only build times. Against the
//! real `docker-registry` on loopback, the real binary and the real server.
//!
//! What the protection reads is the backend's: the first test runs on the files and on
//! PostgreSQL (`--database-url`); an unreachable database refuses the prune. The tests about
//! the shapes files can take (unreadable, torn, hand-written) stay file-only.

use std::path::Path;
use std::process::Output;

use serde_json::json;

use crate::deploy::{deploy, it};
use crate::server::{TestServer, post_deployment};
use crate::support::registry::{Registry, oci_labels, shared, unique_repo};
use crate::support::{stderr, stdout};

/// Push an amd64 image tagged `tag` (when given), built on 2026-01-`day` at noon.
fn push(reg: &Registry, repo: &str, tag: Option<&str>, day: u32, arch: &str) -> String {
    let created = format!("2026-01-{day:02}T12:00:00Z");
    reg.push_image(
        repo,
        tag,
        arch,
        &created,
        &oci_labels(&created, &format!("{day:07}"), &format!("build {day}")),
    )
}

/// `imagetrail registry prune REPO --keep N [--yes]` on the records in `state`.
fn prune(state: &Path, repo: &str, keep: &str, yes: bool) -> Output {
    let mut args = vec!["registry", "prune", repo, "--keep", keep];
    if yes {
        args.push("--yes");
    }
    it(state, &args)
}

/// The plan's line for `tag` (its second word is the tag).
fn line(out: &Output, tag: &str) -> String {
    let so = stdout(out);
    so.lines()
        .find(|l| l.split_whitespace().nth(1) == Some(tag))
        .unwrap_or_else(|| panic!("no line for {tag}: {so}"))
        .to_string()
}

/// Assert the plan keeps `tag`, for a reason containing `why`.
fn keeps(out: &Output, tag: &str, why: &str) {
    let l = line(out, tag);
    assert!(
        l.starts_with("keep ") && l.contains(why),
        "{tag} should be kept for {why:?}:\n{}",
        stdout(out)
    );
}

/// Assert the plan deletes `tag`.
fn deletes(out: &Output, tag: &str) {
    let l = line(out, tag);
    assert!(l.starts_with("delete "), "{tag}:\n{}", stdout(out));
}

fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
}

crate::on_both_backends! {
    /// A digest deployed now, a digest only in the history and the newest tag are kept; the
    /// other is deleted with --yes, and only it.
    fn prune_keeps_every_digest_the_records_name(r) {
        let reg = shared();
        let repo = unique_repo("prunebk");
        let d1 = push(reg, &repo, Some("t1"), 1, "amd64");
        let d2 = push(reg, &repo, Some("t2"), 2, "amd64");
        let d3 = push(reg, &repo, Some("t3"), 3, "amd64");
        let d4 = push(reg, &repo, Some("t4"), 4, "amd64");
        let image = |t: &str| format!("{}/{repo}:{t}", reg.addr);
        // t1 deployed, then replaced by t2: t1 is in the history only, t2 runs now.
        ok(&r.deploy("hello", "prod", &image("t1"), "2026-01-10T00:00:00Z"));
        ok(&r.deploy("hello", "prod", &image("t2"), "2026-01-11T00:00:00Z"));
        let target = format!("{}/{repo}", reg.addr);
        let out = r.it(&["registry", "prune", &target, "--keep", "1"]);
        ok(&out);
        keeps(&out, "t4", "one of the 1 newest tags");
        keeps(&out, "t2", "deployed now (hello in prod");
        keeps(&out, "t1", "in the history of hello in prod");
        deletes(&out, "t3");
        assert!(reg.has_manifest(&repo, &d3), "a dry run deletes nothing");
        let out = r.it(&["registry", "prune", &target, "--keep", "1", "--yes"]);
        ok(&out);
        assert!(stdout(&out).contains(&format!("deleted {d3}")), "{}", stdout(&out));
        assert!(!reg.has_manifest(&repo, &d3));
        for d in [&d1, &d2, &d4] {
            assert!(reg.has_manifest(&repo, d), "{d} was deleted");
        }
    }
}

/// With PostgreSQL as the records, a database that cannot be reached is "could not read", never
/// "no record": prune stops before it asks the registry anything, says so, deletes nothing.
#[test]
fn prune_refuses_when_the_database_cannot_be_reached() {
    let reg = shared();
    let repo = unique_repo("prunedown");
    let d1 = push(reg, &repo, Some("t1"), 1, "amd64");
    let d2 = push(reg, &repo, Some("t2"), 2, "amd64");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let state = tempfile::tempdir().unwrap();
    let target = format!("{}/{repo}", reg.addr);
    let out = it(
        state.path(),
        &[
            "registry",
            "prune",
            &target,
            "--keep",
            "0",
            "--yes",
            "--database-url",
            &format!("postgres://postgres:pw@127.0.0.1:{port}/it"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let se = stderr(&out);
    assert_eq!(se.lines().count(), 1, "{se}");
    assert!(
        se.contains("prune deletes nothing without its records")
            && se.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}")),
        "{se}"
    );
    assert!(stdout(&out).is_empty(), "no plan: {}", stdout(&out));
    assert!(reg.has_manifest(&repo, &d1) && reg.has_manifest(&repo, &d2));
}

/// A server on 127.0.0.1 with its own runtime, for records made through the deployments API;
/// its state directory is the one the CLI and prune are pointed at.
struct Api {
    rt: tokio::runtime::Runtime,
    server: Option<TestServer>,
}

impl Api {
    fn start() -> Api {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let server = rt.block_on(TestServer::start(|_| {}));
        Api {
            rt,
            server: Some(server),
        }
    }

    fn dir(&self) -> &Path {
        self.server.as_ref().unwrap().dir()
    }

    /// POST a deployment of `url` into `env`: the status and the answer.
    fn post(&self, url: &str, env: &str) -> (u16, String) {
        let server = self.server.as_ref().unwrap();
        let (status, answer) = self.rt.block_on(post_deployment(
            server,
            json!({"image": {"url": url}, "environment": {"name": env}}),
        ));
        (status, answer.to_string())
    }

    /// POST a deployment of `url` into `env`; asserts 201.
    fn record(&self, url: &str, env: &str) {
        let (status, answer) = self.post(url, env);
        assert_eq!(status, 201, "{url}: {answer}");
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

#[test]
fn prune_keeps_a_digest_recorded_under_another_spelling_of_the_registry() {
    let reg = shared();
    let port = reg.addr.rsplit_once(':').unwrap().1;
    let repo = format!("{}/cli", unique_repo("spell"));
    let c1 = push(reg, &repo, Some("c1"), 1, "amd64");
    let c2 = push(reg, &repo, Some("c2"), 2, "amd64");
    let c3 = push(reg, &repo, Some("c3"), 3, "amd64");
    let c4 = push(reg, &repo, Some("c4"), 4, "amd64");
    let c5 = push(reg, &repo, Some("c5"), 5, "amd64");
    let api = Api::start();
    // By the CLI, through localhost; through the API as LOCALHOST, and as 127.0.0.1. An
    // upper-case repository path, which the API once took as written, is refused now.
    ok(&deploy(
        api.dir(),
        "cli",
        "prod",
        &format!("localhost:{port}/{repo}:c1"),
        "2026-01-01T13:00:00Z",
    ));
    api.record(&format!("LOCALHOST:{port}/{repo}@{c2}"), "api-a");
    let upper = repo.to_uppercase();
    let (status, answer) = api.post(&format!("127.0.0.1:{port}/{upper}@{c3}"), "api-b");
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("lower-case"), "{answer}");
    api.record(&format!("127.0.0.1:{port}/{repo}@{c3}"), "api-b");

    // Pruned as localhost: the 127.0.0.1 record protects c3.
    let out = prune(api.dir(), &format!("localhost:{port}/{repo}"), "1", false);
    ok(&out);
    keeps(&out, "c5", "one of the 1 newest tags");
    keeps(&out, "c3", &format!("recorded as 127.0.0.1:{port}/{repo}"));
    deletes(&out, "c4");

    // Pruned as 127.0.0.1: the localhost and LOCALHOST records protect c1 and c2.
    let out = prune(api.dir(), &format!("127.0.0.1:{port}/{repo}"), "1", true);
    ok(&out);
    keeps(
        &out,
        "c1",
        &format!(
            "deployed now (cli in prod, deploy-info.yml) [prod/cli/deploy-info.yml, recorded as localhost:{port}/{repo}]"
        ),
    );
    // The API stores the host normalised (lower case), so LOCALHOST reads back as localhost.
    keeps(&out, "c2", &format!("recorded as localhost:{port}/{repo}"));
    keeps(&out, "c3", "deployed now");
    for d in [&c1, &c2, &c3, &c5] {
        assert!(reg.has_manifest(&repo, d), "{d} deleted: {}", stdout(&out));
    }
    assert!(!reg.has_manifest(&repo, &c4), "{}", stdout(&out));
}

#[test]
fn prune_keeps_the_children_of_an_index_recorded_through_the_api() {
    let reg = shared();
    let repo = unique_repo("apiidx");
    // A tagged index, and one whose tag has moved on since it was recorded: both recorded
    // through the API by their index digest (no index_digest in the record).
    let amd = push(reg, &repo, Some("idx-amd64"), 1, "amd64");
    let arm = push(reg, &repo, Some("idx-arm64"), 1, "arm64");
    let index = reg.push_index(&repo, "idx", &[(&amd, "amd64"), (&arm, "arm64")]);
    let old_amd = push(reg, &repo, Some("old-amd64"), 2, "amd64");
    let old_arm = push(reg, &repo, Some("old-arm64"), 2, "arm64");
    let moved = reg.push_index(&repo, "moved", &[(&old_amd, "amd64"), (&old_arm, "arm64")]);
    let newest = push(reg, &repo, Some("newest"), 9, "amd64");
    let api = Api::start();
    api.record(&format!("{}/{repo}@{index}", reg.addr), "prod");
    api.record(&format!("{}/{repo}@{moved}", reg.addr), "staging");
    reg.tag(&repo, "moved", &newest);

    let out = prune(api.dir(), &format!("{}/{repo}", reg.addr), "1", true);
    ok(&out);
    keeps(&out, "idx", "deployed now (");
    for tag in ["idx-amd64", "idx-arm64"] {
        keeps(
            &out,
            tag,
            &format!("child of the protected index {}", &index[..19]),
        );
    }
    for tag in ["old-amd64", "old-arm64"] {
        keeps(
            &out,
            tag,
            &format!("child of the protected index {}", &moved[..19]),
        );
    }
    for d in [&amd, &arm, &index, &old_amd, &old_arm, &moved, &newest] {
        assert!(reg.has_manifest(&repo, d), "{d} deleted: {}", stdout(&out));
    }
}

#[test]
fn prune_refuses_when_an_app_directory_is_unreadable_and_names_it() {
    use std::os::unix::fs::PermissionsExt;
    let reg = shared();
    let repo = unique_repo("unread");
    let a = push(reg, &repo, Some("a"), 1, "amd64");
    let b = push(reg, &repo, Some("b"), 2, "amd64");
    let c = push(reg, &repo, Some("c"), 3, "amd64");
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let st = state.path();
    let img = |t: &str| format!("{}/{repo}:{t}", reg.addr);
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("a"),
        "2026-01-01T13:00:00Z",
    ));
    ok(&deploy(
        st,
        "api",
        "prod",
        &img("b"),
        "2026-01-02T13:00:00Z",
    ));
    // Prune runs as another user (nobody) who can read the state directory but not the api
    // app's directory: root would read it anyway.
    std::fs::set_permissions(st, std::fs::Permissions::from_mode(0o755)).unwrap();
    let hidden = st.join("prod/api");
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/tmp")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_imagetrail"))
        .args(["registry", "prune", &format!("{}/{repo}", reg.addr)])
        .args(["--keep", "0", "--yes", "--state-dir"])
        .arg(st);
    let out = crate::support::run(&mut cmd);
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot read {}", hidden.display()))
            && err.contains("Permission denied")
            && err.contains("prune refuses to run"),
        "{err}"
    );
    for d in [&a, &b, &c] {
        assert!(reg.has_manifest(&repo, d), "{d} deleted: {}", stdout(&out));
    }
}

#[test]
fn prune_keeps_the_digest_of_a_hand_broken_last_history_entry() {
    let reg = shared();
    let repo = unique_repo("broken");
    let img = |t: &str| format!("{}/{repo}:{t}", reg.addr);
    let d1 = push(reg, &repo, Some("d1"), 1, "amd64");
    let d2 = push(reg, &repo, Some("d2"), 2, "amd64");
    let d3 = push(reg, &repo, Some("d3"), 3, "amd64");
    let d4 = push(reg, &repo, Some("d4"), 4, "amd64");
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let st = state.path();
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("d1"),
        "2026-01-01T13:00:00Z",
    ));
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("d2"),
        "2026-01-02T13:00:00Z",
    ));
    // A person breaks a quote in the last entry's description and drops the blank line.
    let history = st.join("prod/web/deploy-history.yml");
    let text = std::fs::read_to_string(&history).unwrap();
    let at = text.rfind("description: \"").unwrap() + "description: \"".len();
    let broken = format!("{}\"oops {}", &text[..at], &text[at..]);
    std::fs::write(&history, broken.trim_end_matches('\n').to_string() + "\n").unwrap();
    // The next deploy used to move the broken entry to deploy-history.yml.torn; it now
    // refuses, naming the line, and moves nothing.
    let out = deploy(st, "web", "prod", &img("d3"), "2026-01-03T13:00:00Z");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("deploy-history.yml:"),
        "{}",
        stderr(&out)
    );
    assert!(!st.join("prod/web/deploy-history.yml.torn").exists());

    let out = prune(st, &format!("{}/{repo}", reg.addr), "0", true);
    ok(&out);
    keeps(&out, "d2", "[prod/web/deploy-history.yml]");
    keeps(&out, "d1", "[prod/web/deploy-history.yml]");
    for d in [&d1, &d2] {
        assert!(reg.has_manifest(&repo, d), "{d} deleted: {}", stdout(&out));
    }
    // d3 was never recorded, so it goes with d4.
    assert!(!reg.has_manifest(&repo, &d3), "{}", stdout(&out));
    assert!(!reg.has_manifest(&repo, &d4), "{}", stdout(&out));
}

#[test]
fn prune_keeps_both_digests_of_a_torn_tail_after_two_deployments_in_one_second() {
    let reg = shared();
    let repo = unique_repo("torn");
    let img = |t: &str| format!("{}/{repo}:{t}", reg.addr);
    let a = push(reg, &repo, Some("a"), 1, "amd64");
    let b = push(reg, &repo, Some("b"), 2, "amd64");
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let st = state.path();
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("a"),
        "2026-01-05T13:00:00Z",
    ));
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("b"),
        "2026-01-05T13:00:00Z",
    ));
    // A crash cut the second append short.
    let history = st.join("prod/web/deploy-history.yml");
    let len = std::fs::metadata(&history).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&history)
        .unwrap()
        .set_len(len - 60)
        .unwrap();

    let out = prune(st, &format!("{}/{repo}", reg.addr), "0", false);
    ok(&out);
    assert!(
        stdout(&out).contains("in doubt prod/web/deploy-history.yml: line ")
            && stdout(&out).contains("the last entry is incomplete"),
        "{}",
        stdout(&out)
    );
    keeps(
        &out,
        "b",
        "deployed now per deploy-info.yml of web in prod (its deployment is not in the history) [prod/web/deploy-info.yml]",
    );
    keeps(
        &out,
        "a",
        "in the history of web in prod (deploy-history.yml) [prod/web/deploy-history.yml]",
    );
    assert!(
        !line(&out, "a").contains("deployed now"),
        "a is not what runs: {}",
        stdout(&out)
    );
    let out = prune(st, &format!("{}/{repo}", reg.addr), "0", true);
    ok(&out);
    for d in [&a, &b] {
        assert!(reg.has_manifest(&repo, d), "{d} deleted: {}", stdout(&out));
    }
}

#[test]
fn a_hand_written_info_older_than_its_history_is_kept_by_prune_and_set_aside_by_serve() {
    let reg = shared();
    let repo = unique_repo("handinfo");
    let img = |t: &str| format!("{}/{repo}:{t}", reg.addr);
    let d0 = push(reg, &repo, Some("d0"), 1, "amd64");
    let d1 = push(reg, &repo, Some("d1"), 2, "amd64");
    let d2 = push(reg, &repo, Some("d2"), 3, "amd64");
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let st = state.path();
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("d1"),
        "2026-01-02T13:00:00Z",
    ));
    ok(&deploy(
        st,
        "web",
        "prod",
        &img("d2"),
        "2026-01-03T13:00:00Z",
    ));
    // A person writes deploy-info.yml by hand: d0, deployed before the history's entries, a
    // deployment the history does not have.
    let info = st.join("prod/web/deploy-info.yml");
    let text = std::fs::read_to_string(&info).unwrap();
    let event = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("event_id: "))
        .unwrap()
        .to_string();
    let hand = text
        .replace(&d2, &d0)
        .replace("2026-01-03T13:00:00Z", "2026-01-01T13:00:00Z")
        .replace(&event, &format!("\"{}\"", uuid::Uuid::new_v4()));
    std::fs::write(&info, &hand).unwrap();

    let out = prune(st, &format!("{}/{repo}", reg.addr), "0", false);
    ok(&out);
    keeps(
        &out,
        "d0",
        "deployed now per deploy-info.yml of web in prod (its deployment is not in the history)",
    );
    assert!(
        stdout(&out).contains("in doubt prod/web/deploy-info.yml: its deployment (event_id"),
        "{}",
        stdout(&out)
    );

    // Starting the server brings deploy-info.yml up to date with its history, but sets the
    // hand-written file aside instead of overwriting the only copy of its record.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(imagetrail::server::run(
            listener,
            imagetrail::server::Config::new(st),
            async move {
                let _ = rx.await;
            },
        ));
        tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    });
    let aside: Vec<_> = std::fs::read_dir(st.join("prod/web"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("deploy-info.yml.unrecorded-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(st.join("prod/web").join(&aside[0])).unwrap(),
        hand
    );
    assert!(std::fs::read_to_string(&info).unwrap().contains(&d2));

    let out = prune(st, &format!("{}/{repo}", reg.addr), "0", true);
    ok(&out);
    keeps(
        &out,
        "d0",
        &format!(
            "named in a record file of web in prod [prod/web/{}]",
            aside[0]
        ),
    );
    for d in [&d0, &d1, &d2] {
        assert!(reg.has_manifest(&repo, d), "{d} deleted: {}", stdout(&out));
    }
}

#[test]
fn a_registry_that_never_answers_fails_after_the_read_timeout_it_names() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts every connection and never writes a byte.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let out = it(
        state.path(),
        &[
            "registry",
            "prune",
            &format!("{addr}/team/app"),
            "--keep",
            "1",
            "--registry-read-timeout",
            "0.5",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "registry {addr}: no answer within 0.5 s (the read timeout)"
        )) && err.contains("--registry-read-timeout (IMAGETRAIL_REGISTRY_READ_TIMEOUT)"),
        "{err}"
    );
}

#[test]
fn keep_orders_a_date_only_build_time_as_that_day_and_never_prunes_an_unknown_one() {
    let reg = shared();
    let repo = unique_repo("dates");
    let with = |tag: &str, created: &str| {
        let labels = [("org.opencontainers.image.created", created)];
        reg.push_image(&repo, Some(tag), "amd64", created, &labels)
    };
    let dated = with("dated", "2026-06-01");
    let older = with("older", "2026-05-31T23:59:59Z");
    let oldest = with("oldest", "2026-01-01T00:00:00Z");
    let unknown = with("unknown", "last tuesday");
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();

    let out = prune(state.path(), &format!("{}/{repo}", reg.addr), "1", true);
    ok(&out);
    keeps(&out, "dated", "one of the 1 newest tags");
    keeps(
        &out,
        "unknown",
        "build time unknown (created \"last tuesday\"): never pruned by age",
    );
    deletes(&out, "older");
    deletes(&out, "oldest");
    assert!(reg.has_manifest(&repo, &dated) && reg.has_manifest(&repo, &unknown));
    assert!(!reg.has_manifest(&repo, &older) && !reg.has_manifest(&repo, &oldest));
}
