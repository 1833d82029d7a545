//! `registry overview`, `images overview` and `registry prune` against the real docker-registry.

use crate::deploy::{deploy, deploy_to, it};
use crate::support::registry::{Registry, oci_labels, shared, unique_repo};
use crate::support::{stderr, stdout};

struct Fixture {
    repo: String,
    v1: String,
    v2: String,
    index: String,
    amd: String,
    arm: String,
    v4: String,
    v5: String,
    v6: String,
    state: tempfile::TempDir,
}

/// One repository with every case the prune must get right:
/// v1, v4: old and in no record (deleted);
/// v2: deployed to prod through `stable` before the tag moved (history only);
/// multi: a two-platform index whose arm64 child runs in staging (the amd64 child is untagged);
/// v5 = stable: what runs in prod now;
/// v6 = latest: the newest build, two tags on one digest.
fn fixture(reg: &Registry) -> Fixture {
    let repo = unique_repo("prune");
    let push = |tag: Option<&str>, day: u32, arch: &str, desc: &str| {
        let created = format!("2026-01-{day:02}T12:00:00Z");
        reg.push_image(
            &repo,
            tag,
            arch,
            &created,
            &oci_labels(&created, &format!("{day:07}"), desc),
        )
    };
    let v1 = push(Some("v1"), 1, "amd64", "first");
    let v2 = push(Some("v2"), 2, "amd64", "second");
    let amd = push(None, 3, "amd64", "multi");
    let arm = push(None, 3, "arm64", "multi");
    let index = reg.push_index(&repo, "multi", &[(&amd, "amd64"), (&arm, "arm64")]);
    let v4 = push(Some("v4"), 4, "amd64", "fourth");
    let v5 = push(Some("v5"), 5, "amd64", "fifth");
    let v6 = push(Some("v6"), 6, "amd64", "sixth");
    reg.tag(&repo, "latest", &v6);
    let state = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let img = |t: &str| format!("{}/{repo}:{t}", reg.addr);
    reg.tag(&repo, "stable", &v2);
    let ok = |out: std::process::Output| {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    };
    let st = state.path();
    ok(deploy(
        st,
        "hello",
        "prod",
        &img("stable"),
        "2026-01-02T13:00:00Z",
    ));
    reg.tag(&repo, "stable", &v5);
    ok(deploy(
        st,
        "hello",
        "prod",
        &img("stable"),
        "2026-01-05T13:00:00Z",
    ));
    ok(deploy_to(
        st,
        "staging",
        &img("multi"),
        &["--app", "hello", "--platform", "linux/arm64"],
    ));
    Fixture {
        repo,
        v1,
        v2,
        index,
        amd,
        arm,
        v4,
        v5,
        v6,
        state,
    }
}

