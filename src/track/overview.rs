//! Registry and images overviews, and prune planning (the protected set) and execution.
//!
//! Prune follows the registry's real behaviour (reference §4.3/§4.4): a DELETE by digest
//! removes every tag on that digest, and nothing stops deleting a child of a live index. So
//! the plan works on digests, not tags: a digest is deleted only when no kept tag points at it
//! and it is not protected. The protected set starts from every digest any file under the
//! state directory names ([`crate::records::protect`]: by digest, whatever the repository
//! spelling or the state of the file) and is closed over the registry's own manifests: every
//! child of a protected index, and every tagged index holding a recorded digest.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::cli::{Format, ImagesOverviewArgs, PruneArgs, RegistryOverviewArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::records::protect::{Named, Protection, Role};
use crate::records::{Deployment, Platform, RecordStore, check_names};
use crate::registry::{Client, Reference, RegistryError};
use anyhow::Context as _;
// Every value printed here is a table cell: escaped and cut (see `crate::output`).
use crate::output::{cell as sanitize, cell_or_dash as sanitize_or_dash};

/// One tag as the overviews show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagInfo {
    /// The tag.
    pub tag: String,
    /// The digest the tag points at (an index's own digest for a multi-platform image).
    pub digest: String,
    /// Whether it is a multi-platform index.
    pub index: bool,
    /// The index's children (empty for an image manifest).
    pub children: Vec<String>,
    /// Build time (label, else config `created`).
    pub created: Option<String>,
    /// `org.opencontainers.image.description`.
    pub description: Option<String>,
}

fn repo_ref(repository: &str) -> Result<Reference, Error> {
    let r =
        crate::registry::parse_reference(repository).map_err(|e| Error::Usage(e.to_string()))?;
    if r.tag.is_some() || r.digest.is_some() {
        return Err(Error::Usage(format!(
            "{repository} names an image; give the repository alone, e.g. {}",
            r.repo()
        )));
    }
    Ok(r)
}

/// Read what a tag points at: digest, children, created and description (from the
/// linux/amd64 child of an index, else its first child).
pub async fn describe(client: &Client, r: &Reference, tag: &str) -> Result<TagInfo, RegistryError> {
    let top = client.manifest(r, tag).await?;
    let mut info = TagInfo {
        tag: tag.to_string(),
        digest: top.digest.clone(),
        index: top.is_index(),
        children: vec![],
        created: None,
        description: None,
    };
    let image = if info.index {
        let children = top.children();
        info.children = children.iter().map(|(d, _)| d.clone()).collect();
        let default = Platform::default();
        let pick = children
            .iter()
            .find(|(_, p)| p.as_ref() == Some(&default))
            .or(children.first());
        match pick {
            Some((d, _)) => client.manifest_opt(r, d).await?,
            None => None,
        }
    } else {
        Some(top)
    };
    if let Some(m) = image
        && let Ok(cfg) = client.config(r, &m).await
    {
        {
            let mut labels = m.annotations();
            labels.extend(cfg.labels());
            info.created = labels
                .get(crate::track::deploy::CREATED)
                .cloned()
                .or(cfg.created.clone());
            info.description = labels.get(crate::track::deploy::DESCRIPTION).cloned();
        }
    }
    Ok(info)
}

