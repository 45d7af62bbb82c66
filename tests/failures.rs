//! Failures: the server keeps answering correctly through database outages, crashes of its own
//! process and a full or read-only SQLite disk, and loses nothing it answered 201 for.
//!
//! - A PostgreSQL outage on a throwaway cluster (initdb on a free port, run as the `postgres`
//!   OS user): requests that need the database answer 503 within the timeouts, readiness says
//!   not ready, and the server recovers by itself when the cluster is back.
//! - `kill -9` of the server in the middle of token creations, on both stores.
//! - A SQLite database on a full disk (a small tmpfs) and a read-only one.
//!
//! The measured figures are printed (`cargo test --test failures -- --nocapture`) and recorded
//! in docs/reliability.md.

mod common;

use common::{add_user, binary, TestDb, BACKENDS};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";
/// An unprivileged uid for the server when the tests run as root (the image's user).
const SERVER_UID: u32 = 10001;
/// The timeouts the servers of these tests run with.
const ACQUIRE_TIMEOUT_SECS: &str = "1";
const REQUEST_TIMEOUT_SECS: &str = "2";
/// The longest any answer may take with those timeouts: the request timeout, plus slack for a
/// loaded two-core machine.
const ANSWER_BOUND: Duration = Duration::from_millis(2_800);

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[derive(Debug)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    took: Duration,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error` of a `{"error": …}` body; panics when the body is not one.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_owned()
    }
}

/// One request on its own connection; `Err` when the server is not there (killed, say).
fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<Answer> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = auth {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let took = started.elapsed();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no complete answer"))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body, took })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16)
            .expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    body
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    try_http(addr, method, path, auth, body)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"))
}

fn whoami(addr: SocketAddr, token: &str) -> Answer {
    http(addr, "GET", "/-/whoami", Some(token), None)
}

/// `npm login`.
fn try_login(addr: SocketAddr, user: &str) -> std::io::Result<Answer> {
    try_http(
        addr,
        "PUT",
        &format!("/-/user/org.couchdb.user:{user}"),
        None,
        Some(&json!({ "name": user, "password": PW })),
    )
}

fn login(addr: SocketAddr, user: &str) -> String {
    let a = try_login(addr, user).expect("login");
    assert_eq!(a.status, 201, "login: {}", a.text());
    a.json()["token"].as_str().expect("token").to_owned()
}

/// `npm token create` with the caller's `session`.
fn try_create(addr: SocketAddr, session: &str) -> std::io::Result<Answer> {
    try_http(
        addr,
        "POST",
        "/-/npm/v1/tokens",
        Some(session),
        Some(&json!({ "password": PW, "readonly": false, "cidr_whitelist": [] })),
    )
}

fn create(addr: SocketAddr, session: &str) -> String {
    let a = try_create(addr, session).expect("token create");
    assert_eq!(a.status, 201, "token create: {}", a.text());
    a.json()["token"].as_str().expect("token").to_owned()
}

/// A 503 with a `{"error": …}` body, answered within [`ANSWER_BOUND`].
fn assert_unavailable(a: &Answer, what: &str) {
    assert_eq!(a.status, 503, "{what}: {}", a.text());
    assert!(!a.error().is_empty(), "{what}: empty error");
    assert!(a.took <= ANSWER_BOUND, "{what}: 503 after {:?}", a.took);
}

// ---------------------------------------------------------------------------------------------
// The server process

/// A `tokengate serve` process, killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// How the server is run: as the tests' user, or confined: as [`SERVER_UID`] through `setpriv`
/// when the tests run as root, so file permissions bind it.
#[derive(Clone)]
struct Runner {
    program: PathBuf,
    confined: bool,
}

impl Runner {
    fn plain() -> Runner {
        Runner {
            program: binary(),
            confined: false,
        }
    }

    /// The binary is copied to a world-readable place when [`SERVER_UID`] cannot run it where
    /// it was built.
    fn confined(bin_dir: &Path) -> Runner {
        let direct = Runner {
            program: binary(),
            confined: true,
        };
        let runs = direct
            .command(&[])
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if runs {
            return direct;
        }
        std::fs::set_permissions(bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let program = bin_dir.join("tokengate");
        std::fs::copy(binary(), &program).expect("copy the binary");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        Runner {
            program,
            confined: true,
        }
    }

    /// The command, with a cleared environment plus `env`.
    fn command(&self, env: &[(String, String)]) -> Command {
        let mut cmd = if self.confined && is_root() {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={SERVER_UID}"))
                .arg(format!("--regid={SERVER_UID}"))
                .args(["--clear-groups", "--"])
                .arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("PG")) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// The settings of every server here: small timeouts, its key in `dir`, `db` and `extra`.
fn server_env(dir: &Path, db: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("TOKENGATE_LISTEN", "127.0.0.1:0".to_owned()),
        ("TOKENGATE_DATABASE_URL", db.to_owned()),
        (
            "TOKENGATE_TFA_KEY_FILE",
            dir.join("tokengate.key").display().to_string(),
        ),
        (
            "TOKENGATE_DATABASE_ACQUIRE_TIMEOUT_SECS",
            ACQUIRE_TIMEOUT_SECS.to_owned(),
        ),
        (
            "TOKENGATE_REQUEST_TIMEOUT_SECS",
            REQUEST_TIMEOUT_SECS.to_owned(),
        ),
        ("TOKENGATE_MAX_TOKENS_PER_USER", "100000".to_owned()),
        ("TOKENGATE_AUTH_FAILURE_LIMIT", "100000".to_owned()),
        ("TOKENGATE_LAST_USED_FLUSH_SECS", "1".to_owned()),
        ("RUST_LOG", "info,sqlx=warn".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl Proc {
    fn start(runner: &Runner, env: &[(String, String)]) -> Proc {
        let mut child = runner
            .command(env)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tokengate");
        let (log, rx, _reader) = common::follow_log(child.stderr.take().unwrap());
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("tokengate did not start: {:#?}", log.lock().unwrap());
            }
        };
        Proc { child, addr, log }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Still running, and no panic in its log.
    fn assert_healthy(&mut self, what: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{what}: the server exited: {}",
            self.log_text()
        );
        let log = self.log_text();
        assert!(
            !log.contains("panicked"),
            "{what}: a panic in the log:\n{log}"
        );
    }

    /// SIGKILL, and wait for the process to be gone.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(&mut self) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .expect("kill");
        assert!(status.success());
        let until = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < until, "tokengate did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tokengate ARGS` on the database `url`; panics on failure.
fn admin(url: &str, args: &[&str]) -> String {
    let out = Runner::plain()
        .command(&[("TOKENGATE_DATABASE_URL".into(), url.into())])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tokengate");
    assert!(
        out.status.success(),
        "tokengate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn add_user_at(url: &str, name: &str) {
    let mut child = Runner::plain()
        .command(&[("TOKENGATE_DATABASE_URL".into(), url.into())])
        .args([
            "user",
            "add",
            name,
            "--email",
            "a@example.com",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tokengate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PW}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `token` is refused (401) by `addr` within `limit`; how long that took.
fn refused_within(addr: SocketAddr, token: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let a = whoami(addr, token);
        if a.status == 401 {
            return Some(started.elapsed());
        }
        assert_eq!(a.status, 200, "{}", a.text());
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// A throwaway PostgreSQL cluster

/// A PostgreSQL cluster of its own (initdb in a temporary directory, a free port), run as the
/// `postgres` OS user when the tests run as root; stopped when dropped.
struct Cluster {
    bin: PathBuf,
    root: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn bin_dir() -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (Debian: postgresql)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .collect();
        found.sort_by_key(|p| {
            p.parent()
                .and_then(|v| v.file_name())
                .and_then(|v| v.to_str())
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(0)
        });
        found
            .pop()
            .expect("no initdb under /usr/lib/postgresql/*/bin")
    }

    fn new() -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = root.path().join("pg");
        std::fs::create_dir(&home).unwrap();
        if is_root() {
            let out = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let uid: u32 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("a postgres user");
            let out = Command::new("id")
                .args(["-g", "postgres"])
                .output()
                .unwrap();
            let gid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            bin: Self::bin_dir(),
            root,
            port,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        cluster.start();
        cluster
    }

    fn home(&self) -> PathBuf {
        self.root.path().join("pg")
    }

    fn data(&self) -> String {
        self.home().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) {
        if let Err(e) = self.try_run(program, args) {
            panic!("{e}");
        }
    }

    fn try_run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "postgres",
                "--regid",
                "postgres",
                "--init-groups",
                "--",
            ])
            .arg(path);
            c
        } else {
            Command::new(path)
        };
        let out = cmd
            .args(args)
            .current_dir(self.home())
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{program} {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Starts the cluster and waits until it accepts connections.
    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.home().display()
        );
        let log = self.home().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "30",
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
            ],
        );
    }

    /// Stops it with `mode`: `immediate` (no shutdown checkpoint: crash recovery on start, like
    /// a power cut of the database) or `fast` (connections are told the server shuts down).
    fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["stop", "-w", "-m", mode, "-D", &self.data()]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.try_run("pg_ctl", &["stop", "-m", "immediate", "-D", &data]);
    }
}

