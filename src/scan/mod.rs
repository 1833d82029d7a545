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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Targets read from the engine and waiting for their turn with the server: enough to keep
/// the server calls fed, few enough that memory does not grow with the number of targets.
const READ_AHEAD: usize = 32;

/// The compact `environment.json` form of each image inspect, made once per image: many
/// targets (the containers of one image) share it.
#[derive(Default)]
struct CompactImages(Mutex<HashMap<String, Arc<str>>>);

/// An inspect as one compact JSON line for `environment.json`: `sha256:` stripped as atomic
/// does, and the labels a target was refused for left out.
fn compact_inspect(mut v: serde_json::Value, capped: &[(String, usize)]) -> String {
    crate::engine::strip_sha_fields(&mut v);
    omit_capped_labels(&mut v, capped);
    v.to_string()
}

/// A target's inspects in `environment.json`'s compact form.
#[derive(Default)]
struct Compacted {
    /// The image's, keyed by id (shared by the targets of one image).
    image: Option<(String, Arc<str>)>,
    /// The container's, keyed by id.
    container: Option<(String, String)>,
}

/// Make a target's inspects compact as soon as it is read, and keep of the parsed container
/// inspect only the fields the rest of the work reads: a parsed inspect takes several times
/// its text's memory, and many targets are read ahead of the server calls.
fn compact(o: &mut Outcome, images: &CompactImages) -> Compacted {
    // A label cut at the cap is not copied whole into environment.json either.
    let capped: Vec<(String, usize)> = o
        .labels
        .as_ref()
        .map(|l| l.capped.clone())
        .unwrap_or_default();
    let Some(obj) = o.object.as_mut() else {
        return Compacted::default();
    };
    let image = obj.image.as_ref().map(|i| {
        let id = crate::engine::strip_sha(i.get("Id").and_then(|v| v.as_str()).unwrap_or_default());
        if !capped.is_empty() {
            let text: Arc<str> = compact_inspect((**i).clone(), &capped).into();
            return (id, text);
        }
        let mut cache = images.0.lock().expect("not poisoned");
        let text = cache
            .entry(id.clone())
            .or_insert_with(|| compact_inspect((**i).clone(), &[]).into())
            .clone();
        (id, text)
    });
    let container = obj.container.take().map(|c| {
        // The only holder of a container's inspect: no copy needed.
        let v = Arc::try_unwrap(c).unwrap_or_else(|c| (*c).clone());
        let slim = serde_json::json!({
            "Id": v.get("Id"),
            "Image": v.get("Image"),
            "Config": {"Image": v.get("Config").and_then(|c| c.get("Image"))},
        });
        obj.container = Some(Arc::new(slim));
        (obj.id.clone(), compact_inspect(v, &capped))
    });
    Compacted { image, container }
}

/// What is kept of one target once its files are written: enough for stdout, the log, the
/// exit code and `environment.json`, so memory stays flat however many targets there are.
struct Done {
    /// The output directory name.
    dir: String,
    successful: bool,
    problems: usize,
    /// Its result files could not be written (the reason is in `log`).
    unwritten: bool,
    /// The log line and the problem lines, already capped and escaped.
    log: Vec<String>,
    /// The `--format json` entry.
    json: Option<serde_json::Value>,
    /// Compact inspect JSON (`sha256:` stripped) of the image, keyed by id (shared by the
    /// targets of one image).
    image: Option<(String, Arc<str>)>,
    /// Compact inspect JSON of the container, keyed by id.
    container: Option<(String, String)>,
}

