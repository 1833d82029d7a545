//! The `atomic scan` job: targets from `/scanin` (or named images), one outcome per target,
//! and the three output files.
//!
//! * [`settings`]: flags, `IMAGETRAIL_*` and the legacy variables, checked.
//! * [`targets`]: the `/scanin` directories or the named images.
//! * [`outcome`]: one target's work (engine → labels → verify | register | deploy).
//! * [`outputs`]: the result files, written atomically.
//!
//! Flow: check the settings and that results can be written, connect to the engine, process the
//! targets concurrently (bounded, order kept), write the files, print one status line per target
//! and a summary, and choose the exit code.

pub mod outcome;
pub mod outputs;
pub mod settings;
pub mod targets;

use std::path::{Path, PathBuf};

use futures_util::StreamExt;

use crate::cli::{Format, ImagesArgs, ScanArgs, ScanType};
use crate::engine::{Engine, resolve_endpoint};
use crate::error::Error;
use crate::exit::ExitCode;
use crate::terminal::sanitize;
use outcome::{Context, Outcome};
use settings::Settings;
use targets::Target;

/// `imagetrail scan [TYPE]`: the atomic entry point.
pub async fn run_scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&args.opts, args.scan_type)?;
    check_deploy(&settings)?;
    let targets = targets::from_scanin(&args.scanin, settings.image_name.as_deref())?;
    // Under atomic, /scanout is a mount that exists; a missing one means the results would be
    // lost, so nothing is done (and nothing registered) without it.
    outputs::check_writable(&args.scanout, false)?;
    let uuid_base = args.scanin.to_string_lossy().into_owned();
    run(settings, targets, Some((args.scanout, uuid_base))).await
}

/// `imagetrail register|verify IMAGE...`.
pub async fn run_images(args: ImagesArgs, scan_type: ScanType) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&args.opts, scan_type)?;
    check_deploy(&settings)?;
    let targets = targets::from_names(&args.images)?;
    let output = match args.output {
        Some(dir) => {
            outputs::check_writable(&dir, true)?;
            let base = dir.to_string_lossy().into_owned();
            Some((dir, base))
        }
        None => None,
    };
    run(settings, targets, output).await
}

fn check_deploy(settings: &Settings) -> Result<(), Error> {
    if settings.scan_type == ScanType::Deploy && settings.server.is_none() {
        return Err(Error::Usage(
            "the deploy scan type records deployments on a server: set SERVER or --server".into(),
        ));
    }
    Ok(())
}

/// The process's user id, for Podman's rootless socket path.
fn uid() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .ok()
        .map(|m| m.uid().to_string())
}

async fn connect(settings: &Settings) -> Result<Engine, Error> {
    let env = |name: &str| {
        if name == "UID" {
            uid()
        } else {
            settings::env_var(name)
        }
    };
    let endpoint = resolve_endpoint(settings.host.as_deref(), &env, &|p: &Path| p.exists())?;
    Ok(Engine::connect(endpoint).await?)
}

async fn run(
    settings: Settings,
    targets: Vec<Target>,
    output: Option<(PathBuf, String)>,
) -> anyhow::Result<ExitCode> {
    let engine = connect(&settings).await?;
    let client = settings.client().map_err(Error::from)?;
    // IMAGE_NAME names the image in payloads only for the target that is that image.
    let image_name_id = match &settings.image_name {
        // A name the engine rejects or does not know only means no target is named by it.
        Some(name) => engine
            .image(name)
            .await
            .ok()
            .flatten()
            .and_then(|i| i.id)
            .map(|id| crate::engine::strip_sha(&id)),
        None => None,
    };
    let ctx = Context {
        settings: &settings,
        engine: &engine,
        client: client.as_ref(),
        image_name_id,
    };
    let outcomes: Vec<Outcome> = futures_util::stream::iter(targets)
        .map(|t| outcome::process(&ctx, t))
        .buffered(settings.concurrency)
        .collect()
        .await;
    let outcomes = dedupe(outcomes);

    if let Some((dir, uuid_base)) = &output {
        write_outputs(dir, uuid_base, &outcomes, &settings, &engine).await?;
    }
    print_report(
        &outcomes,
        &settings,
        output.as_ref().map(|(d, _)| d.as_path()),
    );

    let failed = outcomes.iter().any(|o| !o.successful)
        || (settings.scan_type == ScanType::Verify
            && outcomes.iter().any(|o| !o.problems.is_empty()));
    Ok(if failed && settings.exit_code != 0 {
        ExitCode::Custom(settings.exit_code)
    } else {
        ExitCode::Success
    })
}

/// Two names for one image make one target (the first one named).
fn dedupe(outcomes: Vec<Outcome>) -> Vec<Outcome> {
    let mut seen = std::collections::HashSet::new();
    outcomes
        .into_iter()
        .filter(|o| seen.insert(o.dir.clone()))
        .collect()
}

