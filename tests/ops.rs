//! Operations: the server run as the container image runs it (environment only, in its data
//! directory, as a non-root user when the tests run as root), its health probe, graceful
//! shutdown on SIGTERM, request ids and JSON logs, and the Prometheus metrics.
//!
//! Each test starts the built binary with a cleared environment, so nothing of the test
//! runner's environment (a `TOKENGATE_*` variable, say) changes what the server does.

mod common;

use common::{add_user, binary, Backend, TestDb, BACKENDS};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PW: &str = "correct horse battery";
/// The image's user and group (see the Dockerfile).
const IMAGE_UID: u32 = 10001;

/// A `tokengate serve` process, killed when dropped unless it already exited.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// How to run the binary: as the tests' user, or as the image's user through `setpriv`.
#[derive(Clone)]
struct Runner {
    program: PathBuf,
    as_image_user: bool,
}

impl Runner {
    fn plain() -> Runner {
        Runner {
            program: binary(),
            as_image_user: false,
        }
    }

    /// A command with only the given environment (and what every process needs), run in `dir`.
    fn command(&self, dir: &Path, env: &[(String, String)]) -> Command {
        let mut cmd = if self.as_image_user {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={IMAGE_UID}"))
                .arg(format!("--regid={IMAGE_UID}"))
                .args(["--clear-groups", "--"])
                .arg(&self.program);
            c
        } else {
            Command::new(&self.program)
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(dir);
        // libpq-style settings (PGPASSWORD on CI) reach the PostgreSQL driver.
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("PG")) {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, dir: &Path, env: &[(String, String)], args: &[&str]) -> Output {
        self.command(dir, env)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tokengate")
    }
}

/// The environment of the image (`Dockerfile`), with the data directory `data` and a free
/// loopback port, plus `extra`.
fn image_env(data: &Path, db_url: Option<&str>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let default_db = format!("sqlite://{}", data.join("tokengate.db").display());
    let mut env = vec![
        ("TOKENGATE_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        (
            "TOKENGATE_DATABASE_URL".to_owned(),
            db_url.map(str::to_owned).unwrap_or(default_db),
        ),
        (
            "TOKENGATE_TFA_KEY_FILE".to_owned(),
            data.join("tokengate.key").display().to_string(),
        ),
        ("RUST_LOG".to_owned(), "info".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

impl Proc {
    /// Starts `tokengate serve` and waits for the line that names its address.
    fn start(runner: &Runner, dir: &Path, env: &[(String, String)]) -> Proc {
        let mut child = runner
            .command(dir, env)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tokengate");
        let (log, rx, reader) = common::follow_log(child.stderr.take().unwrap());
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = reader.join();
                panic!("tokengate did not start: {:#?}", log.lock().unwrap());
            }
        };
        Proc {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    fn sigterm(&self) {
        // The shell's builtin `kill`: no procps needed, no libc dependency.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -TERM {}", self.child.id())])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; then every log line has been read.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if let Some(reader) = self.reader.take() {
                    reader.join().expect("log reader");
                }
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one complete answer (status line, headers, a body of `Content-Length` bytes or chunked)
/// from a connection the server closes after answering.
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    answer.body = if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)
    } else {
        let len: usize = answer
            .header("content-length")
            .map(|l| l.parse().expect("content-length"))
            .unwrap_or(rest.len());
        assert!(
            rest.len() >= len,
            "body cut short: {} of {len} bytes",
            rest.len()
        );
        rest[..len].to_vec()
    };
    answer
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return body;
        }
        assert!(data.len() >= size + 2, "chunk cut short");
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// One request on its own connection.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).expect("send request");
    read_answer(&mut stream)
}

/// `npm login`: a session token for `user`.
fn login(addr: SocketAddr, user: &str) -> String {
    let a = http(
        addr,
        "PUT",
        &format!("/-/user/org.couchdb.user:{user}"),
        &[],
        Some(&json!({ "name": user, "password": PW })),
    );
    assert_eq!(a.status, 201, "login: {}", a.text());
    a.json()["token"].as_str().expect("token").to_owned()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether `addr` refuses connections, waiting up to `limit` for it to start refusing.
fn refuses_connections_within(addr: SocketAddr, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return true,
            _ if Instant::now() >= until => return false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A temporary directory the image's user may use when the tests run as root.
fn data_dir(runner: &Runner) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    if runner.as_image_user {
        std::os::unix::fs::chown(dir.path(), Some(IMAGE_UID), Some(IMAGE_UID)).unwrap();
    }
    dir
}

/// Runs as the image's user (uid 10001, like `USER` in the Dockerfile) when the tests run as
/// root and `setpriv` works; otherwise as the tests' own user. The binary is copied to a
/// world-readable place, since the checkout may sit under a private home directory.
fn image_runner() -> (Runner, Option<tempfile::TempDir>) {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("not root: the server runs as the tests' user instead of uid {IMAGE_UID}");
        return (Runner::plain(), None);
    }
    let bin_dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let program = bin_dir.path().join("tokengate");
    std::fs::copy(binary(), &program).expect("copy the binary");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let runner = Runner {
        program,
        as_image_user: true,
    };
    let out = runner.run(bin_dir.path(), &[], &["--version"]);
    if !out.status.success() {
        eprintln!(
            "setpriv cannot run the binary as uid {IMAGE_UID} here ({}); running as root",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return (Runner::plain(), None);
    }
    (runner, Some(bin_dir))
}

#[test]
fn runs_like_the_container_image_and_probe_tells_ready_from_down() {
    let (runner, _bin) = image_runner();
    let data = data_dir(&runner);
    let env = image_env(data.path(), None, &[]);
    let mut server = Proc::start(&runner, data.path(), &env);
    let addr = server.addr.to_string();

    // The HEALTHCHECK: `tokengate probe` with the image's environment, where the listen address
    // is 0.0.0.0 and the probe asks loopback; and with an explicit address.
    let listen_all = format!("0.0.0.0:{}", server.addr.port());
    let probe_env = image_env(data.path(), None, &[("TOKENGATE_LISTEN", &listen_all)]);
    let out = runner.run(data.path(), &probe_env, &["probe"]);
    assert!(
        out.status.success(),
        "probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = runner.run(data.path(), &env, &["probe", "--addr", &addr]);
    assert!(
        out.status.success(),
        "probe --addr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready"));

    // The database and the server key are created in the data directory, the key private, both
    // owned by the image's user when the server ran as that user.
    let key = std::fs::metadata(data.path().join("tokengate.key")).expect("key file created");
    assert_eq!(key.mode() & 0o777, 0o600, "key file mode");
    let db = std::fs::metadata(data.path().join("tokengate.db")).expect("database created");
    if runner.as_image_user {
        assert_eq!((key.uid(), db.uid()), (IMAGE_UID, IMAGE_UID));
    }

    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(15))
        .expect("tokengate did not stop on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}: {}",
        server.log_text()
    );

    let out = runner.run(data.path(), &env, &["probe", "--addr", &addr]);
    assert!(!out.status.success(), "probe succeeded with no server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}

/// Sends the head of a token-create request with `Expect: 100-continue` and waits for the
/// server's `100 Continue`: from then on the request is in a handler, reading its body.
/// Returns the connection and the rest of the body, still to be sent.
fn start_slow_token_create(addr: SocketAddr, token: &str) -> (TcpStream, Vec<u8>) {
    let body = json!({ "password": PW, "readonly": false, "cidr_whitelist": [] }).to_string();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /-/npm/v1/tokens HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        bearer(token),
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).expect("read 100 Continue"), 1);
        interim.push(byte[0]);
    }
    let interim = String::from_utf8_lossy(&interim);
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    stream.write_all(first).unwrap();
    (stream, rest.to_vec())
}

