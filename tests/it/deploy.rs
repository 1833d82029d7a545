//! `imagetrail deploy` and the queries over its records, against the real docker-registry on
//! 127.0.0.1 with images the tests push.
//!
//! The record-level tests run once per backend (see [`on_both_backends`]): `NAME::files` on a
//! state directory, `NAME::postgres` on a fresh database of the shared PostgreSQL cluster
//! (`--database-url`), so both stores answer the same commands the same way. The tests about
//! the files themselves (a torn tail, a hand-edited YAML, the YAML's exact text) stay
//! file-only and say so.

use std::path::Path;
use std::process::Output;

use crate::support::http::{RecordingServer, Reply};
use crate::support::registry::{oci_labels, shared, unique_repo};
use crate::support::{imagetrail, read, run, stderr, stdout};

/// `imagetrail ARGS --state-dir STATE` with TZ fixed, so local times are known.
pub fn it(state: &Path, args: &[&str]) -> Output {
    let mut cmd = imagetrail();
    cmd.args(args)
        .arg("--state-dir")
        .arg(state)
        .env("TZ", "Europe/Amsterdam")
        .env("USER", "ci-runner");
    run(&mut cmd)
}

/// `imagetrail deploy --env ENV --image IMAGE EXTRA...` through [`it`].
pub fn deploy_to(state: &Path, env: &str, image: &str, extra: &[&str]) -> Output {
    let mut args = vec!["deploy", "--env", env, "--image", image];
    args.extend_from_slice(extra);
    it(state, &args)
}

/// `imagetrail deploy --env ENV --image IMAGE --app APP --deployed-at AT` through [`it`].
pub fn deploy(state: &Path, app: &str, env: &str, image: &str, at: &str) -> Output {
    deploy_to(state, env, image, &["--app", app, "--deployed-at", at])
}

fn state() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("it-dep").tempdir().unwrap()
}

/// Which store a record-level test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The YAML files under `--state-dir`.
    Files,
    /// A fresh database in the shared PostgreSQL cluster, through `--database-url`.
    Postgres,
}

/// One test's records on one backend. With PostgreSQL the commands still get a `--state-dir`
/// (an empty directory), and every command is checked to leave it empty: what they read and
/// write must be the database's.
pub struct Records {
    /// The backend.
    pub backend: Backend,
    dir: tempfile::TempDir,
    url: Option<String>,
}

impl Records {
    /// Empty records on `backend`.
    pub fn new(backend: Backend) -> Records {
        let url = (backend == Backend::Postgres).then(crate::support::postgres::fresh_database);
        Records {
            backend,
            dir: state(),
            url,
        }
    }

    /// Whether the records are the YAML files (for the assertions about the files alone).
    pub fn files(&self) -> bool {
        self.backend == Backend::Files
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `imagetrail ARGS` on these records (no TZ or USER set).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = imagetrail();
        cmd.args(args).arg("--state-dir").arg(self.dir.path());
        if let Some(url) = &self.url {
            cmd.args(["--database-url", url]);
        }
        cmd
    }

    /// Check that a command on PostgreSQL left the state directory empty.
    pub fn check_no_files(&self) {
        if !self.files() {
            let left: Vec<_> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            assert!(left.is_empty(), "postgres: files written: {left:?}");
        }
    }

    /// [`it`] on these records.
    pub fn it(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.env("TZ", "Europe/Amsterdam").env("USER", "ci-runner");
        eprintln!("--- backend {:?}", self.backend);
        let out = run(&mut cmd);
        self.check_no_files();
        out
    }

    /// [`deploy_to`] on these records.
    pub fn deploy_to(&self, env: &str, image: &str, extra: &[&str]) -> Output {
        let mut args = vec!["deploy", "--env", env, "--image", image];
        args.extend_from_slice(extra);
        self.it(&args)
    }

    /// [`deploy`] on these records.
    pub fn deploy(&self, app: &str, env: &str, image: &str, at: &str) -> Output {
        self.deploy_to(env, image, &["--app", app, "--deployed-at", at])
    }

    /// Every deployment recorded, oldest first (`history --format json`).
    pub fn history(&self) -> Vec<serde_json::Value> {
        let out = self.it(&["history", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0), "{:?}: history", self.backend);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array().unwrap().clone()
    }
}