async fn write_outputs(
    dir: &Path,
    uuid_base: &str,
    outcomes: &[Outcome],
    settings: &Settings,
    engine: &Engine,
) -> Result<(), Error> {
    let stamp = chrono::Local::now();
    for o in outcomes {
        let target_dir = dir.join(&o.dir);
        std::fs::create_dir_all(&target_dir).map_err(|source| Error::Output {
            path: target_dir.clone(),
            source,
        })?;
        let files = [
            ("json", outputs::atomic_json(o, settings, uuid_base)),
            (outputs::LEGACY_FILE, outputs::legacy_json(o, settings)),
        ];
        for (name, bytes) in files {
            if let Some(kept) = outputs::write_atomic(&target_dir, name, &bytes, &stamp)? {
                tracing::warn!(
                    "{} already held results; the old file was kept as {}",
                    target_dir.join(name).display(),
                    kept.display()
                );
            }
        }
    }
    let info = match engine.info().await {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(
                "{}; environment.json gets no engine info",
                sanitize(&e.to_string())
            );
            serde_json::Value::Object(Default::default())
        }
    };
    let bytes = outputs::environment_json(info, outcomes, settings);
    if let Some(kept) = outputs::write_atomic(dir, "environment.json", &bytes, &stamp)? {
        tracing::warn!(
            "{} already existed; the old file was kept as {}",
            dir.join("environment.json").display(),
            kept.display()
        );
    }
    Ok(())
}

/// stdout: one status line per target (pipelines grep them), then a one-line summary; or one
/// JSON document with `--format json`. Every untrusted string is escaped first.
fn print_report(outcomes: &[Outcome], settings: &Settings, output: Option<&Path>) {
    let summary = summary_line(outcomes, settings, output);
    match settings.format {
        Format::Text => {
            let mut text = String::new();
            for o in outcomes {
                text.push_str(&format!(
                    "Scanner execution status: {}\n",
                    if o.successful { "True" } else { "False" }
                ));
            }
            text.push_str(&sanitize(&summary));
            text.push('\n');
            print!("{text}");
            // Details go to the log on stderr: failures and problems at warn (shown by
            // default), successes at info (-v); `-q` silences them.
            for o in outcomes {
                let name = sanitize(&cap_line(
                    &o.image_name.clone().unwrap_or_else(|| o.dir.clone()),
                ));
                let detail = sanitize(&cap_line(&outputs::full_summary(o)));
                if o.successful {
                    tracing::info!("{name}: {detail}");
                } else {
                    tracing::warn!("{name}: {detail}");
                }
                for p in &o.problems {
                    tracing::warn!("{name}: {}", sanitize(&cap_line(&p.message)));
                }
            }
        }
        Format::Json => {
            let targets: Vec<serde_json::Value> = outcomes
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "target": o.dir,
                        "image": o.image_name,
                        "object": o.object.as_ref().map(|x| x.kind.as_str()),
                        "successful": o.successful,
                        "summary": outputs::full_summary(o),
                        "labels": o.labels.as_ref().map(|l| serde_json::Value::Object(l.to_json())),
                        "problems": o.problems,
                        "errors": o.errors,
                        "server answer": o.answer,
                    })
                })
                .collect();
            let doc = serde_json::json!({"targets": targets, "summary": summary});
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serialises")
            );
        }
    }
}

/// Keep one stderr line readable: a 1 MiB label is cut.
fn cap_line(text: &str) -> String {
    let (kept, cut) = crate::terminal::cap(text, 2000);
    if cut {
        format!("{kept}... ({} bytes)", text.len())
    } else {
        kept.to_string()
    }
}

fn summary_line(outcomes: &[Outcome], settings: &Settings, output: Option<&Path>) -> String {
    let n = outcomes.len();
    let ok = outcomes.iter().filter(|o| o.successful).count();
    let failed = n - ok;
    let targets = if n == 1 {
        "1 target".to_string()
    } else {
        format!("{n} targets")
    };
    let mut line = match settings.scan_type {
        ScanType::Verify => {
            let problems: usize = outcomes.iter().map(|o| o.problems.len()).sum();
            format!("{targets} verified: {problems} label problem(s), {failed} could not be read")
        }
        ScanType::Register if settings.server.is_none() => format!(
            "{targets}: labels read and checked, nothing was registered (no server given; set SERVER or --server), {failed} failed"
        ),
        ScanType::Register => format!("{targets}: {ok} registered, {failed} failed"),
        ScanType::Deploy => format!(
            "{targets}: {ok} recorded as deployed in {}, {failed} failed",
            settings.environment
        ),
    };
    match output {
        Some(dir) => line.push_str(&format!("; results in {}", dir.display())),
        None => line.push_str("; no result files written (use --output DIR)"),
    }
    line
}
