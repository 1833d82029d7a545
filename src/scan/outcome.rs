//! One target's work and its outcome: resolve it through the engine, read and check its labels,
//! then verify, register or record the deployment, and report a failure to `/scanner-error`.

use chrono::{DateTime, Local};
use serde_json::{Value, json};

use crate::analytics::{AnalyticsError, Client};
use crate::cli::ScanType;
use crate::engine::{Engine, Object};
use crate::labels::{Labels, Problem};
use crate::scan::settings::Settings;
use crate::scan::targets::{Source, Target};
use crate::tracking_api::DeploymentBody;

/// The original scanner's success sentence for a first registration (its spelling kept:
/// pipelines compare it).
pub const REGISTERED: &str =
    "Registered repository for scan, report will be availble in next run after some time.";

/// The original scanner's success sentence when the server sent a `last_scan_report`.
pub const LAST_REPORT: &str = "Last scan report available in 'Scan Results' field.";

/// One reason a target was not registered (or recorded), in the fields atomic prints under
/// `Results`: what failed, the server's answer or the connection error, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed, e.g. "Registration with http://h/api/v1/register".
    pub failed: String,
    /// The evidence, as atomic prints it: `("Server answer", "401 ...")`,
    /// `("Connection error", ...)`, `("Label", "git-url")`, `("Problem", ...)`, `("Error", ...)`.
    pub details: Vec<(&'static str, String)>,
    /// What the operator should do about it.
    pub todo: String,
    /// The whole story as one sentence (the legacy `Summary`, the log, `/scanner-error`).
    pub message: String,
}

/// What happened to one target.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Output directory name (the `/scanin` dir, or the resolved id of a named image).
    pub dir: String,
    /// Where it came from.
    pub source: Source,
    /// When its work started.
    pub started: DateTime<Local>,
    /// When its work finished.
    pub finished: DateTime<Local>,
    /// The inspected object, when the engine knew it.
    pub object: Option<Object>,
    /// The image name used in payloads.
    pub image_name: Option<String>,
    /// Its labels, when they could be read.
    pub labels: Option<Labels>,
    /// Label problems (the findings of `verify`; also listed by the other scan types).
    pub problems: Vec<Problem>,
    /// Whether the scan did its job for this target.
    pub successful: bool,
    /// What went wrong, one full sentence each (the `message` of each of `failures`).
    pub errors: Vec<String>,
    /// What went wrong, in atomic's `Results` fields.
    pub failures: Vec<Failure>,
    /// One readable sentence about the outcome.
    pub summary: String,
    /// The server's parsed answer on success.
    pub answer: Option<Value>,
    /// What became of the `/scanner-error` report, when one was due.
    pub error_report: Option<String>,
}

impl Outcome {
    /// Record a failure (its sentence also goes to `errors`).
    pub fn fail(&mut self, failure: Failure) {
        self.errors.push(failure.message.clone());
        self.failures.push(failure);
    }

    /// Whether the target could be read at all (its labels were found): atomic's
    /// `Successful` is `"false"` only when it could not.
    pub fn readable(&self) -> bool {
        self.labels.is_some()
    }

    /// The digest the image is known by in a registry (`sha256:...`), from `RepoDigests`.
    pub fn image_digest(&self) -> Option<String> {
        self.object.as_ref().and_then(|o| {
            o.repo_digests()
                .first()
                .and_then(|d| d.split_once('@').map(|(_, d)| d.to_string()))
        })
    }
}

/// A full sentence: ends with a full stop.
fn sentence(text: impl Into<String>) -> String {
    let mut text = text.into();
    if !text.ends_with(['.', '!', '?']) {
        text.push('.');
    }
    text
}

/// The shared, read-only context of a run.
pub struct Context<'a> {
    /// Settings.
    pub settings: &'a Settings,
    /// The engine.
    pub engine: &'a Engine,
    /// The server client, when a server is given.
    pub client: Option<&'a Client>,
    /// The id of `IMAGE_NAME`, when it is set and the engine knows it.
    pub image_name_id: Option<String>,
}

/// Do one target's work. Never fails: every problem ends up in the outcome.
pub async fn process(ctx: &Context<'_>, target: Target) -> Outcome {
    let mut out = read(ctx, target).await;
    act(ctx, &mut out).await;
    out
}