/// What runs of `app` in `env`, by `status --format json`.
pub fn current(r: &Records, env: &str, app: &str) -> serde_json::Value {
    let out = r.it(&["status", "--env", env, "--app", app, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}: status", r.backend);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{:?}: {v}", r.backend);
    v[0].clone()
}

/// A record-level test run once per backend, as `NAME::files` and `NAME::postgres` (so a
/// failure names its backend): the body takes the [`Records`] it runs on.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$doc:meta])* fn $name:ident($r:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($r: &$crate::deploy::Records) $body

            #[test]
            fn files() {
                body(&$crate::deploy::Records::new($crate::deploy::Backend::Files));
            }

            #[test]
            fn postgres() {
                body(&$crate::deploy::Records::new($crate::deploy::Backend::Postgres));
            }
        }
    };
}

on_both_backends! {
    fn deploy_single_platform_image_pushed_by_docker(r) {
        let reg = shared();
        let repo = unique_repo("docker");
        let image = format!("{}/{repo}:1f3a9c2", reg.addr);
        crate::support::docker::build_image(
            &image,
            &oci_labels(
                "2026-01-24T22:41:03Z",
                "1f3a9c2",
                "add healthcheck + fix nginx proxy header",
            ),
        );
        let pushed = crate::support::docker::docker(&["push", &image]);
        let digest = pushed
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .expect("docker push prints the digest")
            .to_string();
        crate::support::docker::docker(&["rmi", &image]);

        let out = r.deploy_to(
            "prod",
            &image,
            &["--app", "hello", "--by", "alice"],
        );
        assert_eq!(out.status.code(), Some(0));
        let so = stdout(&out);
        assert!(
            so.contains(&format!(
                "deployed {image} to hello in prod as {digest} (linux/amd64)"
            )),
            "{so}"
        );
        assert!(so.contains("built     2026-01-24T22:41:03Z"), "{so}");

        // The record, as every backend gives it back.
        let d = current(r, "prod", "hello");
        assert_eq!(d["app"], "hello", "{d}");
        assert_eq!(d["deployment"]["workspace"], "prod", "{d}");
        assert_eq!(d["image"]["repo"], format!("{}/{repo}", reg.addr), "{d}");
        assert_eq!(d["image"]["tag"], "1f3a9c2", "{d}");
        assert_eq!(d["image"]["digest"], digest.as_str(), "{d}");
        assert_eq!(d["image"]["description"], "add healthcheck + fix nginx proxy header");
        assert_eq!(d["image"]["built_at"], "2026-01-24T22:41:03Z");
        assert_eq!(d["image"]["revision"], "1f3a9c2");
        assert_eq!(d["deployment"]["deployed_by"], "alice");
        assert!(d["image"].get("index_digest").is_none(), "single platform: {d}");
        assert_eq!(r.history().len(), 1);
        // The YAML files' own text (files only).
        if r.files() {
            let info = read(&r.dir().join("prod/hello/deploy-info.yml"));
            assert!(
                info.contains("app: \"hello\"\nworkspace: \"prod\"\n"),
                "{info}"
            );
            assert!(
                info.contains(&format!(
                    "  repo: \"{}/{repo}\"\n  tag: \"1f3a9c2\"\n  digest: \"{digest}\"\n",
                    reg.addr
                )),
                "{info}"
            );
            assert!(info.contains("  description: \"add healthcheck + fix nginx proxy header\"\n  built_at: \"2026-01-24T22:41:03Z\"\n  revision: \"1f3a9c2\"\n"), "{info}");
            assert!(info.contains("  deployed_by: \"alice\"\n"), "{info}");
            assert!(!info.contains("index_digest"), "single platform: {info}");
            let hist = read(&r.dir().join("prod/hello/deploy-history.yml"));
            assert!(hist.starts_with("- image:\n"), "{hist}");
            assert!(
                hist.contains(&format!("    digest: \"{digest}\"\n")),
                "{hist}"
            );
            assert!(hist.contains("    workspace: \"prod\"\n"), "{hist}");
        }

        let out = r.it(&["status"]);
        let so = stdout(&out);
        assert!(so.starts_with("ENV   APP    TAG      DIGEST"), "{so}");
        assert!(
            so.contains(&format!("prod  hello  1f3a9c2  {}", &digest[..19])),
            "{so}"
        );
        assert!(so.contains("alice"), "{so}");
    }
}

