//! The query commands over the records: status, history, at, compare, where.
//!
//! Text output is for people (one line or block per deployment, untrusted values sanitised);
//! `--format json` prints the records as stored, for scripts. A torn history tail is reported
//! on stderr with its line by every command that reads the history, and the whole entries
//! before it are still answered from.

use std::collections::BTreeMap;

use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, TimeZone, Utc};

use super::{Deployment, Store, TornTail};
use crate::cli::{AtArgs, CompareArgs, Format, HistoryArgs, QueryArgs, WhereArgs};
use crate::deploy::usage_if_name;
use crate::error::Error;
use crate::exit::ExitCode;
use crate::registry::{self, Reference};
use crate::terminal::sanitize;

/// Parse a point in time: RFC 3339 (`2026-01-25T05:00:00Z`, any offset), or a local time
/// `YYYY-MM-DD HH:MM[:SS]` (also with `T`), a date `YYYY-MM-DD` (local midnight), or
/// `today`/`yesterday` with an optional `HH:MM` ("yesterday 05:00", local).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_from(s, Local::now().date_naive())
}

/// [`parse_time`] with "today" given, so the relative forms are testable.
pub fn parse_time_from(s: &str, today: NaiveDate) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = |n: NaiveDateTime| {
        Local
            .from_local_datetime(&n)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| format!("{s:?} does not exist in the local time zone (a DST gap)"))
    };
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, f) {
            return local(n);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return local(d.and_hms_opt(0, 0, 0).expect("midnight exists"));
    }
    let lower = s.to_ascii_lowercase();
    let (day, rest) = if let Some(r) = lower.strip_prefix("yesterday") {
        (today.pred_opt(), r)
    } else if let Some(r) = lower.strip_prefix("today") {
        (Some(today), r)
    } else {
        (None, "")
    };
    if let Some(day) = day {
        let rest = rest.trim().trim_start_matches("at ").trim();
        let time = if rest.is_empty() {
            Some(chrono::NaiveTime::MIN)
        } else {
            chrono::NaiveTime::parse_from_str(rest, "%H:%M:%S")
                .or_else(|_| chrono::NaiveTime::parse_from_str(rest, "%H:%M"))
                .ok()
        };
        if let Some(time) = time {
            return local(day.and_time(time));
        }
    }
    Err(format!(
        "cannot read the time {s:?}: use RFC 3339 (2026-01-25T05:00:00Z), a local time \
         such as \"2026-01-25 05:00\", or \"yesterday 05:00\""
    ))
}

/// A time as people read it in the output: RFC 3339 UTC.
pub fn show_time(t: &DateTime<Utc>) -> String {
    super::yaml::time(t)
}

/// `app in env`, sanitised.
pub fn where_label(env: &str, app: &str) -> String {
    format!("{} in {}", sanitize(app), sanitize(env))
}

fn short(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() > 12 => format!("sha256:{}", &h[..12]),
        _ => digest.to_string(),
    }
}

fn warn_torn(t: &TornTail) {
    eprintln!("imagetrail: warning: {t}");
}

