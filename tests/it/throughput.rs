//! Deployments posted concurrently to the real server are group-committed: each request gets its
//! own answer (a duplicate name in the same wave is refused alone), every 2xx-answered
//! deployment is in its app's history, and each `deploy-info.yml` is its history's last entry.

use std::collections::BTreeSet;

use serde_json::json;

use std::sync::Arc;

use crate::server::{TestServer, digest, post_deployment};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deployments_get_their_own_answers_and_all_land_in_the_history() {
    let server = Arc::new(TestServer::start(|_| {}).await);
    // The repository `shared` runs as a named instance in it-thr-0.
    let (status, answer) = post_deployment(
        &server,
        json!({
            "environment": {"name": "it-thr-0"},
            "image": {"url": format!("127.0.0.1:5000/it-thr/shared@{}", digest(999)), "name": "blue"},
        }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let mut tasks = Vec::new();
    // 48 deployments over 8 apps in two environments, and between them 6 requests without a
    // name for `shared`, each of which must be refused alone.
    for n in 0..54u32 {
        let refused = n % 9 == 4;
        let body = if refused {
            json!({
                "environment": {"name": "it-thr-0"},
                "image": {"url": format!("127.0.0.1:5000/it-thr/shared@{}", digest(n + 1))},
            })
        } else {
            json!({
                "environment": {"name": format!("it-thr-{}", n % 2)},
                "image": {"url": format!("127.0.0.1:5000/it-thr/app-{}@{}", n % 8, digest(n + 1))},
            })
        };
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            (refused, post_deployment(&server, body).await)
        }));
    }
    let mut answered = BTreeSet::new();
    for t in tasks {
        let (refused, (status, answer)) = t.await.unwrap();
        if refused {
            assert_eq!(status, 409, "{answer}");
            assert_eq!(answer["error"], "name-required", "{answer}");
            assert!(
                answer["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("as named instances (e.g. \"blue\"); send image.name"),
                "{answer}"
            );
        } else {
            assert_eq!(status, 201, "{answer}");
            answered.insert(answer["deployment"]["deployment"]["event_id"].to_string());
        }
    }
    assert_eq!(answered.len(), 48);

    let store = server.store();
    let mut stored = BTreeSet::new();
    for env in ["it-thr-0", "it-thr-1"] {
        for app in store.apps(env).unwrap() {
            let history = store.history(env, &app).unwrap();
            assert_eq!(store.current(env, &app).unwrap().as_ref(), history.last());
            if app.starts_with("it-thr/app-") {
                stored.extend(
                    history
                        .iter()
                        .map(|d| format!("\"{}\"", d.deployment.event_id)),
                );
            }
        }
    }
    assert_eq!(
        stored, answered,
        "every answered deployment, and only those"
    );
    Arc::into_inner(server)
        .expect("every request task has finished")
        .stop()
        .await;
}
