//! The web pages' HTTP surface, in process, on SQLite and PostgreSQL: security headers, cookie
//! flags, CSRF refusals, session limits, npm's web login (`POST /-/v1/login`, the `doneUrl`
//! poll: 202 until confirmed, then 200 once), expired and cancelled logins, rate limits.

mod common;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use chrono::{Duration, Utc};
use common::{Backend, TestDb, BACKENDS};
use http_body_util::BodyExt;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use tokengate::config::{Config, Registration};
use tokengate::store::{
    NewUser, NewWebSession, PoolSettings, SqlStore, Store, TokensFrom, WebStore,
};
use tokengate::web::session::{csrf_for, hash, new_secret};
use tokengate::AppState;
use tower::ServiceExt;

const PW: &str = "correct horse battery";

struct Harness {
    state: AppState,
    store: Arc<SqlStore>,
    _db: TestDb,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {}", self.text))
    }

    fn location(&self) -> &str {
        self.headers[header::LOCATION].to_str().unwrap()
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The value a `Set-Cookie` gives cookie `name`.
    fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().iter().find_map(|c| {
            c.strip_prefix(&format!("{name}="))
                .map(|rest| rest.split(';').next().unwrap().to_owned())
        })
    }
}

async fn harness(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Harness {
    let db = TestDb::new(backend);
    let mut config = Config {
        database_url: db.url.clone(),
        ..Config::default()
    };
    tweak(&mut config);
    let store = Arc::new(
        SqlStore::connect(
            &db.url,
            &PoolSettings {
                max_connections: 5,
                acquire_timeout: std::time::Duration::from_secs(2),
            },
        )
        .await
        .expect("store"),
    );
    let password_hash = tokengate::password::hash(PW.into()).await.unwrap();
    store
        .create_user(&NewUser {
            name: "alice".into(),
            email: "alice@example.com".into(),
            password_hash,
        })
        .await
        .unwrap();
    Harness {
        state: AppState::new(
            config,
            store.clone(),
            tokengate::keyring::KeyRing::generate(),
        ),
        store,
        _db: db,
    }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        path: &str,
        cookies: &[(&str, &str)],
        form: Option<&[(&str, &str)]>,
    ) -> Answer {
        let app = tokengate::app(self.state.clone()).layer(MockConnectInfo(
            "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        ));
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "registry.test:4874");
        if !cookies.is_empty() {
            let c: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(header::COOKIE, c.join("; "));
        }
        let body = match form {
            Some(fields) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                let encoded: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            percent_encoding::utf8_percent_encode(
                                v,
                                percent_encoding::NON_ALPHANUMERIC
                            )
                        )
                    })
                    .collect();
                Body::from(encoded.join("&"))
            }
            None => Body::empty(),
        };
        let response = app.oneshot(req.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookies: &[(&str, &str)]) -> Answer {
        self.call(Method::GET, path, cookies, None).await
    }

    async fn post(&self, path: &str, cookies: &[(&str, &str)], form: &[(&str, &str)]) -> Answer {
        self.call(Method::POST, path, cookies, Some(form)).await
    }

    /// Signs in through the forms; the session cookie's value.
    async fn sign_in(&self) -> String {
        let page = self.get("/-/web/login", &[]).await;
        let pre = page.cookie("tokengate_signin").expect("sign-in cookie");
        let csrf = csrf_for(&pre);
        let done = self
            .post(
                "/-/web/login",
                &[("tokengate_signin", &pre)],
                &[("csrf", &csrf), ("name", "alice"), ("password", PW)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        done.cookie("tokengate_session").expect("session cookie")
    }

    async fn user_id(&self) -> i64 {
        self.store.user_by_name("alice").await.unwrap().unwrap().id
    }
}

/// The query value of `key` in a URL.
fn query_value(url: &str, key: &str) -> String {
    url.split_once('?')
        .unwrap()
        .1
        .split('&')
        .find_map(|p| p.strip_prefix(&format!("{key}=")))
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn pages_have_strict_headers_and_safe_cookies() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let page = h.get("/-/web/login", &[]).await;
        assert_eq!(page.status, StatusCode::OK, "{backend:?}");
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        for part in [
            "default-src 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(part), "{csp}");
        }
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
        assert!(page.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        let cookie = &page.set_cookies()[0];
        for flag in ["HttpOnly", "SameSite=Lax", "Path=/-/web"] {
            assert!(cookie.contains(flag), "{cookie}");
        }
        assert!(!cookie.contains("Secure"), "plain http: {cookie}");
        // Error pages carry them too.
        let missing = h.get("/-/web/nope", &[]).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.headers[header::X_FRAME_OPTIONS], "DENY");

        let session = h.sign_in().await;
        let tokens = h
            .get("/-/web/tokens", &[("tokengate_session", &session)])
            .await;
        assert_eq!(tokens.status, StatusCode::OK);
        assert!(tokens.text.contains("Access Tokens"));

        let https = harness(backend, |c| c.public_url = "https://npm.example.com".into()).await;
        let page = https.get("/-/web/login", &[]).await;
        assert!(
            page.set_cookies()[0].contains("; Secure"),
            "https public_url"
        );
    }
}