impl Done {
    /// This target's files could not be written: that is its failure (the others' results
    /// and `environment.json` are still written).
    fn unwritten(&mut self, e: &Error) {
        self.successful = false;
        self.unwritten = true;
        let name = self
            .log
            .first()
            .and_then(|l| l.split_once(": "))
            .map(|(n, _)| n.to_string())
            .unwrap_or_else(|| escape_name(&self.dir));
        self.log.push(format!(
            "{name}: its result files could not be written: {}",
            escape_name(&e.to_string())
        ));
    }
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
        Some(name) => engine.image(name).await.ok().flatten().and_then(|i| {
            i.get("Id")
                .and_then(|v| v.as_str())
                .map(crate::engine::strip_sha)
        }),
        None => None,
    };
    let results = match &output {
        Some((dir, _)) => Some(outputs::ResultsDir::open(dir)?),
        None => None,
    };
    let ctx = Context {
        settings: &settings,
        engine: &engine,
        client: client.as_ref(),
        image_name_id,
    };
    let ctx = &ctx;
    let stamp = chrono::Local::now();
    let claimed = std::sync::Mutex::new(std::collections::HashSet::new());
    let compact_images = CompactImages::default();
    // Each target is read from the engine by its inspects (which `environment.json` needs
    // anyway), many at once and ahead of the work with the server, and passed on in order as
    // it arrives. No list request first: it made every target wait for it, and it costs the
    // engine as much as the inspects it would save.
    let (read_tx, mut read_rx) = tokio::sync::mpsc::channel::<(Outcome, Compacted)>(READ_AHEAD);
    let compact_images = &compact_images;
    let output_ref = &output;
    let reads = async move {
        let mut reads = futures_util::stream::iter(targets)
            .map(|t| async {
                let mut o = outcome::read(ctx, t).await;
                let compacted = match output_ref {
                    Some(_) => compact(&mut o, compact_images),
                    None => Compacted::default(),
                };
                (o, compacted)
            })
            .buffered(crate::engine::ENGINE_IN_FLIGHT);
        while let Some(o) = reads.next().await {
            if read_tx.send(o).await.is_err() {
                break;
            }
        }
    };
    let read = futures_util::stream::poll_fn(move |cx| read_rx.poll_recv(cx));
    // Each target stages its files as soon as its work is done, so file-system latency
    // overlaps with the network; `buffered` keeps the order of the results.
    let work = read
        .map(|(mut o, compacted)| async {
            // Two names for one image (full id, short id, `sha256:` id...) make one target,
            // claimed before anything is sent, so it is registered once.
            if !claimed.lock().expect("not poisoned").insert(o.dir.clone()) {
                return None;
            }
            outcome::act(ctx, &mut o).await;
            let staged = match (&results, &output) {
                (Some(rd), Some((_, uuid_base))) => {
                    let files = [
                        ("json", outputs::atomic_json(&o, &settings, uuid_base)),
                        (outputs::LEGACY_FILE, outputs::legacy_json(&o, &settings)),
                    ];
                    rd.stage_target(&o.dir, &files)
                }
                _ => Ok(()),
            };
            let mut done = finish(o, &settings, compacted);
            if let Err(e) = staged {
                done.unwritten(&e);
            }
            Some(done)
        })
        .buffered(settings.concurrency)
        .collect::<Vec<Option<Done>>>();
    // `GET /info` is slow on some engines; it runs while the targets are processed.
    let info = async {
        match output {
            Some(_) => Some(engine.info().await),
            None => None,
        }
    };
    let ((), done, info) = tokio::join!(reads, work, info);
    let mut outcomes: Vec<Done> = done.into_iter().flatten().collect();
    if let Some(rd) = &results {
        let info = info.expect("fetched when there is an output");
        let mut top_failure = write_environment(rd, &outcomes, &settings, info).err();
        let stamp_for_commit = stamp;
        let failures = tokio::task::block_in_place(|| rd.commit(&stamp_for_commit));
        for (target, e) in failures {
            match target {
                Some(t) => {
                    if let Some(d) = outcomes.iter_mut().find(|d| d.dir == t) {
                        d.unwritten(&e);
                    }
                }
                None => top_failure = Some(e),
            }
        }
        if let Some(e) = top_failure {
            tracing::error!(
                "{}; the targets' own result files were still written",
                sanitize(&e.to_string())
            );
            print_report(&outcomes, &settings, Some(rd.path()));
            return Ok(ExitCode::Failure);
        }
    }
    print_report(&outcomes, &settings, results.as_ref().map(|r| r.path()));

    // Not every result file could be written: that is an operational failure (exit 1).
    if outcomes.iter().any(|o| o.unwritten) {
        return Ok(ExitCode::Failure);
    }
    let failed = outcomes.iter().any(|o| !o.successful)
        || (settings.scan_type == ScanType::Verify && outcomes.iter().any(|o| o.problems > 0));
    Ok(if failed && settings.exit_code != 0 {
        ExitCode::Custom(settings.exit_code)
    } else {
        ExitCode::Success
    })
}

