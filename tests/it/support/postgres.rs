//! A throwaway PostgreSQL 15 cluster for one test: Debian's `initdb` and `pg_ctl`, run as the
//! unprivileged `postgres` user when the tests run as root (PostgreSQL refuses to run as root;
//! CI runs as root), data directory and Unix socket in a temporary directory, listening on
//! 127.0.0.1 on a free port too, with password (SCRAM) authentication over TCP so a wrong
//! password can be tested. Stopped (immediate mode) and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where Debian's PostgreSQL 15 server binaries are (`.ci/run` installs `postgresql` when
/// `initdb` is missing).
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser's password of every test cluster.
pub const PASSWORD: &str = "it-secret-pw";

/// A running cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    /// Run the server binaries as this user (`Some("postgres")` when we are root).
    as_user: Option<&'static str>,
    /// The server options it was started with (`pg_ctl -o`), for [`Postgres::start_again`].
    options: String,
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no user {user:?}: install postgresql (.ci/run does)"))
    };
    (id("-u"), id("-g"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl Postgres {
    /// initdb and start a new cluster; panics with the server's log when it cannot.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A cluster that takes TCP connections only over TLS (`hostssl` in pg_hba.conf), with
    /// this certificate chain and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Postgres {
        Postgres::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Postgres {
        assert!(
            Path::new(BIN).join("initdb").exists(),
            "{BIN}/initdb is missing: apt-get install postgresql (.ci/run does)"
        );
        let as_user = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("imagetrail-pg-")
            .tempdir()
            .expect("temp dir");
        if let Some(user) = as_user {
            let (uid, gid) = user_ids(user);
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write pwfile");
        if let Some(user) = as_user {
            let (uid, gid) = user_ids(user);
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
        }
        let mut pg = Postgres {
            port: 0,
            dir,
            as_user,
            options: String::new(),
        };
        let data = pg.data_dir();
        let out = pg
            .server_cmd("initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--no-locale",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut options = format!(
            "-k {} -h 127.0.0.1 -c max_connections=50 -c shared_buffers=16MB",
            pg.dir.path().display()
        );
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) = (
                pg.dir.path().join("server.crt"),
                pg.dir.path().join("server.key"),
            );
            std::fs::write(&cert_path, cert).expect("write server.crt");
            std::fs::write(&key_path, key).expect("write server.key");
            std::fs::set_permissions(
                &key_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod server.key");
            if let Some(user) = as_user {
                let (uid, gid) = user_ids(user);
                for p in [&cert_path, &key_path] {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown TLS files");
                }
            }
            // Plain TCP refused: only `hostssl` lines for TCP.
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            let text: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, text).expect("write pg_hba.conf");
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_path.display(),
                key_path.display()
            ));
        }
        // A port found free can be taken before the server binds it: try a few.
        for attempt in 0..5 {
            pg.port = free_port();
            let out = pg
                .server_cmd("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(pg.log_path())
                .args(["-w", "-t", "60", "-o"])
                .arg(format!("{options} -p {}", pg.port))
                .arg("start")
                .stdout(Stdio::null())
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                pg.options = options;
                return pg;
            }
            if attempt == 4 {
                panic!(
                    "pg_ctl start failed:\n{}\n--- server log\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(pg.log_path()).unwrap_or_default()
                );
            }
        }
        unreachable!()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A command running one of the server binaries as the cluster's owner.
    fn server_cmd(&self, bin: &str) -> Command {
        let path = Path::new(BIN).join(bin);
        let mut cmd = match self.as_user {
            Some(user) => {
                // runuser is in /usr/sbin, which a non-login PATH may lack.
                let runuser = ["/usr/sbin/runuser", "/sbin/runuser"]
                    .into_iter()
                    .find(|p| Path::new(p).exists())
                    .unwrap_or("runuser");
                let mut c = Command::new(runuser);
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // The owner may not be allowed into the caller's working directory.
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// The same as [`Postgres::url`] with another password.
    pub fn url_with_password(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/{db}",
            self.port
        )
    }

    /// Run SQL through `psql` over the Unix socket (trusted locally), returning its
    /// unaligned, tuples-only output; panics when psql fails.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .server_cmd("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A new, empty database named `name`.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }
}

impl Postgres {
    /// Stop the server (fast mode: connections are cut, as when the database goes away).
    pub fn stop(&self) {
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start the stopped server again, on the same port.
    pub fn start_again(&self) {
        let out = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("{} -p {}", self.options, self.port))
            .arg("start")
            .stdout(Stdio::null())
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The shared cluster and the shell that stops it after this process.
struct Shared {
    pg: Postgres,
    // Kept so it is not a zombie-in-waiting nobody owns.
    _watcher: std::process::Child,
}

static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();

/// The cluster shared by this test process (started on first use): record-level tests take a
/// fresh database in it each ([`Postgres::create_database`]), so one `initdb` serves them all.
///
/// Statics are never dropped, so a shell watches this process and stops the cluster
/// (immediate mode) and removes its directory when the process is gone.
pub fn shared() -> &'static Postgres {
    &SHARED.get_or_init(start_shared).pg
}

fn start_shared() -> Shared {
    let pg = Postgres::start();
    let stop = pg.server_cmd("pg_ctl");
    let mut argv: Vec<String> = vec![stop.get_program().to_string_lossy().into_owned()];
    argv.extend(stop.get_args().map(|a| a.to_string_lossy().into_owned()));
    argv.extend([
        "-D".into(),
        pg.data_dir().display().to_string(),
        "-m".into(),
        "immediate".into(),
        "-w".into(),
        "stop".into(),
    ]);
    // Signals ignored: a test run stopped by a signal to its process group (`timeout`, ^C)
    // must still stop the cluster once the test process is gone.
    let script = r#"trap '' HUP INT TERM; pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
"$@" >/dev/null 2>&1; rm -rf "$dir""#;
    let watcher = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(std::process::id().to_string())
        .arg(pg.dir.path())
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the watcher of the shared PostgreSQL cluster");
    Shared {
        pg,
        _watcher: watcher,
    }
}

/// A fresh database in the [`shared`] cluster, migrated by `imagetrail db migrate`: its URL.
pub fn fresh_database() -> String {
    let pg = shared();
    let name = format!("it_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let url = pg.create_database(&name);
    let out = crate::support::run(crate::support::imagetrail().args([
        "db",
        "migrate",
        "--database-url",
        &url,
    ]));
    assert!(
        out.status.success(),
        "db migrate of a fresh database failed"
    );
    url
}
