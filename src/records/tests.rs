//! Store behaviour on real files in a temp directory.

use super::*;
use chrono::TimeZone;
use std::collections::BTreeSet;

fn dep(app: &str, env: &str, tag: &str, digest: &str, at: DateTime<Utc>) -> Deployment {
    Deployment {
        app: app.into(),
        image: ImageRecord {
            tag: Some(tag.into()),
            description: Some(
                "add healthcheck + fix nginx proxy header: \"quoted\" # not a comment".into(),
            ),
            built_at: Some("2026-01-24T22:41:03Z".into()),
            revision: Some("1f3a9c2".into()),
            ..ImageRecord::new("127.0.0.1:5000/team/hello", digest)
        },
        deployment: DeploymentRecord::new(env, at, "alice"),
    }
}

fn t(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 25, h, m, 0).unwrap()
}

fn digest(n: u32) -> String {
    format!("sha256:{n:064x}")
}

/// `msg` names `file:LINE:` with LINE at the broken `line` or up to two lines after it (the
/// parser may notice a little later).
fn assert_reports_line(msg: &str, file: &str, line: usize) {
    let reported: usize = msg
        .split(&format!("{file}:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {file}: in {msg}"))
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        reported >= line && reported <= line + 2,
        "line {reported} vs {line}: {msg}"
    );
}

#[test]
fn records_round_trip_in_the_seed_shape() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let a = dep("hello", "prod", "9c8e712", &digest(1), t(1, 10));
    let b = dep("hello", "prod", "1f3a9c2", &digest(2), t(3, 0));
    store.record(&a).unwrap();
    store.record(&b).unwrap();
    assert_eq!(store.current("prod", "hello").unwrap(), Some(b.clone()));
    assert_eq!(
        store.history("prod", "hello").unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(store.environments().unwrap(), vec!["prod"]);
    assert_eq!(store.apps("prod").unwrap(), vec!["hello"]);

    let info = std::fs::read_to_string(dir.path().join("prod/hello/deploy-info.yml")).unwrap();
    assert!(info.contains("app: \"hello\"\nworkspace: \"prod\"\n\nimage:\n  repo: \"127.0.0.1:5000/team/hello\"\n  tag: \"1f3a9c2\"\n"), "{info}");
    assert!(
        info.contains(
            "\ndeployment:\n  deployed_at: \"2026-01-25T03:00:00Z\"\n  deployed_by: \"alice\"\n"
        ),
        "{info}"
    );
    let hist = std::fs::read_to_string(dir.path().join("prod/hello/deploy-history.yml")).unwrap();
    assert!(
        hist.starts_with(
            "- image:\n    repo: \"127.0.0.1:5000/team/hello\"\n    tag: \"9c8e712\"\n"
        ),
        "{hist}"
    );
    assert!(hist.contains("\n  deployment:\n    deployed_at: \"2026-01-25T01:10:00Z\"\n    deployed_by: \"alice\"\n    workspace: \"prod\"\n"), "{hist}");
    assert_eq!(hist.matches("\n- image:").count(), 1);
}

#[test]
fn at_finds_the_last_deployment_at_or_before_t() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut all = vec![];
    for i in 0..50u32 {
        let d = dep(
            "hello",
            "prod",
            &format!("t{i}"),
            &digest(i),
            t(0, 0) + chrono::Duration::minutes(10 * i as i64),
        );
        store.record(&d).unwrap();
        all.push(d);
    }
    assert_eq!(
        store
            .at("prod", "hello", t(0, 0) - chrono::Duration::seconds(1))
            .unwrap(),
        None
    );
    assert_eq!(
        store.at("prod", "hello", t(0, 0)).unwrap(),
        Some(all[0].clone())
    );
    for (i, expected) in all.iter().enumerate() {
        let exact = t(0, 0) + chrono::Duration::minutes(10 * i as i64);
        assert_eq!(
            store.at("prod", "hello", exact).unwrap().as_ref(),
            Some(expected),
            "exact {i}"
        );
        let between = exact + chrono::Duration::minutes(5);
        assert_eq!(
            store.at("prod", "hello", between).unwrap().as_ref(),
            Some(expected),
            "between {i}"
        );
    }
    assert_eq!(store.at("prod", "other", t(5, 0)).unwrap(), None);
}

#[test]
fn slash_names_are_stored_as_one_segment_and_listed_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let d = dep("team/hello", "cluster/namespace", "a", &digest(1), t(1, 0));
    store.record(&d).unwrap();
    assert!(
        dir.path()
            .join("cluster%2Fnamespace/team%2Fhello/deploy-info.yml")
            .is_file()
    );
    assert_eq!(store.environments().unwrap(), vec!["cluster/namespace"]);
    assert_eq!(store.apps("cluster/namespace").unwrap(), vec!["team/hello"]);
    assert_eq!(
        store.current("cluster/namespace", "team/hello").unwrap(),
        Some(d)
    );
    let bad = dep("x", "../etc", "a", &digest(1), t(1, 0));
    assert!(matches!(
        store.record(&bad),
        Err(RecordsError::InvalidName { .. })
    ));
    let bad = dep("a/../../b", "prod", "a", &digest(1), t(1, 0));
    assert!(matches!(
        store.record(&bad),
        Err(RecordsError::InvalidName { .. })
    ));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing else was created"
    );
}