#[tokio::test]
async fn forms_without_the_right_csrf_token_are_refused() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        // Sign-in without the sign-in cookie, and with a token of another cookie.
        let no_cookie = h
            .post(
                "/-/web/login",
                &[],
                &[("csrf", "x"), ("name", "alice"), ("password", PW)],
            )
            .await;
        assert_eq!(no_cookie.status, StatusCode::FORBIDDEN, "{backend:?}");
        let other = csrf_for(&new_secret());
        let wrong = h
            .post(
                "/-/web/login",
                &[("tokengate_signin", &new_secret())],
                &[("csrf", &other), ("name", "alice"), ("password", PW)],
            )
            .await;
        assert_eq!(wrong.status, StatusCode::FORBIDDEN);
        assert!(wrong.cookie("tokengate_session").is_none());
        assert!(
            wrong.text.contains("did not come from this site"),
            "{}",
            wrong.text
        );

        let session = h.sign_in().await;
        let c = [("tokengate_session", session.as_str())];
        for csrf in ["", "0000", other.as_str()] {
            let create = h
                .post(
                    "/-/web/tokens",
                    &c,
                    &[
                        ("csrf", csrf),
                        ("name", "x"),
                        ("kind", "publish"),
                        ("password", PW),
                    ],
                )
                .await;
            assert_eq!(create.status, StatusCode::FORBIDDEN, "csrf {csrf:?}");
        }
        let (tokens, _) = h
            .store
            .list_tokens(h.user_id().await, &TokensFrom::Offset(0), 10)
            .await
            .unwrap();
        assert!(tokens.is_empty(), "no token made without the CSRF token");
        let out = h.post("/-/web/logout", &c, &[("csrf", "nope")]).await;
        assert_eq!(out.status, StatusCode::FORBIDDEN);

        // With the right one: the token is made, with the API's rules.
        let good = csrf_for(&session);
        let bad_cidr = h
            .post(
                "/-/web/tokens",
                &c,
                &[
                    ("csrf", &good),
                    ("name", "x"),
                    ("kind", "publish"),
                    ("cidr", "300.1.2.3/8"),
                    ("password", PW),
                ],
            )
            .await;
        assert_eq!(bad_cidr.status, StatusCode::BAD_REQUEST);
        assert!(bad_cidr.text.contains("300.1.2.3"), "{}", bad_cidr.text);
        let wrong_pw = h
            .post(
                "/-/web/tokens",
                &c,
                &[
                    ("csrf", &good),
                    ("name", "x"),
                    ("kind", "read-only"),
                    ("password", "nope"),
                ],
            )
            .await;
        assert_eq!(wrong_pw.status, StatusCode::UNAUTHORIZED);
        let made = h
            .post(
                "/-/web/tokens",
                &c,
                &[
                    ("csrf", &good),
                    ("name", "x"),
                    ("kind", "read-only"),
                    ("password", PW),
                ],
            )
            .await;
        assert_eq!(made.status, StatusCode::OK, "{}", made.text);
        let (tokens, _) = h
            .store
            .list_tokens(h.user_id().await, &TokensFrom::Offset(0), 10)
            .await
            .unwrap();
        assert_eq!(tokens.len(), 1);
        assert!(tokens[0].readonly);
        // Signing out ends the session.
        let out = h.post("/-/web/logout", &c, &[("csrf", &good)]).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER);
        assert!(out.set_cookies()[0].contains("Max-Age=0"));
        let after = h.get("/-/web/tokens", &c).await;
        assert_eq!(after.status, StatusCode::SEE_OTHER);
        assert!(after.location().starts_with("/-/web/login?next="));
    }
}

