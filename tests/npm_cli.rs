//! End to end: the real npm CLI against a real `tokengate serve` process, on SQLite and on
//! PostgreSQL. Where npm cannot work without a terminal (the couch login prompts), npm's own
//! `npm-profile` library is driven through node, and `npm login` itself runs under a
//! pseudo-terminal.
//!
//! Every npm run gets a throwaway user config, global config, cache and HOME, and stdin from
//! /dev/null, so nothing on the machine leaks in and nothing can wait for input.

mod common;
#[path = "npm_cli/gate.rs"]
mod gate;

use common::{leaks, Backend, Server, TestDb, BACKENDS};
use serde_json::{json, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const USER: &str = "alice";
const PASSWORD: &str = "npm-e2e-Secret-7731-horse";

/// Calls npm's bundled npm-profile / npm-registry-fetch: `node -e PROFILE_JS OP JSON-ARGS`.
/// Prints one JSON line, `{"ok": RESULT}` or `{"error": {code, statusCode, message, body}}`.
const PROFILE_JS: &str = r#"
const path = require('path');
const lib = (m) => require(path.join(process.env.TG_NPM_ROOT, 'npm', 'node_modules', m));
const profile = lib('npm-profile');
const fetch = lib('npm-registry-fetch');
const [op, raw] = process.argv.slice(1);
const a = JSON.parse(raw);
const opts = { registry: a.registry };
if (a.token) {
  opts[a.nerf + ':_authToken'] = a.token;
}
const ops = {
  login: () => profile.loginCouch(a.username, a.password, opts),
  adduser: () => profile.adduserCouch(a.username, a.email, a.password, opts),
  createToken: () => profile.createToken(a.password, a.readonly, a.cidrs, opts),
  get: () => fetch.json(a.path, opts),
  post: () => fetch.json(a.path, { ...opts, method: 'POST', body: a.body, otp: a.otp }),
};
ops[op]().then(
  (r) => console.log(JSON.stringify({ ok: r })),
  (e) => {
    console.log(JSON.stringify({
      error: { code: e.code, statusCode: e.statusCode, message: e.message, body: e.body },
    }));
    process.exitCode = 1;
  },
);
"#;

/// Runs `ARGV...` under a pseudo-terminal and answers its prompts in order:
/// `python3 -c PTY_PY SCRIPT-JSON ARGV...`, where SCRIPT is `[[PROMPT, ANSWER], ...]`. The answer
/// `{totp}` is the current TOTP code of the secret the transcript shows after `enter code:`.
/// Prints the transcript and exits with the child's status (124 on timeout).
const PTY_PY: &str = r#"
import base64, hashlib, hmac, json, os, pty, re, select, signal, struct, sys, time
script, argv = json.loads(sys.argv[1]), sys.argv[2:]

def totp(secret):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    mac = hmac.new(key, struct.pack(">Q", int(time.time()) // 30), hashlib.sha1).digest()
    o = mac[-1] & 15
    return "%06d" % ((struct.unpack(">I", mac[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)

pid, fd = pty.fork()
if pid == 0:
    os.execvp(argv[0], argv)
buf, seen, step = b"", 0, 0
deadline = time.time() + 90
timed_out = False
while True:
    if time.time() > deadline:
        timed_out = True
        os.kill(pid, signal.SIGKILL)
        break
    r, _, _ = select.select([fd], [], [], 0.2)
    if fd in r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        buf += data
    if step < len(script):
        prompt, answer = script[step]
        at = buf.find(prompt.encode(), seen)
        if at >= 0:
            if answer == "{totp}":
                m = re.search(rb"enter code:\s*([A-Z2-7]+)", buf)
                answer = totp(m.group(1).decode())
            os.write(fd, (answer + "\r").encode())
            seen = at + len(prompt)
            step += 1
_, status = os.waitpid(pid, 0)
sys.stdout.write(buf.decode("utf-8", "replace"))
sys.stdout.flush()
sys.exit(124 if timed_out else os.waitstatus_to_exitcode(status))
"#;

/// `npm root -g`, once.
fn npm_root() -> &'static str {
    static ROOT: OnceLock<String> = OnceLock::new();
    ROOT.get_or_init(|| {
        let out = Command::new("npm")
            .args(["root", "-g"])
            .stdin(Stdio::null())
            .output()
            .expect("npm must be installed for these tests");
        assert!(out.status.success(), "npm root -g failed");
        let root = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(
            Path::new(&root)
                .join("npm/node_modules/npm-profile")
                .is_dir(),
            "npm-profile not found under {root}"
        );
        root
    })
}

/// What a finished command printed.
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Asserts success and returns stdout.
    fn expect_ok(&self, what: &str) -> &str {
        assert!(self.ok(), "{what} failed: {self}");
        &self.stdout
    }

    /// Asserts failure with `npm error code CODE`.
    fn expect_code(&self, what: &str, code: &str) {
        assert!(!self.ok(), "{what} should have failed: {self}");
        assert!(
            self.stderr.contains(&format!("npm error code {code}\n")),
            "{what}: expected npm error code {code}: {self}"
        );
    }
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// One scenario's world: a database, a server, a scratch directory for npm, and every secret
/// the scenario used (none may appear in the server log).
struct Ctx {
    server: Server,
    db: TestDb,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT/`
    registry: String,
    /// `//127.0.0.1:PORT/`, npm's key for credentials of this registry.
    nerf: String,
    /// The default user config for [`npm`].
    userconfig: PathBuf,
    secrets: Vec<String>,
    started: Instant,
    label: String,
    /// The TOTP secret (base32) and unused recovery codes once a scenario enabled 2FA.
    tfa_secret: Option<String>,
    recovery: Vec<String>,
}

impl Ctx {
    fn new(backend: Backend, env: &[(&str, &str)], label: &str) -> Ctx {
        let started = Instant::now();
        let db = TestDb::new(backend);
        let dir = tempfile::tempdir().expect("tempdir");
        // The server's two-factor key file goes to the scratch directory, not the working one.
        let key_file = dir.path().join("tokengate.key");
        let key_file = key_file.to_str().expect("UTF-8 temp path");
        let mut env = env.to_vec();
        env.push(("TOKENGATE_TFA_KEY_FILE", key_file));
        let server = Server::start(&db, &env);
        let registry = format!("{}/", server.base);
        let nerf = registry
            .strip_prefix("http:")
            .expect("http registry")
            .to_owned();
        let userconfig = dir.path().join("npmrc");
        std::fs::write(&userconfig, "").unwrap();
        std::fs::write(dir.path().join("globalnpmrc"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Ctx {
            server,
            db,
            dir,
            registry,
            nerf,
            userconfig,
            secrets: {
                leaks::secret(PASSWORD);
                vec![PASSWORD.to_owned()]
            },
            started,
            label: format!("{label} on {backend:?}"),
            tfa_secret: None,
            recovery: Vec::new(),
        }
    }

    fn remember(&mut self, secret: &str) {
        leaks::secret(secret);
        self.secrets.push(secret.to_owned());
    }

    /// A user config holding only `token` for this registry.
    fn config_with(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{}:_authToken={token}\n", self.nerf)).unwrap();
        path
    }

    /// The token `config` holds for this registry; npm deletes a config it emptied.
    fn token_in(&self, config: &Path) -> Option<String> {
        let text = std::fs::read_to_string(config).unwrap_or_default();
        let key = format!("{}:_authToken=", self.nerf);
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&key).map(|t| t.trim().to_owned()))
    }

    /// Environment for npm, node and the pty driver: nothing from the machine's npm setup.
    fn env(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy()
                .to_ascii_lowercase()
                .starts_with("npm_config_")
            {
                cmd.env_remove(k);
            }
        }
        let dir = self.dir.path();
        cmd.env("HOME", dir.join("home"))
            .env("npm_config_cache", dir.join("cache"))
            .env("npm_config_globalconfig", dir.join("globalnpmrc"))
            .env("npm_config_update_notifier", "false")
            .env("npm_config_audit", "false")
            .env("npm_config_fund", "false")
            .env("NO_COLOR", "1")
            .env("TG_NPM_ROOT", npm_root());
    }

    /// The server log must hold none of the scenario's tokens or passwords.
    fn assert_log_clean(&self) {
        let log = self.server.log_text();
        assert!(
            log.contains("request method="),
            "{}: the server log looks empty:\n{log}",
            self.label
        );
        for secret in &self.secrets {
            assert!(
                !log.contains(secret.as_str()),
                "{}: the server log contains the secret {secret}:\n{log}",
                self.label
            );
            // A token with its prefix cut off is just as usable.
            if let Some(rest) = secret.strip_prefix("npm_") {
                assert!(
                    !log.contains(rest),
                    "{}: the server log contains the body of {secret}:\n{log}",
                    self.label
                );
            }
        }
    }

    fn done(self) {
        self.assert_log_clean();
        leaks::assert_none();
        eprintln!(
            "{}: passed in {:.1}s",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// `npm ARGS` with the scenario's default user config.
fn npm(ctx: &Ctx, args: &[&str]) -> Out {
    npm_with(ctx, &ctx.userconfig, args)
}

/// `npm ARGS` with `userconfig`.
fn npm_with(ctx: &Ctx, userconfig: &Path, args: &[&str]) -> Out {
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .arg("--userconfig")
        .arg(userconfig)
        .arg("--registry")
        .arg(&ctx.registry);
    ctx.env(&mut cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("run npm (is it installed?)");
    Out::from(out)
}

/// Calls an npm-profile / npm-registry-fetch function (see [`PROFILE_JS`]); `Err` holds the
/// error object npm's library threw.
fn profile(ctx: &Ctx, op: &str, mut args: Value) -> Result<Value, Value> {
    args["registry"] = json!(ctx.registry);
    args["nerf"] = json!(ctx.nerf);
    let mut cmd = Command::new("node");
    cmd.args(["-e", PROFILE_JS, op, &args.to_string()]);
    ctx.env(&mut cmd);
    let out = Out::from(cmd.stdin(Stdio::null()).output().expect("run node"));
    let line = out.stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("node {op}: no JSON answer ({e}): {out}"));
    match (v.get("ok"), v.get("error")) {
        (Some(ok), None) => {
            assert!(out.ok(), "node {op} answered ok but failed: {out}");
            Ok(ok.clone())
        }
        (None, Some(err)) => Err(err.clone()),
        _ => panic!("node {op}: unexpected answer: {out}"),
    }
}

/// npm-profile's `loginCouch`: the token of a new login session.
fn login(ctx: &mut Ctx, user: &str, password: &str) -> String {
    let answer = profile(
        ctx,
        "login",
        json!({ "username": user, "password": password }),
    )
    .unwrap_or_else(|e| panic!("loginCouch {user}: {e}"));
    let token = answer["token"]
        .as_str()
        .unwrap_or_else(|| panic!("loginCouch answered no token: {answer}"))
        .to_owned();
    assert_token_shape(&token);
    ctx.remember(&token);
    token
}

fn assert_token_shape(token: &str) {
    assert!(
        token.starts_with("npm_")
            && token.len() == 40
            && token[4..].bytes().all(|b| b.is_ascii_alphanumeric()),
        "not an npm_ token of 36 characters: {token:?}"
    );
}

/// The token from npm's plain `Created token npm_…` line.
fn created_token(ctx: &mut Ctx, out: &Out) -> String {
    let stdout = out.expect_ok("npm token create");
    let token = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Created token "))
        .unwrap_or_else(|| panic!("no `Created token` line: {out}"))
        .trim()
        .to_owned();
    assert_token_shape(&token);
    ctx.remember(&token);
    token
}

/// One token in npm's plain `npm token list` output.
#[derive(Debug, Clone)]
struct Listed {
    shown: String,
    id: String,
    name: String,
    created: String,
    cidrs: Option<String>,
}

/// Parses `Token npm_AbCd… with id 1a2b3c name NAME created YYYY-MM-DD`, each optionally
/// followed by `with IP whitelist: LIST`.
fn list_plain(ctx: &Ctx, config: &Path) -> Vec<Listed> {
    let out = npm_with(ctx, config, &["token", "list"]);
    let stdout = out.expect_ok("npm token list");
    let mut listed: Vec<Listed> = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("Token ") {
            let parse = || -> Option<Listed> {
                let (shown, rest) = rest.split_once("… with id ")?;
                let (id, rest) = rest.split_once(" name ")?;
                let (name, created) = rest.rsplit_once(" created ")?;
                Some(Listed {
                    shown: shown.into(),
                    id: id.into(),
                    name: name.into(),
                    created: created.into(),
                    cidrs: None,
                })
            };
            listed.push(parse().unwrap_or_else(|| panic!("unexpected list line {line:?}")));
        } else if let Some(list) = line.strip_prefix("with IP whitelist: ") {
            let last = listed
                .last_mut()
                .unwrap_or_else(|| panic!("IP whitelist before any token: {out}"));
            last.cidrs = Some(list.to_owned());
        } else {
            panic!("unexpected line {line:?} in npm token list: {out}");
        }
    }
    listed
}

/// `npm token list --json`.
fn list_json(ctx: &Ctx, config: &Path) -> Vec<Value> {
    let out = npm_with(ctx, config, &["token", "list", "--json"]);
    let stdout = out.expect_ok("npm token list --json");
    match serde_json::from_str::<Value>(stdout) {
        Ok(Value::Array(items)) => items,
        other => panic!("npm token list --json is no array ({other:?}): {out}"),
    }
}

/// The listed object of `token`, found by its key (the SHA-512 hex of the token).
fn find_listed<'a>(items: &'a [Value], token: &str) -> Option<&'a Value> {
    let key = sha512_hex(token);
    items.iter().find(|o| o["key"] == json!(key))
}

fn sha512_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(s.as_bytes()))
}

fn whoami(ctx: &Ctx, config: &Path) -> Out {
    npm_with(ctx, config, &["whoami"])
}

fn assert_whoami(ctx: &Ctx, config: &Path, user: &str) {
    let out = whoami(ctx, config);
    assert_eq!(out.expect_ok("npm whoami").trim(), user, "{out}");
}

fn assert_whoami_401(ctx: &Ctx, config: &Path) {
    let out = whoami(ctx, config);
    out.expect_code("npm whoami with a dead token", "E401");
    assert!(
        out.stderr
            .contains("your authentication token seems to be invalid"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------

/// Scenarios 1, 2 and 8: couch login through npm-profile (right and wrong passwords, unknown
/// user), `npm login --auth-type=legacy` in a pseudo-terminal, `npm whoami`, `npm logout`.
fn login_whoami_logout(backend: Backend) {
    let mut ctx = Ctx::new(backend, &[], "login, whoami and logout");
    common::add_user(&ctx.db, USER, PASSWORD);

    // loginCouch: a session token, written as npm login would.
    let token = login(&mut ctx, USER, PASSWORD);
    std::fs::write(
        &ctx.userconfig,
        format!("{}:_authToken={token}\n", ctx.nerf),
    )
    .unwrap();
    assert_whoami(&ctx, &ctx.userconfig, USER);
    let out = npm(&ctx, &["whoami", "--json"]);
    assert_eq!(out.expect_ok("npm whoami --json").trim(), "\"alice\"");

    // A wrong password and an unknown user get the same 401 and the same words.
    let wrong_password = "npm-e2e-Wrong-0042-password";
    ctx.remember(wrong_password);
    let wrong = profile(
        &ctx,
        "login",
        json!({ "username": USER, "password": wrong_password }),
    )
    .expect_err("login with a wrong password");
    let unknown = profile(
        &ctx,
        "login",
        json!({ "username": "nobody-here", "password": wrong_password }),
    )
    .expect_err("login of an unknown user");
    for e in [&wrong, &unknown] {
        assert_eq!(e["statusCode"], json!(401), "{e}");
        assert_eq!(e["code"], json!("E401"), "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .starts_with("401 Unauthorized - PUT "),
            "{e}"
        );
    }
    assert!(
        wrong["body"]["error"].is_string(),
        "the 401 has no error text: {wrong}"
    );
    assert_eq!(
        wrong["body"], unknown["body"],
        "a wrong password and an unknown user must be answered alike"
    );
    let strip_url = |e: &Value| {
        let m = e["message"].as_str().unwrap();
        m.rsplit_once(" - ").unwrap().1.to_owned()
    };
    assert_eq!(strip_url(&wrong), strip_url(&unknown));

    // A second session, to see that logout ends only its own.
    let other = login(&mut ctx, USER, PASSWORD);
    let other_config = ctx.config_with("other-npmrc", &other);

    // `npm logout`: the token leaves the config and stops working; the other session lives.
    let copy = ctx.config_with("copy-npmrc", &token);
    let stale = ctx.config_with("stale-npmrc", &token);
    let out = npm(&ctx, &["logout"]);
    out.expect_ok("npm logout");
    let after = std::fs::read_to_string(&ctx.userconfig).unwrap_or_default();
    assert!(
        !after.contains(&token) && ctx.token_in(&ctx.userconfig).is_none(),
        "npm logout left the token in the config:\n{after}"
    );
    assert_whoami_401(&ctx, &copy);
    let out = npm(&ctx, &["whoami"]);
    out.expect_code("npm whoami after logout", "ENEEDAUTH");
    assert_whoami(&ctx, &other_config, USER);
    let listed = list_json(&ctx, &other_config);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(find_listed(&listed, &other).is_some());

    // Logging out with a token that is already dead still succeeds and cleans the config.
    let out = npm_with(&ctx, &copy, &["logout"]);
    out.expect_ok("npm logout with a revoked token");
    assert!(ctx.token_in(&copy).is_none());

    // `npm login --auth-type=legacy` at a terminal, with the revoked token still configured
    // (npm sends it along with the login).
    let out = pty_login(&ctx, &stale, USER, PASSWORD);
    assert!(out.ok(), "npm login in a pty failed: {out}");
    assert!(out.stdout.contains("Username:"), "{out}");
    assert!(out.stdout.contains("Password:"), "{out}");
    assert!(
        out.stdout
            .contains(&format!("Logged in on {}.", ctx.registry)),
        "{out}"
    );
    assert!(
        !out.stdout.contains(PASSWORD),
        "the password was echoed: {out}"
    );
    let pty_token = ctx
        .token_in(&stale)
        .unwrap_or_else(|| panic!("npm login wrote no token: {out}"));
    assert_token_shape(&pty_token);
    ctx.remember(&pty_token);
    assert!(
        pty_token != token && pty_token != other,
        "each login is a new session"
    );
    assert_whoami(&ctx, &stale, USER);

    // The live sessions are listed, with short prefixes only.
    let listed = list_json(&ctx, &stale);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(find_listed(&listed, &token).is_none());
    for t in [&other, &pty_token] {
        let o = find_listed(&listed, t).unwrap_or_else(|| panic!("{t} not listed"));
        let shown = o["token"].as_str().unwrap();
        assert!(t.starts_with(shown) && shown.len() < t.len(), "{o}");
    }

    // A password change by the administrator ends the login sessions.
    let new_password = "npm-e2e-Changed-8080-password";
    ctx.remember(new_password);
    common::cli(
        &ctx.db,
        &["user", "passwd", USER, "--password-stdin"],
        &format!("{new_password}\n"),
    );
    assert_whoami_401(&ctx, &stale);
    assert_whoami_401(&ctx, &other_config);
    let e = profile(
        &ctx,
        "login",
        json!({ "username": USER, "password": PASSWORD }),
    )
    .expect_err("login with the old password");
    assert_eq!(e["statusCode"], json!(401), "{e}");
    let fresh = login(&mut ctx, USER, new_password);
    assert_whoami(&ctx, &ctx.config_with("fresh-npmrc", &fresh), USER);

    ctx.done();
}

/// `npm login --auth-type=legacy` in a pseudo-terminal, answering its prompts.
fn pty_login(ctx: &Ctx, userconfig: &Path, user: &str, password: &str) -> Out {
    let script = json!([["Username:", user], ["Password:", password]]);
    pty_npm(ctx, userconfig, &script, &["login", "--auth-type=legacy"])
}

/// `npm ARGS` in a pseudo-terminal, answering prompts as `script` says (see [`PTY_PY`]).
fn pty_npm(ctx: &Ctx, userconfig: &Path, script: &Value, args: &[&str]) -> Out {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PTY_PY, &script.to_string(), "npm"])
        .args(args)
        .arg("--userconfig")
        .arg(userconfig)
        .arg("--registry")
        .arg(&ctx.registry);
    ctx.env(&mut cmd);
    Out::from(cmd.stdin(Stdio::null()).output().expect("run python3"))
}

/// Scenarios 3, 4 and 5: create in npm 11's and the legacy shape, list (plain and JSON, over
/// several pages), revoke by id prefix and by full token.
fn tokens_create_list_revoke(backend: Backend) {
    let mut ctx = Ctx::new(backend, &[], "token create, list and revoke");
    common::add_user(&ctx.db, USER, PASSWORD);
    let session = login(&mut ctx, USER, PASSWORD);
    let config = ctx.config_with("npmrc", &session);
    let pw = format!("--password={PASSWORD}");

    // npm 11, bare: `{name: null, password}`.
    let out = npm(&ctx, &["token", "create", &pw]);
    let plain = created_token(&mut ctx, &out);
    assert!(
        !out.stdout.contains("with IP whitelist") && !out.stdout.contains("expires:"),
        "a bare token has no CIDR list or expiry: {out}"
    );

    // npm 11 with name, expiry and CIDR list.
    let before = chrono::Utc::now();
    let out = npm(
        &ctx,
        &[
            "token",
            "create",
            &pw,
            "--name=ci",
            "--expires=30",
            "--cidr=127.0.0.1/32",
        ],
    );
    let ci = created_token(&mut ctx, &out);
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "with IP whitelist: 127.0.0.1/32"),
        "{out}"
    );
    let expires = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("expires: "))
        .unwrap_or_else(|| panic!("no expires line: {out}"));
    let expires = chrono::DateTime::parse_from_rfc3339(expires)
        .unwrap_or_else(|e| panic!("expires {expires:?}: {e}"))
        .with_timezone(&chrono::Utc);
    let after = chrono::Utc::now();
    let slack = chrono::Duration::seconds(5);
    assert!(
        expires >= before + chrono::Duration::days(30) - slack
            && expires <= after + chrono::Duration::days(30) + slack,
        "expires {expires} is not 30 days after {before}"
    );
    let ci_config = ctx.config_with("ci-npmrc", &ci);
    assert_whoami(&ctx, &ci_config, USER);

    // The wrong password is refused with npm's password text.
    let wrong = "npm-e2e-Wrong-0099-password";
    ctx.remember(wrong);
    let out = npm(&ctx, &["token", "create", &format!("--password={wrong}")]);
    out.expect_code("npm token create with a wrong password", "E401");
    assert!(
        out.stderr.contains("Incorrect or missing password."),
        "{out}"
    );

    // An expiry beyond the server's maximum is refused with a 400 that says so.
    let out = npm(&ctx, &["token", "create", &pw, "--expires=100000"]);
    out.expect_code("npm token create --expires=100000", "E400");
    assert!(out.stderr.contains("expires"), "{out}");

    // Legacy body through npm-profile: `{password, readonly: true, cidr_whitelist: []}`.
    let legacy = profile(
        &ctx,
        "createToken",
        json!({ "token": session, "password": PASSWORD, "readonly": true, "cidrs": [] }),
    )
    .unwrap_or_else(|e| panic!("createToken: {e}"));
    let legacy_ro = legacy["token"].as_str().unwrap().to_owned();
    assert_token_shape(&legacy_ro);
    ctx.remember(&legacy_ro);
    assert_eq!(legacy["readonly"], json!(true), "{legacy}");

    // Enough tokens for two pages of ten.
    let mut bulk = Vec::new();
    for i in 0..9 {
        let out = npm(&ctx, &["token", "create", &pw, &format!("--name=bulk-{i}")]);
        bulk.push(created_token(&mut ctx, &out));
    }
    let all: Vec<String> = [&session, &plain, &ci, &legacy_ro]
        .into_iter()
        .cloned()
        .chain(bulk.iter().cloned())
        .collect();
    assert_eq!(all.len(), 13);

    // The server pages: the first page holds ten and points at the next.
    let page = profile(
        &ctx,
        "get",
        json!({ "token": session, "path": "/-/npm/v1/tokens" }),
    )
    .unwrap_or_else(|e| panic!("GET tokens: {e}"));
    assert_eq!(page["objects"].as_array().unwrap().len(), 10, "{page}");
    assert_eq!(page["total"], json!(13), "{page}");
    assert!(
        page["urls"]["next"].as_str().is_some_and(|s| !s.is_empty()),
        "{page}"
    );

    // npm follows the pages and lists all of them.
    let items = list_json(&ctx, &config);
    assert_eq!(items.len(), 13, "{items:#?}");
    let mut keys: Vec<&str> = items.iter().map(|o| o["key"].as_str().unwrap()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 13, "a token was listed twice");
    for t in &all {
        let o = find_listed(&items, t).unwrap_or_else(|| panic!("{t} missing from {items:#?}"));
        let shown = o["token"].as_str().unwrap();
        assert!(
            shown.starts_with("npm_") && t.starts_with(shown) && shown.len() < t.len(),
            "listed form {shown:?} is not a short prefix of the token"
        );
        let id = o["id"].as_str().unwrap();
        assert!(
            id.len() >= 6 && o["key"].as_str().unwrap().starts_with(id),
            "{o}"
        );
        assert!(o["created"].as_str().unwrap().ends_with('Z'), "{o}");
        assert!(o["readonly"].is_boolean(), "{o}");
    }
    let ci_item = find_listed(&items, &ci).unwrap();
    assert_eq!(ci_item["name"], json!("ci"));
    assert_eq!(ci_item["cidr_whitelist"], json!(["127.0.0.1/32"]));
    assert_eq!(ci_item["readonly"], json!(false));
    assert_eq!(
        find_listed(&items, &plain).unwrap()["cidr_whitelist"],
        Value::Null
    );
    assert_eq!(
        find_listed(&items, &legacy_ro).unwrap()["readonly"],
        json!(true)
    );
    assert_eq!(
        find_listed(&items, &plain).unwrap()["readonly"],
        json!(false)
    );
    for (i, t) in bulk.iter().enumerate() {
        assert_eq!(
            find_listed(&items, t).unwrap()["name"],
            json!(format!("bulk-{i}"))
        );
    }
    // Newest first.
    assert_eq!(
        items[0]["key"],
        json!(sha512_hex(bulk.last().unwrap())),
        "the newest token is not first"
    );

    // The plain list says the same.
    let listed = list_plain(&ctx, &config);
    assert_eq!(listed.len(), 13, "{listed:#?}");
    for l in &listed {
        let o = items
            .iter()
            .find(|o| o["id"] == json!(l.id))
            .unwrap_or_else(|| panic!("plain id {} not in the JSON list", l.id));
        assert_eq!(o["token"], json!(l.shown), "{l:?}");
        assert_eq!(&o["created"].as_str().unwrap()[..10], l.created, "{l:?}");
        let name = match &o["name"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(name, l.name, "{l:?}");
    }
    let ci_line = listed
        .iter()
        .find(|l| l.name == "ci")
        .unwrap_or_else(|| panic!("no token named ci: {listed:#?}"));
    assert_eq!(ci_line.cidrs.as_deref(), Some("127.0.0.1/32"));
    assert_eq!(listed.iter().filter(|l| l.cidrs.is_some()).count(), 1);

    // Revoke by the id npm shows.
    let victim = &bulk[3];
    let victim_id = find_listed(&items, victim).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = npm(&ctx, &["token", "revoke", &victim_id]);
    assert_eq!(
        out.expect_ok("npm token revoke ID").trim(),
        "Removed 1 token",
        "{out}"
    );
    let items = list_json(&ctx, &config);
    assert_eq!(items.len(), 12);
    assert!(
        find_listed(&items, victim).is_none(),
        "revoked token still listed"
    );
    assert!(
        list_plain(&ctx, &config).iter().all(|l| l.id != victim_id),
        "revoked token still in the plain list"
    );
    assert_whoami_401(&ctx, &ctx.config_with("victim-npmrc", victim));

    // Revoke by the full token value.
    let out = npm(&ctx, &["token", "revoke", &ci]);
    assert_eq!(
        out.expect_ok("npm token revoke TOKEN").trim(),
        "Removed 1 token",
        "{out}"
    );
    assert_whoami_401(&ctx, &ci_config);
    let items = list_json(&ctx, &config);
    assert_eq!(items.len(), 11);
    assert!(find_listed(&items, &ci).is_none());

    // Unknown ids are refused by npm before any DELETE; the rest still work.
    let out = npm(&ctx, &["token", "revoke", &victim_id]);
    assert!(
        !out.ok() && out.stderr.contains("Unknown token id or value"),
        "{out}"
    );
    assert_whoami(&ctx, &config, USER);
    assert_whoami(&ctx, &ctx.config_with("plain-npmrc", &plain), USER);

    // The audit log has these flows: who, which key, from where, with which client.
    let events = audit_events(&ctx, |e| {
        e.iter()
            .any(|e| e["event"] == "token.revoked" && e["key_id"] == key_id(&ci))
    });
    let find = |event: &str, token: &str| {
        events
            .iter()
            .find(|e| e["event"] == event && e["key_id"] == key_id(token))
            .unwrap_or_else(|| panic!("no {event} for {token} in {events:#?}"))
            .clone()
    };
    let login_event = find("login.success", &session);
    let created = find("token.created", &plain);
    let revoked = find("token.revoked", &ci);
    for e in [&login_event, &created, &revoked] {
        assert_eq!(e["user"], USER, "{e}");
        assert_eq!(e["client"], "127.0.0.1", "{e}");
    }
    assert!(
        created["user_agent"]
            .as_str()
            .unwrap_or("")
            .starts_with("npm/"),
        "{created}"
    );
    assert_eq!(created["detail"]["type"], "publish", "{created}");
    assert!(events
        .iter()
        .any(|e| e["event"] == "token.revoked" && e["key_id"] == key_id(victim)));
    assert!(!serde_json::to_string(&events).unwrap().contains(&plain));

    ctx.done();
}

/// The short id the audit log names a token by.
fn key_id(token: &str) -> String {
    sha512_hex(token)[..12].to_owned()
}

/// `tokengate audit --json` for the scenario's user, once `ready` holds (events are stored in
/// the background, within moments).
fn audit_events(ctx: &Ctx, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = common::cli(
            &ctx.db,
            &["audit", "--json", "--user", USER, "--since", "1h"],
            "",
        );
        let events: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit --json prints JSON lines"))
            .collect();
        if ready(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Scenarios 6 and 7: CIDR-restricted tokens (EAUTHIP from elsewhere, fine from here) and
/// read-only tokens (read, but E403 on token management), in npm 11's and the legacy shape.
fn cidr_and_read_only(backend: Backend) {
    let mut ctx = Ctx::new(backend, &[], "CIDR and read-only tokens");
    common::add_user(&ctx.db, USER, PASSWORD);
    let session = login(&mut ctx, USER, PASSWORD);
    let config = ctx.config_with("npmrc", &session);
    let pw = format!("--password={PASSWORD}");

    // A token for 10.0.0.0/8 used from 127.0.0.1.
    let out = npm(&ctx, &["token", "create", &pw, "--cidr=10.0.0.0/8"]);
    let elsewhere = created_token(&mut ctx, &out);
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "with IP whitelist: 10.0.0.0/8"),
        "{out}"
    );
    let elsewhere_config = ctx.config_with("elsewhere-npmrc", &elsewhere);
    let out = whoami(&ctx, &elsewhere_config);
    out.expect_code("npm whoami from outside the CIDR list", "EAUTHIP");
    assert!(
        out.stderr
            .contains("Login is not allowed from your IP address"),
        "{out}"
    );
    assert!(!out.stdout.contains(USER), "{out}");
    let out = npm_with(&ctx, &elsewhere_config, &["token", "list"]);
    out.expect_code("npm token list from outside the CIDR list", "EAUTHIP");

    // A token for 127.0.0.1/32 works here, and can itself manage tokens.
    let out = npm(&ctx, &["token", "create", &pw, "--cidr=127.0.0.1/32"]);
    let here = created_token(&mut ctx, &out);
    let here_config = ctx.config_with("here-npmrc", &here);
    assert_whoami(&ctx, &here_config, USER);
    let out = npm_with(
        &ctx,
        &here_config,
        &["token", "create", &pw, "--name=from-here"],
    );
    created_token(&mut ctx, &out);

    // Several CIDRs, one of them ours.
    let out = npm(
        &ctx,
        &["token", "create", &pw, "--cidr=10.0.0.0/8,127.0.0.0/8"],
    );
    let mixed = created_token(&mut ctx, &out);
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "with IP whitelist: 10.0.0.0/8,127.0.0.0/8"),
        "{out}"
    );
    assert_whoami(&ctx, &ctx.config_with("mixed-npmrc", &mixed), USER);

    // Read-only, the npm 11 way and the legacy way.
    let out = npm(
        &ctx,
        &[
            "token",
            "create",
            &pw,
            "--name=ro",
            "--packages-all",
            "--packages-and-scopes-permission=read-only",
        ],
    );
    let ro_granular = created_token(&mut ctx, &out);
    let legacy = profile(
        &ctx,
        "createToken",
        json!({ "token": session, "password": PASSWORD, "readonly": true, "cidrs": [] }),
    )
    .unwrap_or_else(|e| panic!("createToken: {e}"));
    let ro_legacy = legacy["token"].as_str().unwrap().to_owned();
    assert_token_shape(&ro_legacy);
    ctx.remember(&ro_legacy);

    let items = list_json(&ctx, &config);
    assert_eq!(
        find_listed(&items, &ro_granular).unwrap()["readonly"],
        json!(true)
    );
    assert_eq!(
        find_listed(&items, &ro_legacy).unwrap()["readonly"],
        json!(true)
    );
    assert_eq!(
        find_listed(&items, &here).unwrap()["readonly"],
        json!(false)
    );

    for (which, token) in [
        ("npm 11 read-only", &ro_granular),
        ("legacy read-only", &ro_legacy),
    ] {
        let ro_config = ctx.config_with("ro-npmrc", token);
        assert_whoami(&ctx, &ro_config, USER);
        let listed = list_plain(&ctx, &ro_config);
        assert_eq!(listed.len(), 7, "{which}: {listed:#?}");

        let out = npm_with(&ctx, &ro_config, &["token", "create", &pw]);
        out.expect_code(&format!("{which}: npm token create"), "E403");
        assert!(out.stderr.contains("read-only"), "{which}: {out}");
        assert!(!out.stdout.contains("Created token"), "{which}: {out}");

        let target = listed.iter().find(|l| l.name == "from-here").unwrap();
        let out = npm_with(&ctx, &ro_config, &["token", "revoke", &target.id]);
        out.expect_code(&format!("{which}: npm token revoke"), "E403");
        assert!(out.stderr.contains("read-only"), "{which}: {out}");
    }
    // Nothing was created or revoked by the read-only tokens.
    assert_eq!(list_json(&ctx, &config).len(), items.len());

    ctx.done();
}