#[test]
fn a_name_is_unique_per_repository_per_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut a = dep("web", "prod", "a", &digest(1), t(1, 0));
    a.deployment.name = Some("frontend".into());
    store.record(&a).unwrap();
    let mut b = dep("web2", "prod", "b", &digest(2), t(2, 0));
    b.deployment.name = Some("frontend".into());
    let err = store.record(&b).unwrap_err();
    assert!(matches!(err, RecordsError::NameTaken { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("already used in environment \"prod\" by app \"web\""),
        "{err}"
    );
    assert!(!dir.path().join("prod/web2/deploy-history.yml").exists());
    // Same app again, another environment, or another repository: fine.
    let mut again = a.clone();
    again.deployment.deployed_at = t(3, 0);
    store.record(&again).unwrap();
    b.deployment.workspace = "staging".into();
    store.record(&b).unwrap();
    let mut c = dep("other", "prod", "c", &digest(3), t(4, 0));
    c.image.repo = "127.0.0.1:5000/team/other".into();
    c.deployment.name = Some("frontend".into());
    store.record(&c).unwrap();
}

#[test]
fn a_torn_tail_is_reported_and_moved_aside_by_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let a = dep("hello", "prod", "a", &digest(1), t(1, 0));
    let b = dep("hello", "prod", "b", &digest(2), t(2, 0));
    store.record(&a).unwrap();
    store.record(&b).unwrap();
    let path = dir.path().join("prod/hello/deploy-history.yml");
    let whole = std::fs::read(&path).unwrap();
    let entry_b = yaml::history_entry(&b);
    let start_b = whole.len() - entry_b.len();
    let line_b = whole[..start_b].iter().filter(|&&c| c == b'\n').count() + 1;
    // Simulate a crash mid-write of b: keep a's entry and half of b's.
    let cut = start_b + entry_b.len() / 2;
    std::fs::write(&path, &whole[..cut]).unwrap();

    let err = store.history("prod", "hello").unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "deploy-history.yml:{line_b}: the last entry is incomplete"
        )),
        "{err}"
    );
    let read = store.read_history("prod", "hello").unwrap();
    assert_eq!(read.entries, vec![a.clone()]);
    assert_eq!(read.torn.as_ref().unwrap().line, line_b);
    let (found, torn) = store.at_reporting("prod", "hello", t(5, 0)).unwrap();
    assert_eq!(found, Some(a.clone()));
    assert_eq!(torn.unwrap().line, line_b);

    let c = dep("hello", "prod", "c", &digest(3), t(3, 0));
    let rec = store.record_reporting(&c).unwrap();
    assert_eq!(rec.moved_torn_tail.unwrap().line, line_b);
    assert_eq!(
        store.history("prod", "hello").unwrap(),
        vec![a.clone(), c.clone()]
    );
    let after = std::fs::read(&path).unwrap();
    assert_eq!(
        &after[..start_b],
        &whole[..start_b],
        "a's bytes are untouched"
    );
    let aside =
        std::fs::read_to_string(dir.path().join("prod/hello/deploy-history.yml.torn")).unwrap();
    assert!(
        aside.contains(std::str::from_utf8(&whole[start_b..cut]).unwrap()),
        "{aside}"
    );
}

#[test]
fn a_hand_broken_info_file_is_reported_with_its_line_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store
        .record(&dep("hello", "prod", "a", &digest(1), t(1, 0)))
        .unwrap();
    let path = dir.path().join("prod/hello/deploy-info.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let broken = text.replace("  deployed_by: \"alice\"", "  deployed_by: [alice");
    std::fs::write(&path, &broken).unwrap();
    let line = broken.lines().position(|l| l.contains("[alice")).unwrap() + 1;
    let err = store.current("prod", "hello").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RecordsError::Malformed { .. }), "{msg}");
    assert_reports_line(&msg, "deploy-info.yml", line);
    assert!(
        store
            .record(&dep("hello", "prod", "b", &digest(2), t(2, 0)))
            .is_err()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
}

/// A power loss after the answer can lose the rename of `deploy-info.yml` (it is made durable
/// by the next sync, not waited for): the info is then one replacement behind its history, or
/// missing after a first deployment. Both are simulated by putting the files back the way such
/// a crash leaves them.
#[test]
fn the_history_wins_over_an_info_file_a_crash_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let info_path = dir.path().join("prod/hello/deploy-info.yml");
    let a = dep("hello", "prod", "a", &digest(1), t(1, 0));
    let b = dep("hello", "prod", "b", &digest(2), t(2, 0));
    store.record(&a).unwrap();
    let info_of_a = std::fs::read_to_string(&info_path).unwrap();
    store.record(&b).unwrap();

    // The rename of b's info lost: a's info, whole, beside a history that ends with b.
    std::fs::write(&info_path, &info_of_a).unwrap();
    assert_eq!(store.current("prod", "hello").unwrap(), Some(b.clone()));
    // The next deployment is checked against b (the name rules, skip_if_current) and
    // replaces the stale info.
    let skipped = store.record_checked_many(&[(
        b.clone(),
        Checks {
            skip_if_current: true,
            ..Checks::default()
        },
    )]);
    assert!(matches!(&skipped[0], Ok(Written::AlreadyCurrent(d)) if **d == b));
    let c = dep("hello", "prod", "c", &digest(3), t(3, 0));
    store.record(&c).unwrap();
    assert!(
        std::fs::read_to_string(&info_path)
            .unwrap()
            .contains("tag: \"c\"")
    );

    // A first deployment whose info rename was lost: the history alone says what runs.
    let first = dep("web", "prod", "a", &digest(4), t(4, 0));
    store.record(&first).unwrap();
    std::fs::remove_file(dir.path().join("prod/web/deploy-info.yml")).unwrap();
    assert_eq!(store.current("prod", "web").unwrap(), Some(first));
    assert_eq!(store.apps("prod").unwrap(), vec!["hello", "web"]);
}

