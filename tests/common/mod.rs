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

/// The lines a server process writes to `stderr`, kept as they arrive, and its address once it
/// logs `listening on http://ADDR`. The thread ends (its handle joins) when the process exits.
pub fn follow_log(
    stderr: std::process::ChildStderr,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
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
    (log, rx, reader)
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
        let (log, rx, _reader) = follow_log(child.stderr.take().unwrap());
        let addr = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("tokengate did not start: {:?}", log.lock().unwrap()));
        leaks::log(&format!("tokengate on {addr}"), log.clone());
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

/// The suite-wide secret check: every secret a test used (tokens, passwords, recovery codes,
/// TOTP secrets and the codes they produced) against every log line written by every process
/// the tests in this binary started, whichever test started it. Each scenario calls
/// [`leaks::assert_none`] when it ends, so the scenario that ends last checks the whole suite.
pub mod leaks {
    use std::sync::{Arc, Mutex};

    type Lines = Arc<Mutex<Vec<String>>>;

    struct Registry {
        secrets: Vec<String>,
        /// Base32 TOTP secrets with the Unix time from which their codes may have been used.
        totp: Vec<(String, i64)>,
        logs: Vec<(String, Lines)>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        secrets: Vec::new(),
        totp: Vec::new(),
        logs: Vec::new(),
    });

    /// A token, password or recovery code no log may contain.
    pub fn secret(s: &str) {
        let mut r = REGISTRY.lock().unwrap();
        if !s.is_empty() && !r.secrets.iter().any(|k| k == s) {
            r.secrets.push(s.to_owned());
        }
    }

    /// A TOTP secret: neither it nor any code it produced from now on may be logged.
    pub fn totp_secret(base32: &str) {
        secret(base32);
        let since = chrono::Utc::now().timestamp() - 60;
        REGISTRY
            .lock()
            .unwrap()
            .totp
            .push((base32.to_owned(), since));
    }

    /// Log lines a process writes (kept after the process ends).
    pub fn log(label: &str, lines: Lines) {
        REGISTRY
            .lock()
            .unwrap()
            .logs
            .push((label.to_owned(), lines));
    }

    /// A finished process's whole log.
    pub fn log_text(label: &str, text: &str) {
        log(
            label,
            Arc::new(Mutex::new(text.lines().map(str::to_owned).collect())),
        );
    }

    /// How many log lines were collected so far.
    pub fn lines_collected() -> usize {
        let r = REGISTRY.lock().unwrap();
        r.logs.iter().map(|(_, l)| l.lock().unwrap().len()).sum()
    }

    /// Panics naming the log and the secret when any collected line holds any secret.
    pub fn assert_none() {
        let r = REGISTRY.lock().unwrap();
        assert!(
            r.logs.iter().any(|(_, l)| !l.lock().unwrap().is_empty()),
            "no log lines were collected"
        );
        let now = chrono::Utc::now().timestamp();
        let mut codes = Vec::new();
        for (base32, since) in &r.totp {
            let raw = totp_rs::Secret::Encoded(base32.clone())
                .to_bytes()
                .expect("a base32 TOTP secret");
            let first = tokengate::totp::step_of(*since);
            for step in first..=tokengate::totp::step_of(now) + 2 {
                codes.push(tokengate::totp::code_at_step(&raw, step));
            }
        }
        for (label, lines) in &r.logs {
            for line in lines.lock().unwrap().iter() {
                if let Some(found) = leak_in(line, &r.secrets, &codes) {
                    panic!("the log of {label} holds the secret {found}: {line}");
                }
            }
        }
    }

    /// The first secret or one-time password `line` holds. Codes are short numbers: they count
    /// only as a whole word, so timestamps and ids that happen to contain the digits do not.
    pub fn leak_in<'a>(line: &str, secrets: &'a [String], codes: &'a [String]) -> Option<&'a str> {
        // A token with its prefix cut off is just as usable.
        let leaked = secrets
            .iter()
            .find(|s| line.contains(s.strip_prefix("npm_").unwrap_or(s)));
        leaked
            .or_else(|| {
                line.split(|c: char| !c.is_ascii_alphanumeric())
                    .find_map(|word| codes.iter().find(|c| *c == word))
            })
            .map(String::as_str)
    }
}