/// The (env, app) pairs selected by `--env` / `--app`.
fn selected(
    store: &Store,
    env: Option<&str>,
    app: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let envs = match env {
        Some(e) => {
            store
                .info_path(e, app.unwrap_or("x"))
                .map_err(usage_if_name)?;
            vec![e.to_string()]
        }
        None => store.environments()?,
    };
    let mut out = Vec::new();
    for e in envs {
        match app {
            Some(a) => {
                store.info_path(&e, a).map_err(usage_if_name)?;
                out.push((e.clone(), a.to_string()));
            }
            None => out.extend(store.apps(&e)?.into_iter().map(|a| (e.clone(), a))),
        }
    }
    Ok(out)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    use std::io::Write as _;
    let text = serde_json::to_string_pretty(v)?;
    // A closed pipe (`| head`) is the reader's choice, not an error worth a panic.
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn image_text(d: &Deployment) -> String {
    let i = &d.image;
    format!(
        "{}{}@{}",
        sanitize(&i.repo),
        i.tag
            .as_deref()
            .map(|t| format!(":{}", sanitize(t)))
            .unwrap_or_default(),
        i.digest
    )
}

fn block(d: &Deployment) {
    let i = &d.image;
    println!("  image     {}", image_text(d));
    if let Some(idx) = &i.index_digest {
        println!(
            "  index     {idx} ({})",
            registry::platform_string(&i.platform)
        );
    }
    println!(
        "  built     {}",
        i.built_at
            .as_deref()
            .map(sanitize)
            .unwrap_or_else(|| "unknown".into())
    );
    if let Some(r) = &i.revision {
        println!("  revision  {}", sanitize(r));
    }
    if let Some(desc) = &i.description {
        println!("  about     {}", sanitize(desc));
    }
    println!(
        "  deployed  {} by {}",
        show_time(&d.deployment.deployed_at),
        sanitize(&d.deployment.deployed_by)
    );
}

/// `imagetrail status`.
pub fn status(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let store = Store::new(&args.state.state_dir);
    let mut rows = Vec::new();
    for (env, app) in selected(&store, args.env.as_deref(), args.app.as_deref())? {
        if let Some(d) = store.current(&env, &app)? {
            rows.push(d);
        }
    }
    if args.format == Format::Json {
        print_json(&rows)?;
        return Ok(ExitCode::Success);
    }
    if rows.is_empty() {
        println!(
            "no deployments recorded under {}",
            args.state.state_dir.display()
        );
        return Ok(ExitCode::Success);
    }
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|d| {
            [
                sanitize(&d.deployment.workspace),
                sanitize(&d.app),
                dash(d.image.tag.as_deref()),
                short(&d.image.digest),
                dash(d.image.built_at.as_deref()),
                show_time(&d.deployment.deployed_at),
                sanitize(&d.deployment.deployed_by),
            ]
        })
        .collect();
    print_table(
        ["ENV", "APP", "TAG", "DIGEST", "BUILT", "DEPLOYED", "BY"],
        &table,
    );
    Ok(ExitCode::Success)
}

/// A table cell for an optional untrusted value: sanitised, or `-` when absent.
fn dash(value: Option<&str>) -> String {
    value.map(sanitize).unwrap_or_else(|| "-".into())
}

fn print_table<const N: usize>(head: [&str; N], rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for (i, h) in head.iter().enumerate() {
        w[i] = h.chars().count();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `imagetrail history`.
pub fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let since = args
        .since
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(Error::Usage)?;
    let until = args
        .until
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(Error::Usage)?;
    let store = Store::new(&args.query.state.state_dir);
    let pairs = selected(&store, args.query.env.as_deref(), args.query.app.as_deref())?;
    let range = super::HistoryRange {
        since,
        until,
        last: args.last,
    };
    // Streamed (see records::range): memory stays flat in the histories' length. Text output
    // reads twice, once for the column widths and once to print.
    let each = |warn: bool, f: &mut dyn FnMut(&Deployment) -> anyhow::Result<()>| {
        super::range::for_each_merged(&store, &pairs, range, warn.then_some(warn_torn), f)
    };
    if args.query.format == Format::Json {
        return print_json_stream(|f| each(true, f)).map(|()| ExitCode::Success);
    }
    const HEAD: [&str; 7] = [
        "DEPLOYED",
        "ENV",
        "APP",
        "TAG",
        "DIGEST",
        "BY",
        "DESCRIPTION",
    ];
    let row = |d: &Deployment| -> [String; 7] {
        [
            show_time(&d.deployment.deployed_at),
            sanitize(&d.deployment.workspace),
            sanitize(&d.app),
            dash(d.image.tag.as_deref()),
            short(&d.image.digest),
            sanitize(&d.deployment.deployed_by),
            d.image
                .description
                .as_deref()
                .map(sanitize)
                .unwrap_or_default(),
        ]
    };
    let mut w = HEAD.map(|h| h.chars().count());
    each(true, &mut |d| {
        for (i, c) in row(d).iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
        Ok(())
    })?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = |cells: &[String]| -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        match writeln!(out, "{}", s.trim_end()) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        }
    };
    line(&HEAD.map(String::from))?;
    each(false, &mut |d| line(&row(d)))?;
    use std::io::Write as _;
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::Success),
    }
}