#[test]
fn infos_behind_are_found_and_replaced_with_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let info_path = |app: &str| dir.path().join(format!("prod/{app}/deploy-info.yml"));
    let a = dep("hello", "prod", "a", &digest(1), t(1, 0));
    let b = dep("hello", "prod", "b", &digest(2), t(2, 0));
    let w = dep("web", "prod", "a", &digest(3), t(3, 0));
    let up = dep("up", "prod", "a", &digest(4), t(4, 0));
    store.record(&a).unwrap();
    let info_of_a = std::fs::read_to_string(info_path("hello")).unwrap();
    for d in [&b, &w, &up] {
        store.record(d).unwrap();
    }
    let up_to_date = std::fs::read_to_string(info_path("up")).unwrap();
    std::fs::write(info_path("hello"), &info_of_a).unwrap();
    std::fs::remove_file(info_path("web")).unwrap();

    let behind = store.infos_behind().unwrap();
    let expected: BTreeSet<(String, String)> = [("prod", "hello"), ("prod", "web")]
        .into_iter()
        .map(|(e, a)| (e.to_string(), a.to_string()))
        .collect();
    assert_eq!(behind, expected);
    store.replace_infos(&behind).unwrap();
    assert!(store.infos_behind().unwrap().is_empty());
    // A fresh store reads the files back (no cache): each says what its history says.
    let fresh = Store::new(dir.path());
    for d in [&b, &w] {
        let info = std::fs::read_to_string(info_path(&d.app)).unwrap();
        assert!(info.contains(&d.deployment.event_id.to_string()), "{info}");
        assert_eq!(fresh.current("prod", &d.app).unwrap().as_ref(), Some(d));
    }
    assert_eq!(
        std::fs::read_to_string(info_path("up")).unwrap(),
        up_to_date
    );
}

#[test]
fn paced_info_replaces_coalesce_and_catch_up_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let info_path = dir.path().join("prod/hello/deploy-info.yml");
    let paced = |d: &Deployment| {
        let every = InfoFiles::AtMostEvery(std::time::Duration::from_secs(2));
        let mut r = store.record_checked_many_with(&[(d.clone(), Checks::default())], every);
        r.pop().unwrap().unwrap();
    };
    let a = dep("hello", "prod", "a", &digest(1), t(1, 0));
    let b = dep("hello", "prod", "b", &digest(2), t(2, 0));
    let c = dep("hello", "prod", "c", &digest(3), t(3, 0));
    // The first deployment of an app replaces its info at once.
    paced(&a);
    assert!(store.infos_due_at().is_none());
    let info_of_a = std::fs::read_to_string(&info_path).unwrap();
    assert!(info_of_a.contains(&a.deployment.event_id.to_string()));

    // The next ones within the interval go to the history only; readers see the last.
    paced(&b);
    paced(&c);
    assert_eq!(std::fs::read_to_string(&info_path).unwrap(), info_of_a);
    assert_eq!(
        store.history("prod", "hello").unwrap(),
        vec![a, b, c.clone()]
    );
    assert_eq!(store.current("prod", "hello").unwrap().as_ref(), Some(&c));
    assert_eq!(
        Store::new(dir.path()).current("prod", "hello").unwrap(),
        Some(c.clone())
    );

    // Nothing is replaced before it is due; once due, one replace with the latest.
    let due = store.infos_due_at().expect("left behind");
    store.replace_due_infos().unwrap();
    if std::time::Instant::now() < due {
        assert_eq!(std::fs::read_to_string(&info_path).unwrap(), info_of_a);
        std::thread::sleep(due - std::time::Instant::now());
    }
    store.replace_due_infos().unwrap();
    assert!(store.infos_due_at().is_none());
    let info = std::fs::read_to_string(&info_path).unwrap();
    assert!(info.contains(&c.deployment.event_id.to_string()), "{info}");
    assert!(store.infos_behind().unwrap().is_empty());
}

#[test]
fn a_hand_written_info_newer_than_the_history_is_what_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store
        .record(&dep("hello", "prod", "a", &digest(1), t(1, 0)))
        .unwrap();
    // Seed-shaped, no event_id, written by a person after the last recorded deployment.
    let info_path = dir.path().join("prod/hello/deploy-info.yml");
    std::fs::write(
        &info_path,
        "app: hello\nworkspace: prod\nimage:\n  repo: 127.0.0.1:5000/team/hello\n  \
         tag: hotfix\n  digest: sha256:0000000000000000000000000000000000000000000000000000000000000009\n\
         deployment:\n  deployed_at: 2026-01-25T05:00:00Z\n  deployed_by: bob\n",
    )
    .unwrap();
    let cur = store.current("prod", "hello").unwrap().unwrap();
    assert_eq!(cur.image.tag.as_deref(), Some("hotfix"));
    assert_eq!(cur.deployment.deployed_by, "bob");

    // A history broken by hand at its end does not hide the info; without an info it is
    // reported.
    let history_path = dir.path().join("prod/hello/deploy-history.yml");
    let text = std::fs::read_to_string(&history_path).unwrap();
    std::fs::write(&history_path, text.replace("tag: \"a\"", "tag: [a")).unwrap();
    let cur = store.current("prod", "hello").unwrap().unwrap();
    assert_eq!(cur.image.tag.as_deref(), Some("hotfix"));
    std::fs::remove_file(&info_path).unwrap();
    let err = store.current("prod", "hello").unwrap_err();
    assert!(matches!(err, RecordsError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("deploy-history.yml:"), "{err}");
}