// ---------------------------------------------------------------------------------------------
// 1. PostgreSQL outage

/// What the request load saw.
#[derive(Default)]
struct Load {
    /// Tokens answered 201 (by token creation or login).
    issued: Vec<String>,
    /// (status, time taken) of every answer.
    answers: Vec<(u16, Duration, &'static str)>,
    /// Answers that were neither a success nor a 503 with a JSON error.
    wrong: Vec<String>,
}

/// Clients that create tokens, log in and check tokens in a loop until `stop`.
fn start_load(
    addr: SocketAddr,
    session: String,
    known: Vec<String>,
    stop: Arc<AtomicBool>,
    load: Arc<Mutex<Load>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..3)
        .map(|client| {
            let (session, known, stop, load) =
                (session.clone(), known.clone(), stop.clone(), load.clone());
            std::thread::spawn(move || {
                let mut i = client;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (what, answer) = match i % 3 {
                        0 => ("create", try_create(addr, &session)),
                        1 => ("login", try_login(addr, "alice")),
                        _ => (
                            "whoami",
                            try_http(
                                addr,
                                "GET",
                                "/-/whoami",
                                Some(&known[i % known.len()]),
                                None,
                            ),
                        ),
                    };
                    let a = answer.expect("the server answers throughout");
                    let mut load = load.lock().unwrap();
                    load.answers.push((a.status, a.took, what));
                    let ok_json = serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| {
                        a.status < 400 || v["error"].as_str().is_some_and(|e| !e.is_empty())
                    });
                    if !(matches!(a.status, 200 | 201 | 503) && ok_json) {
                        load.wrong
                            .push(format!("{what}: {} {}", a.status, a.text()));
                    }
                    if a.status == 201 {
                        load.issued
                            .push(a.json()["token"].as_str().unwrap().to_owned());
                    }
                    drop(load);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect()
}

/// Until a DB-backed request (a token creation) succeeds: how long that took, polling.
fn first_success(addr: SocketAddr, session: &str, limit: Duration) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let a = try_create(addr, session).expect("answer");
        if a.status == 201 {
            return (
                started.elapsed(),
                a.json()["token"].as_str().unwrap().to_owned(),
            );
        }
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(
            started.elapsed() < limit,
            "no successful token creation {limit:?} after the database came back"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_postgresql_outage_is_answered_503_and_recovered_from_by_itself() {
    let pg = Cluster::new();
    let url = pg.url();
    add_user_at(&url, "alice");
    let dir = tempfile::tempdir().unwrap();
    // Slow polling, so a revocation made elsewhere reaches the server quickly only through a
    // working LISTEN connection.
    let env = server_env(dir.path(), &url, &[("TOKENGATE_CHANGE_POLL_MS", "5000")]);
    let mut server = Proc::start(&Runner::plain(), &env);
    let addr = server.addr;

    let session = login(addr, "alice");
    // Checked once each, so they are in the verification cache.
    let cached: Vec<String> = (0..3).map(|_| create(addr, &session)).collect();
    for t in &cached {
        assert_eq!(whoami(addr, t).status, 200);
    }
    // Never checked: not in the cache.
    let uncached = create(addr, &session);

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let clients = start_load(
        addr,
        session.clone(),
        cached.clone(),
        stop.clone(),
        load.clone(),
    );
    std::thread::sleep(Duration::from_millis(1500));

    let mut recoveries = Vec::new();
    for mode in ["immediate", "fast"] {
        pg.stop(mode);
        let down = Instant::now();
        // Requests that need the database: 503 with a JSON error, within the bound.
        let ready = http(addr, "GET", "/-/health/ready", None, None);
        assert_unavailable(&ready, "ready");
        assert_eq!(http(addr, "GET", "/-/health/live", None, None).status, 200);
        let created = try_create(addr, &session).unwrap();
        assert_unavailable(&created, "token create");
        let logged_in = try_login(addr, "alice").unwrap();
        assert_unavailable(&logged_in, "login");
        let unknown = whoami(addr, &uncached);
        assert_unavailable(&unknown, "whoami with an uncached token");
        // A revocation cannot be stored, and says so (it is not lost silently).
        let revoke = http(
            addr,
            "DELETE",
            &format!(
                "/-/npm/v1/tokens/token/{}",
                tokengate::token::TokenKey::of(&cached[2]).0
            ),
            Some(&session),
            None,
        );
        assert_unavailable(&revoke, "revoke");
        // Tokens checked before the outage are answered from the cache meanwhile.
        assert_eq!(whoami(addr, &cached[0]).status, 200);
        eprintln!(
            "outage ({mode}): ready 503 after {:?}, token create 503 after {:?}, login 503 \
             after {:?}, uncached whoami 503 after {:?}, revoke 503 after {:?}",
            ready.took, created.took, logged_in.took, unknown.took, revoke.took
        );
        std::thread::sleep(Duration::from_millis(1500));
        server.assert_healthy("during the outage");

        pg.start();
        let up = Instant::now();
        let (took, _) = first_success(addr, &session, Duration::from_secs(10));
        let ready = http(addr, "GET", "/-/health/ready", None, None);
        assert_eq!(ready.status, 200, "{}", ready.text());
        eprintln!(
            "outage ({mode}): database down for {:?}; first token created {took:?} after the \
             cluster was ready",
            up - down
        );
        assert!(took < Duration::from_secs(2), "recovery took {took:?}");
        recoveries.push(took);
        std::thread::sleep(Duration::from_millis(1000));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("load client");
    }

    // A revocation by another process (the admin CLI) reaches the server through the change
    // events: NOTIFY wakes its poller, which reads them.
    let key = tokengate::token::TokenKey::of(&cached[1]);
    assert_eq!(whoami(addr, &cached[1]).status, 200);
    let revoked_at = Instant::now();
    admin(&url, &["token", "revoke", &key.0[..16]]);
    let cli_took = revoked_at.elapsed();
    let seen = refused_within(addr, &cached[1], Duration::from_secs(10))
        .expect("the revocation reached the server");
    eprintln!("after the outages: a CLI revocation refused {seen:?} after the CLI returned (CLI took {cli_took:?})");
    assert!(seen < Duration::from_secs(1), "{seen:?}");
    // And one through the API: at once.
    let key = tokengate::token::TokenKey::of(&cached[2]).0;
    let revoke = http(
        addr,
        "DELETE",
        &format!("/-/npm/v1/tokens/token/{key}"),
        Some(&session),
        None,
    );
    assert_eq!(revoke.status, 204, "{}", revoke.text());
    assert_eq!(whoami(addr, &cached[2]).status, 401);

    // Every token answered 201 works.
    let load = load.lock().unwrap();
    assert!(load.wrong.is_empty(), "wrong answers: {:#?}", load.wrong);
    for t in &load.issued {
        let a = whoami(addr, t);
        assert_eq!(a.status, 200, "a token answered 201 is lost: {}", a.text());
    }
    let unavailable: Vec<Duration> = load
        .answers
        .iter()
        .filter(|(s, _, _)| *s == 503)
        .map(|(_, t, _)| *t)
        .collect();
    let slowest = load.answers.iter().map(|(_, t, _)| *t).max().unwrap();
    eprintln!(
        "load: {} answers, {} of them 503 (slowest 503 {:?}), slowest answer {slowest:?}; {} \
         tokens answered 201, all working after the outages; recoveries {recoveries:?}",
        load.answers.len(),
        unavailable.len(),
        unavailable.iter().max(),
        load.issued.len()
    );
    assert!(!unavailable.is_empty(), "the load saw no outage");
    assert!(slowest <= ANSWER_BOUND, "an answer took {slowest:?}");
    server.assert_healthy("after the outages");
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 during token creations

/// Checks every row of the tokens table: complete, consistent with its owner.
fn check_token_rows(url: &str, user: &str, expect_at_least: usize) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.expect("connect");
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT t.key, t.redacted, t.kind, t.packages, t.scopes, t.orgs, t.created_ms, \
             u.name FROM tokens t LEFT JOIN users u ON u.id = t.user_id",
        )
        .fetch_all(&pool)
        .await
        .expect("read tokens");
        for row in &rows {
            let key: String = row.get("key");
            let owner: Option<String> = row.get("name");
            assert_eq!(owner.as_deref(), Some(user), "token {key} has no owner");
            assert!(
                tokengate::token::TokenKey::parse_hex(&key).is_some(),
                "bad key {key}"
            );
            let redacted: String = row.get("redacted");
            assert!(redacted.starts_with("npm_"), "bad redacted {redacted}");
            let kind: String = row.get("kind");
            assert!(
                matches!(kind.as_str(), "session" | "publish"),
                "kind {kind}"
            );
            for list in ["packages", "scopes", "orgs"] {
                let v: String = row.get(list);
                assert!(
                    serde_json::from_str::<Vec<String>>(&v).is_ok(),
                    "{list} {v}"
                );
            }
            let created: i64 = row.get("created_ms");
            assert!(created > 1_600_000_000_000, "created {created}");
        }
        pool.close().await;
        assert!(rows.len() >= expect_at_least);
        rows.len()
    })
}

#[test]
fn kill_9_during_token_creations_loses_no_answered_token_and_leaves_no_half_row() {
    for backend in BACKENDS {
        let db = TestDb::new(backend);
        add_user(&db, "alice", PW);
        let dir = tempfile::tempdir().unwrap();
        let env = server_env(dir.path(), &db.url, &[]);
        let issued = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut server = Proc::start(&Runner::plain(), &env);
        let session = login(server.addr, "alice");
        issued.lock().unwrap().push(session.clone());
        const KILLS: usize = 3;
        for round in 0..KILLS {
            let addr = server.addr;
            let before = issued.lock().unwrap().len();
            let clients: Vec<_> = (0..4)
                .map(|_| {
                    let (session, issued) = (session.clone(), issued.clone());
                    std::thread::spawn(move || loop {
                        // Any answer but 201 ends the client: the server is being killed.
                        match try_create(addr, &session) {
                            Ok(a) if a.status == 201 => issued
                                .lock()
                                .unwrap()
                                .push(a.json()["token"].as_str().unwrap().to_owned()),
                            Ok(a) => panic!("token create answered {}: {}", a.status, a.text()),
                            Err(_) => return,
                        }
                    })
                })
                .collect();
            // Let creations run, then kill in the middle of them.
            let until = Instant::now() + Duration::from_secs(10);
            while issued.lock().unwrap().len() < before + 10 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(137));
            server.kill9();
            for c in clients {
                c.join().expect("a client saw a wrong answer");
            }
            let made = issued.lock().unwrap().len() - before;
            server = Proc::start(&Runner::plain(), &env);
            // The restarted server knows every token answered so far.
            let all = issued.lock().unwrap().clone();
            for t in &all {
                let a = whoami(server.addr, t);
                assert_eq!(
                    a.status,
                    200,
                    "{backend:?}: a token answered 201 is lost: {}",
                    a.text()
                );
            }
            eprintln!(
                "{backend:?} kill {}: {made} tokens answered 201 before SIGKILL; all {} so far work \
                 after the restart",
                round + 1,
                all.len()
            );
        }
        let all = issued.lock().unwrap().clone();
        let rows = check_token_rows(&db.url, "alice", all.len());
        // The npm token list and the admin CLI read every row.
        let list = http(
            server.addr,
            "GET",
            "/-/npm/v1/tokens?perPage=9999",
            Some(&session),
            None,
        );
        assert_eq!(list.status, 200, "{}", list.text());
        let list = list.json();
        assert_eq!(list["total"].as_i64(), Some(rows as i64), "{list}");
        for t in list["objects"].as_array().unwrap() {
            assert!(t["key"].as_str().is_some_and(|k| k.len() == 128), "{t}");
            assert!(
                t["token"].as_str().is_some_and(|k| k.starts_with("npm_")),
                "{t}"
            );
            assert!(t["created"].as_str().is_some(), "{t}");
        }
        let cli = admin(&db.url, &["token", "list", "alice"]);
        assert!(cli.contains(&format!("\n{rows} token(s)")), "{cli}");
        eprintln!(
            "{backend:?}: {} tokens answered 201 across {KILLS} kills, {rows} rows, all complete",
            all.len()
        );
        server.assert_healthy("after the kills");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A full disk and a read-only database file (SQLite)

/// A SQLite database in `dir`, which the server's unprivileged uid owns, with alice.
fn sqlite_data(dir: &Path) -> String {
    let url = format!("sqlite://{}", dir.join("tokengate.db").display());
    add_user_at(&url, "alice");
    if is_root() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(SERVER_UID), Some(SERVER_UID))
                .unwrap();
        }
        std::os::unix::fs::chown(dir, Some(SERVER_UID), Some(SERVER_UID)).unwrap();
    }
    url
}