#[test]
fn sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits_0() {
    for backend in BACKENDS {
        let db = TestDb::new(backend);
        add_user(&db, "alice", PW);
        let dir = tempfile::tempdir().unwrap();
        let env = image_env(dir.path(), Some(&db.url), &[]);
        let mut server = Proc::start(&Runner::plain(), dir.path(), &env);
        let session = login(server.addr, "alice");

        let (mut stream, rest) = start_slow_token_create(server.addr, &session);
        server.sigterm();
        assert!(
            refuses_connections_within(server.addr, Duration::from_secs(10)),
            "{backend:?}: new connections still accepted after SIGTERM"
        );
        stream.write_all(&rest).expect("send the rest of the body");
        let answer = read_answer(&mut stream);
        assert_eq!(answer.status, 201, "{backend:?}: {}", answer.text());
        let created = answer.json()["token"].as_str().unwrap().to_owned();
        assert!(created.starts_with("npm_"), "{backend:?}: {created}");

        let status = server
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{backend:?}: tokengate did not exit after SIGTERM"));
        assert!(
            status.success(),
            "{backend:?}: exit status {status}: {}",
            server.log_text()
        );
        let log = server.log_text();
        assert!(!log.contains(&session) && !log.contains(&created), "{log}");
    }
}

#[test]
fn shutdown_timeout_bounds_the_wait_for_requests_in_flight() {
    let db = TestDb::new(Backend::Sqlite);
    add_user(&db, "alice", PW);
    let dir = tempfile::tempdir().unwrap();
    // The request deadline is far away: only the shutdown timeout can end the wait.
    let env = image_env(
        dir.path(),
        Some(&db.url),
        &[
            ("TOKENGATE_SHUTDOWN_TIMEOUT_SECS", "1"),
            ("TOKENGATE_REQUEST_TIMEOUT_SECS", "300"),
        ],
    );
    let mut server = Proc::start(&Runner::plain(), dir.path(), &env);
    let session = login(server.addr, "alice");
    let (_stalled, _never_sent) = start_slow_token_create(server.addr, &session);

    let signalled = Instant::now();
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("tokengate still waits for a stalled request long after shutdown_timeout_secs");
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_millis(900), "exited after {took:?}");
    assert!(
        server.log_text().contains("still in flight"),
        "{}",
        server.log_text()
    );
}