/// Tags newest first (by [`build_time`], then tag name descending); tags whose build time is
/// unknown come last.
async fn tag_infos(client: &Client, r: &Reference) -> Result<Vec<TagInfo>, RegistryError> {
    let mut out = Vec::new();
    for t in client.tags(r).await? {
        match describe(client, r, &t).await {
            Ok(i) => out.push(i),
            // A tag deleted between the listing and the read: skip it.
            Err(RegistryError::ManifestUnknown { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    // Newest first; a tag whose build time is unknown after every known one (`None` < `Some`).
    out.sort_by(|a, b| {
        build_time(b.created.as_deref())
            .cmp(&build_time(a.created.as_deref()))
            .then_with(|| b.tag.cmp(&a.tag))
    });
    Ok(out)
}

/// `imagetrail registry overview`.
pub async fn registry(args: RegistryOverviewArgs) -> anyhow::Result<ExitCode> {
    let client = crate::track::deploy::client(&args.access)?;
    let registry = args.registry.trim_end_matches('/').to_string();
    let mut all = Vec::new();
    for repo in client.catalog(&registry).await? {
        let r = crate::registry::parse_reference(&format!("{registry}/{repo}"))?;
        let tags = match tag_infos(&client, &r).await {
            Ok(t) => t,
            Err(RegistryError::ManifestUnknown { .. }) => vec![],
            Err(e) => return Err(e.into()),
        };
        all.push((r.repo(), tags));
    }
    if args.format == Format::Json {
        let v: Vec<_> = all
            .iter()
            .map(|(repo, tags)| serde_json::json!({"repository": repo, "tags": tags}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::Success);
    }
    if all.is_empty() {
        println!("{registry} has no repositories");
    }
    for (repo, tags) in &all {
        println!("{}", sanitize(repo));
        if tags.is_empty() {
            println!("  (no tags)");
        }
        for t in tags {
            println!(
                "  {:<20} {:<25} {:<20} {}",
                sanitize(&t.tag),
                sanitize_or_dash(t.created.as_deref()),
                short(&t.digest),
                t.description.as_deref().map(sanitize).unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::Success)
}

fn short(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() > 12 => format!("sha256:{}", &h[..12]),
        _ => digest.to_string(),
    }
}

/// Every current deployment of `repo`, per environment (only the environments given, or all).
fn deployed(
    store: &dyn RecordStore,
    repo: &str,
    envs: &[String],
) -> anyhow::Result<Vec<Deployment>> {
    let envs = if envs.is_empty() {
        store.environments()?
    } else {
        envs.to_vec()
    };
    let mut out = Vec::new();
    for env in envs {
        check_names(&env, "x").map_err(crate::track::deploy::usage_if_name)?;
        for app in store.apps(&env)? {
            if let Some(mut d) = store.current(&env, &app)?
                && same_repo_for_display(&d.image.repo, repo)
            {
                d.deployment.workspace = env.clone();
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// `imagetrail images overview`.
pub async fn images(args: ImagesOverviewArgs) -> anyhow::Result<ExitCode> {
    let r = repo_ref(&args.repository)?;
    let client = crate::track::deploy::client(&args.access)?;
    let store = args.state.open(&args.database)?;
    let envs: Vec<String> = args
        .envs
        .iter()
        .filter(|e| !e.is_empty())
        .cloned()
        .collect();
    let running = deployed(&*store, &r.repo(), &envs)?;
    let tags = tag_infos(&client, &r).await?;
    let marks = |t: &TagInfo| -> Vec<String> {
        running
            .iter()
            .filter(|d| {
                d.image.digest == t.digest
                    || d.image.index_digest.as_deref() == Some(t.digest.as_str())
                    || t.children.contains(&d.image.digest)
            })
            .map(|d| {
                format!(
                    "{} ({})",
                    sanitize(&d.deployment.workspace),
                    sanitize(&d.app)
                )
            })
            .collect()
    };
    // Deployed digests no tag points at any more (the tag moved or was deleted).
    let untagged: Vec<&Deployment> = running
        .iter()
        .filter(|d| {
            !tags.iter().any(|t| {
                d.image.digest == t.digest
                    || d.image.index_digest.as_deref() == Some(t.digest.as_str())
                    || t.children.contains(&d.image.digest)
            })
        })
        .collect();
    if args.format == Format::Json {
        let v: Vec<_> = tags
            .iter()
            .map(|t| serde_json::json!({"tag": t, "deployed": marks(t)}))
            .collect();
        let u: Vec<_> = untagged
            .iter()
            .map(|d| serde_json::json!({"env": d.deployment.workspace, "app": d.app, "digest": d.image.digest, "tag_at_deploy": d.image.tag}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"repository": r.repo(), "tags": v, "deployed_untagged": u})
            )?
        );
        return Ok(ExitCode::Success);
    }
    println!("{}", sanitize(&r.repo()));
    println!(
        "   {:<20} {:<25} {:<20} {:<12} DESCRIPTION",
        "TAG", "CREATED", "DIGEST", "DEPLOYED"
    );
    for t in &tags {
        let m = marks(t);
        println!(
            "{}  {:<20} {:<25} {:<20} {:<12} {}",
            if m.is_empty() { " " } else { "→" },
            sanitize(&t.tag),
            sanitize_or_dash(t.created.as_deref()),
            short(&t.digest),
            if m.is_empty() {
                "-".to_string()
            } else {
                m.join(", ")
            },
            t.description.as_deref().map(sanitize).unwrap_or_default()
        );
    }
    for d in untagged {
        println!(
            "→  {:<20} {:<25} {:<20} {:<12} no tag points at it now (deployed as {})",
            "(untagged)",
            sanitize_or_dash(d.image.built_at.as_deref()),
            short(&d.image.digest),
            format!(
                "{} ({})",
                sanitize(&d.deployment.workspace),
                sanitize(&d.app)
            ),
            d.image
                .tag
                .as_deref()
                .map(sanitize)
                .unwrap_or_else(|| "a digest".into())
        );
    }
    Ok(ExitCode::Success)
}

/// A tag's build time as `--keep` and the overviews order tags: an RFC 3339 time; a date alone
/// (`2026-06-01`) is that day at 00:00 UTC; a date and time without a zone
/// (`2026-06-01T12:00:00`) is UTC. Anything else, or no value, is unknown (`None`).
pub fn build_time(created: Option<&str>) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{NaiveDate, NaiveDateTime, Utc};
    let c = created?.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(c) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(c, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc());
    }
    NaiveDate::parse_from_str(c, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Whether two repository spellings name one repository, for display: the one reference
/// type's rule (host case, loopback names and `:443` made one, Docker Hub's short forms),
/// with the path lower-cased too, because records written before paths were checked may hold
/// an upper-case path (`Team/Srv`) that the grammar now refuses. Protection never depends on it.
fn same_repo_for_display(a: &str, b: &str) -> bool {
    crate::reference::same_repository(&a.to_ascii_lowercase(), &b.to_ascii_lowercase())
}

/// Why one record protects a digest, as the plan prints it: what the record says, the
/// environment and app, the file (relative to the state directory) and, when the record spells
/// another repository than the one pruned, that spelling.
fn record_reason(n: &Named, pruned: &str) -> String {
    let place = |fallback: &str| match &n.place {
        Some((env, app)) => format!("{} in {}", sanitize(app), sanitize(env)),
        None => fallback.to_string(),
    };
    let what = match (&n.role, n.index) {
        (Role::DeployedNow, false) => format!("deployed now ({}, deploy-info.yml)", place("?")),
        (Role::DeployedNow, true) => format!("index of what is deployed now ({})", place("?")),
        (Role::DeployedNowByHistory, false) => format!(
            "deployed now ({}, last entry of deploy-history.yml)",
            place("?")
        ),
        (Role::DeployedNowByHistory, true) => format!(
            "index of what is deployed now ({}, last entry of deploy-history.yml)",
            place("?")
        ),
        (Role::InfoBehind, index) => format!(
            "{}in deploy-info.yml of {} (behind its history)",
            if index { "index " } else { "" },
            place("?")
        ),
        (Role::InfoUnrecorded, index) => format!(
            "{}deployed now per deploy-info.yml of {} (its deployment is not in the history)",
            if index { "index " } else { "" },
            place("?")
        ),
        (Role::InHistory, false) => {
            format!("in the history of {} (deploy-history.yml)", place("?"))
        }
        (Role::InHistory, true) => format!("index recorded in the history of {}", place("?")),
        (Role::NamedInFile, _) => match &n.place {
            Some(_) => format!("named in a record file of {}", place("")),
            None => "named in a file of the state directory".to_string(),
        },
        (Role::DeployedNowInDatabase, false) => format!("deployed now ({})", place("?")),
        (Role::DeployedNowInDatabase, true) => {
            format!("index of what is deployed now ({})", place("?"))
        }
        (Role::InDatabaseHistory, false) => format!("in the history of {}", place("?")),
        (Role::InDatabaseHistory, true) => {
            format!("index recorded in the history of {}", place("?"))
        }
    };
    let mut file = sanitize(&n.path.display().to_string());
    if let Some(repo) = &n.repo
        && repo != pruned
    {
        let same = same_repo_for_display(repo, pruned);
        file.push_str(&format!(
            ", {} {}",
            if same { "recorded as" } else { "recorded for" },
            sanitize(repo)
        ));
    }
    format!("{what} [{file}]")
}

/// The reasons the records give for `digest`: parsed ones first; a raw find only for a file
/// no parsed reason names. At most [`MAX_REASONS`] are spelled out.
fn record_reasons(named: &BTreeSet<Named>, pruned: &str) -> Vec<String> {
    let parsed: BTreeSet<&std::path::Path> = named
        .iter()
        .filter(|n| n.role != Role::NamedInFile)
        .map(|n| n.path.as_path())
        .collect();
    let mut all: Vec<&Named> = named
        .iter()
        .filter(|n| n.role != Role::NamedInFile || !parsed.contains(n.path.as_path()))
        .collect();
    all.sort_by_key(|n| (n.role.clone(), n.index));
    let mut out: Vec<String> = all
        .iter()
        .take(MAX_REASONS)
        .map(|n| record_reason(n, pruned))
        .collect();
    if all.len() > MAX_REASONS {
        out.push(format!("and {} more records", all.len() - MAX_REASONS));
    }
    out
}

/// How many records are spelled out beside one kept digest.
const MAX_REASONS: usize = 6;

/// How many manifests the closure reads from the registry at once.
const LOOKUPS_AT_ONCE: usize = 16;

/// What prune keeps and deletes.
struct Plan {
    /// Digests protected by the registry closure (beside the records' own), with why.
    closure: BTreeMap<String, Vec<String>>,
    /// Digests a kept tag points at (or holds, for an index), with that tag.
    kept_by_tag: HashMap<String, String>,
    /// The tags whose build time is unknown (kept, outside the N).
    unknown_time: BTreeSet<String>,
    /// The digests to delete, in tag order.
    delete: Vec<String>,
}

/// Recorded digests already read from the registry, across the plans of one prune.
#[derive(Default)]
struct Lookups {
    /// Every digest read.
    read: HashSet<String>,
    /// The ones that are indexes in the repository, with their children.
    indexes: BTreeMap<String, Vec<String>>,
}

/// Plan the prune: the records' digests, closed over the registry's manifests (children of a
/// protected index; a tagged index holding a recorded manifest, and then its children), the N
/// newest tags by [`build_time`] and the tags of unknown build time, and what is left.
///
/// Whether a recorded digest the tags do not show is an index is the registry's answer, never
/// the record's: an image recorded through the API or the admission webhook by its index digest
/// carries no `index_digest`. Those reads (one per such digest, [`LOOKUPS_AT_ONCE`] at a time)
/// are made only when the plan without them would delete something, since only then can they
/// change it. Only sha256 digests: the client verifies manifests by sha256.
async fn make_plan(
    client: &Client,
    r: &Reference,
    tags: &[TagInfo],
    records: &Protection,
    keep: usize,
    lookups: &mut Lookups,
) -> Result<Plan, RegistryError> {
    use futures_util::StreamExt as _;
    let plan = plan_with(tags, records, keep, &lookups.indexes);
    if plan.delete.is_empty() {
        return Ok(plan);
    }
    let tagged: HashSet<&str> = tags.iter().map(|t| t.digest.as_str()).collect();
    let unknown: Vec<&String> = records
        .digests
        .keys()
        .filter(|d| d.starts_with("sha256:") && !tagged.contains(d.as_str()))
        .filter(|d| !lookups.read.contains(*d))
        .collect();
    if unknown.is_empty() {
        return Ok(plan);
    }
    let mut reads = futures_util::stream::iter(unknown)
        .map(|d| async move { (d, client.manifest_opt(r, d).await) })
        .buffer_unordered(LOOKUPS_AT_ONCE);
    while let Some((d, m)) = reads.next().await {
        if let Some(m) = m?
            && m.is_index()
        {
            let kids = m.children().into_iter().map(|(c, _)| c).collect();
            lookups.indexes.insert(d.clone(), kids);
        }
        lookups.read.insert(d.clone());
    }
    drop(reads);
    Ok(plan_with(tags, records, keep, &lookups.indexes))
}

/// [`make_plan`] with the untagged indexes known so far.
fn plan_with(
    tags: &[TagInfo],
    records: &Protection,
    keep: usize,
    untagged_indexes: &BTreeMap<String, Vec<String>>,
) -> Plan {
    let mut children: BTreeMap<&str, &[String]> = untagged_indexes
        .iter()
        .map(|(d, k)| (d.as_str(), k.as_slice()))
        .collect();
    for t in tags.iter().filter(|t| t.index) {
        children.insert(&t.digest, &t.children);
    }
    let recorded = |d: &str| records.digests.contains_key(d);
    let mut closure: BTreeMap<String, Vec<String>> = BTreeMap::new();

    // Up: a tagged index holding a digest a record names (its pull path).
    for t in tags.iter().filter(|t| t.index) {
        if let Some(c) = t.children.iter().find(|c| recorded(c)) {
            closure
                .entry(t.digest.clone())
                .or_default()
                .push(format!("index holding the recorded {}", short(c)));
        }
    }
    // Down, to a fixed point (an index may hold an index): every child of a protected index.
    loop {
        let mut added = Vec::new();
        for (idx, kids) in &children {
            if !recorded(idx) && !closure.contains_key(*idx) {
                continue;
            }
            for k in kids
                .iter()
                .filter(|k| !recorded(k) && !closure.contains_key(*k))
            {
                added.push((
                    k.clone(),
                    format!("child of the protected index {}", short(idx)),
                ));
            }
        }
        if added.is_empty() {
            break;
        }
        for (k, why) in added {
            closure.entry(k).or_default().push(why);
        }
    }

    // The N newest by build time, and every tag whose build time is unknown: kept, with what
    // they point at and hold.
    let unknown_time: BTreeSet<String> = tags
        .iter()
        .filter(|t| build_time(t.created.as_deref()).is_none())
        .map(|t| t.tag.clone())
        .collect();
    let newest = tags
        .iter()
        .filter(|t| !unknown_time.contains(&t.tag))
        .take(keep);
    let mut kept_by_tag: HashMap<String, String> = HashMap::new();
    for t in newest.chain(tags.iter().filter(|t| unknown_time.contains(&t.tag))) {
        for d in std::iter::once(&t.digest).chain(&t.children) {
            kept_by_tag
                .entry(d.clone())
                .or_insert_with(|| t.tag.clone());
        }
    }
    let mut delete = Vec::new();
    for t in tags {
        if !recorded(&t.digest)
            && !closure.contains_key(&t.digest)
            && !kept_by_tag.contains_key(&t.digest)
            && !delete.contains(&t.digest)
        {
            delete.push(t.digest.clone());
        }
    }
    Plan {
        closure,
        kept_by_tag,
        unknown_time,
        delete,
    }
}

/// `imagetrail registry prune`.
pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let r = repo_ref(&args.repository)?;
    let repo = r.repo();
    let client = crate::track::deploy::client(&args.access)?;
    let state = &args.state.state_dir;
    // The files, or PostgreSQL: an unreachable database stops the prune here, before the
    // registry is asked anything.
    let store = args
        .state
        .open(&args.database)
        .context("prune deletes nothing without its records")?;

    // 1. Every digest the records name (every file under the state directory, every row of
    //    the database); anything that cannot be read stops the prune before the registry is
    //    asked anything.
    let records = store.protection()?;
    // 2. The tags, newest first; 3. the plan.
    let tags = tag_infos(&client, &r).await?;
    let mut lookups = Lookups::default();
    let plan = make_plan(&client, &r, &tags, &records, args.keep, &mut lookups).await?;

    let mut by_digest: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for t in &tags {
        by_digest.entry(&t.digest).or_default().push(&t.tag);
    }
    println!(
        "{} {} tags; keeping the {} newest{}",
        sanitize(&repo),
        tags.len(),
        args.keep,
        if args.yes {
            ""
        } else {
            " (dry run: nothing is deleted without --yes)"
        }
    );
    match &records.database {
        None => println!(
            "records: {} ({} files read; every digest named in any of them is kept)",
            sanitize(&state.display().to_string()),
            records.files
        ),
        Some(target) => println!(
            "records: PostgreSQL at {} ({} digests named by its deployments; every one is kept)",
            sanitize(target),
            records.digests.len()
        ),
    }
    for d in &records.doubts {
        println!(
            "in doubt {}: {}",
            sanitize(&d.path.display().to_string()),
            sanitize(&d.why)
        );
    }
    let newest: BTreeSet<&str> = tags
        .iter()
        .filter(|t| !plan.unknown_time.contains(&t.tag))
        .take(args.keep)
        .map(|t| t.tag.as_str())
        .collect();
    for t in &tags {
        let mut reasons: Vec<String> = Vec::new();
        if newest.contains(t.tag.as_str()) {
            reasons.push(format!("one of the {} newest tags", args.keep));
        }
        if plan.unknown_time.contains(&t.tag) {
            reasons.push(format!(
                "build time unknown (created {}): never pruned by age",
                t.created
                    .as_deref()
                    .map(|c| format!("{:?}", sanitize(c)))
                    .unwrap_or_else(|| "missing".into())
            ));
        }
        if let Some(named) = records.digests.get(&t.digest) {
            reasons.extend(record_reasons(named, &repo));
        }
        if let Some(p) = plan.closure.get(&t.digest) {
            reasons.extend(p.iter().cloned());
        }
        if !newest.contains(t.tag.as_str())
            && let Some(k) = plan.kept_by_tag.get(&t.digest)
            && k != &t.tag
        {
            reasons.push(format!(
                "shares its digest with the kept tag {} (deleting the digest deletes every tag on it)",
                sanitize(k)
            ));
        }
        if reasons.is_empty() {
            let sharing: Vec<String> = by_digest[t.digest.as_str()]
                .iter()
                .filter(|o| **o != t.tag)
                .map(|o| sanitize(o))
                .collect();
            println!(
                "delete {:<20} {}  older than the {} newest tags, in no record{}",
                sanitize(&t.tag),
                t.digest,
                args.keep,
                if sharing.is_empty() {
                    String::new()
                } else {
                    format!(" (also removes the tags {})", sharing.join(", "))
                }
            );
        } else {
            println!(
                "keep   {:<20} {}  {}",
                sanitize(&t.tag),
                t.digest,
                reasons.join("; ")
            );
        }
    }
    if !args.yes {
        println!(
            "{} manifest(s) would be deleted; run again with --yes to delete them",
            plan.delete.len()
        );
        return Ok(ExitCode::Success);
    }
    // A deployment recorded while the plan was made must still protect its digest (and what
    // it reaches): the records are read and the plan made again, and only what both plans
    // delete is deleted.
    let again = store.protection()?;
    let recheck = make_plan(&client, &r, &tags, &again, args.keep, &mut lookups).await?;
    let mut deleted = 0;
    for d in &plan.delete {
        if !recheck.delete.contains(d) {
            let mut why = again
                .digests
                .get(d)
                .map(|n| record_reasons(n, &repo))
                .unwrap_or_default();
            why.extend(recheck.closure.get(d).cloned().unwrap_or_default());
            println!("kept   {d}  recorded while pruning: {}", why.join("; "));
            continue;
        }
        client.delete(&r, d).await?;
        println!("deleted {d}");
        deleted += 1;
    }
    println!(
        "{deleted} manifest(s) deleted; run the registry's garbage-collect (without --delete-untagged) to free the blobs"
    );
    Ok(ExitCode::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_times_read_dates_alone_as_midnight_utc_and_junk_as_unknown() {
        let t = |s: &str| build_time(Some(s)).map(|t| t.to_rfc3339());
        assert_eq!(
            t("2026-06-01").as_deref(),
            Some("2026-06-01T00:00:00+00:00")
        );
        assert_eq!(
            t("2026-06-01T12:30:00").as_deref(),
            Some("2026-06-01T12:30:00+00:00")
        );
        assert_eq!(
            t("2026-06-01T14:00:00+02:00").as_deref(),
            Some("2026-06-01T12:00:00+00:00")
        );
        assert!(build_time(Some("2026-06-01")) > build_time(Some("2026-05-31T23:59:59Z")));
        for junk in [
            "",
            "last tuesday",
            "2026-13-01",
            "\u{202e}2026-06-01",
            &"9".repeat(100_000),
        ] {
            assert_eq!(build_time(Some(junk)), None, "{junk:.20}");
        }
        assert_eq!(build_time(None), None);
    }

    #[test]
    fn display_keys_make_loopback_spellings_and_case_one() {
        let same = same_repo_for_display;
        assert!(same("localhost:5000/team/cli", "127.0.0.1:5000/team/cli"));
        assert!(same("LOCALHOST:5000/Team/Cli", "[::1]:5000/team/cli"));
        assert!(same("registry.example.com:443/a", "Registry.Example.com/a"));
        assert!(!same("localhost:5000/a", "localhost:5001/a"));
        assert!(!same("registry.example.com/a", "localhost/a"));
    }
}