/// A small tmpfs mounted on a temporary directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when mounting is not permitted here.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with `filler`; how many bytes it took.
    fn fill(&self, filler: &Path) -> u64 {
        let mut f = std::fs::File::create(filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) => return written,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "not ENOSPC: {e}");
                    return written;
                }
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_refuses_writes_with_a_clear_503_and_reads_go_on() {
    // A real full disk (ENOSPC), on a 16 MiB tmpfs. RLIMIT_FSIZE (EFBIG) would need no mount,
    // but `prlimit --pid` on a process of another uid is refused here, and a limit set at start
    // cannot be lifted to show the recovery.
    let Some(disk) = SmallDisk::mount("16m") else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here");
        return;
    };
    let bin = tempfile::tempdir().unwrap();
    let runner = Runner::confined(bin.path());
    let url = sqlite_data(disk.path());
    let env = server_env(disk.path(), &url, &[]);
    let mut server = Proc::start(&runner, &env);
    let addr = server.addr;
    let session = login(addr, "alice");
    let used = create(addr, &session);
    assert_eq!(whoami(addr, &used).status, 200);
    let unused = create(addr, &session);

    let filler = disk.path().join("filler");
    let filled = disk.fill(&filler);
    eprintln!("disk full: filled the remaining {} KiB", filled / 1024);
    for (what, a) in [
        ("token create", try_create(addr, &session).unwrap()),
        ("login", try_login(addr, "alice").unwrap()),
    ] {
        assert_unavailable(&a, what);
        let error = a.error();
        eprintln!("disk full: {what} answered 503 after {:?}: {error}", a.took);
        assert!(error.contains("full"), "{what}: {error}");
    }
    // Reads go on: a token never checked before (so read from the database), one in the
    // cache, the token list.
    assert_eq!(whoami(addr, &unused).status, 200);
    assert_eq!(whoami(addr, &used).status, 200);
    let list = http(addr, "GET", "/-/npm/v1/tokens", Some(&session), None);
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["total"], 3);
    // The last-used writer fails in the background and carries on.
    std::thread::sleep(Duration::from_millis(1500));
    server.assert_healthy("disk full");

    // Space again: writes work without a restart.
    std::fs::remove_file(&filler).unwrap();
    let after = create(addr, &session);
    assert_eq!(whoami(addr, &after).status, 200);
    server.assert_healthy("after the disk full");
    drop(server);
}