#[tokio::test]
async fn sessions_end_when_idle_or_too_old() {
    for backend in BACKENDS {
        let h = harness(backend, |c| {
            c.web_session_idle_minutes = 30;
            c.web_session_max_hours = 2;
        })
        .await;
        let user_id = h.user_id().await;
        let now = Utc::now();
        let cases = [
            ("fresh", now, now + Duration::hours(1), true),
            ("past its end", now, now - Duration::seconds(1), false),
            (
                "idle",
                now - Duration::minutes(31),
                now + Duration::hours(1),
                false,
            ),
        ];
        for (what, created, expires, works) in cases {
            let secret = new_secret();
            h.store
                .insert_web_session(&NewWebSession {
                    id_hash: &hash(&secret),
                    user_id,
                    otp_pending: false,
                    now: created,
                    expires,
                })
                .await
                .unwrap();
            let page = h
                .get("/-/web/tokens", &[("tokengate_session", &secret)])
                .await;
            let status = if works {
                StatusCode::OK
            } else {
                StatusCode::SEE_OTHER
            };
            assert_eq!(page.status, status, "{backend:?} {what}");
        }
        // A session that only passed the password step is no session.
        let secret = new_secret();
        h.store
            .insert_web_session(&NewWebSession {
                id_hash: &hash(&secret),
                user_id,
                otp_pending: true,
                now,
                expires: now + Duration::minutes(5),
            })
            .await
            .unwrap();
        let page = h
            .get("/-/web/tokens", &[("tokengate_session", &secret)])
            .await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
    }
}