/// Scenario 9: `adduserCouch` creates an account only when registration is open.
fn registration(backend: Backend) {
    let new_password = "npm-e2e-Carol-5521-password";

    // Open.
    let mut ctx = Ctx::new(
        backend,
        &[("TOKENGATE_REGISTRATION", "open")],
        "registration open",
    );
    ctx.remember(new_password);
    let added = profile(
        &ctx,
        "adduser",
        json!({ "username": "carol", "email": "carol@example.com", "password": new_password }),
    )
    .unwrap_or_else(|e| panic!("adduserCouch with open registration: {e}"));
    let token = added["token"]
        .as_str()
        .unwrap_or_else(|| panic!("adduser answered no token: {added}"))
        .to_owned();
    assert_token_shape(&token);
    ctx.remember(&token);
    let carol = ctx.config_with("carol-npmrc", &token);
    assert_whoami(&ctx, &carol, "carol");
    // The new account can log in, and "adding" it again with its password is a login.
    let again = login(&mut ctx, "carol", new_password);
    assert_whoami(&ctx, &ctx.config_with("again-npmrc", &again), "carol");
    let readd = profile(
        &ctx,
        "adduser",
        json!({ "username": "carol", "email": "carol@example.com", "password": new_password }),
    )
    .unwrap_or_else(|e| panic!("adduserCouch of an existing user: {e}"));
    let readd_token = readd["token"].as_str().unwrap().to_owned();
    ctx.remember(&readd_token);
    assert_whoami(&ctx, &ctx.config_with("readd-npmrc", &readd_token), "carol");
    // With another password it is neither a login nor a takeover.
    let thief = "npm-e2e-Thief-3141-password";
    ctx.remember(thief);
    let e = profile(
        &ctx,
        "adduser",
        json!({ "username": "carol", "email": "mallory@example.com", "password": thief }),
    )
    .expect_err("adduser over an existing account");
    assert_eq!(e["statusCode"], json!(401), "{e}");
    login(&mut ctx, "carol", new_password);
    ctx.done();

    // Closed (the default).
    let mut ctx = Ctx::new(backend, &[], "registration closed");
    ctx.remember(new_password);
    common::add_user(&ctx.db, USER, PASSWORD);
    let e = profile(
        &ctx,
        "adduser",
        json!({ "username": "carol", "email": "carol@example.com", "password": new_password }),
    )
    .expect_err("adduserCouch with closed registration");
    assert_eq!(e["statusCode"], json!(403), "{e}");
    assert_eq!(e["code"], json!("E403"), "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("administrator"),
        "{e}"
    );
    let e = profile(
        &ctx,
        "login",
        json!({ "username": "carol", "password": new_password }),
    )
    .expect_err("login to an account that was never created");
    assert_eq!(e["statusCode"], json!(401), "{e}");
    // An existing account "added" with its password is still a login.
    let readd = profile(
        &ctx,
        "adduser",
        json!({ "username": USER, "email": "alice@example.com", "password": PASSWORD }),
    )
    .unwrap_or_else(|e| panic!("adduserCouch of an existing user, registration closed: {e}"));
    let token = readd["token"].as_str().unwrap().to_owned();
    ctx.remember(&token);
    assert_whoami(&ctx, &ctx.config_with("alice-npmrc", &token), USER);
    ctx.done();
}