/// A target name for stderr: control characters (newlines included, so a name cannot split a
/// log line) and invisible formatting characters (U+202E...) escaped, long names cut.
fn escape_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in cap_line(name).chars() {
        if crate::terminal::hidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Keep what is needed of an outcome once its files are written.
fn finish(o: Outcome, settings: &Settings, compacted: Compacted) -> Done {
    let name = escape_name(&o.image_name.clone().unwrap_or_else(|| o.dir.clone()));
    let mut log = vec![format!(
        "{name}: {}",
        escape_name(&outputs::full_summary(&o))
    )];
    log.extend(
        o.problems
            .iter()
            .map(|p| format!("{name}: {}", escape_name(&p.message))),
    );
    let json = (settings.format == Format::Json).then(|| {
        serde_json::json!({
            "target": o.dir,
            "image": o.image_name,
            "object": o.object.as_ref().map(|x| x.kind.as_str()),
            "successful": o.successful,
            "summary": outputs::full_summary(&o),
            "labels": o.labels.as_ref().map(|l| serde_json::Value::Object(l.to_json())),
            "problems": o.problems,
            "errors": o.errors,
            "server answer": o.answer,
        })
    });
    let Compacted { image, container } = compacted;
    Done {
        dir: o.dir,
        successful: o.successful,
        problems: o.problems.len(),
        unwritten: false,
        log,
        json,
        image,
        container,
    }
}

/// Replace each capped label's value in an inspect's `Config.Labels` with a note saying it was
/// left out: the target was refused for it, and a 1 MiB label has no place in the record.
fn omit_capped_labels(inspect: &mut serde_json::Value, capped: &[(String, usize)]) {
    if capped.is_empty() {
        return;
    }
    if let Some(labels) = inspect
        .get_mut("Config")
        .and_then(|c| c.get_mut("Labels"))
        .and_then(|l| l.as_object_mut())
    {
        for (key, len) in capped {
            if let Some(v) = labels.get_mut(key) {
                *v = serde_json::Value::from(format!(
                    "(left out by imagetrail: {len} bytes, over the {} byte limit for a label)",
                    crate::terminal::MAX_VALUE_BYTES
                ));
            }
        }
    }
}

/// Stage `environment.json`, written item by item.
fn write_environment(
    rd: &outputs::ResultsDir,
    outcomes: &[Done],
    settings: &Settings,
    info: Result<serde_json::Value, crate::engine::EngineError>,
) -> Result<(), Error> {
    let mut info = Some(match info {
        Ok(info) => info,
        Err(e) => {
            tracing::warn!(
                "{}; environment.json gets no engine info",
                sanitize(&e.to_string())
            );
            serde_json::Value::Object(Default::default())
        }
    });
    let mut seen = std::collections::HashSet::new();
    let images: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.image.as_ref())
        .filter(|(id, _)| seen.insert(format!("i{id}")))
        .map(|(_, j)| &**j)
        .collect();
    let containers: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.container.as_ref())
        .filter(|(id, _)| seen.insert(format!("c{id}")))
        .map(|(_, j)| j.as_str())
        .collect();
    rd.stage_top("environment.json", &mut |w| {
        outputs::write_environment_json(
            w,
            info.take().unwrap_or_default(),
            &images,
            &containers,
            settings,
        )
    })
}

/// stdout: one status line per target (pipelines grep them), then a one-line summary; or one
/// JSON document with `--format json`. Every untrusted string is escaped first.
fn print_report(outcomes: &[Done], settings: &Settings, output: Option<&Path>) {
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
                for (i, line) in o.log.iter().enumerate() {
                    if o.successful && i == 0 {
                        tracing::info!("{line}");
                    } else {
                        tracing::warn!("{line}");
                    }
                }
            }
        }
        Format::Json => {
            let targets: Vec<&serde_json::Value> =
                outcomes.iter().filter_map(|o| o.json.as_ref()).collect();
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

fn summary_line(outcomes: &[Done], settings: &Settings, output: Option<&Path>) -> String {
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
            let problems: usize = outcomes.iter().map(|o| o.problems).sum();
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
