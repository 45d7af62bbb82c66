//! Shared test helpers: a fresh database per test on either backend, and a real server
//! process on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The two stores every test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// PostgreSQL server for tests; override with TOKENGATE_TEST_POSTGRES_URL.
pub fn postgres_server_url() -> String {
    std::env::var("TOKENGATE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
        .trim_end_matches('/')
        .to_owned()
}

/// A database that exists for one test and is removed afterwards.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("tokengate.db").display());
                TestDb {
                    url,
                    backend,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("tg_test_{}", uuid::Uuid::new_v4().simple());
                pg_admin(&format!("CREATE DATABASE {name}"));
                let url = format!("{}/{name}", postgres_server_url());
                TestDb {
                    url,
                    backend,
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A directory next to the database for files a test writes (None for PostgreSQL).
    pub fn dir(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|d| d.path().to_owned())
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Runs one statement on the PostgreSQL server's `postgres` database, on its own runtime so it
/// can be called from sync code and from `Drop`.
fn pg_admin(sql: &str) {
    let sql = sql.to_owned();
    let url = format!("{}/postgres", postgres_server_url());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
                panic!("PostgreSQL is needed for the tests at {url} (set TOKENGATE_TEST_POSTGRES_URL): {e}")
            });
            sqlx::query(&sql).execute(&mut conn).await.expect("admin statement");
        });
    })
    .join()
    .expect("postgres admin thread");
}

/// The built `tokengate` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tokengate"))
}

/// Runs `tokengate ARGS` against `db`, with `stdin` as standard input; panics on failure.
pub fn cli(db: &TestDb, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(binary())
        .args(args)
        // The tests' own setting is not one of tokengate's, which refuses unknown keys.
        .env_remove("TOKENGATE_TEST_POSTGRES_URL")
        .env("TOKENGATE_DATABASE_URL", &db.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tokengate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tokengate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Creates a user with the admin CLI.
pub fn add_user(db: &TestDb, name: &str, password: &str) {
    cli(
        db,
        &[
            "user",
            "add",
            name,
            "--email",
            &format!("{name}@example.com"),
            "--password-stdin",
        ],
        &format!("{password}\n"),
    );
}

/// A `tokengate serve` process on a free loopback port, stopped when dropped.
pub struct Server {
    pub base: String,
    child: Child,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Holds the server key file.
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts the server with `TOKENGATE_*` settings from `env`, and waits until it listens.
    pub fn start(db: &TestDb, env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(binary());
        cmd.env_remove("TOKENGATE_TEST_POSTGRES_URL");
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env("TOKENGATE_TFA_KEY_FILE", dir.path().join("server.key"))
            .env("TOKENGATE_DATABASE_URL", &db.url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tokengate");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(i) = line.find("listening on http://") {
                    let addr: String = line[i + "listening on http://".len()..]
                        .chars()
                        .take_while(|c| !c.is_whitespace())
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("tokengate did not start: {:?}", log.lock().unwrap()));
        Server {
            base: format!("http://{addr}"),
            child,
            log,
            _dir: dir,
        }
    }

    /// Every log line the server wrote so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
