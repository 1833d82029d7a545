//! The deploy job: resolve the reference to a digest, read the build metadata, write the
//! records, notify the tracking endpoints.
//!
//! Nothing is written before the registry has confirmed the digest: a tag is resolved (an
//! index gives both its own digest and the platform manifest's), a digest is fetched and
//! hashed, and an unknown one is refused.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::cli::DeployArgs;
use crate::error::Error;
use crate::exit::ExitCode;
use crate::records::{Deployment, DeploymentRecord, ImageRecord, RecordsError, check_names};
use crate::registry::{Client, ClientOptions, Resolved};
// Values printed on their own lines: escaped and cut (see `crate::output`).
use crate::output::value as sanitize;

/// The OCI label keys the record keeps.
pub const DESCRIPTION: &str = "org.opencontainers.image.description";
/// Build time label.
pub const CREATED: &str = "org.opencontainers.image.created";
/// Git revision label.
pub const REVISION: &str = "org.opencontainers.image.revision";
/// Source URL label.
pub const SOURCE: &str = "org.opencontainers.image.source";
/// Title label.
pub const TITLE: &str = "org.opencontainers.image.title";

/// A registry client from the CLI's registry options.
pub fn client(opts: &crate::cli::RegistryOpts) -> anyhow::Result<Client> {
    Ok(Client::new(ClientOptions {
        insecure: opts.insecure_registries.clone(),
        docker_config: opts.docker_config.clone(),
        connect_timeout: Some(opts.registry_connect_timeout),
        read_timeout: Some(opts.registry_read_timeout),
    })?)
}

/// A usage error for records names, so `..`, empty and already-taken names exit 2.
pub fn usage_if_name(e: RecordsError) -> anyhow::Error {
    match e {
        RecordsError::InvalidName { .. }
        | RecordsError::NameTaken { .. }
        | RecordsError::InvalidField { .. }
        | RecordsError::OutOfOrder { .. } => Error::Usage(e.to_string()).into(),
        other => Error::Records(other).into(),
    }
}

/// The image part of a record from a resolved reference (labels capped for storage).
pub fn image_record(resolved: &Resolved) -> ImageRecord {
    let label = |k: &str| {
        resolved
            .labels
            .get(k)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(|v| {
                crate::terminal::cap(v, crate::terminal::MAX_VALUE_BYTES)
                    .0
                    .to_string()
            })
    };
    ImageRecord {
        repo: resolved.reference.repo(),
        tag: resolved.reference.tag.clone(),
        digest: resolved.digest.clone(),
        index_digest: resolved.index_digest.clone(),
        platform: resolved.platform.clone(),
        description: label(DESCRIPTION),
        built_at: label(CREATED).or_else(|| resolved.config.created.clone()),
        revision: label(REVISION),
        source: label(SOURCE),
        title: label(TITLE),
    }
}

