//! Images built `FROM scratch` on the real engine (no registry can be pulled from here).

use std::process::Command;

/// Run `docker ARGS`, panicking with its stderr when it fails; returns trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Build a one-file `FROM scratch` image tagged `tag` with `labels`; returns its full
/// 64-hex id (without `sha256:`). Every call gets a unique file so ids differ between tests.
pub fn build_image(tag: &str, labels: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("payload"),
        format!("{tag} {}\n", uuid::Uuid::new_v4()),
    )
    .unwrap();
    let mut dockerfile = String::from("FROM scratch\nCOPY payload /payload\n");
    for (k, v) in labels {
        dockerfile.push_str(&format!(
            "LABEL {}={}\n",
            serde_json::to_string(k).unwrap(),
            serde_json::to_string(v).unwrap()
        ));
    }
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let build = || {
        Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(dir.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("run docker build")
    };
    let mut out = build();
    // The legacy builder loses an intermediate image when another test's `docker rmi` removes
    // it between two steps ("unable to find image sha256:…"): the engine's race, not ours, so
    // the build is tried once more.
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("unable to find image")
    {
        out = build();
    }
    assert!(
        out.status.success(),
        "docker build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image_id(tag)
}

/// The full id of an image, without `sha256:`.
pub fn image_id(reference: &str) -> String {
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", reference]);
    id.trim_start_matches("sha256:").to_string()
}

/// Create (not start) a container from `image`; returns its full id. Removed by the caller.
pub fn create_container(image: &str, labels: &[(&str, &str)]) -> String {
    let mut args = vec!["create".to_string()];
    for (k, v) in labels {
        args.push("--label".into());
        args.push(format!("{k}={v}"));
    }
    args.push(image.into());
    args.push("/payload".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&refs)
}
