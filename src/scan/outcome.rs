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

/// The original scanner's success sentence for a first registration (its spelling kept:
/// pipelines compare it).
pub const REGISTERED: &str =
    "Registered repository for scan, report will be availble in next run after some time.";

/// The original scanner's success sentence when the server sent a `last_scan_report`.
pub const LAST_REPORT: &str = "Last scan report available in 'Scan Results' field.";

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
    /// What went wrong, one full sentence each.
    pub errors: Vec<String>,
    /// One readable sentence about the outcome.
    pub summary: String,
    /// The server's parsed answer on success.
    pub answer: Option<Value>,
    /// What became of the `/scanner-error` report, when one was due.
    pub error_report: Option<String>,
}

impl Outcome {
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
        None => out.errors.push(
            "A --rootfs target has no image to read labels from; set IMAGE_NAME to the image the root filesystem belongs to."
                .to_string(),
        ),
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
            Err(e) => out.errors.push(sentence(e.to_string())),
        },
    }
    if out.dir.is_empty() {
        // A named image the engine does not know: name its directory after the name.
        out.dir = match &target.source {
            Source::Named(n) => n.replace(['/', ':', '@'], "_"),
            _ => "unknown".into(),
        };
    }
    if out.errors.is_empty() {
        match ctx.settings.scan_type {
            ScanType::Verify => verify(&mut out),
            ScanType::Register => register(ctx, &mut out).await,
            ScanType::Deploy => deploy(ctx, &mut out).await,
        }
    }
    if !out.errors.is_empty() {
        out.successful = false;
        report_failure(ctx, &mut out).await;
    }
    out.finished = Local::now();
    out
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
fn blocking_label_errors(out: &Outcome) -> Vec<String> {
    let Some(labels) = &out.labels else {
        return vec![];
    };
    let image = out.image_name.clone().unwrap_or_default();
    let mut errors: Vec<String> = labels
        .missing()
        .into_iter()
        .map(|k| {
            format!(
                "Image {image} does not have {k} label configured; add `LABEL {k}=...` to its Dockerfile and rebuild."
            )
        })
        .collect();
    for k in labels.capped_required() {
        errors.push(format!(
            "Image {image} has a {k} label longer than {} bytes, which cannot be right; fix the label and rebuild.",
            crate::terminal::MAX_VALUE_BYTES
        ));
    }
    errors
}

async fn register(ctx: &Context<'_>, out: &mut Outcome) {
    let errors = blocking_label_errors(out);
    if !errors.is_empty() {
        out.errors = errors;
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
            out.answer = answer.body;
        }
        Err(e) => out
            .errors
            .push(sentence(format!("Registration failed: {e}"))),
    }
}

async fn deploy(ctx: &Context<'_>, out: &mut Outcome) {
    let Some(client) = ctx.client else {
        out.errors.push(
            "No server was given to record the deployment with; set SERVER or --server.".into(),
        );
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
        out.errors.push(format!(
            "Image {} has no registry digest (RepoDigests is empty), and deployments are recorded by digest; push the image (docker push) or pull it by digest, then scan again.",
            out.image_name.clone().unwrap_or_default()
        ));
        return;
    };
    let image = object.image.as_ref();
    let body = crate::tracking::DeploymentBody::new(url.clone(), ctx.settings.environment.clone())
        .with_platform(
            image
                .and_then(|i| i.os.clone())
                .unwrap_or_else(|| "linux".into()),
            image
                .and_then(|i| i.architecture.clone())
                .unwrap_or_else(|| "amd64".into()),
            image.and_then(|i| i.variant.clone()),
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
            out.answer = answer.body;
        }
        Err(e) => out
            .errors
            .push(sentence(format!("Recording the deployment failed: {e}"))),
    }
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