/// Resolve a target through the engine and read its labels; nothing is sent anywhere yet, so
/// two names of one image can be recognised (by `dir`) before either is registered.
pub async fn read(ctx: &Context<'_>, target: Target) -> Outcome {
    let started = Local::now();
    let mut out = Outcome {
        dir: target.dir.clone().unwrap_or_default(),
        source: target.source.clone(),
        started,
        finished: started,
        object: None,
        image_name: None,
        labels: None,
        problems: vec![],
        successful: false,
        errors: vec![],
        failures: vec![],
        summary: String::new(),
        answer: None,
        error_report: None,
    };
    let lookup = match &target.source {
        Source::ScanDir(id) => Some((id.clone(), false)),
        Source::Named(name) => Some((name.clone(), true)),
        Source::Rootfs(_) => ctx.settings.image_name.clone().map(|n| (n, true)),
    };
    match lookup {
        None => out.fail(Failure {
            failed: "Reading the target's labels".into(),
            details: vec![("Error", "a --rootfs target has no image to read labels from".into())],
            todo: "Set IMAGE_NAME to the image the root filesystem belongs to, then scan again.".into(),
            message: "A --rootfs target has no image to read labels from; set IMAGE_NAME to the image the root filesystem belongs to.".into(),
        }),
        Some((what, images_first)) => match ctx.engine.resolve(&what, images_first).await {
            Ok(object) => {
                if out.dir.is_empty() {
                    out.dir = object.id.clone();
                }
                out.image_name = Some(image_name(ctx, &object));
                let labels = Labels::from_map(&object.labels);
                out.problems = labels.verify();
                out.labels = Some(labels);
                out.object = Some(object);
            }
            Err(e) => out.fail(Failure {
                failed: "Reading the target from the container engine".into(),
                details: vec![("Error", e.to_string())],
                todo: "Check that the engine socket is mounted into the scanner and that the image or container still exists, then scan again.".into(),
                message: sentence(e.to_string()),
            }),
        },
    }
    if out.dir.is_empty() {
        // A named image the engine does not know: name its directory after the name.
        out.dir = match &target.source {
            Source::Named(n) => n.replace(['/', ':', '@'], "_"),
            _ => "unknown".into(),
        };
    }
    if out.dir.is_empty() || out.dir == "." || out.dir == ".." {
        out.dir = format!("_{}", out.dir);
    }
    out
}

/// The scan type's work for a target that was read, then the `/scanner-error` report of a
/// failure.
pub async fn act(ctx: &Context<'_>, out: &mut Outcome) {
    if out.errors.is_empty() {
        match ctx.settings.scan_type {
            ScanType::Verify => verify(out),
            ScanType::Register => register(ctx, out).await,
            ScanType::Deploy => deploy(ctx, out).await,
        }
    }
    if !out.errors.is_empty() {
        out.successful = false;
        report_failure(ctx, out).await;
    }
    out.finished = Local::now();
}

/// A failed call to the server, in atomic's `Results` fields: the server's answer (or the
/// connection error) and what to do about it.
fn server_failure(what: &str, e: &AnalyticsError) -> Failure {
    let message = sentence(format!("{what} failed: {e}"));
    let (details, todo) = match e {
        AnalyticsError::Unreachable {
            reason,
            attempts,
            url,
        } => (
            vec![(
                "Connection error",
                format!("{reason} ({attempts} attempt(s))"),
            )],
            format!(
                "Check that the server at {url} is running and reachable from the scanner container (SERVER), then scan again."
            ),
        ),
        AnalyticsError::Rejected {
            status, message, ..
        } => {
            let answer = if message.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {message}")
            };
            let todo = match status {
                401 | 403 => {
                    "Check the server token (SERVER_TOKEN or --token-file) with the server's operators, then scan again."
                }
                404 | 405 => {
                    "Check the server URL and the API prefix (SERVER, --api-prefix), then scan again."
                }
                400..=499 => {
                    "The server refused the request; see its answer, fix what it names, then scan again."
                }
                _ => {
                    "The server failed; scan again later, and tell the server's operators if it keeps failing."
                }
            };
            (vec![("Server answer", answer)], todo.to_string())
        }
        AnalyticsError::NotJson {
            status, excerpt, ..
        } => (
            vec![("Server answer", format!("{status}, not JSON: {excerpt}"))],
            "Check that SERVER points at the analytics API and not at a web page, then scan again."
                .to_string(),
        ),
        other => (
            vec![("Error", other.to_string())],
            "Check the server settings (SERVER, SERVER_TOKEN), then scan again.".to_string(),
        ),
    };
    Failure {
        failed: format!("{what} with {}", e_url(e)),
        details,
        todo,
        message,
    }
}

