//! schemathesis against a real `tokengate serve`, driven by the server's own OpenAPI description
//! (`GET /-/openapi.json`), on SQLite and on PostgreSQL: no 5xx, no hang, and every answer has
//! a documented status, content type, headers and body.
//!
//! schemathesis (a pinned version) is installed with pip into the target directory on first use
//! and reused afterwards.
//!
//! The run is authenticated with a session token of a test account. schemathesis reuses values
//! it has seen (the bearer token from the header, token keys from `npm token list`) as path
//! parameters, so it would log out or revoke its own credential early, after which every
//! authenticated operation answers only 401 and the run checks almost nothing. A `before_call`
//! hook therefore swaps that token (and its key) in a path for a second, decoy token of the same
//! account: revocation and logout still succeed once on a real token, and the run's credential
//! lives to the end, which the test checks afterwards. The same hook module gives about half of
//! the generated bodies the account's real password and half of the user paths its name, so
//! that token creation, login and profile changes are exercised past the password check;
//! password changes keep the same password.

mod common;

use common::{Backend, Server, TestDb, BACKENDS};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SCHEMATHESIS: &str = "4.32.5";
/// Test cases per operation and phase (the coverage phase adds its own boundary cases).
const MAX_EXAMPLES: &str = "25";
const SEED: &str = "20251126";
const USER: &str = "alice";
const PASSWORD: &str = "schema-check-Secret-4419";

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

/// schemathesis hooks, loaded through SCHEMATHESIS_HOOKS (see the module documentation).
const HOOKS_PY: &str = r#"
import hashlib
import os
import zlib

import schemathesis

USER = os.environ["TG_USER"]
PASSWORD = os.environ["TG_PASSWORD"]
GUARDED = os.environ["TG_GUARDED_TOKEN"]
DECOY = os.environ["TG_DECOY_TOKEN"]


def key(token):
    return hashlib.sha512(token.encode()).hexdigest()


SWAP = {GUARDED: DECOY, key(GUARDED): key(DECOY)}


def pick(value):
    return zlib.crc32(repr(value).encode()) % 2 == 0


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and pick(body):
        if isinstance(body.get("password"), str):
            body["password"] = PASSWORD
        elif isinstance(body.get("password"), dict):
            body["password"] = {"old": PASSWORD, "new": PASSWORD}
        tfa = body.get("tfa")
        if isinstance(tfa, dict) and isinstance(tfa.get("password"), str):
            tfa["password"] = PASSWORD
    return body


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    if isinstance(path_parameters, dict) and "id" in path_parameters and pick(path_parameters):
        path_parameters["id"] = "org.couchdb.user:" + USER
    return path_parameters


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters
    if isinstance(params, dict):
        for name, value in list(params.items()):
            if isinstance(value, str) and value in SWAP:
                params[name] = SWAP[value]
"#;

/// The directory schemathesis is installed in (for PYTHONPATH), installing it once.
fn schemathesis_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("schemathesis-{SCHEMATHESIS}"));
    let done = dir.join(".installed");
    if done.exists() {
        return dir;
    }
    // Installed next to the final place and renamed, so an interrupted install is never used.
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let started = Instant::now();
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--target"])
        .arg(&partial)
        .arg(format!("schemathesis=={SCHEMATHESIS}"))
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .output()
        .expect("python3 with pip is needed to install schemathesis");
    assert!(
        out.status.success(),
        "pip install schemathesis=={SCHEMATHESIS} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(partial.join(".installed"), SCHEMATHESIS).unwrap();
    if dir.exists() && !done.exists() {
        // Left by an install that did not finish.
        let _ = std::fs::remove_dir_all(&dir);
    }
    if std::fs::rename(&partial, &dir).is_err() {
        // Another test process installed it meanwhile.
        let _ = std::fs::remove_dir_all(&partial);
        assert!(done.exists(), "could not move schemathesis into {dir:?}");
    }
    eprintln!(
        "installed schemathesis {SCHEMATHESIS} in {:.0?}",
        started.elapsed()
    );
    dir
}