#[test]
fn json_logs_have_one_object_per_line_with_the_request_id_and_no_secrets() {
    let db = TestDb::new(Backend::Sqlite);
    add_user(&db, "alice", PW);
    let dir = tempfile::tempdir().unwrap();
    let env = image_env(
        dir.path(),
        Some(&db.url),
        &[("TOKENGATE_LOG_FORMAT", "json")],
    );
    let mut server = Proc::start(&Runner::plain(), dir.path(), &env);
    let addr = server.addr;

    let mut ids = Vec::new();
    let mut note = |a: &Answer| {
        let id = a.header("x-request-id").expect("x-request-id answered");
        ids.push(id.to_owned());
        id.to_owned()
    };
    let a = http(
        addr,
        "PUT",
        "/-/user/org.couchdb.user:alice",
        &[],
        Some(&json!({ "name": "alice", "password": PW })),
    );
    assert_eq!(a.status, 201);
    note(&a);
    let session = a.json()["token"].as_str().unwrap().to_owned();
    let auth = bearer(&session);

    let a = http(addr, "GET", "/-/whoami", &[("Authorization", &auth)], None);
    assert_eq!(a.status, 200);
    note(&a);
    let a = http(
        addr,
        "POST",
        "/-/npm/v1/tokens",
        &[("Authorization", &auth)],
        Some(&json!({ "password": PW })),
    );
    assert_eq!(a.status, 201, "{}", a.text());
    note(&a);
    let created = a.json()["token"].as_str().unwrap().to_owned();
    let a = http(
        addr,
        "GET",
        "/-/whoami",
        &[("Authorization", &bearer(&created))],
        None,
    );
    assert_eq!(a.status, 200);
    note(&a);
    let a = http(
        addr,
        "GET",
        "/-/whoami",
        &[("Authorization", "Bearer npm_notavalidtoken")],
        None,
    );
    assert_eq!(a.status, 401);
    note(&a);
    let a = http(
        addr,
        "DELETE",
        &format!("/-/npm/v1/tokens/token/{created}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(a.status, 204, "{}", a.text());
    note(&a);
    let a = http(
        addr,
        "DELETE",
        &format!("/-/user/token/{session}"),
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text());
    note(&a);

    // A short, plain id from the client is kept; a long or odd one is replaced.
    let a = http(
        addr,
        "GET",
        "/-/ping",
        &[("X-Request-Id", "ci-run-42.step_7")],
        None,
    );
    assert_eq!(note(&a), "ci-run-42.step_7");
    let long = "a".repeat(65);
    for sent in [long.as_str(), "has space", "quote\"d", "semi;colon"] {
        let a = http(addr, "GET", "/-/ping", &[("X-Request-Id", sent)], None);
        let id = note(&a);
        assert_ne!(id, sent);
        assert_eq!(id.len(), 36, "a fresh UUID: {id}");
    }
    let a = http(addr, "GET", "/-/ping", &[], None);
    let fresh = note(&a);
    assert!(uuid::Uuid::parse_str(&fresh).is_ok(), "{fresh}");
    assert_eq!(ids.iter().filter(|i| **i == fresh).count(), 1, "ids repeat");

    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success());

    let lines = server.log_lines();
    let mut request_ids = Vec::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(v.is_object(), "{line}");
        let fields = &v["fields"];
        if fields["message"] == "request" {
            for key in ["method", "path", "status", "ms", "request_id"] {
                assert!(!fields[key].is_null(), "{key} missing: {line}");
            }
            request_ids.push(fields["request_id"].as_str().unwrap().to_owned());
        }
    }
    for id in &ids {
        assert_eq!(
            request_ids.iter().filter(|r| *r == id).count(),
            1,
            "one access log line with request id {id}:\n{lines:#?}"
        );
    }
    let log = lines.join("\n");
    for secret in [PW, session.as_str(), created.as_str(), &session[4..20]] {
        assert!(!log.contains(secret), "the log contains {secret}:\n{log}");
    }
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("sample value"))
}