#[tokio::test]
async fn npm_web_login_answers_202_until_confirmed_then_the_token_once() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let start = h.call(Method::POST, "/-/v1/login", &[], None).await;
        assert_eq!(start.status, StatusCode::OK, "{backend:?} {}", start.text);
        let urls = start.json();
        let login_url = urls["loginUrl"].as_str().unwrap().to_owned();
        let done_url = urls["doneUrl"].as_str().unwrap().to_owned();
        // Built from the Host header when public_url is empty.
        assert!(login_url.starts_with("http://registry.test:4874/-/web/npm-login?id="));
        assert!(done_url.starts_with("http://registry.test:4874/-/v1/done?session="));
        let id = query_value(&login_url, "id");
        let done = done_url.trim_start_matches("http://registry.test:4874");
        assert_ne!(
            id,
            query_value(&done_url, "session"),
            "two different secrets"
        );

        let waiting = h.get(done, &[]).await;
        assert_eq!(waiting.status, StatusCode::ACCEPTED);
        assert_eq!(waiting.headers[header::RETRY_AFTER], "1");
        assert_eq!(waiting.json(), serde_json::json!({}));

        // The link asks to sign in first, then confirm.
        let link = format!("/-/web/npm-login?id={id}");
        let anonymous = h.get(&link, &[]).await;
        assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
        assert!(anonymous.location().starts_with("/-/web/login?next=%2F"));
        let session = h.sign_in().await;
        let c = [("tokengate_session", session.as_str())];
        let confirm = h.get(&link, &c).await;
        assert_eq!(confirm.status, StatusCode::OK);
        assert!(confirm.text.contains("Log in npm on this machine?"));
        let csrf = csrf_for(&session);
        let refused = h
            .post(
                "/-/web/npm-login",
                &c,
                &[("csrf", "x"), ("id", &id), ("decision", "approve")],
            )
            .await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(h.get(done, &[]).await.status, StatusCode::ACCEPTED);
        let approved = h
            .post(
                "/-/web/npm-login",
                &c,
                &[("csrf", &csrf), ("id", &id), ("decision", "approve")],
            )
            .await;
        assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);

        let answer = h.get(done, &[]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let token = answer.json()["token"].as_str().unwrap().to_owned();
        let key = tokengate::token::TokenKey::of(&token);
        let found = h.store.token_by_key(&key).await.unwrap().unwrap();
        assert_eq!(found.owner.name, "alice");
        assert_eq!(found.token.kind, tokengate::store::TokenKind::Session);
        // Once: later polls and a second approval find nothing.
        assert_eq!(h.get(done, &[]).await.status, StatusCode::NOT_FOUND);
        let again = h
            .post(
                "/-/web/npm-login",
                &c,
                &[("csrf", &csrf), ("id", &id), ("decision", "approve")],
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        // Garbage polls are 404s, never 500s.
        for path in [
            "/-/v1/done",
            "/-/v1/done?session=",
            "/-/v1/done?session=%00%ff",
        ] {
            assert_eq!(
                h.get(path, &[]).await.status,
                StatusCode::NOT_FOUND,
                "{path}"
            );
        }
        // npm may send no body at all.
        let empty_body = h.call(Method::POST, "/-/v1/login", &[], None).await;
        assert_eq!(empty_body.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn expired_and_cancelled_web_logins() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let (id, done) = (new_secret(), new_secret());
        let long_ago = Utc::now() - Duration::minutes(30);
        h.store
            .insert_web_login(
                &hash(&id),
                &hash(&done),
                false,
                long_ago,
                long_ago + Duration::minutes(10),
            )
            .await
            .unwrap();
        let poll = h.get(&format!("/-/v1/done?session={done}"), &[]).await;
        assert_eq!(poll.status, StatusCode::NOT_FOUND, "{backend:?}");
        let session = h.sign_in().await;
        let c = [("tokengate_session", session.as_str())];
        let page = h.get(&format!("/-/web/npm-login?id={id}"), &c).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.text.contains("expired"));
        let approve = h
            .post(
                "/-/web/npm-login",
                &c,
                &[
                    ("csrf", &csrf_for(&session)),
                    ("id", &id),
                    ("decision", "approve"),
                ],
            )
            .await;
        assert_eq!(approve.status, StatusCode::NOT_FOUND);

        // Cancelled in the browser: npm's poll gets a 403 (and falls back to its prompts).
        let start = h.call(Method::POST, "/-/v1/login", &[], None).await.json();
        let id = query_value(start["loginUrl"].as_str().unwrap(), "id");
        let done = query_value(start["doneUrl"].as_str().unwrap(), "session");
        let cancel = h
            .post(
                "/-/web/npm-login",
                &c,
                &[
                    ("csrf", &csrf_for(&session)),
                    ("id", &id),
                    ("decision", "cancel"),
                ],
            )
            .await;
        assert_eq!(cancel.status, StatusCode::OK);
        let poll = h.get(&format!("/-/v1/done?session={done}"), &[]).await;
        assert_eq!(poll.status, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn create_leads_to_sign_up_only_when_registration_is_open() {
    for (registration, to) in [
        (Registration::Closed, "/-/web/login?next="),
        (Registration::Open, "/-/web/signup?next="),
    ] {
        let h = harness(Backend::Sqlite, |c| c.registration = registration).await;
        // npm sends a JSON body; the harness's `call` sends none, so post it by hand.
        let app = tokengate::app(h.state.clone()).layer(MockConnectInfo(
            "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
        ));
        let req = Request::builder()
            .method(Method::POST)
            .uri("/-/v1/login")
            .header(header::HOST, "registry.test")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"create": true}"#))
            .unwrap();
        let response = app.oneshot(req).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let urls: Value = serde_json::from_slice(&bytes).unwrap();
        let id = query_value(urls["loginUrl"].as_str().unwrap(), "id");
        let page = h.get(&format!("/-/web/npm-login?id={id}"), &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER);
        assert!(
            page.location().starts_with(to),
            "{registration:?}: {}",
            page.location()
        );
        let signup = h.get("/-/web/signup", &[]).await;
        let want = if registration == Registration::Open {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(signup.status, want);
    }
}

#[tokio::test]
async fn sign_in_failures_are_rate_limited() {
    let h = harness(Backend::Sqlite, |c| c.auth_failure_limit = 2).await;
    let page = h.get("/-/web/login", &[]).await;
    let pre = page.cookie("tokengate_signin").unwrap();
    let csrf = csrf_for(&pre);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let a = h
            .post(
                "/-/web/login",
                &[("tokengate_signin", &pre)],
                &[("csrf", &csrf), ("name", "alice"), ("password", "wrong")],
            )
            .await;
        statuses.push(a.status);
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(a.headers.contains_key(header::RETRY_AFTER));
            assert!(a.text.contains("try again in"), "{}", a.text);
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // Even the right password waits now.
    let a = h
        .post(
            "/-/web/login",
            &[("tokengate_signin", &pre)],
            &[("csrf", &csrf), ("name", "alice"), ("password", PW)],
        )
        .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.cookie("tokengate_session").is_none());
}

#[tokio::test]
async fn bad_input_is_a_4xx_page() {
    let h = harness(Backend::Sqlite, |_| {}).await;
    let session = h.sign_in().await;
    let c = [("tokengate_session", session.as_str())];
    for path in [
        "/-/web/tokens/revoke?key=zz",
        "/-/web/tokens/revoke",
        "/-/web/npm-login?id=%ff",
        "/-/web/npm-login",
        "/-/web/tokens?page=x",
    ] {
        let a = h.get(path, &c).await;
        assert!(a.status.is_client_error(), "{path}: {}", a.status);
    }
    let unknown_key = "a".repeat(128);
    let a = h
        .get(&format!("/-/web/tokens/revoke?key={unknown_key}"), &c)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // Not a form body.
    let app = tokengate::app(h.state.clone()).layer(MockConnectInfo(
        "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
    ));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/-/web/tokens")
        .header(header::COOKIE, format!("tokengate_session={session}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = app.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// The text of the first `value="…"` after `marker` in a page.
fn value_after(page: &str, marker: &str) -> String {
    let at = page
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in {page}"));
    let rest = &page[at..];
    let start = rest.find("value=\"").unwrap() + "value=\"".len();
    rest[start..start + rest[start..].find('"').unwrap()].to_owned()
}

/// The sign-in form's second step.
async fn otp_step(h: &Harness, half: &str, code: &str) -> Answer {
    let csrf = csrf_for(half);
    h.post(
        "/-/web/login/otp",
        &[("tokengate_session", half)],
        &[("csrf", &csrf), ("code", code)],
    )
    .await
}

#[tokio::test]
async fn two_factor_through_the_pages() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.sign_in().await;
        let c = [("tokengate_session", session.as_str())];
        let csrf = csrf_for(&session);
        let wrong = h
            .post(
                "/-/web/tfa/enable",
                &c,
                &[("csrf", &csrf), ("password", "nope"), ("mode", "auth-only")],
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{backend:?}");
        let enable = h
            .post(
                "/-/web/tfa/enable",
                &c,
                &[("csrf", &csrf), ("password", PW), ("mode", "auth-only")],
            )
            .await;
        assert_eq!(enable.status, StatusCode::SEE_OTHER, "{}", enable.text);
        let page = h.get("/-/web/tfa", &c).await;
        assert!(page.text.contains("<svg"), "the QR code is inline SVG");
        let secret = value_after(&page.text, "id=\"tfa-secret\"");
        let secret = totp_rs::Secret::Encoded(secret).to_bytes().unwrap();
        let step = tokengate::totp::step_of(Utc::now().timestamp());
        let code = |s: i64| tokengate::totp::code_at_step(&secret, s);
        let bad = h
            .post(
                "/-/web/tfa/confirm",
                &c,
                &[("csrf", &csrf), ("code", &code(step + 5))],
            )
            .await;
        assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
        let confirmed = h
            .post(
                "/-/web/tfa/confirm",
                &c,
                &[("csrf", &csrf), ("code", &code(step))],
            )
            .await;
        assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
        let codes_at = confirmed.text.find("id=\"recovery-codes\"").unwrap();
        let codes: Vec<String> = confirmed.text[codes_at..]
            .split('>')
            .nth(1)
            .unwrap()
            .split('<')
            .next()
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(codes.len(), 10, "{codes:?}");

        // Signing in now takes a one-time password; the password step alone signs nobody in.
        let page = h.get("/-/web/login", &[]).await;
        let pre = page.cookie("tokengate_signin").unwrap();
        let step1 = h
            .post(
                "/-/web/login",
                &[("tokengate_signin", &pre)],
                &[
                    ("csrf", &csrf_for(&pre)),
                    ("name", "alice"),
                    ("password", PW),
                ],
            )
            .await;
        assert_eq!(step1.status, StatusCode::OK);
        assert!(step1.text.contains("One-time password"));
        let half = step1.cookie("tokengate_session").unwrap();
        let hc = [("tokengate_session", half.as_str())];
        assert_eq!(
            h.get("/-/web/tokens", &hc).await.status,
            StatusCode::SEE_OTHER
        );
        assert_eq!(
            otp_step(&h, &half, "000000").await.status,
            StatusCode::UNAUTHORIZED
        );
        // The step used to confirm is spent; the next one is accepted (one step of skew).
        assert_eq!(
            otp_step(&h, &half, &code(step)).await.status,
            StatusCode::UNAUTHORIZED
        );
        let done = otp_step(&h, &half, &code(step + 1)).await;
        assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
        let full = done.cookie("tokengate_session").unwrap();
        assert_ne!(full, half, "a new cookie for the full session");
        let fc = [("tokengate_session", full.as_str())];
        assert_eq!(h.get("/-/web/tokens", &fc).await.status, StatusCode::OK);
        assert_eq!(
            h.get("/-/web/tokens", &hc).await.status,
            StatusCode::SEE_OTHER
        );

        // Token changes ask for a code too; disabling takes the password and a code (here a
        // recovery code).
        let fcsrf = csrf_for(&full);
        let no_otp = h
            .post(
                "/-/web/tokens",
                &fc,
                &[
                    ("csrf", &fcsrf),
                    ("name", "x"),
                    ("kind", "publish"),
                    ("password", PW),
                ],
            )
            .await;
        assert_eq!(no_otp.status, StatusCode::UNAUTHORIZED);
        let disable = h
            .post(
                "/-/web/tfa/disable",
                &fc,
                &[("csrf", &fcsrf), ("password", PW), ("otp", &codes[0])],
            )
            .await;
        assert_eq!(disable.status, StatusCode::SEE_OTHER, "{}", disable.text);
        let user = h.store.user_by_name("alice").await.unwrap().unwrap();
        assert!(user.tfa.is_none(), "{backend:?}: two-factor is off");
    }
}

#[tokio::test]
async fn starting_npm_web_logins_is_limited_per_address() {
    let h = harness(Backend::Sqlite, |_| {}).await;
    for _ in 0..tokengate::api::user::WEB_LOGINS_PER_WINDOW {
        let a = h.call(Method::POST, "/-/v1/login", &[], None).await;
        assert_eq!(a.status, StatusCode::OK);
    }
    let a = h.call(Method::POST, "/-/v1/login", &[], None).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(a.headers.contains_key(header::RETRY_AFTER));
    assert!(a.text.contains("try again in"), "{}", a.text);
}
