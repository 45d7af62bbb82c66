//! The web pages in a real browser: headless Chromium (Debian's `chromium`) driven by
//! Playwright (`playwright-core` from the npm registry) against a spawned server, with the real
//! npm client (see tests/browser/scenario.js). Screenshots of each page are taken; with
//! `UPDATE_SCREENSHOTS=1` they replace docs/screenshots/.

mod common;

use common::{add_user, leaks, Backend, Server, TestDb, BACKENDS};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

const PLAYWRIGHT_VERSION: &str = "1.65.1";
const CHROMIUM: &str = "/usr/bin/chromium";
const PASSWORD: &str = "correct horse battery";
const SCENARIO: &str = include_str!("browser/scenario.js");

/// `playwright-core` installed once per target directory; its `node_modules`.
fn playwright_modules() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("playwright-core-{PLAYWRIGHT_VERSION}"));
        let modules = dir.join("node_modules");
        if !modules.join("playwright-core/package.json").exists() {
            std::fs::create_dir_all(&dir).unwrap();
            let manifest = serde_json::json!({
                "name": "tokengate-test-playwright",
                "private": true,
                "dependencies": { "playwright-core": PLAYWRIGHT_VERSION }
            });
            std::fs::write(dir.join("package.json"), manifest.to_string()).unwrap();
            let out = Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("run npm install playwright-core");
            assert!(
                out.status.success() && modules.join("playwright-core").exists(),
                "installing playwright-core failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        modules
    })
}

fn chromium() -> &'static str {
    assert!(
        Path::new(CHROMIUM).exists(),
        "Chromium is needed at {CHROMIUM}: apt-get install chromium (.ci/run installs it)"
    );
    CHROMIUM
}

/// Runs the scenario against a server on `backend`; returns the folder of its screenshots.
fn run_scenario(backend: Backend) -> tempfile::TempDir {
    let started = Instant::now();
    let db = TestDb::new(backend);
    add_user(&db, "alice", PASSWORD);
    let server = Server::start(&db, &[]);
    let work = tempfile::tempdir().unwrap();
    let shots = tempfile::tempdir().unwrap();
    let script = work.path().join("scenario.js");
    std::fs::write(&script, SCENARIO).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&script);
    // Nothing from the machine's npm setup.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy()
            .to_ascii_lowercase()
            .starts_with("npm_config_")
        {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .env("NODE_PATH", playwright_modules())
        .env("CHROMIUM", chromium())
        .env("BASE", &server.base)
        .env("TG_USER", "alice")
        .env("TG_PASSWORD", PASSWORD)
        .env("SHOTS", shots.path())
        .env("WORK", work.path())
        .env("HOME", work.path().join("home"))
        .env("npm_config_cache", work.path().join("cache"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SCENARIO OK"),
        "{backend:?}: the browser scenario failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        server.log_text()
    );
    // No secret in any log of the suite: the scenario's tokens, session cookies, TOTP secret
    // and codes, recovery codes, and the password.
    leaks::secret(PASSWORD);
    for line in stdout.lines() {
        match line.strip_prefix("USED ").and_then(|l| l.split_once(' ')) {
            Some(("totp", secret)) => leaks::totp_secret(secret),
            Some((_, secret)) => leaks::secret(secret),
            None => {}
        }
    }
    assert!(stdout.contains("USED totp "), "{stdout}");
    leaks::assert_none();
    let log = server.log_text();
    assert!(log.contains("signed in on the web"), "{log}");
    for secret in [
        PASSWORD,
        "tokengate_session=",
        "npm-login?id=",
        "done?session=",
    ] {
        assert!(!log.contains(secret), "the log holds {secret:?}:\n{log}");
    }
    eprintln!(
        "{backend:?}: browser scenario in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    shots
}

#[test]
fn web_pages_in_a_browser_with_npm() {
    for backend in BACKENDS {
        let shots = run_scenario(backend);
        let names = [
            "sign-in",
            "generate-token",
            "new-token",
            "access-tokens",
            "revoke-token",
            "npm-login",
            "two-factor-off",
            "two-factor-setup",
            "recovery-codes",
            "sign-in-otp",
            "password",
        ];
        for name in names {
            let file = shots.path().join(format!("{name}.png"));
            let bytes = std::fs::read(&file).unwrap_or_else(|_| panic!("no screenshot {name}"));
            assert!(bytes.starts_with(b"\x89PNG"), "{name} is not a PNG");
        }
        if backend == Backend::Sqlite && std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
            let dest = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
            std::fs::create_dir_all(&dest).unwrap();
            for name in names {
                std::fs::copy(
                    shots.path().join(format!("{name}.png")),
                    dest.join(format!("{name}.png")),
                )
                .unwrap();
            }
        }
    }
}