/// SQLite rolls a transaction back by itself when its COMMIT hits a full disk; sqlx's own
/// ROLLBACK then fails and it goes on counting one open transaction, so the connection's next
/// transaction opens as a SAVEPOINT, and when that one fails too its rollback leaves SQLite
/// inside it for good: later reads see an old snapshot and later writes are never committed.
/// One pooled connection makes the two failures land on it for sure (in the server it took a
/// race, and an occasional 401 for a token created after the disk had space again).
#[test]
fn transactions_failed_on_a_full_disk_leave_no_connection_inside_one() {
    use tokengate::store::{NewUser, PoolSettings, SqlStore, Store, TokenKind, TokenUse};
    use tokengate::token::PlainToken;
    use tokengate::token_request::TokenSpec;
    let Some(disk) = SmallDisk::mount("4m") else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here");
        return;
    };
    let url = format!("sqlite://{}", disk.path().join("tokengate.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let one_connection = PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(5),
        };
        let store = SqlStore::connect(&url, &one_connection).await.unwrap();
        let owner = store
            .create_user(&NewUser {
                name: "alice".into(),
                email: "alice@example.com".into(),
                password_hash: "not a hash: never checked here".into(),
            })
            .await
            .unwrap();
        let record = |token: &PlainToken| {
            TokenSpec::unrestricted(TokenKind::Publish, None, None).into_record(
                token.key(),
                owner.id,
                token.redacted("npm_"),
                chrono::Utc::now(),
            )
        };
        let used = PlainToken::generate("npm_");
        store.insert_token(&record(&used)).await.unwrap();
        // An empty write-ahead log: every write from here on needs new space on the disk.
        let mut side = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut side)
            .await
            .unwrap();

        let filler = disk.path().join("filler");
        disk.fill(&filler);
        let uses = [TokenUse {
            key: used.key(),
            at: chrono::Utc::now(),
            client: "127.0.0.1".into(),
        }];
        for attempt in 1..=2 {
            let failed = store.record_token_uses(&uses).await;
            assert!(failed.is_err(), "write {attempt} on a full disk succeeded");
        }

        std::fs::remove_file(&filler).unwrap();
        let after = PlainToken::generate("npm_");
        store.insert_token(&record(&after)).await.unwrap();
        // Another connection, as another replica or request would read it.
        use sqlx::Row;
        let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE key = $1")
            .bind(&after.key().0)
            .fetch_one(&mut side)
            .await
            .unwrap()
            .get("n");
        assert_eq!(
            stored, 1,
            "the token written after the disk had space is not committed"
        );
        store.record_token_uses(&uses).await.unwrap();
        store.close().await;
    });
}