#[test]
fn a_hand_broken_middle_entry_is_reported_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    for i in 0..3 {
        store
            .record(&dep("hello", "prod", "a", &digest(i), t(1 + i, 0)))
            .unwrap();
    }
    let path = dir.path().join("prod/hello/deploy-history.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let second = text.match_indices("- image:").nth(1).unwrap().0;
    let mut broken = text.clone();
    let tag_at = second + text[second..].find("tag: \"a\"").unwrap();
    broken.replace_range(tag_at..tag_at + 8, "tag: \"a");
    std::fs::write(&path, &broken).unwrap();
    let line = broken[..tag_at].matches('\n').count() + 1;
    let err = store.history("prod", "hello").unwrap_err().to_string();
    assert_reports_line(&err, "deploy-history.yml", line);
}

#[test]
fn ranges_runs_and_digest_lookups_read_only_what_they_need() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    // digests: 1 1 2 3 3 3 (hours 1..=6)
    let seq = [1u32, 1, 2, 3, 3, 3];
    let all: Vec<Deployment> = seq
        .iter()
        .enumerate()
        .map(|(i, &n)| dep("hello", "prod", "t", &digest(n), t(1 + i as u32, 0)))
        .collect();
    for d in &all {
        store.record(d).unwrap();
    }
    let r = store
        .read_history_range("prod", "hello", Some(t(2, 0)), Some(t(4, 30)))
        .unwrap();
    assert_eq!(r.entries, all[1..4].to_vec());
    let r = store
        .read_history_range("prod", "hello", Some(t(2, 30)), None)
        .unwrap();
    assert_eq!(r.entries, all[2..].to_vec());
    let r = store
        .read_history_range("prod", "hello", None, Some(t(0, 30)))
        .unwrap();
    assert!(r.entries.is_empty());
    assert_eq!(
        store
            .read_history_range("prod", "hello", None, None)
            .unwrap()
            .entries,
        all
    );
    assert_eq!(
        store.running_since("prod", "hello", &digest(3)).unwrap(),
        Some(t(4, 0))
    );
    assert_eq!(
        store.running_since("prod", "hello", &digest(1)).unwrap(),
        None
    );
    assert_eq!(
        store.last_with_digest("prod", "hello", &digest(1)).unwrap(),
        Some(all[1].clone())
    );
    assert_eq!(
        store.last_with_digest("prod", "hello", &digest(9)).unwrap(),
        None
    );
    assert_eq!(store.torn_tail("prod", "hello").unwrap(), None);
}

#[test]
fn the_fast_entry_reader_agrees_with_the_yaml_parser_on_every_prefix() {
    let mut d = dep("hello", "prod", "1f3a9c2", &digest(7), t(1, 10));
    d.image.description =
        Some("quote \" backslash \\ newline \n tab \t esc \u{1b} nel \u{85} ünï 🙂: # - x".into());
    d.image.index_digest = Some(digest(8));
    d.image.platform.variant = Some("v8".into());
    d.deployment.name = Some("web".into());
    let text = yaml::history_entry(&d);
    let fast = yaml::fast_history_entry(&text).expect("canonical entry");
    assert_eq!(fast.image, d.image);
    assert_eq!(fast.deployment, d.deployment);
    for cut in 0..text.len() {
        if !text.is_char_boundary(cut) {
            continue;
        }
        let prefix = &text[..cut];
        if let Some(f) = yaml::fast_history_entry(prefix) {
            let slow = yaml::parse::<Vec<yaml::HistoryEntry>>(prefix)
                .unwrap_or_else(|e| panic!("fast accepted what YAML refuses at {cut}: {e:?}"));
            assert_eq!(slow[0].image, f.image, "cut {cut}");
            assert_eq!(slow[0].deployment, f.deployment, "cut {cut}");
        }
    }
    // Not the canonical shape: left to the YAML parser.
    assert!(yaml::fast_history_entry(&text.replace("    tag: \"", "    tag:  \"")).is_none());
    assert!(yaml::fast_history_entry(&format!("{text}    # note\n")).is_none());
    assert!(yaml::fast_history_entry(&text.replace("    repo:", "    repo2:")).is_none());
    // A repeated key, a quote inside an unescaped value: left to the YAML parser too.
    assert!(
        yaml::fast_history_entry(&text.replace("    tag: ", "    tag: \"x\"\n    tag: ")).is_none()
    );
    assert!(
        yaml::fast_history_entry(&text.replace("    revision: \"", "    revision: \"a\"b"))
            .is_none()
    );
    // Values without escapes (the common case) read back the same as with them.
    d.image.description = Some("plain value".into());
    let plain = yaml::history_entry(&d);
    let fast = yaml::fast_history_entry(&plain).expect("canonical entry");
    let slow = yaml::parse::<Vec<yaml::HistoryEntry>>(&plain).unwrap();
    assert_eq!(
        (&fast.image, &fast.deployment),
        (&slow[0].image, &slow[0].deployment)
    );
    assert_eq!(fast.image, d.image);
}