/// The URL an error names, or "the server".
fn e_url(e: &AnalyticsError) -> String {
    match e {
        AnalyticsError::Unreachable { url, .. }
        | AnalyticsError::Rejected { url, .. }
        | AnalyticsError::NotJson { url, .. } => url.clone(),
        _ => "the server".into(),
    }
}

/// `IMAGE_NAME` when it is this very image, else the image's first tag, else its id.
fn image_name(ctx: &Context<'_>, object: &Object) -> String {
    if let (Some(name), Some(id)) = (&ctx.settings.image_name, &ctx.image_name_id)
        && object.image_id().as_deref() == Some(id.as_str())
    {
        return name.clone();
    }
    if let Some(tag) = object.repo_tags().into_iter().next() {
        return tag;
    }
    if let Some(name) = object.container_image_name() {
        return name;
    }
    format!(
        "sha256:{}",
        object.image_id().unwrap_or_else(|| object.id.clone())
    )
}

fn verify(out: &mut Outcome) {
    out.successful = true;
    out.summary = match out.problems.len() {
        0 => "All labels are present and well-formed.".to_string(),
        1 => "1 label problem found; see Results.".to_string(),
        n => format!("{n} label problems found; see Results."),
    };
}

/// Labels that must be right before anything is sent: missing or cut required labels.
fn blocking_label_failures(out: &Outcome) -> Vec<Failure> {
    let Some(labels) = &out.labels else {
        return vec![];
    };
    let image = out.image_name.clone().unwrap_or_default();
    let mut failures: Vec<Failure> = labels
        .missing()
        .into_iter()
        .map(|k| Failure {
            failed: "Reading the required labels".into(),
            details: vec![("Label", k.into()), ("Problem", "missing or empty".into())],
            todo: format!("Add `LABEL {k}=...` to the image's Dockerfile and rebuild it."),
            message: format!(
                "Image {image} does not have {k} label configured; add `LABEL {k}=...` to its Dockerfile and rebuild."
            ),
        })
        .collect();
    for k in labels.capped_required() {
        let cap = crate::terminal::MAX_VALUE_BYTES;
        failures.push(Failure {
            failed: "Reading the required labels".into(),
            details: vec![
                ("Label", k.to_string()),
                ("Problem", format!("longer than {cap} bytes")),
            ],
            todo: "Fix the label in the image's Dockerfile and rebuild it.".into(),
            message: format!(
                "Image {image} has a {k} label longer than {cap} bytes, which cannot be right; fix the label and rebuild."
            ),
        });
    }
    failures
}

async fn register(ctx: &Context<'_>, out: &mut Outcome) {
    let failures = blocking_label_failures(out);
    if !failures.is_empty() {
        for f in failures {
            out.fail(f);
        }
        return;
    }
    let Some(client) = ctx.client else {
        out.successful = true;
        out.summary = "Labels read and checked; nothing was registered because no server was given (set SERVER or --server).".into();
        return;
    };
    let labels = out.labels.as_ref().expect("labels were read");
    let body = json!({
        "git-url": labels.git_url,
        "git-sha": labels.git_sha,
        "email-ids": labels.email_ids,
        "image-name": out.image_name,
        "image-id": out.object.as_ref().and_then(|o| o.image_id()).map(|i| format!("sha256:{i}")),
        "image-digest": out.image_digest(),
        "labels": Value::Object(labels.oci.iter().map(|(k, v)| (k.clone(), Value::from(v.clone()))).collect()),
    });
    let key = uuid::Uuid::new_v4().to_string();
    match client.post("register", &body, &key).await {
        Ok(answer) => {
            out.successful = true;
            let has_report = answer
                .body
                .as_ref()
                .is_some_and(|b| b.get("last_scan_report").is_some());
            out.summary = if has_report {
                LAST_REPORT.to_string()
            } else {
                REGISTERED.to_string()
            };
            if answer.cut {
                out.summary.push(' ');
                out.summary.push_str(&cut_note());
            }
            out.answer = answer.body;
        }
        Err(e) => out.fail(server_failure("Registration", &e)),
    }
}