/// Print a JSON array as `serde_json::to_string_pretty` would, one element at a time.
fn print_json_stream(
    items: impl FnOnce(&mut dyn FnMut(&Deployment) -> anyhow::Result<()>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0usize;
    let mut write = |out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>, d: &Deployment| {
        let text = serde_json::to_string_pretty(d)?;
        out.write_all(if n == 0 { b"[\n" } else { b",\n" })?;
        for (k, l) in text.lines().enumerate() {
            if k > 0 {
                out.write_all(b"\n")?;
            }
            out.write_all(b"  ")?;
            out.write_all(l.as_bytes())?;
        }
        n += 1;
        anyhow::Ok(())
    };
    let result = items(&mut |d| write(&mut out, d)).and_then(|()| {
        out.write_all(if n == 0 { b"[]\n" } else { b"\n]\n" })?;
        out.flush()?;
        Ok(())
    });
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

/// `imagetrail at TIME`.
pub fn at(args: AtArgs) -> anyhow::Result<ExitCode> {
    let t = parse_time(&args.time).map_err(Error::Usage)?;
    let store = Store::new(&args.query.state.state_dir);
    let mut found = Vec::new();
    let mut pairs = 0;
    for (env, app) in selected(&store, args.query.env.as_deref(), args.query.app.as_deref())? {
        pairs += 1;
        let (d, torn) = store.at_reporting(&env, &app, t)?;
        if let Some(torn) = &torn {
            warn_torn(torn);
        }
        if let Some(mut d) = d {
            d.deployment.workspace = env.clone();
            found.push(d);
        }
    }
    if args.query.format == Format::Json {
        print_json(&found)?;
    } else if found.is_empty() {
        println!(
            "nothing was running at {} ({} local){}",
            show_time(&t),
            t.with_timezone(&Local).format("%Y-%m-%d %H:%M"),
            if pairs == 0 {
                ": no deployments recorded"
            } else {
                ""
            }
        );
    } else {
        println!(
            "at {} ({} local):",
            show_time(&t),
            t.with_timezone(&Local).format("%Y-%m-%d %H:%M")
        );
        for d in &found {
            println!("{}", where_label(&d.deployment.workspace, &d.app));
            block(d);
        }
    }
    Ok(if found.is_empty() {
        ExitCode::Failure
    } else {
        ExitCode::Success
    })
}

/// `imagetrail compare REF`.
pub async fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.reference).map_err(|e| Error::Usage(e.to_string()))?;
    let app = args.app.clone().unwrap_or_else(|| reference.path.clone());
    let store = Store::new(&args.state.state_dir);
    store.info_path(&args.env, &app).map_err(usage_if_name)?;
    let client = crate::deploy::client(&args.registry)?;
    let current = store.current(&args.env, &app)?;
    let platform = current
        .as_ref()
        .map(|c| c.image.platform.clone())
        .unwrap_or_default();
    let resolved = client.resolve(&reference, &platform).await?;
    let candidate = crate::deploy::image_record(&resolved);
    if let Some(t) = store.torn_tail(&args.env, &app)? {
        warn_torn(&t);
    }

    let Some(current) = current else {
        if args.format == Format::Json {
            print_json(&serde_json::json!({"candidate": candidate, "current": null}))?;
        } else {
            println!(
                "nothing of {} is recorded yet; the candidate would be its first deployment",
                where_label(&args.env, &app)
            );
        }
        return Ok(ExitCode::Success);
    };
    // Labels of what runs, from the registry (the record keeps only the main ones).
    let current_ref = Reference {
        digest: Some(current.image.digest.clone()),
        tag: None,
        ..Reference::parse(&current.image.repo).unwrap_or(reference.clone())
    };
    let current_labels = match client.resolve(&current_ref, &platform).await {
        Ok(r) => Some(r.labels),
        Err(e) => {
            eprintln!(
                "imagetrail: warning: cannot read the labels of what runs ({e}); comparing the recorded fields only"
            );
            None
        }
    };
    let same = current.image.digest == candidate.digest;
    // What runs is the last entry, so any entry with the candidate's digest is earlier.
    let earlier = if same {
        None
    } else {
        store.last_with_digest(&args.env, &app, &candidate.digest)?
    };
    let mut label_changes = BTreeMap::new();
    if let Some(cur) = &current_labels {
        for k in cur.keys().chain(resolved.labels.keys()) {
            let (a, b) = (cur.get(k), resolved.labels.get(k));
            if a != b {
                label_changes.insert(k.clone(), (a.cloned(), b.cloned()));
            }
        }
    }
    if args.format == Format::Json {
        print_json(&serde_json::json!({
            "env": args.env,
            "app": app,
            "current": current,
            "candidate": candidate,
            "same": same,
            "rollback": earlier.as_ref().map(|d| serde_json::json!({
                "deployed_at": show_time(&d.deployment.deployed_at),
                "deployed_by": d.deployment.deployed_by,
            })),
            "label_changes": label_changes.iter().map(|(k, (a, b))| serde_json::json!({"label": k, "current": a, "candidate": b})).collect::<Vec<_>>(),
        }))?;
        return Ok(ExitCode::Success);
    }
    println!("{}:", where_label(&args.env, &app));
    let c = &current.image;
    let rows: Vec<(&str, Option<String>, Option<String>)> = vec![
        (
            "digest",
            Some(c.digest.clone()),
            Some(candidate.digest.clone()),
        ),
        ("tag", c.tag.clone(), candidate.tag.clone()),
        ("revision", c.revision.clone(), candidate.revision.clone()),
        ("built", c.built_at.clone(), candidate.built_at.clone()),
        (
            "about",
            c.description.clone(),
            candidate.description.clone(),
        ),
        ("source", c.source.clone(), candidate.source.clone()),
        ("title", c.title.clone(), candidate.title.clone()),
    ];
    let show = |v: &Option<String>| v.as_deref().map(sanitize).unwrap_or_else(|| "-".into());
    for (field, a, b) in &rows {
        if a == b {
            println!("  {field:<9} {} (unchanged)", show(a));
        } else {
            println!("  {field:<9} {} -> {}", show(a), show(b));
        }
    }
    if !label_changes.is_empty() {
        println!("  labels changed:");
        for (k, (a, b)) in &label_changes {
            println!("    {}: {} -> {}", sanitize(k), show(a), show(b));
        }
    }
    if same {
        println!(
            "the candidate is what runs now (deployed {} by {})",
            show_time(&current.deployment.deployed_at),
            sanitize(&current.deployment.deployed_by)
        );
    } else if let Some(e) = &earlier {
        println!(
            "ROLLBACK: the candidate was deployed here before, on {} by {}",
            show_time(&e.deployment.deployed_at),
            sanitize(&e.deployment.deployed_by)
        );
    } else {
        let newer = match (&c.built_at, &candidate.built_at) {
            (Some(a), Some(b)) => match (
                DateTime::parse_from_rfc3339(a),
                DateTime::parse_from_rfc3339(b),
            ) {
                (Ok(a), Ok(b)) if b < a => " (built before what runs)",
                (Ok(_), Ok(_)) => " (built after what runs)",
                _ => "",
            },
            _ => "",
        };
        println!("the candidate was never deployed here{newer}");
    }
    Ok(ExitCode::Success)
}