#[test]
fn a_batch_writes_several_apps_and_refuses_only_the_duplicate_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut web = dep("web", "prod", "a", &digest(1), t(1, 0));
    web.deployment.name = Some("frontend".into());
    let api1 = dep("api", "prod", "b", &digest(2), t(1, 1));
    // Takes the name `web` took earlier in the same batch: refused.
    let mut web2 = dep("web2", "prod", "c", &digest(3), t(1, 2));
    web2.deployment.name = Some("frontend".into());
    let api2 = dep("api", "prod", "d", &digest(4), t(1, 3));
    let other = dep("hello", "staging", "e", &digest(5), t(1, 4));
    let results = store.record_many(&[
        web.clone(),
        api1.clone(),
        web2.clone(),
        api2.clone(),
        other.clone(),
    ]);
    assert_eq!(results.len(), 5);
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert!(results[3].is_ok() && results[4].is_ok(), "{results:?}");
    let err = results[2].as_ref().unwrap_err();
    assert!(
        err.to_string().contains(
            "the name \"frontend\" is already used in environment \"prod\" by app \"web\""
        ),
        "{err}"
    );
    assert!(!dir.path().join("prod/web2").exists());
    assert_eq!(store.history("prod", "web").unwrap(), vec![web.clone()]);
    assert_eq!(
        store.history("prod", "api").unwrap(),
        vec![api1.clone(), api2.clone()]
    );
    // The info is the app's final state in the batch.
    assert_eq!(store.current("prod", "api").unwrap(), Some(api2.clone()));
    assert_eq!(store.current("staging", "hello").unwrap(), Some(other));
    // The api history is the two entries, byte for byte, in batch order.
    let bytes = std::fs::read_to_string(dir.path().join("prod/api/deploy-history.yml")).unwrap();
    assert_eq!(
        bytes,
        format!(
            "{}{}",
            yaml::history_entry(&api1),
            yaml::history_entry(&api2)
        )
    );
    // A later batch still sees the stored name.
    let again = store.record_many(&[web2]);
    assert!(matches!(again[0], Err(RecordsError::NameTaken { .. })));
}

#[test]
fn a_batch_can_require_names_and_skip_what_already_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut named = dep("web-blue", "prod", "a", &digest(1), t(1, 0));
    named.deployment.name = Some("web-blue".into());
    let nameless = dep("hello", "prod", "b", &digest(2), t(1, 1));
    let same_again = dep("web-blue", "prod", "a", &digest(1), t(1, 2));
    let strict = Checks {
        name_required_for_named_instances: true,
        skip_if_current: true,
        ..Checks::default()
    };
    let results = store.record_checked_many(&[
        (named.clone(), strict),
        (nameless.clone(), strict),
        (same_again, strict),
    ]);
    assert!(
        matches!(results[0], Ok(Written::Recorded(_))),
        "{results:?}"
    );
    let err = results[1].as_ref().unwrap_err();
    assert!(matches!(err, RecordsError::NameRequired { .. }), "{err}");
    assert!(err.to_string().contains("(e.g. \"web-blue\")"), "{err}");
    match &results[2] {
        Ok(Written::AlreadyCurrent(c)) => assert_eq!(**c, named),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.history("prod", "web-blue").unwrap(), vec![named]);
    assert!(store.history("prod", "hello").unwrap().is_empty());
    // Without the check, the store's own rules allow it.
    assert!(store.record_many(&[nameless])[0].is_ok());
}

