//! `POST /api/v1/admission`: a Kubernetes validating admission webhook (`AdmissionReview`
//! `admission.k8s.io/v1`) for Pods.
//!
//! For a Pod `CREATE` or `UPDATE`, every container and init container image pinned by digest is
//! recorded into the environment `<cluster>/<namespace>` (app: the repository path without the
//! host; deployed by: the requesting user). A Pod of a ReplicaSet whose image is already the
//! current one of its app adds nothing, so scaling does not flood the history.
//!
//! Images not pinned by digest cannot be recorded by digest (the webhook does not reach
//! registries to resolve tags): in `record` mode they are skipped and named in the response
//! `warnings`, which `kubectl` prints; in `enforce` mode the Pod is denied with a message that
//! names each such image. `dryRun` requests are answered but record nothing.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::limits::{ContentType, json_body};
use super::reference::{PinnedRef, ReferenceError};
use crate::cli::AdmissionMode;
use crate::records::{Deployment, DeploymentRecord, Platform};

#[derive(Debug, Deserialize)]
struct Review {
    #[serde(rename = "apiVersion")]
    api_version: Option<String>,
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
struct AdmissionRequest {
    uid: String,
    #[serde(default)]
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default, rename = "userInfo")]
    user_info: Option<UserInfo>,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default, rename = "dryRun")]
    dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
}

/// One container of the Pod: (container name, image).
fn containers(pod: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        if let Some(items) = pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        {
            for c in items {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                if let Some(image) = c.get("image").and_then(Value::as_str) {
                    out.push((name.to_string(), image.to_string()));
                }
            }
        }
    }
    out
}

/// The Pod's platform from its node selector, else linux/amd64.
fn platform(pod: &Value) -> Platform {
    let select = |key: &str| {
        pod.pointer("/spec/nodeSelector")
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let default = Platform::default();
    Platform {
        os: select("kubernetes.io/os").unwrap_or(default.os),
        architecture: select("kubernetes.io/arch").unwrap_or(default.architecture),
        variant: None,
    }
}

/// `POST /api/v1/admission`.
pub async fn review(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let review: Review = json_body(&headers, body, ContentType::Json)?;
    let api_version = review
        .api_version
        .unwrap_or_else(|| "admission.k8s.io/v1".to_string());
    let request = review.request.ok_or_else(|| {
        ApiError::bad_request(
            "invalid-review",
            "the AdmissionReview has no request; the API server sends {\"request\": {\"uid\": ..., \"object\": <Pod>}}",
        )
    })?;
    let answer = |response: Value| {
        Json(json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "response": response,
        }))
    };
    let uid = request.uid.clone();
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    let operation = request.operation.as_deref().unwrap_or("");
    let Some(pod) = request
        .object
        .as_ref()
        .filter(|_| is_pod && (operation == "CREATE" || operation == "UPDATE"))
    else {
        return Ok(answer(json!({"uid": uid, "allowed": true})));
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| {
            pod.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "default".to_string());
    let env = format!("{}/{}", state.config.cluster, namespace);
    let user = request
        .user_info
        .and_then(|u| u.username)
        .unwrap_or_else(|| "kubernetes".to_string());
    let platform = platform(pod);

    let mut pinned = Vec::new();
    let mut unpinned = Vec::new();
    for (container, image) in containers(pod) {
        match PinnedRef::parse(&image) {
            Ok(r) => {
                if !pinned.iter().any(|p: &PinnedRef| p == &r) {
                    pinned.push(r);
                }
            }
            Err(e) => unpinned.push((container, image, e)),
        }
    }

    if state.config.admission_mode == AdmissionMode::Enforce && !unpinned.is_empty() {
        let list: Vec<String> = unpinned
            .iter()
            .map(|(c, image, e)| match e {
                ReferenceError::NotPinned(_, repo) => {
                    format!("container {c:?} uses {image:?}: use {repo}@sha256:<digest>")
                }
                other => format!("container {c:?}: {other}"),
            })
            .collect();
        let message = format!(
            "imagetrail: images must be pinned by digest in {env} (tags move): {}",
            list.join("; ")
        );
        tracing::info!(%uid, %env, "denied: {message}");
        return Ok(answer(json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": message},
        })));
    }

    let mut warnings: Vec<String> = unpinned
        .iter()
        .map(|(c, image, _)| {
            format!("imagetrail: {image} (container {c}) is not pinned by digest, not recorded")
        })
        .collect();
    if !request.dry_run.unwrap_or(false) {
        for r in pinned {
            let d = Deployment {
                app: r.path().to_string(),
                image: r.image_record(platform.clone()),
                deployment: DeploymentRecord {
                    deployed_at: Utc::now(),
                    deployed_by: user.clone(),
                    workspace: env.clone(),
                    name: None,
                    event_id: Uuid::now_v7(),
                },
            };
            // Record mode always allows: a failure to record is a warning, never a denial.
            if let Err(e) = super::deployments::record_if_new(&state, d).await {
                tracing::warn!(%uid, "admission: {}", e.summary);
                warnings.push(format!(
                    "imagetrail: {} not recorded: {}",
                    r.repo, e.summary
                ));
            }
        }
    }
    let mut response = json!({"uid": uid, "allowed": true});
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Ok(answer(response))
}
