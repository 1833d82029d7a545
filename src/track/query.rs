//! The query commands over the records: status, history, at, compare, where.
//!
//! Text output is for people (one line or block per deployment, untrusted values sanitised);
//! `--format json` prints the records as stored, for scripts. A torn history tail is reported
//! on stderr with its line by every command that reads the history, and the whole entries
//! before it are still answered from.

use std::collections::BTreeMap;

use chrono::{DateTime, Local};

use crate::cli::{AtArgs, CompareArgs, Format, HistoryArgs, QueryArgs, WhereArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::output::{
    StreamedTable, cell, cell_or_dash, print_json, print_json_stream, print_table, short_digest,
    time, value, write_line,
};
use crate::records::{Deployment, HistoryRange, RecordStore, TornTail, check_names};
use crate::registry::Reference;
use crate::track::deploy::usage_if_name;

// Times are parsed and shown by `crate::output`; re-exported for callers of the old path.
pub use crate::output::{parse_time, parse_time_from, where_label};

fn warn_torn(t: &TornTail) {
    eprintln!("imagetrail: warning: {t}");
}

/// The (env, app) pairs selected by `--env` / `--app`.
fn selected(
    store: &dyn RecordStore,
    env: Option<&str>,
    app: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let envs = match env {
        Some(e) => {
            check_names(e, app.unwrap_or("x")).map_err(usage_if_name)?;
            vec![e.to_string()]
        }
        None => store.environments()?,
    };
    let mut out = Vec::new();
    for e in envs {
        match app {
            Some(a) => {
                check_names(&e, a).map_err(usage_if_name)?;
                out.push((e.clone(), a.to_string()));
            }
            None => out.extend(store.apps(&e)?.into_iter().map(|a| (e.clone(), a))),
        }
    }
    Ok(out)
}

fn image_text(d: &Deployment) -> String {
    let i = &d.image;
    format!(
        "{}{}@{}",
        cell(&i.repo),
        i.tag
            .as_deref()
            .map(|t| format!(":{}", cell(t)))
            .unwrap_or_default(),
        cell(&i.digest)
    )
}

fn block(d: &Deployment) {
    let i = &d.image;
    println!("  image     {}", image_text(d));
    if let Some(idx) = &i.index_digest {
        println!(
            "  index     {} ({})",
            value(idx),
            value(&i.platform.to_string())
        );
    }
    println!(
        "  built     {}",
        i.built_at
            .as_deref()
            .map(value)
            .unwrap_or_else(|| "unknown".into())
    );
    if let Some(r) = &i.revision {
        println!("  revision  {}", value(r));
    }
    if let Some(desc) = &i.description {
        println!("  about     {}", value(desc));
    }
    println!(
        "  deployed  {} by {}",
        time(&d.deployment.deployed_at),
        value(&d.deployment.deployed_by)
    );
}

/// `imagetrail status`.
pub fn status(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let store = args.state.open(&args.database)?;
    let mut rows = Vec::new();
    for (env, app) in selected(&*store, args.env.as_deref(), args.app.as_deref())? {
        if let Some(d) = store.current(&env, &app)? {
            rows.push(d);
        }
    }
    if args.format == Format::Json {
        print_json(&rows)?;
        return Ok(ExitCode::Success);
    }
    if rows.is_empty() {
        println!("no deployments recorded {}", store.place());
        return Ok(ExitCode::Success);
    }
    let table: Vec<[String; 7]> = rows
        .iter()
        .map(|d| {
            [
                cell(&d.deployment.workspace),
                cell(&d.app),
                cell_or_dash(d.image.tag.as_deref()),
                crate::output::short_digest(&d.image.digest),
                cell_or_dash(d.image.built_at.as_deref()),
                time(&d.deployment.deployed_at),
                cell(&d.deployment.deployed_by),
            ]
        })
        .collect();
    print_table(
        ["ENV", "APP", "TAG", "DIGEST", "BUILT", "DEPLOYED", "BY"],
        &table,
    );
    Ok(ExitCode::Success)
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
    let store = args.query.state.open(&args.query.database)?;
    let pairs = selected(
        &*store,
        args.query.env.as_deref(),
        args.query.app.as_deref(),
    )?;
    let range = HistoryRange {
        since,
        until,
        last: args.last,
    };
    // Streamed (see records::range): memory stays flat in the histories' length. Text output
    // reads twice, once for the column widths and once to print.
    let each = |f: &mut dyn FnMut(&Deployment) -> anyhow::Result<()>| store.visit(&pairs, range, f);
    let report = if args.query.format == Format::Json {
        print_json_stream(each)?
    } else {
        let mut table = StreamedTable::new([
            "DEPLOYED",
            "ENV",
            "APP",
            "TAG",
            "DIGEST",
            "BY",
            "DESCRIPTION",
        ]);
        let row = |d: &Deployment| -> [String; 7] {
            [
                time(&d.deployment.deployed_at),
                cell(&d.deployment.workspace),
                cell(&d.app),
                cell_or_dash(d.image.tag.as_deref()),
                short_digest(&d.image.digest),
                cell(&d.deployment.deployed_by),
                d.image.description.as_deref().map(cell).unwrap_or_default(),
            ]
        };
        let report = each(&mut |d| {
            table.measure(&row(d));
            Ok(())
        })?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        write_line(&mut out, &table.head_line())?;
        each(&mut |d| write_line(&mut out, &table.line(&row(d))))?;
        std::io::Write::flush(&mut out).or_else(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Ok(()),
            _ => Err(e),
        })?;
        report
    };
    // One broken history does not hide the others: they are shown, it is named on stderr.
    report.torn.iter().for_each(warn_torn);
    for e in &report.broken {
        eprintln!("imagetrail: error: {e}");
    }
    if report.broken.is_empty() {
        return Ok(ExitCode::Success);
    }
    eprintln!(
        "imagetrail: error: {} history file(s) could not be read (named above); the deployments \
         of every other app are shown",
        report.broken.len()
    );
    Ok(ExitCode::Failure)
}