/// What `where` looks for.
enum Wanted {
    Digest(String),
    Tag { repo: Option<String>, tag: String },
    Revision(String),
}

impl Wanted {
    fn parse(s: &str) -> Result<Wanted, String> {
        let s = s.trim();
        if s.starts_with("sha256:") {
            return Ok(Wanted::Digest(s.to_string()));
        }
        if s.contains('/') || s.contains('@') {
            let r = Reference::parse(s).map_err(|e| e.to_string())?;
            if let Some(d) = r.digest {
                return Ok(Wanted::Digest(d));
            }
            return Ok(Wanted::Tag {
                repo: Some(r.repo()),
                tag: r.tag.unwrap_or_else(|| "latest".into()),
            });
        }
        if (7..=40).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Wanted::Revision(s.to_ascii_lowercase()));
        }
        if s.is_empty() {
            return Err("give a digest, a tag or a git revision".into());
        }
        Ok(Wanted::Tag {
            repo: None,
            tag: s.to_string(),
        })
    }

    fn matches(&self, d: &Deployment) -> bool {
        let i = &d.image;
        match self {
            Wanted::Digest(x) => &i.digest == x || i.index_digest.as_ref() == Some(x),
            Wanted::Tag { repo, tag } => {
                i.tag.as_ref() == Some(tag) && repo.as_ref().is_none_or(|r| r == &i.repo)
            }
            Wanted::Revision(r) => {
                i.revision.as_ref().is_some_and(|rev| {
                    let rev = rev.to_ascii_lowercase();
                    rev.starts_with(r.as_str()) || r.starts_with(rev.as_str())
                }) || matches!(i.tag.as_deref(), Some(t) if t.eq_ignore_ascii_case(r))
            }
        }
    }
}