#[test]
fn concurrent_batches_lose_nothing_and_interleave_whole_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let threads = 4;
    let batches = 10;
    let per_batch = 6;
    std::thread::scope(|s| {
        for th in 0..threads {
            let store = store.clone();
            s.spawn(move || {
                for b in 0..batches {
                    let batch: Vec<Deployment> = (0..per_batch)
                        .map(|k| {
                            let n = (th * 1000 + b * 10 + k) as u32;
                            let mut d =
                                dep(&format!("app-{}", k % 3), "prod", "t", &digest(n), t(1, 0));
                            d.deployment.deployed_by = format!("thread-{th}");
                            d
                        })
                        .collect();
                    for r in store.record_many(&batch) {
                        r.unwrap();
                    }
                }
            });
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    for k in 0..3 {
        let h = store.history("prod", &format!("app-{k}")).unwrap();
        assert_eq!(h.len(), threads * batches * per_batch / 3);
        for d in &h {
            assert!(
                seen.insert(d.image.digest.clone()),
                "{} twice",
                d.image.digest
            );
        }
        // The info is the last entry of the history.
        assert_eq!(
            store.current("prod", &format!("app-{k}")).unwrap().as_ref(),
            h.last()
        );
    }
    assert_eq!(seen.len(), threads * batches * per_batch);
}

#[test]
fn record_files_are_readable_by_everyone_like_the_history() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store
        .record(&dep("hello", "prod", "a", &digest(1), t(1, 0)))
        .unwrap();
    store
        .record(&dep("hello", "prod", "b", &digest(2), t(2, 0)))
        .unwrap();
    let mode = |f: &str| {
        std::fs::metadata(dir.path().join("prod/hello").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    // The process umask can only take bits away: compare with the history, created plainly.
    assert_eq!(mode("deploy-info.yml"), mode("deploy-history.yml"));
    assert_eq!(
        mode("deploy-info.yml") & 0o644,
        0o644 & mode("deploy-history.yml")
    );
    assert_ne!(mode("deploy-info.yml"), 0o600);
}

#[test]
fn a_name_freed_by_an_earlier_item_of_the_batch_can_be_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut web = dep("web", "prod", "a", &digest(1), t(1, 0));
    web.deployment.name = Some("frontend".into());
    store.record(&web).unwrap();
    // The first item needs no name rule, so the environment is only read for the second,
    // which must see `web` without its name, as the first item left it.
    let web_unnamed = dep("web", "prod", "b", &digest(2), t(1, 1));
    let mut web2 = dep("web2", "prod", "c", &digest(3), t(1, 2));
    web2.deployment.name = Some("frontend".into());
    let results = store.record_many(&[web_unnamed, web2.clone()]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.current("prod", "web2").unwrap(), Some(web2));
}

// ---- Field limits, exact storage, time order and the torn-tail framing (issue 9). ----

/// What python3's PyYAML (an independent YAML parser) reads from each of `paths`, as JSON.
fn python_yaml(paths: &[PathBuf]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([yaml.safe_load(open(p, encoding='utf-8')) for p in sys.argv[1:]]))",
        ])
        .args(paths)
        .output()
        .expect("python3 (with python3-yaml) runs");
    assert!(
        out.status.success(),
        "PyYAML cannot read {paths:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The fields a request can carry, each settable to any string.
const FIELDS: &[&str] = &[
    "deployed_by",
    "name",
    "environment",
    "app",
    "platform.os",
    "platform.architecture",
    "platform.variant",
    "description",
    "title",
    "source",
    "revision",
    "built_at",
    "repo",
    "tag",
];

fn set_field(d: &mut Deployment, field: &str, v: String) {
    match field {
        "deployed_by" => d.deployment.deployed_by = v,
        "name" => d.deployment.name = Some(v),
        "environment" => d.deployment.workspace = v,
        "app" => d.app = v,
        "platform.os" => d.image.platform.os = v,
        "platform.architecture" => d.image.platform.architecture = v,
        "platform.variant" => d.image.platform.variant = Some(v),
        "description" => d.image.description = Some(v),
        "title" => d.image.title = Some(v),
        "source" => d.image.source = Some(v),
        "revision" => d.image.revision = Some(v),
        "built_at" => d.image.built_at = Some(v),
        "repo" => d.image.repo = v,
        "tag" => d.image.tag = Some(v),
        other => panic!("unknown field {other}"),
    }
}

/// Strings a careless user or an attacker sends: any characters, and a mix of the ones that
/// break files and terminals.
fn hostile_string() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let nasty = prop::sample::select(vec![
        '\u{FFFE}',
        '\u{FFFF}',
        '\u{FDD0}',
        '\u{1FFFE}',
        '\u{10FFFF}',
        '\u{0}',
        '\u{7}',
        '\u{1b}',
        '\r',
        '\n',
        '\t',
        '\u{85}',
        '\u{2028}',
        '\u{2029}',
        '\u{FEFF}',
        '\u{202E}',
        '\u{2066}',
        '\u{200D}',
        '"',
        '\'',
        '\\',
        ':',
        '#',
        '-',
        ' ',
        '{',
        '[',
        '&',
        '*',
        '!',
        '|',
        '>',
        '%',
        '@',
        '`',
        'é',
        '🙂',
        'a',
        'Z',
        '0',
        '.',
        '/',
    ]);
    prop_oneof![
        any::<String>(),
        "[a-z0-9][a-z0-9._-]{0,12}",
        prop::collection::vec(nasty, 0..24).prop_map(|v| v.into_iter().collect()),
        (0usize..3, any::<char>()).prop_map(|(k, c)| c.to_string().repeat([254, 300, 70_000][k])),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: 48,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    /// Any string in any field is either refused with an error naming that field, or written,
    /// read back equal by imagetrail, read by an independent YAML parser, and the environment
    /// still takes writes and answers reads after a restart (a new store on the same files).
    #[test]
    fn any_string_in_any_field_is_refused_or_stored_exactly(
        field in proptest::sample::select(FIELDS),
        value in hostile_string(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let base = dep("hello", "prod", "a", &digest(1), t(1, 0));
        store.record(&base).unwrap();
        let mut d = dep("hello", "prod", "b", &digest(2), t(2, 0));
        set_field(&mut d, field, value.clone());
        match store.record(&d) {
            Err(RecordsError::InvalidField { field: named, .. }) => {
                proptest::prop_assert_eq!(named, field);
            }
            Err(RecordsError::InvalidName { what, .. }) => {
                proptest::prop_assert_eq!(what, field);
            }
            Err(other) => proptest::prop_assert!(false, "{field}: unexpected error {other}"),
            Ok(()) => {
                let (env, app) = (d.deployment.workspace.clone(), d.app.clone());
                // Read back equal, from a store that did not write it (a restart).
                let fresh = Store::new(dir.path());
                proptest::prop_assert_eq!(fresh.current(&env, &app).unwrap(), Some(d.clone()));
                let history = fresh.history(&env, &app).unwrap();
                proptest::prop_assert_eq!(history.last(), Some(&d));
                // An independent parser reads both files and finds the value.
                let mut read = python_yaml(&[
                    fresh.info_path(&env, &app).unwrap(),
                    fresh.history_path(&env, &app).unwrap(),
                ]);
                let (hist, info) = (read.pop().unwrap(), read.pop().unwrap());
                let last = hist.as_array().unwrap().last().unwrap().clone();
                let (in_info, in_hist) = match field {
                    "deployed_by" | "name" => (
                        info["deployment"][field].clone(),
                        last["deployment"][field].clone(),
                    ),
                    "environment" => (info["workspace"].clone(), last["deployment"]["workspace"].clone()),
                    "app" => (info["app"].clone(), serde_json::Value::String(app.clone())),
                    f => match f.strip_prefix("platform.") {
                        Some(p) => (info["image"]["platform"][p].clone(), last["image"]["platform"][p].clone()),
                        None => (info["image"][f].clone(), last["image"][f].clone()),
                    },
                };
                proptest::prop_assert_eq!(in_info.as_str(), Some(value.as_str()));
                proptest::prop_assert_eq!(in_hist.as_str(), Some(value.as_str()));
                // After the restart the environment still takes writes and reads.
                let mut next = d.clone();
                next.deployment.deployed_at = t(3, 0);
                next.deployment.event_id = Uuid::now_v7();
                next.image.digest = digest(3);
                fresh.record(&next).unwrap();
                proptest::prop_assert_eq!(fresh.current(&env, &app).unwrap(), Some(next));
                fresh.history(&env, &app).unwrap();
            }
        }
        // Whatever happened, the environment of the first deployment still works.
        let fresh = Store::new(dir.path());
        fresh.current("prod", "hello").unwrap();
        let mut later = dep("hello", "prod", "c", &digest(4), t(4, 0));
        later.deployment.event_id = Uuid::now_v7();
        fresh.record(&later).unwrap();
        proptest::prop_assert_eq!(fresh.current("prod", "hello").unwrap(), Some(later));
    }
}

#[test]
fn a_noncharacter_in_deployed_by_or_the_platform_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let mut d = dep("hello", "prod", "a", &digest(1), t(1, 0));
    d.deployment.deployed_by = "mallory\u{FFFE}".into();
    let err = store.record(&d).unwrap_err().to_string();
    assert!(
        err.starts_with("invalid deployed_by: character 8 is U+FFFE (a Unicode noncharacter)"),
        "{err}"
    );
    let mut d = dep("hello", "prod", "a", &digest(1), t(1, 0));
    d.image.platform.architecture = "amd64\u{FFFE}".into();
    let err = store.record(&d).unwrap_err().to_string();
    assert!(err.starts_with("invalid platform.architecture: "), "{err}");
    assert!(!dir.path().join("prod/hello").exists(), "nothing written");
    // The environment takes a good deployment, and a new store (a restart) reads it.
    let good = dep("hello", "prod", "a", &digest(1), t(1, 0));
    store.record(&good).unwrap();
    assert_eq!(
        Store::new(dir.path()).current("prod", "hello").unwrap(),
        Some(good)
    );
}

#[test]
fn characters_outside_yamls_printable_set_are_escaped() {
    assert_eq!(yaml::quote("a\u{FFFE}b"), "\"a\\uFFFEb\"");
    assert_eq!(yaml::quote("\u{1FFFF}"), "\"\\U0001FFFF\"");
    assert_eq!(yaml::quote("\r\u{85}\u{2028}"), "\"\\u000D\\u0085\\u2028\"");
}

#[test]
fn a_deployment_before_the_last_entry_is_refused_naming_deployed_at_and_the_last_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let future = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let a = dep("hello", "prod", "a", &digest(1), t(1, 0));
    let b = dep("hello", "prod", "b", &digest(2), future);
    store.record(&a).unwrap();
    store.record(&b).unwrap();
    let path = dir.path().join("prod/hello/deploy-history.yml");
    let before = std::fs::read(&path).unwrap();
    // A plain deploy "now", after a backfill dated in the future.
    let now = dep("hello", "prod", "c", &digest(3), Utc::now());
    let err = store.record(&now).unwrap_err().to_string();
    assert!(err.starts_with("deployed_at "), "{err}");
    assert!(
        err.contains("(deployed_at 2099-01-01T00:00:00Z)"),
        "names the last entry's time: {err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing appended");
    assert_eq!(
        store.at("prod", "hello", Utc::now()).unwrap(),
        Some(a.clone())
    );
    // Stamped by the writer: refused the same way, never appended before the future entry.
    let err = store
        .record_with(
            &dep("hello", "prod", "c", &digest(3), t(0, 0)),
            Checks {
                stamp: Stamp::WriteTime,
                ..Checks::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, RecordsError::OutOfOrder { .. }), "{err}");
    // At the same time as the last entry is in order.
    let same = dep("hello", "prod", "d", &digest(4), future);
    store.record(&same).unwrap();
    assert_eq!(store.at("prod", "hello", future).unwrap(), Some(same));
}