/// `imagetrail at TIME`.
pub fn at(args: AtArgs) -> anyhow::Result<ExitCode> {
    let t = parse_time(&args.time).map_err(Error::Usage)?;
    let store = args.query.state.open(&args.query.database)?;
    let mut found = Vec::new();
    let mut pairs = 0;
    for (env, app) in selected(
        &*store,
        args.query.env.as_deref(),
        args.query.app.as_deref(),
    )? {
        pairs += 1;
        let (d, torn) = store.at(&env, &app, t)?;
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
            time(&t),
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
            time(&t),
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
    let reference = crate::registry::parse_reference(&args.reference)
        .map_err(|e| Error::Usage(e.to_string()))?;
    let app = args
        .app
        .clone()
        .unwrap_or_else(|| reference.familiar_path().to_string());
    check_names(&args.env, &app).map_err(usage_if_name)?;
    let store = args.state.open(&args.database)?;
    let client = crate::track::deploy::client(&args.registry)?;
    let current = store.current(&args.env, &app)?;
    let platform = current
        .as_ref()
        .map(|c| c.image.platform.clone())
        .unwrap_or_default();
    let resolved = client.resolve(&reference, &platform).await?;
    let candidate = crate::track::deploy::image_record(&resolved);
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
        ..crate::registry::parse_reference(&current.image.repo).unwrap_or(reference.clone())
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
        store.last_with_digest(&args.env, &app, &candidate.digest, None)?
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
                "deployed_at": time(&d.deployment.deployed_at),
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
    let show = |v: &Option<String>| v.as_deref().map(value).unwrap_or_else(|| "-".into());
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
            println!("    {}: {} -> {}", value(k), show(a), show(b));
        }
    }
    if same {
        println!(
            "the candidate is what runs now (deployed {} by {})",
            time(&current.deployment.deployed_at),
            value(&current.deployment.deployed_by)
        );
    } else if let Some(e) = &earlier {
        println!(
            "ROLLBACK: the candidate was deployed here before, on {} by {}",
            time(&e.deployment.deployed_at),
            value(&e.deployment.deployed_by)
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
        if s.starts_with("sha256:") || s.starts_with("sha512:") {
            return Ok(Wanted::Digest(s.to_string()));
        }
        // A tag has no `/`, `@` or `:`, so any of them makes a reference (`nginx:1.27`).
        if s.contains(['/', '@', ':']) {
            let r = crate::registry::parse_reference(s).map_err(|e| e.to_string())?;
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
                i.tag.as_ref() == Some(tag)
                    && repo
                        .as_ref()
                        .is_none_or(|r| crate::reference::same_repository(r, &i.repo))
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
    let store = args.state.open(&args.database)?;
    let mut hits = Vec::new();
    for (env, app) in selected(&*store, None, None)? {
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
            .map(|(d, since)| serde_json::json!({"env": d.deployment.workspace, "app": d.app, "since": time(since), "deployment": d}))
            .collect();
        print_json(&v)?;
    } else if hits.is_empty() {
        println!("{} runs nowhere now", value(&args.reference));
    } else {
        let table: Vec<[String; 6]> = hits
            .iter()
            .map(|(d, since)| {
                [
                    cell(&d.deployment.workspace),
                    cell(&d.app),
                    image_text(d),
                    time(since),
                    cell(&d.deployment.deployed_by),
                    cell_or_dash(d.image.revision.as_deref()),
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
