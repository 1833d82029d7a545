//! Registry credentials from the Docker config (`--docker-config`, `$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json`): `credHelpers`, `auths` (`auth`, `username`/`password`,
//! `identitytoken`) and `credsStore`, the helpers run as `docker-credential-<helper> get`.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde::Deserialize;

use super::Client;

/// What the Docker config holds for a registry.
#[derive(Debug, Clone)]
pub(super) enum Credential {
    Basic(String, String),
    IdentityToken(String),
}

impl Client {
    pub(super) fn config_path(&self) -> PathBuf {
        if let Some(p) = &self.opts.docker_config {
            return p.clone();
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            return PathBuf::from(d).join("config.json");
        }
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".docker/config.json")
    }

    /// Credentials for `registry` from the Docker config: `credHelpers`, then `auths`, then
    /// `credsStore`.
    pub(super) fn credential(&self, registry: &str) -> Option<Credential> {
        let text = std::fs::read_to_string(self.config_path()).ok()?;
        let cfg: DockerConfig = serde_json::from_str(&text).ok()?;
        let keys: Vec<&str> = if registry == "docker.io" {
            vec![
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
            ]
        } else {
            vec![registry]
        };
        let normalize = |k: &str| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            k.split('/').next().unwrap_or(k).to_string()
        };
        for key in &keys {
            if let Some(helper) = cfg.cred_helpers.get(*key)
                && let Some(c) = run_helper(helper, key)
            {
                return Some(c);
            }
        }
        for (k, entry) in &cfg.auths {
            if keys
                .iter()
                .any(|key| *k == *key || normalize(k) == normalize(key))
            {
                if let Some(t) = entry.identitytoken.clone().filter(|t| !t.is_empty()) {
                    return Some(Credential::IdentityToken(t));
                }
                if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                    return Some(Credential::Basic(u.clone(), p.clone()));
                }
                if let Some(auth) = &entry.auth {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth)
                        .ok()?;
                    let raw = String::from_utf8(raw).ok()?;
                    let (u, p) = raw.split_once(':')?;
                    return Some(Credential::Basic(u.into(), p.into()));
                }
            }
        }
        if let Some(store) = &cfg.creds_store {
            return run_helper(store, keys[0]);
        }
        None
    }
}

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// `docker-credential-<helper> get` with the server on stdin.
fn run_helper(helper: &str, server: &str) -> Option<Credential> {
    use std::io::Write;
    let mut child = std::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: HelperAnswer = serde_json::from_slice(&out.stdout).ok()?;
    if a.username == "<token>" {
        Some(Credential::IdentityToken(a.secret))
    } else {
        Some(Credential::Basic(a.username, a.secret))
    }
}