/// `imagetrail where REF`.
pub fn where_(args: WhereArgs) -> anyhow::Result<ExitCode> {
    let wanted = Wanted::parse(&args.reference).map_err(Error::Usage)?;
    let store = Store::new(&args.state.state_dir);
    let mut hits = Vec::new();
    for (env, app) in selected(&store, None, None)? {
        let Some(cur) = store.current(&env, &app)? else {
            continue;
        };
        if !wanted.matches(&cur) {
            continue;
        }
        // Since when: the start of the unbroken run of this digest at the end of the history.
        if let Some(t) = store.torn_tail(&env, &app)? {
            warn_torn(&t);
        }
        let since = store
            .running_since(&env, &app, &cur.image.digest)?
            .unwrap_or(cur.deployment.deployed_at);
        hits.push((cur, since));
    }
    if args.format == Format::Json {
        let v: Vec<_> = hits
            .iter()
            .map(|(d, since)| serde_json::json!({"env": d.deployment.workspace, "app": d.app, "since": show_time(since), "deployment": d}))
            .collect();
        print_json(&v)?;
    } else if hits.is_empty() {
        println!("{} runs nowhere now", sanitize(&args.reference));
    } else {
        let table: Vec<[String; 6]> = hits
            .iter()
            .map(|(d, since)| {
                [
                    sanitize(&d.deployment.workspace),
                    sanitize(&d.app),
                    image_text(d),
                    show_time(since),
                    sanitize(&d.deployment.deployed_by),
                    dash(d.image.revision.as_deref()),
                ]
            })
            .collect();
        print_table(["ENV", "APP", "IMAGE", "SINCE", "BY", "REVISION"], &table);
    }
    Ok(if hits.is_empty() {
        ExitCode::Failure
    } else {
        ExitCode::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_absolute_local_and_relative_times() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 26).unwrap();
        let local = |y, m, d, h, mi| {
            Local
                .from_local_datetime(
                    &NaiveDate::from_ymd_opt(y, m, d)
                        .unwrap()
                        .and_hms_opt(h, mi, 0)
                        .unwrap(),
                )
                .earliest()
                .unwrap()
                .with_timezone(&Utc)
        };
        assert_eq!(
            parse_time_from("2026-01-25T05:00:00+01:00", today).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 25, 4, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time_from("2026-01-25 05:00", today).unwrap(),
            local(2026, 1, 25, 5, 0)
        );
        assert_eq!(
            parse_time_from("yesterday 05:00", today).unwrap(),
            local(2026, 1, 25, 5, 0)
        );
        assert_eq!(
            parse_time_from("Yesterday at 05:00", today).unwrap(),
            local(2026, 1, 25, 5, 0)
        );
        assert_eq!(
            parse_time_from("today", today).unwrap(),
            local(2026, 1, 26, 0, 0)
        );
        assert_eq!(
            parse_time_from("2026-01-25", today).unwrap(),
            local(2026, 1, 25, 0, 0)
        );
        let err = parse_time_from("last tuesday", today).unwrap_err();
        assert!(err.contains("\"yesterday 05:00\""), "{err}");
        assert!(parse_time_from("yesterday 25:00", today).is_err());
    }
}
