//! Registry and images overviews, and prune planning (the protected set) and execution.
//!
//! Prune follows the registry's real behaviour (reference §4.3/§4.4): a DELETE by digest
//! removes every tag on that digest, and nothing stops deleting a child of a live index. So
//! the plan works on digests, not tags: a digest is deleted only when no kept tag points at it
//! and it is not protected, and the protected set is the closure of every digest any record
//! names (`deploy-info.yml` and `deploy-history.yml`, every environment and app): the digest
//! itself, its recorded index, every child of a recorded index, and any tagged index in the
//! repository that holds a protected digest.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::cli::{Format, ImagesOverviewArgs, PruneArgs, RegistryOverviewArgs};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::records::{Deployment, ImageRecord, Platform, Store};
use crate::registry::{Client, Reference, RegistryError};
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

/// Tags newest first (by build time, then tag name descending).
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
    out.sort_by(|a, b| {
        let ta = a
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok());
        let tb = b
            .created
            .as_deref()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok());
        tb.cmp(&ta).then_with(|| b.tag.cmp(&a.tag))
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
fn deployed(store: &Store, repo: &str, envs: &[String]) -> anyhow::Result<Vec<Deployment>> {
    let envs = if envs.is_empty() {
        store.environments()?
    } else {
        envs.to_vec()
    };
    let mut out = Vec::new();
    for env in envs {
        store
            .info_path(&env, "x")
            .map_err(crate::track::deploy::usage_if_name)?;
        for app in store.apps(&env)? {
            if let Some(mut d) = store.current(&env, &app)?
                && d.image.repo == repo
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
    let store = Store::new(&args.state.state_dir);
    let envs: Vec<String> = args
        .envs
        .iter()
        .filter(|e| !e.is_empty())
        .cloned()
        .collect();
    let running = deployed(&store, &r.repo(), &envs)?;
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

/// Why a digest may not be deleted.
fn protect(map: &mut BTreeMap<String, BTreeSet<String>>, digest: &str, why: String) {
    map.entry(digest.to_string()).or_default().insert(why);
}

/// Protect a recorded image: its digest for `why` and, when it was deployed from an index,
/// the index for `index_why`; the index also goes into `indexes`, whose children are protected
/// next.
fn protect_recorded(
    map: &mut BTreeMap<String, BTreeSet<String>>,
    indexes: &mut BTreeSet<String>,
    image: &ImageRecord,
    why: String,
    index_why: String,
) {
    protect(map, &image.digest, why);
    if let Some(i) = &image.index_digest {
        protect(map, i, index_why);
        indexes.insert(i.clone());
    }
}

/// `imagetrail registry prune`.
pub async fn prune(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let r = repo_ref(&args.repository)?;
    let repo = r.repo();
    let client = crate::track::deploy::client(&args.access)?;
    let store = Store::new(&args.state.state_dir);

    // 1. Every digest any record names. A record that cannot be read stops the prune: we
    //    cannot know what it protects.
    let mut protected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut recorded_indexes = BTreeSet::new();
    for env in store.environments()? {
        for app in store.apps(&env)? {
            let place = format!("{} in {}", app, env);
            if let Some(d) = store.current(&env, &app)?
                && d.image.repo == repo
            {
                protect_recorded(
                    &mut protected,
                    &mut recorded_indexes,
                    &d.image,
                    format!("deployed now ({place}, deploy-info.yml)"),
                    format!("index of what is deployed now ({place})"),
                );
            }
            let read = store.read_history(&env, &app)?;
            if let Some(t) = &read.torn {
                eprintln!("imagetrail: warning: {t}");
            }
            for d in read.entries.iter().filter(|d| d.image.repo == repo) {
                protect_recorded(
                    &mut protected,
                    &mut recorded_indexes,
                    &d.image,
                    format!("in the history of {place} (deploy-history.yml)"),
                    format!("index recorded in the history of {place}"),
                );
            }
        }
    }
    // 2. Children of recorded indexes (a recorded index is useless without them).
    for idx in &recorded_indexes {
        if let Some(m) = client.manifest_opt(&r, idx).await? {
            for (child, _) in m.children() {
                protect(
                    &mut protected,
                    &child,
                    format!("child of the recorded index {}", short(idx)),
                );
            }
        }
    }

    // 3. The tags, newest first; the first N are kept.
    let tags = tag_infos(&client, &r).await?;
    // 4. A tagged index that holds a protected digest is protected too.
    for t in &tags {
        if let Some(c) = t.children.iter().find(|c| protected.contains_key(*c)) {
            protect(
                &mut protected,
                &t.digest,
                format!("index holding the recorded {}", short(c)),
            );
        }
    }
    let mut kept_by_tag: HashMap<String, String> = HashMap::new();
    for t in tags.iter().take(args.keep) {
        kept_by_tag
            .entry(t.digest.clone())
            .or_insert_with(|| t.tag.clone());
        for c in &t.children {
            kept_by_tag
                .entry(c.clone())
                .or_insert_with(|| t.tag.clone());
        }
    }

    // 5. The plan, per digest.
    let mut by_digest: BTreeMap<String, Vec<&TagInfo>> = BTreeMap::new();
    for t in &tags {
        by_digest.entry(t.digest.clone()).or_default().push(t);
    }
    let mut delete = Vec::new();
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
    for (rank, t) in tags.iter().enumerate() {
        let mut reasons: Vec<String> = Vec::new();
        if rank < args.keep {
            reasons.push(format!("one of the {} newest tags", args.keep));
        }
        if let Some(p) = protected.get(&t.digest) {
            reasons.extend(p.iter().cloned());
        }
        if rank >= args.keep
            && let Some(k) = kept_by_tag.get(&t.digest)
            && k != &t.tag
        {
            reasons.push(format!("shares its digest with the kept tag {k} (deleting the digest deletes every tag on it)"));
        }
        let sharing: Vec<&str> = by_digest[&t.digest]
            .iter()
            .filter(|o| o.tag != t.tag)
            .map(|o| o.tag.as_str())
            .collect();
        if reasons.is_empty() {
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
            if !delete.contains(&t.digest) {
                delete.push(t.digest.clone());
            }
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
            delete.len()
        );
        return Ok(ExitCode::Success);
    }
    for d in &delete {
        client.delete(&r, d).await?;
        println!("deleted {d}");
    }
    println!(
        "{} manifest(s) deleted; run the registry's garbage-collect (without --delete-untagged) to free the blobs",
        delete.len()
    );
    Ok(ExitCode::Success)
}