on_both_backends! {
    fn deploy_from_a_two_platform_index_records_both_digests(r) {
        let reg = shared();
        let repo = unique_repo("index");
        let labels = oci_labels("2026-01-24T22:41:03Z", "46e443d", "multi-arch build");
        let amd = reg.push_image(&repo, None, "amd64", "2026-01-24T22:41:03Z", &labels);
        let arm = reg.push_image(&repo, None, "arm64", "2026-01-24T22:41:03Z", &labels);
        let index = reg.push_index(&repo, "46e443d", &[(&amd, "amd64"), (&arm, "arm64")]);
        let image = format!("{}/{repo}:46e443d", reg.addr);

        let out = r.deploy_to("prod", &image, &["--platform", "linux/arm64"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // The app defaults to the repository path.
        let d = current(r, "prod", &repo);
        assert_eq!(d["image"]["digest"], arm.as_str(), "{d}");
        assert_eq!(d["image"]["index_digest"], index.as_str(), "{d}");
        assert_eq!(d["image"]["platform"]["architecture"], "arm64", "{d}");
        if r.files() {
            let info = read(&r.dir().join("prod").join(&repo).join("deploy-info.yml"));
            assert!(info.contains(&format!("  digest: \"{arm}\"\n  index_digest: \"{index}\"\n  platform:\n    os: \"linux\"\n    architecture: \"arm64\"\n")), "{info}");
            assert!(info.contains(&format!("app: \"{repo}\"")), "{info}");
        }

        // Default platform linux/amd64 picks the other child.
        let out = r.deploy_to("staging", &image, &[]);
        assert_eq!(out.status.code(), Some(0));
        let d = current(r, "staging", &repo);
        assert_eq!(d["image"]["digest"], amd.as_str(), "{d}");
        assert_eq!(d["image"]["index_digest"], index.as_str(), "{d}");

        // A platform the index lacks: a clear error, nothing written.
        let out = r.deploy_to("qa", &image, &["--platform", "linux/s390x"]);
        assert_eq!(out.status.code(), Some(1));
        let se = stderr(&out);
        assert!(se.contains("is a multi-platform index without linux/s390x; it has: linux/amd64, linux/arm64; choose one with --platform"), "{se}");
        assert!(
            r.history().iter().all(|d| d["deployment"]["workspace"] != "qa"),
            "nothing recorded in qa"
        );

        // Deploying by the index digest gives the same record.
        let by_digest = format!("{}/{repo}@{index}", reg.addr);
        let out = r.deploy_to("dev", &by_digest, &["--platform", "linux/arm64"]);
        assert_eq!(out.status.code(), Some(0));
        let d = current(r, "dev", &repo);
        assert_eq!(d["image"]["digest"], arm.as_str(), "{d}");
        assert_eq!(d["image"]["index_digest"], index.as_str(), "{d}");

        // where: the platform digest finds what runs it; the index digest finds every
        // environment running any of its platforms.
        let out = r.it(&["where", &arm]);
        let so = stdout(&out);
        assert!(so.contains("\ndev ") && so.contains("\nprod "), "{so}");
        assert!(!so.contains("staging"), "{so}");
        let out = r.it(&["where", &index]);
        let so = stdout(&out);
        assert!(
            so.contains("\ndev ") && so.contains("\nprod ") && so.contains("\nstaging "),
            "{so}"
        );
    }
}

on_both_backends! {
    fn a_moving_tag_is_recorded_by_digest_and_queries_answer_from_history(r) {
        let reg = shared();
        let repo = unique_repo("moving");
        let v1 = reg.push_ci_image(
            &repo,
            "9c8e712",
            "2026-01-20T18:12:55Z",
            "9c8e712",
            "initial release",
        );
        let v2 = reg.push_ci_image(
            &repo,
            "1f3a9c2",
            "2026-01-24T22:41:03Z",
            "1f3a9c2",
            "add healthcheck + fix nginx proxy header",
        );
        reg.tag(&repo, "stable", &v1);
        let stable = format!("{}/{repo}:stable", reg.addr);
        let out = r.deploy_to(
            "prod",
            &stable,
            &[
                "--app",
                "hello",
                "--by",
                "bob",
                "--deployed-at",
                "2026-01-22T09:03:11Z",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        reg.tag(&repo, "stable", &v2);
        let out = r.deploy_to(
            "prod",
            &stable,
            &[
                "--app",
                "hello",
                "--by",
                "alice",
                "--deployed-at",
                "2026-01-25T01:10:00Z",
            ],
        );
        assert_eq!(out.status.code(), Some(0));

        let hist = r.history();
        assert_eq!(hist.len(), 2, "{hist:?}");
        assert_eq!(hist[0]["image"]["digest"], v1.as_str());
        assert_eq!(hist[1]["image"]["digest"], v2.as_str());
        if r.files() {
            let hist = read(&r.dir().join("prod/hello/deploy-history.yml"));
            assert_eq!(hist.matches("\n- image:").count() + 1, 2, "{hist}");
            assert!(hist.find(&v1).unwrap() < hist.find(&v2).unwrap(), "{hist}");
        }

        // "What was running yesterday at 05:00": the local form (Amsterdam, UTC+1 in January).
        let out = r.it(
            &["at", "2026-01-25 06:00", "--env", "prod", "--app", "hello"],
        );
        assert_eq!(out.status.code(), Some(0));
        let so = stdout(&out);
        assert!(
            so.starts_with("at 2026-01-25T05:00:00Z (2026-01-25 06:00 local):\nhello in prod\n"),
            "{so}"
        );
        assert!(
            so.contains(&format!("  image     {}/{repo}:stable@{v2}\n", reg.addr)),
            "{so}"
        );
        assert!(so.contains("  built     2026-01-24T22:41:03Z\n"), "{so}");
        assert!(
            so.contains("  about     add healthcheck + fix nginx proxy header\n"),
            "{so}"
        );
        assert!(
            so.contains("  deployed  2026-01-25T01:10:00Z by alice\n"),
            "{so}"
        );
        // Before the second deployment: the first; before any: nothing (exit 1).
        let out = r.it(
            &["at", "2026-01-23T00:00:00Z", "--format", "json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["image"]["digest"], v1.as_str());
        assert_eq!(v[0]["deployment"]["deployed_by"], "bob");
        let out = r.it(&["at", "2026-01-01T00:00:00Z"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout(&out).contains("nothing was running at 2026-01-01T00:00:00Z"));

        // history with --since/--until and JSON.
        let out = r.it(
            &["history", "--since", "2026-01-24", "--format", "json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["image"]["digest"], v2.as_str());
        let out = r.it(&["history", "--until", "2026-01-23T00:00:00Z"]);
        let so = stdout(&out);
        assert!(
            so.contains("2026-01-22T09:03:11Z  prod  hello  stable") && so.contains("initial release"),
            "{so}"
        );
        assert!(!so.contains("2026-01-25"), "{so}");

        // compare the old digest: a rollback, with what changed.
        let old = format!("{}/{repo}@{v1}", reg.addr);
        let out = r.it(
            &["compare", &old, "--app", "hello", "--env", "prod"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let so = stdout(&out);
        assert!(so.contains("  revision  1f3a9c2 -> 9c8e712\n"), "{so}");
        assert!(
            so.contains("  built     2026-01-24T22:41:03Z -> 2026-01-20T18:12:55Z\n"),
            "{so}"
        );
        assert!(
            so.contains("  about     add healthcheck + fix nginx proxy header -> initial release\n"),
            "{so}"
        );
        assert!(
            so.contains("    org.opencontainers.image.revision: 1f3a9c2 -> 9c8e712\n"),
            "{so}"
        );
        assert!(
            so.contains(
                "ROLLBACK: the candidate was deployed here before, on 2026-01-22T09:03:11Z by bob"
            ),
            "{so}"
        );
        let out = r.it(
            &[
                "compare", &old, "--app", "hello", "--env", "prod", "--format", "json",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["rollback"]["deployed_by"], "bob");
        assert_eq!(v["rollback"]["deployed_at"], "2026-01-22T09:03:11Z");
        assert_eq!(v["current"]["image"]["digest"], v2.as_str());
        assert_eq!(v["candidate"]["digest"], v1.as_str());
        assert_eq!(v["same"], false);
        // compare a fresh build: not a rollback.
        reg.push_ci_image(&repo, "77aa001", "2026-01-26T10:00:00Z", "77aa001", "next");
        let out = r.it(
            &[
                "compare",
                &format!("{}/{repo}:77aa001", reg.addr),
                "--app",
                "hello",
                "--env",
                "prod",
            ],
        );
        let so = stdout(&out);
        assert!(
            so.contains("the candidate was never deployed here (built after what runs)"),
            "{so}"
        );

        // where: by digest, by tag, by git revision; the old digest runs nowhere now.
        for q in [
            v2.clone(),
            "1f3a9c2".to_string(),
            format!("{}/{repo}:stable", reg.addr),
        ] {
            let out = r.it(&["where", &q]);
            assert_eq!(out.status.code(), Some(0), "{q}");
            let so = stdout(&out);
            assert!(
                so.contains("prod  hello") && so.contains("2026-01-25T01:10:00Z  alice"),
                "{q}: {so}"
            );
        }
        let out = r.it(&["where", &v1]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout(&out).contains("runs nowhere now"));
    }
}

on_both_backends! {
    fn deploy_posts_the_atomist_body_with_a_bearer_key(r) {
        let reg = shared();
        let repo = unique_repo("notify");
        let digest = reg.push_ci_image(&repo, "v1", "2026-01-24T22:41:03Z", "46e443d", "x");
        let server = RecordingServer::start(Reply::json(201, serde_json::json!({"ok": true})));
        let keys = state();
        let key = keys.path().join("key");
        std::fs::write(&key, "s3cret-key\n").unwrap();
        let endpoint = format!("{}/atomist/resource/39b472d9", server.url());
        let out = r.deploy_to(
            "production",
            &format!("{}/{repo}:v1", reg.addr),
            &[
                "--name",
                "web",
                "--endpoint",
                &endpoint,
                "--api-key-file",
                key.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("notified {endpoint}: HTTP 201")));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/atomist/resource/39b472d9");
        assert_eq!(
            reqs[0].header("authorization").as_deref(),
            Some("Bearer s3cret-key")
        );
        assert_eq!(
            reqs[0].header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            reqs[0].json(),
            serde_json::json!({
                "image": {"url": format!("{}/{repo}@{digest}", reg.addr), "name": "web"},
                "environment": {"name": "production"},
                "platform": {"os": "linux", "architecture": "amd64"},
            })
        );
        // --name is also the default app.
        let d = current(r, "production", "web");
        assert_eq!(d["deployment"]["name"], "web", "{d}");
        // The same name for the same repository under another app: refused, exit 2.
        let out = r.deploy_to(
            "production",
            &format!("{}/{repo}:v1", reg.addr),
            &["--app", "web2", "--name", "web"],
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains(
                "the name \"web\" is already used in environment \"production\" by app \"web\""
            ),
            "{}",
            stderr(&out)
        );
        assert!(
            r.history().iter().all(|d| d["app"] != "web2"),
            "nothing recorded for web2"
        );

        // An endpoint that refuses: recorded locally, error quoted, exit 1.
        let bad = RecordingServer::start(Reply::json(
            401,
            serde_json::json!({"error": "invalid api key"}),
        ));
        let out = r.deploy_to(
            "production",
            &format!("{}/{repo}:v1", reg.addr),
            &["--name", "web", "--endpoint", &bad.url()],
        );
        assert_eq!(out.status.code(), Some(1));
        let se = stderr(&out);
        assert!(
            se.contains("the deployment is recorded, but notifying")
                && se.contains("HTTP 401 Unauthorized: invalid api key"),
            "{se}"
        );
        assert_eq!(
            bad.requests()[0].header("authorization"),
            None,
            "no key file, no header"
        );
    }
}

on_both_backends! {
    fn bad_references_and_registries_are_refused_before_anything_is_written(r) {
        let reg = shared();
        let repo = unique_repo("bad");
        reg.push_image(&repo, Some("v1"), "amd64", "2026-01-24T22:41:03Z", &[]);
        let check = |args: &[&str], code: i32, msg: &str| {
            let mut a = vec!["deploy", "--app", "hello", "--env", "prod"];
            a.extend_from_slice(args);
            let out = r.it(&a);
            assert_eq!(out.status.code(), Some(code), "{args:?}");
            let se = stderr(&out);
            assert!(se.contains(msg), "{args:?}: {se}");
            assert!(
                std::fs::read_dir(r.dir()).unwrap().next().is_none(),
                "{args:?} wrote something"
            );
            assert!(r.history().is_empty(), "{args:?} recorded something");
        };
        let tag_ref = format!("{}/{repo}:v1", reg.addr);
        check(
            &["--image", &tag_ref, "--require-digest"],
            2,
            "names a tag, but --require-digest asks for a digest (tags move)",
        );
        let unknown_digest = format!("{}/{repo}@sha256:{}", reg.addr, "0".repeat(64));
        check(
            &["--image", &unknown_digest],
            1,
            &format!(
                "{unknown_digest} is not in the registry (the registry answered 404); check the tag or digest, or push the image first"
            ),
        );
        let unknown_tag = format!("{}/{repo}:nope", reg.addr);
        check(
            &["--image", &unknown_tag],
            1,
            &format!("{unknown_tag} is not in the registry"),
        );
        check(
            &["--image", &format!("{}/{repo}@sha256:abc", reg.addr)],
            2,
            "is malformed: use sha256: and 64 lower-case hex digits",
        );
        let down = format!("127.0.0.1:{}", crate::support::registry::free_port());
        check(
            &["--image", &format!("{down}/x:v1")],
            1,
            &format!("cannot reach registry {down}"),
        );
        // A registry that answers 401 and we have no credentials for it.
        let locked = RecordingServer::start(
            Reply::json(
                401,
                serde_json::json!({"errors": [{"code": "UNAUTHORIZED"}]}),
            )
            .header("www-authenticate", "Basic realm=\"registry\""),
        );
        let host = locked.addr.to_string();
        check(
            &["--image", &format!("{host}/x:v1")],
            1,
            &format!("registry {host} answered 401"),
        );
        assert!(
            stderr(&r.deploy_to("prod", &format!("{host}/x:v1"), &[]))
                .contains(&format!("log in with `docker login {host}`"))
        );
        // Names that could escape the state directory.
        for (flag, value) in [
            ("--env", "../etc"),
            ("--env", "prod/.."),
            ("--app", "a/../../b"),
            ("--app", ".."),
        ] {
            let mut a = vec!["deploy", "--image", tag_ref.as_str(), flag, value];
            if flag == "--env" {
                a.extend(["--app", "x"]);
            } else {
                a.extend(["--env", "prod"]);
            }
            let out = r.it(&a);
            assert_eq!(out.status.code(), Some(2), "{value}");
            let se = stderr(&out);
            assert!(
                se.contains("has a `.` or `..` segment, which could point outside the state directory"),
                "{se}"
            );
        }
        assert!(std::fs::read_dir(r.dir()).unwrap().next().is_none());
        assert!(r.history().is_empty());
    }
}

// No backend: about the registry client (nothing is recorded).
#[test]
fn basic_credentials_come_from_the_docker_config() {
    let reg_server = RecordingServer::start(
        Reply::json(401, serde_json::json!({})).header("www-authenticate", "Basic realm=\"r\""),
    );
    let st = state();
    let cfg = st.path().join("docker-config.json");
    let host = reg_server.addr.to_string();
    // user:pass in base64 under the host's key.
    std::fs::write(
        &cfg,
        format!("{{\"auths\": {{\"{host}\": {{\"auth\": \"dXNlcjpwYXNz\"}}}}}}"),
    )
    .unwrap();
    let out = deploy_to(
        st.path(),
        "prod",
        &format!("{host}/x:v1"),
        &["--app", "x", "--docker-config", cfg.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    let reqs = reg_server.requests();
    assert_eq!(reqs[0].header("authorization"), None, "anonymous first");
    assert_eq!(
        reqs[1].header("authorization").as_deref(),
        Some("Basic dXNlcjpwYXNz")
    );
    assert!(
        reqs[0]
            .header("accept")
            .unwrap()
            .contains("application/vnd.oci.image.index.v1+json")
    );
}

on_both_backends! {
    fn slash_names_are_stored_safely_and_listed_back_exactly(r) {
        let reg = shared();
        let repo = format!("team/{}", unique_repo("slash"));
        reg.push_image(&repo, Some("v1"), "amd64", "2026-01-24T22:41:03Z", &[]);
        let out = r.deploy_to(
            "cluster-a/payments",
            &format!("{}/{repo}:v1", reg.addr),
            &[],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        // No OCI labels: the build time falls back to the config's `created`.
        let d = current(r, "cluster-a/payments", &repo);
        assert_eq!(d["image"]["built_at"], "2026-01-24T22:41:03Z", "{d}");
        assert!(d["image"].get("description").is_none(), "{d}");
        if r.files() {
            // Each name is one encoded path segment.
            let info = read(
                &r.dir()
                    .join("cluster-a%2Fpayments")
                    .join(repo.replace('/', "%2F"))
                    .join("deploy-info.yml"),
            );
            assert!(
                info.contains("  built_at: \"2026-01-24T22:41:03Z\"\n"),
                "{info}"
            );
        }
        let out = r.it(&["status", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["app"], repo.as_str());
        assert_eq!(v[0]["deployment"]["workspace"], "cluster-a/payments");
        let out = r.it(
            &["status", "--env", "cluster-a/payments", "--app", &repo],
        );
        assert!(
            stdout(&out).contains(&format!("cluster-a/payments  {repo}  v1")),
            "{}",
            stdout(&out)
        );
    }
}

on_both_backends! {
    fn racing_deploys_from_separate_processes_both_land_whole(r) {
        let reg = shared();
        let repo = unique_repo("race");
        reg.push_ci_image(&repo, "a", "2026-01-24T22:41:03Z", "aaaaaaa", "a");
        reg.push_ci_image(&repo, "b", "2026-01-24T22:41:04Z", "bbbbbbb", "b");
        let rounds = 8;
        for _ in 0..rounds {
            let children: Vec<_> = ["a", "b"]
                .iter()
                .map(|t| {
                    let mut cmd = r.command(&[
                        "deploy",
                        "--app",
                        "hello",
                        "--env",
                        "prod",
                        "--by",
                        t,
                        "--image",
                        &format!("{}/{repo}:{t}", reg.addr),
                    ]);
                    cmd.stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped());
                    cmd.spawn().unwrap()
                })
                .collect();
            for c in children {
                let out = c.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let out = r.it(&["history", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            stderr(&out).is_empty(),
            "no torn or malformed entry: {}",
            stderr(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let entries = v.as_array().unwrap();
        assert_eq!(entries.len(), 2 * rounds);
        let by_a = entries
            .iter()
            .filter(|e| e["deployment"]["deployed_by"] == "a")
            .count();
        assert_eq!(by_a, rounds);
        if r.files() {
            let hist = read(&r.dir().join("prod/hello/deploy-history.yml"));
            assert_eq!(hist.matches("    event_id: ").count(), 2 * rounds, "{hist}");
        }
        r.check_no_files();
    }
}

// Files only: a torn tail is an append cut off in a YAML file; a PostgreSQL transaction
// commits whole or not at all.
#[test]
fn a_torn_history_is_reported_by_every_reader_and_the_next_deploy_is_clean() {
    let reg = shared();
    let repo = unique_repo("torn");
    reg.push_ci_image(&repo, "v1", "2026-01-20T00:00:00Z", "1111111", "one");
    reg.push_ci_image(&repo, "v2", "2026-01-21T00:00:00Z", "2222222", "two");
    let st = state();
    let img = |t: &str| format!("{}/{repo}:{t}", reg.addr);
    deploy(
        st.path(),
        "hello",
        "prod",
        &img("v1"),
        "2026-01-22T00:00:00Z",
    );
    deploy(
        st.path(),
        "hello",
        "prod",
        &img("v2"),
        "2026-01-23T00:00:00Z",
    );
    let path = st.path().join("prod/hello/deploy-history.yml");
    let whole = read(&path);
    let second = whole.rfind("- image:").unwrap();
    let line = whole[..second].matches('\n').count() + 1;
    // The crash: the second append stopped half-way through a line.
    let cut = second + (whole.len() - second) / 2;
    std::fs::write(&path, &whole[..cut]).unwrap();
    let report = format!("deploy-history.yml:{line}: the last entry is incomplete");

    let out = it(st.path(), &["history"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains(&report), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2026-01-22T00:00:00Z  prod  hello  v1"),
        "{}",
        stdout(&out)
    );
    let out = it(st.path(), &["at", "2026-01-30T00:00:00Z"]);
    assert!(stderr(&out).contains(&report), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{}:v1@", img("v1").rsplit_once(':').unwrap().0)),
        "{}",
        stdout(&out)
    );
    let out = it(st.path(), &["where", "1111111"]);
    assert!(
        stderr(&out).contains(&report) || stdout(&out).contains("runs nowhere"),
        "{}",
        stderr(&out)
    );

    let out = deploy(
        st.path(),
        "hello",
        "prod",
        &img("v2"),
        "2026-01-24T00:00:00Z",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("deploy-history.yml:{line}: an incomplete entry (an earlier append was cut off) was moved to")), "{}", stderr(&out));
    let after = read(&path);
    assert!(
        after.starts_with(&whole[..second]),
        "earlier entries untouched"
    );
    let out = it(st.path(), &["history", "--format", "json"]);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["deployment"]["deployed_at"], "2026-01-24T00:00:00Z");
    let aside = read(&st.path().join("prod/hello/deploy-history.yml.torn"));
    assert!(aside.contains(&whole[second..cut]), "{aside}");
}

// Files only: about a YAML file edited by hand.
#[test]
fn a_hand_edited_yaml_with_a_syntax_error_is_reported_with_its_line_and_kept() {
    let reg = shared();
    let repo = unique_repo("edit");
    reg.push_image(&repo, Some("v1"), "amd64", "2026-01-20T00:00:00Z", &[]);
    let st = state();
    let img = format!("{}/{repo}:v1", reg.addr);
    deploy_to(st.path(), "prod", &img, &["--app", "hello"]);
    let path = st.path().join("prod/hello/deploy-info.yml");
    let text = read(&path);
    let broken = text.replace("  deployed_by: \"ci-runner\"", "  deployed_by: \"ci-runner");
    assert_ne!(text, broken);
    std::fs::write(&path, &broken).unwrap();
    let out = it(st.path(), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    let se = stderr(&out);
    let line = broken
        .lines()
        .position(|l| l.contains("deployed_by"))
        .unwrap()
        + 1;
    let reported: usize = se
        .split("deploy-info.yml:")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((line..=line + 3).contains(&reported), "line {line}: {se}");
    assert!(se.contains("nothing was overwritten"), "{se}");
    let out = deploy_to(st.path(), "prod", &img, &["--app", "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("deploy-info.yml:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        read(&path),
        broken,
        "the hand-edited file is left as it was"
    );
}

on_both_backends! {
    fn hostile_labels_cannot_change_the_terminal_or_the_yaml(r) {
        let reg = shared();
        let repo = unique_repo("hostile");
        let desc = "red \u{1b}[31malert\u{7}\nrevision: forged\n- image: {}\"";
        reg.push_image(
            &repo,
            Some("v1"),
            "amd64",
            "2026-01-24T22:41:03Z",
            &[("org.opencontainers.image.description", desc)],
        );
        let out = r.deploy_to(
            "prod",
            &format!("{}/{repo}:v1", reg.addr),
            &["--app", "hello"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let so = stdout(&out);
        assert!(!so.contains('\u{1b}') && !so.contains('\u{7}'), "{so:?}");
        assert!(so.contains("red \\u{1b}[31malert\\u{7}"), "{so}");
        if r.files() {
            let info = read(&r.dir().join("prod/hello/deploy-info.yml"));
            assert!(
                info.contains(
                    "  description: \"red \\u001B[31malert\\u0007\\nrevision: forged\\n- image: {}\\\"\"\n"
                ),
                "{info}"
            );
        }
        // Read back exactly, and the history still has one entry.
        let out = r.it(&["history", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["image"]["description"], desc);
        assert!(v[0]["image"].get("revision").is_none());
    }
}