/// `imagetrail deploy`.
pub async fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    let reference =
        crate::registry::parse_reference(&args.image).map_err(|e| Error::Usage(e.to_string()))?;
    if args.require_digest && reference.digest.is_none() {
        return Err(Error::Usage(format!(
            "{} names a tag, but --require-digest asks for a digest (tags move): \
             deploy {}@sha256:<digest>, e.g. the digest `docker push` printed",
            args.image,
            reference.repo()
        ))
        .into());
    }
    let platform = args
        .platform
        .parse::<crate::reference::Platform>()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let app = args
        .app
        .clone()
        .filter(|a| !a.is_empty())
        .or_else(|| args.name.clone().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| reference.familiar_path().to_string());
    // Check the names before any network call, so a bad --env fails fast and writes nothing.
    check_names(&args.env, &app).map_err(usage_if_name)?;
    // Opened before the registry is asked: an unreachable database fails fast too.
    let store = args.state.open(&args.database)?;
    let deployed_at = match &args.deployed_at {
        Some(t) => crate::output::parse_time(t).map_err(Error::Usage)?,
        None => now_secs(),
    };
    let by = args
        .by
        .clone()
        .filter(|b| !b.is_empty())
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".into());
    let api_key = match &args.api_key_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| {
                    Error::Usage(format!("cannot read the API key file {}: {e}", p.display()))
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };

    let client = client(&args.registry)?;
    let resolved = client.resolve(&reference, &platform).await?;

    let image = image_record(&resolved);
    let mut deployment = Deployment {
        app: app.clone(),
        image,
        deployment: DeploymentRecord {
            deployed_at,
            deployed_by: by,
            workspace: args.env.clone(),
            name: args.name.clone().filter(|n| !n.is_empty()),
            event_id: Uuid::now_v7(),
        },
    };
    if args.deployed_at.is_some()
        && let Some(cur) = store.current(&args.env, &app).map_err(usage_if_name)?
        && cur.deployment.deployed_at > deployed_at
    {
        return Err(Error::Usage(format!(
            "--deployed-at {} is before the last recorded deployment of {app} in {} ({}); \
             the history is kept in time order, so only later deployments can be added",
            crate::output::time(&deployed_at),
            args.env,
            crate::output::time(&cur.deployment.deployed_at)
        ))
        .into());
    }
    // Without --deployed-at the store takes the time under its lock (history in time order).
    let stamp = match args.deployed_at {
        Some(_) => crate::records::Stamp::Given,
        None => crate::records::Stamp::WriteTimeSeconds,
    };
    let checks = crate::records::Checks {
        stamp,
        ..Default::default()
    };
    let recorded = store
        .record(&deployment, checks)
        .map_err(usage_if_name)
        .context("nothing was recorded")?;
    if let Some(t) = recorded.stamped {
        deployment.deployment.deployed_at = t;
    }
    if let Some(t) = &recorded.moved_torn_tail {
        eprintln!(
            "imagetrail: warning: {}:{}: an incomplete entry (an earlier append was cut off) was moved to {}.torn before this deployment was added",
            t.path.display(),
            t.line,
            t.path.display()
        );
    }
    print_deployed(&deployment);

    let mut failed = false;
    let notifier = crate::tracking_api::Notifier::new(api_key)?;
    // One Idempotency-Key per deployment, the same on every retry: its event id.
    let key = deployment.deployment.event_id.to_string();
    let body = crate::tracking_api::DeploymentBody::of(&deployment);
    for endpoint in &args.endpoints {
        if endpoint.is_empty() {
            continue;
        }
        match notifier.send(endpoint, &body, &key).await {
            Ok(status) => println!("notified {endpoint}: HTTP {status}"),
            Err(e) => {
                failed = true;
                eprintln!(
                    "imagetrail: error: the deployment is recorded, but notifying {endpoint} failed: {e:#}"
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::Failure
    } else {
        ExitCode::Success
    })
}

fn now_secs() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now)
}

fn print_deployed(d: &Deployment) {
    let i = &d.image;
    println!(
        "deployed {}{} to {} as {} ({})",
        sanitize(&i.repo),
        i.tag
            .as_deref()
            .map(|t| format!(":{}", sanitize(t)))
            .unwrap_or_default(),
        crate::output::where_label(&d.deployment.workspace, &d.app),
        i.digest,
        i.platform,
    );
    if let Some(idx) = &i.index_digest {
        println!("  index     {}", sanitize(idx));
    }
    if let Some(b) = &i.built_at {
        println!("  built     {}", sanitize(b));
    }
    if let Some(r) = &i.revision {
        println!("  revision  {}", sanitize(r));
    }
    if let Some(desc) = &i.description {
        println!("  about     {}", sanitize(desc));
    }
    println!(
        "  by        {} at {}",
        sanitize(&d.deployment.deployed_by),
        crate::output::time(&d.deployment.deployed_at)
    );
}