#[test]
fn writers_racing_from_several_stores_keep_the_history_in_time_order() {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..4u32)
        .map(|w| {
            // One store each: like separate processes sharing the state directory.
            let store = Store::new(dir.path());
            std::thread::spawn(move || {
                for n in 0..25u32 {
                    let d = dep("hello", "prod", "x", &digest(w * 100 + n), t(0, 0));
                    let r = store
                        .record_with(
                            &d,
                            Checks {
                                stamp: Stamp::WriteTime,
                                ..Checks::default()
                            },
                        )
                        .unwrap();
                    assert!(r.stamped.is_some());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = Store::new(dir.path());
    let history = store.history("prod", "hello").unwrap();
    assert_eq!(history.len(), 100);
    let times: Vec<_> = history.iter().map(|d| d.deployment.deployed_at).collect();
    assert!(times.is_sorted(), "the file is in deployed_at order");
    for (k, d) in history.iter().enumerate() {
        // The last entry at or before its time: itself, or a later one at the same instant.
        let at = store
            .at("prod", "hello", d.deployment.deployed_at)
            .unwrap()
            .unwrap();
        let last_tie = history[k..]
            .iter()
            .take_while(|e| e.deployment.deployed_at == d.deployment.deployed_at)
            .last()
            .unwrap();
        assert_eq!(&at, last_tie);
    }
}

/// The history's text with its last entry broken by hand as `edit` says.
fn break_last_entry(
    edit: impl Fn(&str) -> String,
) -> (tempfile::TempDir, Store, PathBuf, Vec<u8>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    store
        .record(&dep("hello", "prod", "a", &digest(1), t(1, 0)))
        .unwrap();
    store
        .record(&dep("hello", "prod", "b", &digest(2), t(2, 0)))
        .unwrap();
    let path = dir.path().join("prod/hello/deploy-history.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text.rfind("\n- image:").unwrap() + 1;
    let line = text[..start].lines().count() + 1;
    let broken = format!("{}{}", &text[..start], edit(&text[start..]));
    std::fs::write(&path, &broken).unwrap();
    (dir, store, path, broken.into_bytes(), line)
}

#[test]
fn a_hand_broken_last_entry_is_malformed_and_nothing_is_moved() {
    type Edit = fn(&str) -> String;
    let edits: [(&str, Edit); 3] = [
        ("a stray quote, blank line removed", |e| {
            e.replace("deployed_by: \"alice\"", "deployed_by: \"ali\"ce\"")
                .trim_end_matches('\n')
                .to_string()
                + "\n"
        }),
        ("a stray quote, no final newline", |e| {
            e.replace("tag: \"b\"", "tag: \"b\"\"")
                .trim_end()
                .to_string()
        }),
        ("a line deleted", |e| {
            e.lines()
                .filter(|l| !l.contains("digest:"))
                .map(|l| format!("{l}\n"))
                .collect()
        }),
    ];
    for (what, edit) in edits {
        let (dir, store, path, broken, line) = break_last_entry(edit);
        let err = store.read_history("prod", "hello").unwrap_err();
        assert!(
            matches!(err, RecordsError::Malformed { .. }),
            "{what}: {err}"
        );
        assert_reports_line_in_last_entry(&err.to_string(), line);
        assert!(store.at("prod", "hello", t(5, 0)).is_err(), "{what}");
        let err = store
            .record(&dep("hello", "prod", "c", &digest(3), t(3, 0)))
            .unwrap_err();
        assert!(
            matches!(err, RecordsError::Malformed { .. }),
            "{what}: {err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), broken, "{what}: untouched");
        assert!(
            !dir.path()
                .join("prod/hello/deploy-history.yml.torn")
                .exists(),
            "{what}: nothing moved aside"
        );
    }
}

#[test]
fn every_cut_of_an_append_is_a_torn_tail_and_every_whole_entry_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path());
    let a = dep("hello", "prod", "a", &digest(1), t(1, 0));
    let mut b = dep("hello", "prod", "b", &digest(2), t(2, 0));
    b.image.description = Some("ünï 🙂 \"q\" \\ \n x\u{FFFD}".into());
    b.image.platform.variant = Some("v8".into());
    b.deployment.name = Some("web".into());
    store.record(&a).unwrap();
    store.record(&b).unwrap();
    let path = dir.path().join("prod/hello/deploy-history.yml");
    let whole = std::fs::read(&path).unwrap();
    let start = whole.len() - yaml::history_entry(&b).len();
    for cut in start + 1..whole.len() {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let read = store.read_history("prod", "hello").unwrap_or_else(|e| {
            panic!(
                "cut at {cut} ({:?}): {e}",
                String::from_utf8_lossy(&whole[start..cut])
            )
        });
        match read.torn {
            Some(torn) => {
                assert_eq!(torn.offset, start as u64);
                assert_eq!(read.entries, vec![a.clone()]);
            }
            // Only once the terminator line is complete.
            None => {
                assert!(whole[start..cut].ends_with(b"\"\n") || whole[start..cut].ends_with(b"\""));
                assert!(String::from_utf8_lossy(&whole[start..cut]).contains("event_id: \""));
                assert_eq!(read.entries, vec![a.clone(), b.clone()]);
            }
        }
    }
}

#[test]
fn one_broken_history_does_not_hide_the_others() {
    let (dir, store, path, _, line) = break_last_entry(|e| e.replace("repo: \"", "repo: \"\"x"));
    let _ = &dir;
    store
        .record(&dep("other", "prod", "o", &digest(5), t(1, 30)))
        .unwrap();
    let apps = vec![
        ("prod".to_string(), "hello".to_string()),
        ("prod".to_string(), "other".to_string()),
    ];
    let read = store.read_histories(&apps, None, None);
    assert_eq!(read.entries.len(), 1);
    assert_eq!(read.entries[0].app, "other");
    assert_eq!(read.broken.len(), 1);
    let msg = read.broken[0].to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_reports_line_in_last_entry(&msg, line);
}

/// `msg` names `deploy-history.yml:LINE:` with LINE within the last entry, which starts at
/// `start` and is at most 30 lines long.
fn assert_reports_line_in_last_entry(msg: &str, start: usize) {
    let reported: usize = msg
        .split("deploy-history.yml:")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deploy-history.yml:LINE in {msg}"));
    assert!(
        (start..start + 30).contains(&reported),
        "line {reported}, entry at {start}: {msg}"
    );
}