/// `npm profile get "two-factor auth"`: `disabled` or the mode.
fn tfa_shown(ctx: &Ctx, config: &Path) -> String {
    let out = npm_with(ctx, config, &["profile", "get", "two-factor auth"]);
    out.expect_ok("npm profile get").trim().to_owned()
}

/// `npm profile enable-2fa MODE` in a terminal, answering with a code computed from the
/// secret npm prints. Returns the secret (base32) and the recovery codes.
fn enable_2fa(ctx: &mut Ctx, config: &Path, mode: &str) -> (String, Vec<String>) {
    let script = json!([
        ["npm password:", PASSWORD],
        ["OTP code from your authenticator:", "{totp}"]
    ]);
    let out = pty_npm(ctx, config, &script, &["profile", "enable-2fa", mode]);
    assert!(out.ok(), "npm profile enable-2fa failed: {out}");
    let secret = out
        .stdout
        .split_once("enter code:")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no secret shown: {out}"))
        .to_owned();
    let recovery: Vec<String> = out
        .stdout
        .split_once("recovery codes")
        .unwrap_or_else(|| panic!("no recovery codes shown: {out}"))
        .1
        .split_whitespace()
        .filter(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    assert_eq!(recovery.len(), 10, "{out}");
    ctx.remember(&secret);
    leaks::totp_secret(&secret);
    for code in &recovery {
        ctx.remember(code);
    }
    (secret, recovery)
}

/// Scenario 6: two-factor authentication. Enrolment in a terminal reading the printed secret,
/// EOTP without a code, a code once, recovery codes once, login's OTP prompt, disable-2fa.
fn two_factor(backend: Backend) {
    let mut ctx = Ctx::new(backend, &[], "two-factor authentication");
    common::add_user(&ctx.db, USER, PASSWORD);
    let session = login(&mut ctx, USER, PASSWORD);
    let config = ctx.config_with("npmrc", &session);
    assert_eq!(tfa_shown(&ctx, &config), "disabled");

    let (secret, recovery) = enable_2fa(&mut ctx, &config, "auth-and-writes");
    assert_eq!(tfa_shown(&ctx, &config), "auth-and-writes");

    // Without a terminal and without --otp, npm can only fail with EOTP.
    let pw = format!("--password={PASSWORD}");
    npm_with(&ctx, &config, &["token", "create", &pw])
        .expect_code("token create without --otp", "EOTP");
    // The enrolment used the current step; the next one is within the allowed skew.
    let raw = totp_rs::Secret::Encoded(secret.clone()).to_bytes().unwrap();
    let step = tokengate::totp::step_of(chrono::Utc::now().timestamp());
    let otp = format!("--otp={}", tokengate::totp::code_at_step(&raw, step + 1));
    let out = npm_with(&ctx, &config, &["token", "create", &pw, &otp]);
    created_token(&mut ctx, &out);
    npm_with(&ctx, &config, &["token", "create", &pw, &otp])
        .expect_code("token create with a used code", "EOTP");
    let otp = format!("--otp={}", recovery[0]);
    let out = npm_with(&ctx, &config, &["token", "create", &pw, &otp]);
    created_token(&mut ctx, &out);
    npm_with(&ctx, &config, &["token", "create", &pw, &otp])
        .expect_code("token create with a used recovery code", "EOTP");

    // npm login prompts for the OTP; a recovery code typed there works too.
    let fresh = ctx.dir.path().join("login-npmrc");
    std::fs::write(&fresh, "").unwrap();
    let script = json!([
        ["Username:", USER],
        ["Password:", PASSWORD],
        ["Enter OTP:", recovery[1]]
    ]);
    let out = pty_npm(&ctx, &fresh, &script, &["login", "--auth-type=legacy"]);
    assert!(
        out.ok() && out.stdout.contains("one-time password"),
        "npm login with 2FA: {out}"
    );
    let token = ctx
        .token_in(&fresh)
        .unwrap_or_else(|| panic!("npm login saved no token: {out}"));
    ctx.remember(&token);
    assert_whoami(&ctx, &fresh, USER);

    // A password change asks for an OTP too, and ends the other login sessions.
    let new_password = "npm-e2e-Rotated-4242-password";
    ctx.remember(new_password);
    let script = json!([
        ["Current password:", PASSWORD],
        ["New password:", new_password],
        ["Again:", new_password],
        ["Enter OTP:", recovery[2]]
    ]);
    let out = pty_npm(&ctx, &config, &script, &["profile", "set", "password"]);
    assert!(
        out.ok() && out.stdout.contains("Set password"),
        "npm profile set password: {out}"
    );
    assert_whoami(&ctx, &config, USER);
    assert_whoami_401(&ctx, &fresh);

    // disable-2fa asks for the password, then for an OTP.
    let script = json!([["npm password:", new_password], ["Enter OTP:", recovery[3]]]);
    let out = pty_npm(&ctx, &config, &script, &["profile", "disable-2fa"]);
    assert!(
        out.ok() && out.stdout.contains("Two factor authentication disabled."),
        "npm profile disable-2fa: {out}"
    );
    assert_eq!(tfa_shown(&ctx, &config), "disabled");
    let pw = format!("--password={new_password}");
    let out = npm_with(&ctx, &config, &["token", "create", &pw]);
    created_token(&mut ctx, &out);

    ctx.done();
}

#[test]
fn the_log_check_finds_tokens_their_bodies_and_whole_codes() {
    let secrets = vec!["npm_AbCdEf0123456789AbCdEf0123456789ab".to_owned()];
    let codes = vec!["123456".to_owned()];
    let found = |line: &str| leaks::leak_in(line, &secrets, &codes).map(str::to_owned);
    assert_eq!(
        found("auth=npm_AbCdEf0123456789AbCdEf0123456789ab"),
        Some(secrets[0].clone())
    );
    assert_eq!(
        found("token AbCdEf0123456789AbCdEf0123456789ab"),
        Some(secrets[0].clone())
    );
    assert_eq!(found("npm-otp: 123456"), Some(codes[0].clone()));
    assert_eq!(found("2026-11-26T03:45:53.123456Z request ms=1"), None);
    assert_eq!(found("request id=0123456-aa key_id=9123456f"), None);
}

#[test]
fn npm_two_factor_authentication() {
    for backend in BACKENDS {
        two_factor(backend);
    }
}

#[test]
fn npm_login_whoami_and_logout() {
    for backend in BACKENDS {
        login_whoami_logout(backend);
    }
}

#[test]
fn npm_token_create_list_and_revoke() {
    for backend in BACKENDS {
        tokens_create_list_revoke(backend);
    }
}

#[test]
fn npm_cidr_and_read_only_tokens() {
    for backend in BACKENDS {
        cidr_and_read_only(backend);
    }
}

#[test]
fn npm_adduser_follows_registration() {
    for backend in BACKENDS {
        registration(backend);
    }
}