#[test]
fn metrics_are_served_without_credentials_and_labelled_by_route_template() {
    let db = TestDb::new(Backend::Sqlite);
    add_user(&db, "alice", PW);
    let dir = tempfile::tempdir().unwrap();
    let env = image_env(dir.path(), Some(&db.url), &[]);
    let server = Proc::start(&Runner::plain(), dir.path(), &env);
    let addr = server.addr;

    let session = login(addr, "alice");
    let a = http(
        addr,
        "GET",
        "/-/whoami",
        &[("Authorization", &bearer(&session))],
        None,
    );
    assert_eq!(a.status, 200);
    let a = http(addr, "GET", "/-/whoami", &[], None);
    assert_eq!(a.status, 401);
    let a = http(
        addr,
        "DELETE",
        &format!("/-/user/token/{session}"),
        &[("Authorization", &bearer(&session))],
        None,
    );
    assert_eq!(a.status, 200);

    let m = http(addr, "GET", "/-/metrics", &[], None);
    assert_eq!(m.status, 200, "{}", m.text());
    assert!(
        m.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        m.headers
    );
    assert!(m.header("x-request-id").is_some());
    let text = m.text();
    let whoami = |status: &str| {
        format!("tokengate_http_requests_total{{method=\"GET\",route=\"/-/whoami\",status=\"{status}\"}}")
    };
    assert_eq!(sample(&text, &whoami("200")), Some(1.0), "{text}");
    assert_eq!(sample(&text, &whoami("401")), Some(1.0), "{text}");
    let logout = "tokengate_http_requests_total{method=\"DELETE\",route=\"/-/user/token/{token}\",status=\"200\"}";
    assert_eq!(sample(&text, logout), Some(1.0), "{text}");
    let login_count =
        "tokengate_http_request_duration_seconds_count{method=\"PUT\",route=\"/-/user/{id}\"}";
    assert_eq!(sample(&text, login_count), Some(1.0), "{text}");
    assert!(
        sample(&text, "tokengate_auth_outcomes_total{outcome=\"expired\"}").is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "tokengate_db_pool_connections").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "tokengate_db_pool_idle_connections").is_some(),
        "{text}"
    );
    // Raw paths never become labels: no token, no user name.
    assert!(
        !text.contains(&session[4..]) && !text.contains("alice"),
        "{text}"
    );

    // Unknown paths count under one label, whatever they contain.
    let a = http(addr, "GET", "/-/nope/secret-looking-path", &[], None);
    assert_ne!(a.status, 200);
    let text = http(addr, "GET", "/-/metrics", &[], None).text();
    assert!(text.contains("route=\"unmatched\""), "{text}");
    assert!(!text.contains("secret-looking-path"), "{text}");
    // The scrape itself is counted under its own route.
    assert!(text.contains("route=\"/-/metrics\""), "{text}");
}