async fn deploy(ctx: &Context<'_>, out: &mut Outcome) {
    let Some(client) = ctx.client else {
        out.fail(Failure {
            failed: "Recording the deployment".into(),
            details: vec![("Error", "no server was given".into())],
            todo: "Set SERVER or --server, then scan again.".into(),
            message: "No server was given to record the deployment with; set SERVER or --server."
                .into(),
        });
        return;
    };
    let object = out.object.as_ref().expect("object was resolved");
    let digests = object.repo_digests();
    // Prefer the digest of the repository the image is named by.
    let name_repo = out
        .image_name
        .as_deref()
        .map(|n| repository_of(n).to_string())
        .unwrap_or_default();
    let Some(url) = digests
        .iter()
        .find(|d| {
            d.split_once('@')
                .is_some_and(|(r, _)| crate::reference::same_repository(r, &name_repo))
        })
        .or_else(|| digests.first())
        .cloned()
    else {
        let message = format!(
            "Image {} has no registry digest (RepoDigests is empty), and deployments are recorded by digest; push the image (docker push) or pull it by digest, then scan again.",
            out.image_name.clone().unwrap_or_default()
        );
        out.fail(Failure {
            failed: "Recording the deployment".into(),
            details: vec![(
                "Error",
                "the image has no registry digest (RepoDigests is empty)".into(),
            )],
            todo: "Push the image (docker push) or pull it by digest, then scan again.".into(),
            message,
        });
        return;
    };
    let body = DeploymentBody::new(url.clone(), ctx.settings.environment.clone()).with_platform(
        object.image_field("Os").unwrap_or_else(|| "linux".into()),
        object
            .image_field("Architecture")
            .unwrap_or_else(|| "amd64".into()),
        object.image_field("Variant"),
    );
    let body = serde_json::to_value(&body).unwrap_or_default();
    let key = uuid::Uuid::new_v4().to_string();
    match client.post("deployments", &body, &key).await {
        Ok(answer) => {
            out.successful = true;
            out.summary = format!(
                "Recorded {url} as deployed in {}.",
                ctx.settings.environment
            );
            if answer.cut {
                out.summary.push(' ');
                out.summary.push_str(&cut_note());
            }
            out.answer = answer.body;
        }
        Err(e) => out.fail(server_failure("Recording the deployment", &e)),
    }
}

/// What a result says when the server's answer was too long to keep.
fn cut_note() -> String {
    format!(
        "The server's answer was longer than {} KiB; it was cut there and not kept.",
        crate::analytics::MAX_ANSWER_BYTES / 1024
    )
}

/// `host/repo:tag` → `host/repo` (a `:` after the last `/` starts the tag).
fn repository_of(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => &name[..i],
        _ => name,
    }
}

/// Tell the server about a failure (`/scanner-error`), when a server is given.
async fn report_failure(ctx: &Context<'_>, out: &mut Outcome) {
    let Some(client) = ctx.client else {
        out.error_report = Some(
            "Nothing was reported to a server: no server was given (set SERVER or --server)."
                .into(),
        );
        return;
    };
    let body = json!({
        "email-ids": out.labels.as_ref().and_then(|l| l.email_ids.clone()).unwrap_or_default(),
        "image-name": out.image_name.clone().unwrap_or_default(),
        "error": out.errors,
    });
    let key = uuid::Uuid::new_v4().to_string();
    out.error_report = Some(match client.post("scanner-error", &body, &key).await {
        Ok(_) => format!(
            "Reported the error to {}.",
            client.endpoint("scanner-error")
        ),
        Err(AnalyticsError::Rejected {
            status: 404, url, ..
        }) => format!(
            "The server has no scanner-error endpoint ({url} answered 404); the error was not reported."
        ),
        Err(e) => sentence(format!("Could not report the error: {e}")),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_of_strips_tag_not_port() {
        assert_eq!(repository_of("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b");
        assert_eq!(repository_of("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(repository_of("b@sha256:00"), "b");
    }
}