#[test]
fn a_read_only_database_refuses_writes_with_a_clear_503_and_reads_go_on() {
    let bin = tempfile::tempdir().unwrap();
    let runner = Runner::confined(bin.path());
    let data = tempfile::tempdir().unwrap();
    let url = sqlite_data(data.path());
    let env = server_env(data.path(), &url, &[]);
    let mut server = Proc::start(&runner, &env);
    let session = login(server.addr, "alice");
    let token = create(server.addr, &session);
    server.stop();

    // The file the server's uid may not write (root would write it anyway: hence setpriv).
    let db_file = data.path().join("tokengate.db");
    std::fs::set_permissions(&db_file, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut server = Proc::start(&runner, &env);
    let addr = server.addr;
    for (what, a) in [
        ("token create", try_create(addr, &session).unwrap()),
        ("login", try_login(addr, "alice").unwrap()),
    ] {
        assert_unavailable(&a, what);
        let error = a.error();
        eprintln!("read-only: {what} answered 503 after {:?}: {error}", a.took);
        assert!(error.contains("read-only"), "{what}: {error}");
    }
    assert_eq!(whoami(addr, &token).status, 200);
    assert_eq!(whoami(addr, &session).status, 200);
    let list = http(addr, "GET", "/-/npm/v1/tokens", Some(&session), None);
    assert_eq!(list.status, 200, "{}", list.text());
    std::thread::sleep(Duration::from_millis(1500));
    server.assert_healthy("read-only");
}