#[test]
fn prune_deletes_only_unprotected_digests_and_says_why_each_survivor_stays() {
    let reg = shared();
    let f = fixture(reg);
    let repo_ref = format!("{}/{}", reg.addr, f.repo);

    let out = it(
        f.state.path(),
        &["registry", "prune", &repo_ref, "--keep", "1"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let so = stdout(&out);
    let line = |tag: &str| {
        so.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(tag))
            .unwrap_or_else(|| panic!("no line for {tag}: {so}"))
            .to_string()
    };
    // The line of `tag` starts with `verb` ("keep" or "delete") and gives `why`.
    let says = |tag: &str, verb: &str, why: &str| {
        let l = line(tag);
        assert!(l.starts_with(verb) && l.contains(why), "{so}");
    };
    assert!(
        so.contains("(dry run: nothing is deleted without --yes)"),
        "{so}"
    );
    says("v6", "keep", "one of the 1 newest tags");
    says("latest", "keep", "shares its digest with the kept tag v6");
    says(
        "v5",
        "keep",
        "deployed now (hello in prod, deploy-info.yml)",
    );
    says(
        "stable",
        "keep",
        "deployed now (hello in prod, deploy-info.yml)",
    );
    says(
        "multi",
        "keep",
        "index of what is deployed now (hello in staging)",
    );
    says(
        "v2",
        "keep",
        "in the history of hello in prod (deploy-history.yml)",
    );
    says("v4", "delete", &f.v4);
    says("v1", "delete", "older than the 1 newest tags, in no record");
    assert!(
        so.contains("2 manifest(s) would be deleted; run again with --yes"),
        "{so}"
    );
    assert!(
        reg.has_manifest(&f.repo, &f.v1) && reg.has_manifest(&f.repo, &f.v4),
        "dry run deleted something"
    );

    let out = it(
        f.state.path(),
        &["registry", "prune", &repo_ref, "--keep", "1", "--yes"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let so = stdout(&out);
    assert!(
        so.contains(&format!("deleted {}", f.v1)) && so.contains(&format!("deleted {}", f.v4)),
        "{so}"
    );
    assert!(!reg.has_manifest(&f.repo, &f.v1));
    assert!(!reg.has_manifest(&f.repo, &f.v4));
    for (what, d) in [
        ("v2 (history)", &f.v2),
        ("index", &f.index),
        ("amd64 child", &f.amd),
        ("arm64 child", &f.arm),
        ("v5", &f.v5),
        ("v6", &f.v6),
    ] {
        assert!(reg.has_manifest(&f.repo, d), "{what} {d} was deleted");
    }
    assert_eq!(
        reg.tags(&f.repo),
        vec!["latest", "multi", "stable", "v2", "v5", "v6"]
    );

    // Every deployed image still resolves through imagetrail after the prune.
    for (env, platform) in [("prod", "linux/amd64"), ("staging", "linux/arm64")] {
        let out = it(
            f.state.path(),
            &["status", "--env", env, "--format", "json"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let digest = v[0]["image"]["digest"].as_str().unwrap().to_string();
        let out = it(
            f.state.path(),
            &[
                "compare",
                &format!("{repo_ref}@{digest}"),
                "--app",
                "hello",
                "--env",
                env,
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{env} {platform}: {}",
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("the candidate is what runs now"),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn prune_keeps_every_digest_a_broken_record_names_and_names_the_file() {
    let reg = shared();
    let f = fixture(reg);
    let info = f.state.path().join("staging/hello/deploy-info.yml");
    let text = std::fs::read_to_string(&info).unwrap();
    std::fs::write(&info, text.replace("app: ", "app: [")).unwrap();
    let out = it(
        f.state.path(),
        &[
            "registry",
            "prune",
            &format!("{}/{}", reg.addr, f.repo),
            "--keep",
            "0",
            "--yes",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("in doubt staging/hello/deploy-info.yml: line "),
        "{}",
        stdout(&out)
    );
    for d in [&f.v2, &f.index, &f.amd, &f.arm, &f.v5] {
        assert!(reg.has_manifest(&f.repo, d), "{d}: {}", stdout(&out));
    }
    for d in [&f.v1, &f.v4, &f.v6] {
        assert!(!reg.has_manifest(&f.repo, d), "{d}: {}", stdout(&out));
    }
}

#[test]
fn images_overview_marks_deployed_digests_per_environment_newest_first() {
    let reg = shared();
    let f = fixture(reg);
    let repo_ref = format!("{}/{}", reg.addr, f.repo);
    let overview = |envs: &str| {
        it(
            f.state.path(),
            &["images", "overview", &repo_ref, "--env", envs],
        )
    };
    let out = overview("prod,staging");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let so = stdout(&out);
    let tags: Vec<&str> = so
        .lines()
        .skip(2)
        .map(|l| l[3..].split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        tags,
        ["v6", "latest", "v5", "stable", "v4", "multi", "v2", "v1"],
        "{so}"
    );
    let row = |tag: &str| {
        so.lines()
            .find(|l| l[3..].split_whitespace().next() == Some(tag))
            .unwrap()
            .to_string()
    };
    assert!(
        row("v5").starts_with("→  v5")
            && row("v5").contains("prod (hello)")
            && row("v5").contains("fifth"),
        "{so}"
    );
    assert!(row("stable").starts_with("→"), "{so}");
    assert!(
        row("multi").starts_with("→  multi") && row("multi").contains("staging (hello)"),
        "{so}"
    );
    assert!(row("v2").starts_with("   v2"), "v2 only ran before: {so}");
    assert!(
        row("v6").contains("2026-01-06T12:00:00Z") && row("v6").contains(&f.v6[..19]),
        "{so}"
    );

    // Only prod: the index is not marked.
    let out = overview("prod");
    let so = stdout(&out);
    assert!(so.lines().any(|l| l.starts_with("   multi")), "{so}");
}

#[test]
fn registry_overview_lists_repositories_tags_created_and_description() {
    let reg = shared();
    let repo = unique_repo("overview");
    reg.push_ci_image(
        &repo,
        "1f3a9c2",
        "2026-01-24T22:41:03Z",
        "1f3a9c2",
        "add healthcheck",
    );
    let st = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let mut cmd = crate::support::imagetrail();
    cmd.args(["registry", "overview", "--registry", &reg.addr]);
    let out = crate::support::run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let so = stdout(&out);
    let at = so
        .find(&format!("{}/{repo}\n", reg.addr))
        .expect("repository listed");
    let next = &so[at..].lines().nth(1).unwrap();
    assert!(
        next.contains("1f3a9c2")
            && next.contains("2026-01-24T22:41:03Z")
            && next.contains("add healthcheck"),
        "{next}"
    );
    let mut cmd = crate::support::imagetrail();
    cmd.args([
        "registry",
        "overview",
        "--registry",
        &reg.addr,
        "--format",
        "json",
    ]);
    let out = crate::support::run(&mut cmd);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["repository"] == format!("{}/{repo}", reg.addr))
        .unwrap();
    assert_eq!(entry["tags"][0]["description"], "add healthcheck");
    drop(st);
}
