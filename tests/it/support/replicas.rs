//! `imagetrail serve --database-url` replicas (the built binary, each on its own port) on one
//! throwaway PostgreSQL 15 cluster, and the requests the PostgreSQL server tests send them.

use std::path::Path;
use std::process::{Child, Command};

use serde_json::Value;

use crate::server::{KEY, client};
use crate::support::postgres::Postgres;
use crate::support::{imagetrail, spawn_serve};

/// One `imagetrail serve` process; killed on drop.
pub struct Replica {
    pub child: Child,
    pub url: String,
    _state: tempfile::TempDir,
}

impl Replica {
    /// Start `imagetrail serve` on 127.0.0.1:0 with the test key and `database_url`; waits for
    /// its "listening on" line.
    pub fn start(database_url: &str, keys: &Path) -> Replica {
        let state = tempfile::Builder::new()
            .prefix("it-pgsrv-")
            .tempdir()
            .unwrap();
        let (child, url) = spawn_serve(&mut serve(database_url, keys, state.path()));
        Replica {
            child,
            url,
            _state: state,
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `imagetrail serve` command line of a replica on `database_url`, state in `state`.
pub fn serve(database_url: &str, keys: &Path, state: &Path) -> Command {
    let mut cmd = imagetrail();
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .arg("--api-keys-file")
        .arg(keys)
        .env("IMAGETRAIL_DATABASE_URL", database_url);
    cmd
}

/// An API keys file with the test key.
pub fn keys_file() -> tempfile::NamedTempFile {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), format!("ci {KEY}\n")).unwrap();
    keys
}

/// A fresh cluster with database `it` and a keys file: what every replica test starts from.
pub struct Database {
    /// The URL of database `it`.
    pub url: String,
    pub keys: tempfile::NamedTempFile,
    pub pg: Postgres,
}

impl Database {
    pub fn start() -> Database {
        let pg = Postgres::start();
        let url = pg.create_database("it");
        Database {
            url,
            keys: keys_file(),
            pg,
        }
    }

    /// A replica on database `it`.
    pub fn replica(&self) -> Replica {
        Replica::start(&self.url, self.keys.path())
    }

    /// The rows `sql` selects in database `it`, as psql prints them (trimmed).
    pub fn rows(&self, sql: &str) -> String {
        self.pg.psql("it", sql).trim().to_string()
    }
}

/// Two replicas, a and b, on one database. The fields are dropped in order: the replicas stop
/// before the cluster does.
pub struct Pair {
    pub a: Replica,
    pub b: Replica,
    pub db: Database,
}

impl Pair {
    pub fn start() -> Pair {
        let db = Database::start();
        Pair {
            a: db.replica(),
            b: db.replica(),
            db,
        }
    }

    /// The base URL of the replica that request `n` of an alternating stream goes to: a for
    /// even `n`, b for odd.
    pub fn alternate(&self, n: u32) -> String {
        if n.is_multiple_of(2) {
            self.a.url.clone()
        } else {
            self.b.url.clone()
        }
    }
}

/// A client for this worker thread, built once: building one per request costs enough CPU (its
/// TLS roots) that with a few hundred requests at once on a loaded machine a connection could
/// stay silent past the server's 10 s request timeout and be closed unanswered. A worker thread
/// belongs to one test's runtime, so its pooled connections never outlive that runtime.
pub fn shared_client() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = client();
    }
    CLIENT.with(Clone::clone)
}

/// Send a deployment to the replica at `url` with the test key (and `key` as its
/// Idempotency-Key); the error when no answer came.
pub async fn send_deployment(
    url: &str,
    body: &Value,
    key: Option<&str>,
) -> reqwest::Result<reqwest::Response> {
    let mut req = shared_client()
        .post(format!("{url}/api/v1/deployments"))
        .bearer_auth(KEY)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    req.send().await
}

/// POST a deployment; (status, Retry-After, body).
pub async fn post(url: &str, body: &Value, key: Option<&str>) -> (u16, Option<String>, Value) {
    answer(send_deployment(url, body, key).await.unwrap()).await
}

/// An answer as (status, Retry-After, body).
pub async fn answer(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, r.json().await.unwrap())
}