/// One HTTP/1.1 request to the server; the status and body.
fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect to tokengate");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn json_field(body: &str, field: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {body}"))
        .to_owned()
}

/// Logs `USER` in; the new session token.
fn login(base: &str) -> String {
    let (status, body) = http(
        base,
        "PUT",
        &format!("/-/user/org.couchdb.user:{USER}"),
        &[],
        &serde_json::json!({ "name": USER, "password": PASSWORD }).to_string(),
    );
    assert_eq!(status, 201, "login: {body}");
    json_field(&body, "token")
}

fn run(backend: Backend, tools: &Path) {
    let started = Instant::now();
    let db = TestDb::new(backend);
    common::add_user(&db, USER, PASSWORD);
    let server = Server::start(
        &db,
        &[
            // Open, so that adduser is exercised too.
            ("TOKENGATE_REGISTRATION", "open"),
            // schemathesis sends many wrong passwords; a lockout would stop it from reaching
            // the handlers behind the password check for the rest of the run.
            ("TOKENGATE_AUTH_FAILURE_LIMIT", "1000000"),
        ],
    );
    let base = server.base.clone();
    let guarded = login(&base);
    let auth = format!("Bearer {guarded}");
    let (status, body) = http(
        &base,
        "POST",
        "/-/npm/v1/tokens",
        &[("Authorization", &auth)],
        &serde_json::json!({ "password": PASSWORD, "name": "decoy" }).to_string(),
    );
    assert_eq!(status, 201, "decoy token: {body}");
    let decoy = json_field(&body, "token");

    let hooks = tempfile::tempdir().unwrap();
    std::fs::write(hooks.path().join("tokengate_hooks.py"), HOOKS_PY).unwrap();
    let reports = hooks.path().join("reports");
    let python_path = std::env::join_paths([tools, hooks.path()]).unwrap();
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run"])
        .arg(format!("{base}/-/openapi.json"))
        .args(["--header", &format!("Authorization: {auth}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", MAX_EXAMPLES, "--seed", SEED])
        .args(["--request-timeout", "10", "--workers", "1"])
        .args(["--report", "ndjson", "--report-dir"])
        .arg(&reports)
        .env("PYTHONPATH", python_path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SCHEMATHESIS_HOOKS", "tokengate_hooks")
        .env("TG_USER", USER)
        .env("TG_PASSWORD", PASSWORD)
        .env("TG_GUARDED_TOKEN", &guarded)
        .env("TG_DECOY_TOKEN", &decoy)
        .env("NO_COLOR", "1")
        .current_dir(hooks.path())
        .output()
        .expect("run schemathesis");
    let output = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = server.log_text();
    assert!(
        out.status.success(),
        "schemathesis found problems on {backend:?}:\n{output}\n--- server log (tail) ---\n{}",
        tail(&log, 60)
    );
    assert!(
        !log.contains("panicked") && !log.contains("internal error"),
        "the server panicked or failed on {backend:?}:\n{}",
        tail(&log, 200)
    );
    // The run kept its credential, so the authenticated operations were really exercised.
    let (status, body) = http(&base, "GET", "/-/whoami", &[("Authorization", &auth)], "");
    assert_eq!(
        (status, json_field(&body, "username")),
        (200, USER.to_owned()),
        "the server is not alive, or the run's token did not survive on {backend:?}"
    );
    let summary: Vec<&str> = output
        .lines()
        .filter(|l| {
            l.contains("generated,")
                || l.contains("Selected:")
                || l.contains(" in ") && l.starts_with("====")
        })
        .collect();
    eprintln!(
        "schemathesis on {backend:?} in {:.0?}: {}",
        started.elapsed(),
        summary.join(" | ")
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn schemathesis_finds_no_error_and_no_undocumented_answer() {
    let tools = schemathesis_dir();
    for backend in BACKENDS {
        run(backend, &tools);
    }
}