#[test]
fn metrics_path_moves_or_disables_the_endpoint() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();

    let env = image_env(
        dir.path(),
        Some(&db.url),
        &[("TOKENGATE_METRICS_PATH", "/-/prom")],
    );
    let server = Proc::start(&Runner::plain(), dir.path(), &env);
    assert_eq!(http(server.addr, "GET", "/-/ping", &[], None).status, 200);
    let a = http(server.addr, "GET", "/-/prom", &[], None);
    assert_eq!(a.status, 200);
    assert!(
        a.text()
            .contains("tokengate_http_requests_total{method=\"GET\",route=\"/-/ping\""),
        "{}",
        a.text()
    );
    let a = http(server.addr, "GET", "/-/metrics", &[], None);
    assert_ne!(a.status, 200);
    assert!(!a.text().contains("tokengate_"), "{}", a.text());
    drop(server);

    let env = image_env(dir.path(), Some(&db.url), &[("TOKENGATE_METRICS_PATH", "")]);
    let server = Proc::start(&Runner::plain(), dir.path(), &env);
    let a = http(server.addr, "GET", "/-/metrics", &[], None);
    assert_ne!(a.status, 200);
    assert!(!a.text().contains("tokengate_"), "{}", a.text());
}

/// How long `addr` goes on accepting `token` for whoami, polled every few milliseconds.
fn accepted_for(addr: SocketAddr, token: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let auth = bearer(token);
    while started.elapsed() < limit {
        let a = http(addr, "GET", "/-/whoami", &[("Authorization", &auth)], None);
        if a.status == 401 {
            return Some(started.elapsed());
        }
        assert_eq!(a.status, 200, "{}", a.text());
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn a_revocation_on_one_replica_reaches_the_others_within_a_second() {
    for backend in BACKENDS {
        let db = TestDb::new(backend);
        add_user(&db, "alice", PW);
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = Proc::start(
            &Runner::plain(),
            dir_a.path(),
            &image_env(dir_a.path(), Some(&db.url), &[]),
        );
        let b = Proc::start(
            &Runner::plain(),
            dir_b.path(),
            &image_env(dir_b.path(), Some(&db.url), &[]),
        );
        for round in 0..3 {
            let session = login(a.addr, "alice");
            // B has checked the token, so it is in B's cache.
            for _ in 0..3 {
                let ok = http(
                    b.addr,
                    "GET",
                    "/-/whoami",
                    &[("Authorization", &bearer(&session))],
                    None,
                );
                assert_eq!(ok.status, 200, "{}", ok.text());
            }
            let key = tokengate::token::TokenKey::of(&session);
            let revoked = http(
                a.addr,
                "DELETE",
                &format!("/-/npm/v1/tokens/token/{}", key.0),
                &[("Authorization", &bearer(&session))],
                None,
            );
            assert_eq!(revoked.status, 204, "{}", revoked.text());
            // A refuses it at once; B within a second.
            let on_a = http(
                a.addr,
                "GET",
                "/-/whoami",
                &[("Authorization", &bearer(&session))],
                None,
            );
            assert_eq!(
                on_a.status, 401,
                "{backend:?}: A still accepts its own revoked token"
            );
            let took = accepted_for(b.addr, &session, Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{backend:?}: B still accepts the token after 5 s"));
            eprintln!("{backend:?} round {round}: B refused the revoked token after {took:?}");
            assert!(took < Duration::from_secs(1), "{backend:?}: {took:?}");
        }
        // The admin CLI's changes reach running servers too: disabling a user.
        let session = login(a.addr, "alice");
        let auth = bearer(&session);
        assert_eq!(
            http(
                b.addr,
                "GET",
                "/-/whoami",
                &[("Authorization", &auth)],
                None
            )
            .status,
            200
        );
        common::cli(&db, &["user", "disable", "alice"], "");
        let took = accepted_for(b.addr, &session, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{backend:?}: B still accepts a disabled user's token"));
        assert!(took < Duration::from_secs(1), "{backend:?}: {took:?}");
        assert_eq!(
            http(
                a.addr,
                "GET",
                "/-/whoami",
                &[("Authorization", &auth)],
                None
            )
            .status,
            401
        );
    }
}

/// Reads from `stream` until the server closes it; `None` when it stays open past `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut sink = [0u8; 1024];
    while started.elapsed() < limit {
        match stream.read(&mut sink) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

#[test]
fn idle_slow_and_greedy_clients_do_not_keep_others_out() {
    let db = TestDb::new(Backend::Sqlite);
    add_user(&db, "alice", PW);
    let dir = tempfile::tempdir().unwrap();
    let env = image_env(
        dir.path(),
        Some(&db.url),
        &[
            ("TOKENGATE_HEADER_TIMEOUT_SECS", "5"),
            ("TOKENGATE_BODY_TIMEOUT_SECS", "1"),
            ("TOKENGATE_MAX_HEADER_BYTES", "8192"),
            ("TOKENGATE_MAX_CONNECTIONS", "600"),
        ],
    );
    let server = Proc::start(&Runner::plain(), dir.path(), &env);
    let addr = server.addr;
    let session = login(addr, "alice");

    // 500 connections held open: half never send a byte, half send a request head slowly.
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..500)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connect");
            if i % 2 == 1 {
                s.write_all(b"GET /-/whoami HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            s
        })
        .collect();
    let held_since = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let a = http(
            addr,
            "GET",
            "/-/whoami",
            &[("Authorization", &bearer(&session))],
            None,
        );
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.json()["username"], "alice");
        slowest = slowest.max(started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    eprintln!("500 idle connections held: the slowest of 20 whoami answers took {slowest:?}");
    // Before the header timeout of the first of them: none may have been closed yet (3 s
    // proved too short when CI was slow to open the 500).
    assert!(
        held_since.elapsed() < Duration::from_secs(3) && opened.elapsed() < Duration::from_secs(5),
        "the legitimate requests were checked while the idle connections were held"
    );
    let m = http(addr, "GET", "/-/metrics", &[], None);
    let open = sample(&m.text(), "tokengate_open_connections").unwrap();
    assert!(open >= 500.0, "open connections: {open}");

    // The server closes them once the header timeout has passed.
    for (i, s) in idle.iter_mut().enumerate().step_by(50) {
        let closed = closed_within(s, Duration::from_secs(8));
        assert!(closed.is_some(), "connection {i} still open");
    }
    eprintln!(
        "idle connections closed {:?} after they were opened (header timeout 5 s)",
        opened.elapsed()
    );
    assert!(
        opened.elapsed() >= Duration::from_secs(5),
        "closed too early"
    );
    drop(idle);

    // max_header_bytes (8192 here) is the size of the head exactly: up to it a request is
    // answered, one byte more is a 431 with a JSON error, and so is a head a quarter larger
    // (hyper's own buffer limit let those through), and one past twice the limit.
    let head_without_filler = format!(
        "GET /-/ping HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Filler: \r\n\
         Content-Length: 0\r\n\r\n"
    )
    .len();
    for (head, want) in [(8192, 200), (8193, 431), (10_240, 431), (20_000, 431)] {
        let filler = "x".repeat(head - head_without_filler);
        let a = http(addr, "GET", "/-/ping", &[("X-Filler", &filler)], None);
        assert_eq!(a.status, want, "a head of {head} bytes: {}", a.text());
        if want == 431 && head < 2 * 8192 {
            let error = a.json()["error"].as_str().unwrap().to_owned();
            assert!(error.contains("max_header_bytes"), "{error}");
        }
    }

    // A body that stops arriving: 408 with a JSON error, after body_timeout_secs.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST /-/npm/v1/tokens HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {session}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"password\":"
    );
    let started = Instant::now();
    s.write_all(head.as_bytes()).unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status, 408, "{}", a.text());
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("stopped arriving"));
    assert!(started.elapsed() < Duration::from_secs(5));
    eprintln!("a paused body answered 408 after {:?}", started.elapsed());
    assert!(
        !server.log_lines().join("\n").contains(&session),
        "the log holds the token"
    );
}

#[test]
fn connections_over_the_cap_get_a_json_503_and_the_server_recovers() {
    let db = TestDb::new(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let env = image_env(
        dir.path(),
        Some(&db.url),
        &[
            ("TOKENGATE_HEADER_TIMEOUT_SECS", "2"),
            ("TOKENGATE_MAX_CONNECTIONS", "5"),
        ],
    );
    let server = Proc::start(&Runner::plain(), dir.path(), &env);
    let addr = server.addr;
    let held: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let a = http(addr, "GET", "/-/ping", &[], None);
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.header("retry-after"), Some("1"));
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many open connections"));

    // The held connections time out; then everyone is served again.
    let until = Instant::now() + Duration::from_secs(6);
    loop {
        let a = http(addr, "GET", "/-/ping", &[], None);
        if a.status == 200 {
            break;
        }
        assert!(Instant::now() < until, "still refused: {}", a.text());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(held);
    let m = http(addr, "GET", "/-/metrics", &[], None);
    assert!(sample(&m.text(), "tokengate_refused_connections_total").unwrap() >= 1.0);
}
