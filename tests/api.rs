//! Every HTTP endpoint, in process (no socket), on SQLite and on PostgreSQL.

mod common;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use base64::Engine;
use chrono::{Duration, Utc};
use common::{Backend, TestDb, BACKENDS};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokengate::config::{Config, Registration};
use tokengate::store::{NewUser, PoolSettings, SqlStore, Store, TokenKind};
use tokengate::token::PlainToken;
use tokengate::token_request::TokenSpec;
use tokengate::AppState;
use tower::ServiceExt;

const PW: &str = "correct horse battery";
const LOCAL: &str = "127.0.0.1:40000";

struct Harness {
    state: AppState,
    store: Arc<SqlStore>,
    _db: TestDb,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", self.body))
    }

    fn challenge(&self) -> Option<&str> {
        self.headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap())
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
    for name in ["alice", "bob"] {
        let password_hash = tokengate::password::hash(PW.into()).await.unwrap();
        store
            .create_user(&NewUser {
                name: name.into(),
                email: format!("{name}@example.com"),
                password_hash,
            })
            .await
            .unwrap();
    }
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
    async fn call_from(
        &self,
        peer: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Body>,
    ) -> Answer {
        let peer: SocketAddr = peer.parse().unwrap();
        let app = tokengate::app(self.state.clone()).layer(MockConnectInfo(peer));
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let has_body = body.is_some();
        if has_body {
            req = req.header("content-type", "application/json");
        }
        let response = app
            .oneshot(req.body(body.unwrap_or_else(Body::empty)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.call_from(
            LOCAL,
            method,
            path,
            &headers,
            body.map(|b| Body::from(b.to_string())),
        )
        .await
    }

    async fn login(&self, name: &str) -> String {
        let a = self
            .call(
                Method::PUT,
                &format!("/-/user/org.couchdb.user:{name}"),
                None,
                Some(json!({"name": name, "password": PW})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["token"].as_str().unwrap().to_owned()
    }

    async fn create(&self, session: &str, body: Value) -> Answer {
        self.call(Method::POST, "/-/npm/v1/tokens", Some(session), Some(body))
            .await
    }

    async fn create_ok(&self, session: &str, mut body: Value) -> String {
        body["password"] = json!(PW);
        let a = self.create(session, body).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        a.body["token"].as_str().unwrap().to_owned()
    }

    /// Tokens named t0, t1, … made in that order, each in a later millisecond than the one
    /// before, so that newest first is the reverse of that order.
    async fn create_named(&self, session: &str, count: usize) -> Vec<String> {
        let mut made = Vec::new();
        for i in 0..count {
            made.push(
                self.create_ok(session, json!({"name": format!("t{i}")}))
                    .await,
            );
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        made
    }

    /// `npm token revoke`: by key or by the full token, as `caller`.
    async fn revoke(&self, caller: &str, key_or_token: &str) -> Answer {
        let path = format!("/-/npm/v1/tokens/token/{key_or_token}");
        self.call(Method::DELETE, &path, Some(caller), None).await
    }

    async fn whoami(&self, token: &str) -> Answer {
        self.call(Method::GET, "/-/whoami", Some(token), None).await
    }

    /// The `total` of the token list, checked against the tokens it lists.
    async fn listed_total(&self, token: &str) -> usize {
        let a = self
            .call(Method::GET, "/-/npm/v1/tokens?perPage=1", Some(token), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let listed = self.list_all(token).await.len();
        assert_eq!(a.body["total"], json!(listed), "{}", a.body);
        listed
    }

    async fn list_all(&self, token: &str) -> Vec<Value> {
        let a = self
            .call(
                Method::GET,
                "/-/npm/v1/tokens?perPage=9999",
                Some(token),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.body["objects"].as_array().unwrap().clone()
    }
}

#[tokio::test]
async fn login_whoami_and_ping() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let a = h.call(Method::GET, "/-/ping", None, None).await;
        assert_eq!((a.status, a.body.clone()), (StatusCode::OK, json!({})));

        let token = h.login("alice").await;
        assert!(token.starts_with("npm_") && token.len() == 40, "{token}");
        let a = h.whoami(&token).await;
        assert_eq!(a.body, json!({"username": "alice"}));

        // Wrong password and unknown user: the same 401, no challenge that hides the text.
        let wrong = h
            .call(
                Method::PUT,
                "/-/user/org.couchdb.user:alice",
                None,
                Some(json!({"name": "alice", "password": "nope"})),
            )
            .await;
        let unknown = h
            .call(
                Method::PUT,
                "/-/user/org.couchdb.user:carol",
                None,
                Some(json!({"name": "carol", "password": "nope"})),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            (wrong.status, wrong.body.clone()),
            (unknown.status, unknown.body.clone())
        );

        // A stale bearer does not stop a login; the conflict retry path works too.
        let a = h
            .call(
                Method::PUT,
                "/-/user/org.couchdb.user:alice/-rev/3-abc",
                Some("npm_stale"),
                Some(json!({"name": "alice", "password": PW, "_rev": "3-abc"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);

        // Basic credentials work wherever a token does.
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{PW}"))
        );
        let a = h
            .call_from(
                LOCAL,
                Method::GET,
                "/-/whoami",
                &[("authorization", &basic)],
                None,
            )
            .await;
        assert_eq!(a.body, json!({"username": "alice"}));
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:x")
        );
        let a = h
            .call_from(
                LOCAL,
                Method::GET,
                "/-/whoami",
                &[("authorization", &bad)],
                None,
            )
            .await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Basic"))
        );
    }
}

#[tokio::test]
async fn unauthenticated_and_invalid_tokens_get_bearer_challenges() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let a = h.call(Method::GET, "/-/whoami", None, None).await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Bearer"))
        );
        assert!(a.error().contains("npm login"));

        let token = h.login("alice").await;
        // One flipped character: the checksum fails before any lookup.
        let mut bad = token.clone().into_bytes();
        bad[10] = if bad[10] == b'x' { b'y' } else { b'x' };
        let bad = String::from_utf8(bad).unwrap();
        for t in [
            bad.as_str(),
            "garbage",
            "npm_",
            PlainToken::generate("npm_").expose(),
        ] {
            let a = h.whoami(t).await;
            assert_eq!(
                (a.status, a.challenge()),
                (StatusCode::UNAUTHORIZED, Some("Bearer")),
                "{t}"
            );
        }
        for header in ["Token x", "Bearer", "Basic !!!", "Basic eA=="] {
            let a = h
                .call_from(
                    LOCAL,
                    Method::GET,
                    "/-/whoami",
                    &[("authorization", header)],
                    None,
                )
                .await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{header}");
        }
    }
}

#[tokio::test]
async fn adduser_follows_the_registration_setting() {
    for backend in BACKENDS {
        let closed = harness(backend, |_| {}).await;
        let body = json!({"_id": "org.couchdb.user:carol", "name": "carol", "password": PW, "email": "c@example.com", "type": "user", "roles": [], "date": "2026-01-01T00:00:00.000Z"});
        let a = closed
            .call(
                Method::PUT,
                "/-/user/org.couchdb.user:carol",
                None,
                Some(body.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(a.error().contains("administrator"), "{}", a.error());
        // adduser of an existing name with its password is a login.
        let a = closed
            .call(
                Method::PUT,
                "/-/user/org.couchdb.user:alice",
                None,
                Some(json!({"name": "alice", "password": PW, "email": "x@example.com"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED);

        let open = harness(backend, |c| c.registration = Registration::Open).await;
        let a = open
            .call(
                Method::PUT,
                "/-/user/org.couchdb.user:carol",
                None,
                Some(body),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let token = a.body["token"].as_str().unwrap();
        assert_eq!(open.whoami(token).await.body, json!({"username": "carol"}));

        for (name, email, password, want) in [
            ("Dave", "d@example.com", PW, "lowercase"),
            ("dave", "not-an-email", PW, "e-mail"),
            ("dave", "d@example.com", "short", "at least 8"),
        ] {
            let a = open
                .call(
                    Method::PUT,
                    &format!("/-/user/org.couchdb.user:{name}"),
                    None,
                    Some(json!({"name": name, "password": password, "email": email})),
                )
                .await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}");
            assert!(a.error().contains(want), "{}", a.error());
        }
    }
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    for backend in BACKENDS {
        let h = harness(backend, |c| c.max_body_bytes = 2048).await;
        let session = h.login("alice").await;
        let raw = |body: &'static str| Some(Body::from(body));
        let auth = format!("Bearer {session}");
        let cases: Vec<(Method, &str, Option<Body>, StatusCode, &str)> = vec![
            (
                Method::POST,
                "/-/npm/v1/tokens",
                raw("{"),
                StatusCode::BAD_REQUEST,
                "Invalid JSON",
            ),
            (
                Method::POST,
                "/-/npm/v1/tokens",
                raw(""),
                StatusCode::BAD_REQUEST,
                "required",
            ),
            (
                Method::POST,
                "/-/npm/v1/tokens",
                raw("[]"),
                StatusCode::BAD_REQUEST,
                "Invalid JSON",
            ),
            (
                Method::POST,
                "/-/npm/v1/tokens",
                raw(r#"{"password": 5}"#),
                StatusCode::BAD_REQUEST,
                "`password`",
            ),
            (
                Method::POST,
                "/-/npm/v1/tokens",
                raw(r#"{"password": "x", "readonly": "yes"}"#),
                StatusCode::BAD_REQUEST,
                "`readonly`",
            ),
            (
                Method::POST,
                "/-/npm/v1/tokens",
                raw(r#"{"password": "x", "colour": "red"}"#),
                StatusCode::BAD_REQUEST,
                "unknown field `colour`",
            ),
            (
                Method::POST,
                "/-/npm/v1/tokens",
                Some(Body::from(format!(r#"{{"name": "{}"}}"#, "x".repeat(4096)))),
                StatusCode::PAYLOAD_TOO_LARGE,
                "larger",
            ),
            (
                Method::PUT,
                "/-/user/org.couchdb.user:alice",
                raw(r#"{"name": "bob", "password": "x"}"#),
                StatusCode::BAD_REQUEST,
                "differs",
            ),
            (
                Method::PUT,
                "/-/user/org.couchdb.user:alice",
                raw(r#"{"name": "alice"}"#),
                StatusCode::BAD_REQUEST,
                "password is required",
            ),
            (
                Method::PUT,
                "/-/user/org.couchdb.user:alice",
                raw(r#"{"name": "alice", "password": "x", "admin": true}"#),
                StatusCode::BAD_REQUEST,
                "unknown field",
            ),
            (
                Method::PUT,
                "/-/user/org.couchdb.user:",
                raw(r#"{"password": "x"}"#),
                StatusCode::BAD_REQUEST,
                "missing",
            ),
            (
                Method::PUT,
                "/-/user/somebody",
                raw(r#"{"password": "x"}"#),
                StatusCode::NOT_FOUND,
                "Not found",
            ),
            (
                Method::GET,
                "/-/npm/v1/tokens?perPage=0",
                None,
                StatusCode::BAD_REQUEST,
                "perPage",
            ),
            (
                Method::GET,
                "/-/npm/v1/tokens?page=-1",
                None,
                StatusCode::BAD_REQUEST,
                "page",
            ),
            (
                Method::GET,
                "/-/npm/v1/tokens?page=x",
                None,
                StatusCode::BAD_REQUEST,
                "page",
            ),
            (
                Method::GET,
                "/-/no/such/thing",
                None,
                StatusCode::NOT_FOUND,
                "no such endpoint",
            ),
            (
                Method::PATCH,
                "/-/npm/v1/tokens",
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "method",
            ),
            (
                Method::DELETE,
                "/-/npm/v1/tokens/token/%zz",
                None,
                StatusCode::NOT_FOUND,
                "npm token list",
            ),
            (
                Method::DELETE,
                "/-/npm/v1/tokens/token/%FF%FE",
                None,
                StatusCode::BAD_REQUEST,
                "Invalid path",
            ),
        ];
        for (method, path, body, status, want) in cases {
            let a = h
                .call_from(
                    LOCAL,
                    method.clone(),
                    path,
                    &[("authorization", &auth)],
                    body,
                )
                .await;
            assert_eq!(a.status, status, "{method} {path}: {}", a.body);
            assert!(a.error().contains(want), "{method} {path}: {}", a.error());
        }
    }
}

#[tokio::test]
async fn token_create_in_every_shape() {
    for backend in BACKENDS {
        let h = harness(backend, |c| c.max_token_expiry_days = 90).await;
        let session = h.login("alice").await;

        // npm 11's bare create: a full-permission token, shown once.
        let a = h
            .create(&session, json!({"name": null, "password": PW}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let token = a.body["token"].as_str().unwrap();
        assert_eq!(a.body["type"], "publish");
        assert_eq!(a.body["key"].as_str().unwrap().len(), 128);
        assert_eq!(h.whoami(token).await.body, json!({"username": "alice"}));

        // npm 11's flags.
        let a = h
            .create(&session, json!({"name": "ci", "password": PW, "expires": 30, "cidr_whitelist": ["127.0.0.1/32"], "token_description": "for CI"}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.body["name"], "ci");
        assert_eq!(a.body["description"], "for CI");
        assert_eq!(a.body["cidr_whitelist"], json!(["127.0.0.1/32"]));
        assert_eq!(a.body["cidr"], json!(["127.0.0.1/32"]));
        let expires =
            chrono::DateTime::parse_from_rfc3339(a.body["expires"].as_str().unwrap()).unwrap();
        assert!(
            (expires.with_timezone(&Utc) - (Utc::now() + Duration::days(30)))
                .num_seconds()
                .abs()
                < 60
        );

        // Legacy read-only, granular, automation.
        let a = h
            .create(
                &session,
                json!({"password": PW, "readonly": true, "cidr_whitelist": []}),
            )
            .await;
        assert_eq!(
            (
                a.body["readonly"].clone(),
                a.body["type"].clone(),
                a.body["cidr_whitelist"].clone()
            ),
            (json!(true), json!("read-only"), Value::Null)
        );
        let a = h
            .create(&session, json!({"name": "gat", "password": PW, "packages": ["foo", "@s/bar"], "scopes": ["acme"], "orgs": ["myorg"], "packages_and_scopes_permission": "read-write", "orgs_permission": "read-only", "bypass_2fa": true, "expires": 7}))
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        assert_eq!(a.body["type"], "granular");
        assert_eq!(a.body["scopes"], json!(["@acme"]));
        assert_eq!(a.body["bypass_2fa"], json!(true));
        let a = h
            .create(&session, json!({"password": PW, "automation": true}))
            .await;
        assert_eq!(
            (a.body["type"].clone(), a.body["automation"].clone()),
            (json!("automation"), json!(true))
        );

        // Refusals.
        let a = h.create(&session, json!({"password": "wrong"})).await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Basic"))
        );
        let a = h.create(&session, json!({})).await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Basic"))
        );
        for (body, want) in [
            (
                json!({"password": PW, "cidr_whitelist": ["10.0.0.0/8", "bogus"]}),
                "CIDR whitelist contains invalid CIDR entry: bogus",
            ),
            (
                json!({"password": PW, "cidr_whitelist": ["::1/129"]}),
                "invalid CIDR entry",
            ),
            (json!({"password": PW, "expires": 91}), "from 1 to 90"),
            (json!({"password": PW, "expires": 0}), "from 1 to 90"),
            (
                json!({"password": PW, "packages": ["Not Valid"]}),
                "not a valid package name",
            ),
            (
                json!({"password": PW, "packages": ["x"], "packages_and_scopes_permission": "owner"}),
                "must be one of",
            ),
        ] {
            let a = h.create(&session, body.clone()).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
            assert!(a.error().contains(want), "{body}: {}", a.error());
        }
        // IPv6 is accepted by the server (npm's CLI refuses it, the API does not).
        let a = h
            .create(
                &session,
                json!({"password": PW, "cidr_whitelist": ["2001:db8::/32"]}),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
}

#[tokio::test]
async fn narrow_tokens_cannot_manage_tokens() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let readonly = h.create_ok(&session, json!({"readonly": true})).await;
        let npm11_readonly = h
            .create_ok(
                &session,
                json!({"packages_all": true, "packages_and_scopes_permission": "read-only"}),
            )
            .await;
        let automation = h.create_ok(&session, json!({"automation": true})).await;
        let granular = h
            .create_ok(
                &session,
                json!({"packages_all": true, "packages_and_scopes_permission": "read-write"}),
            )
            .await;
        let publish = h.create_ok(&session, json!({})).await;

        for t in [&readonly, &npm11_readonly] {
            assert_eq!(h.whoami(t).await.status, StatusCode::OK);
            assert_eq!(
                h.call(Method::GET, "/-/npm/v1/tokens", Some(t), None)
                    .await
                    .status,
                StatusCode::OK
            );
            let a = h.create(t, json!({"password": PW})).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN);
            assert!(a.error().contains("read-only"), "{}", a.error());
            let a = h.revoke(t, &publish).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN);
            // Package writes are refused too.
            let a = h
                .call(Method::PUT, "/some-package", Some(t), Some(json!({})))
                .await;
            assert_eq!(a.status, StatusCode::FORBIDDEN);
        }
        for t in [&automation, &granular] {
            let a = h.create(t, json!({"password": PW})).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        }
        // A full-permission token may create one.
        h.create_ok(&publish, json!({})).await;
    }
}

#[tokio::test]
async fn token_list_pages_newest_first_and_shows_only_own_tokens() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let bob = h.login("bob").await;
        let made = h.create_named(&session, 4).await;
        let a = h
            .call(
                Method::GET,
                "/-/npm/v1/tokens?perPage=2",
                Some(&session),
                None,
            )
            .await;
        assert_eq!(a.body["total"], json!(5));
        assert_eq!(names_of(&a.body), ["t3", "t2"]);
        let next = a.body["urls"]["next"].as_str().unwrap();
        assert!(
            next.starts_with("/-/npm/v1/tokens?page=1&perPage=2&after="),
            "{next}"
        );
        let a = h.call(Method::GET, next, Some(&session), None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(names_of(&a.body), ["t1", "t0"]);
        assert_eq!(a.body["total"], json!(5));
        let next = a.body["urls"]["next"].as_str().unwrap();
        let a = h.call(Method::GET, next, Some(&session), None).await;
        assert_eq!(names_of(&a.body), ["npm login"]);
        assert_eq!(a.body["urls"]["next"], Value::Null);
        let a = h
            .call(
                Method::GET,
                "/-/npm/v1/tokens?page=2&perPage=2",
                Some(&session),
                None,
            )
            .await;
        assert_eq!(a.body["objects"].as_array().unwrap().len(), 1);
        assert_eq!(a.body["urls"]["next"], Value::Null);
        // Default page size is 10: one page here.
        let a = h
            .call(Method::GET, "/-/npm/v1/tokens", Some(&session), None)
            .await;
        assert_eq!(a.body["objects"].as_array().unwrap().len(), 5);

        let listed = h.list_all(&session).await;
        for o in &listed {
            let shown = o["token"].as_str().unwrap();
            assert_eq!(shown.len(), 8);
            for field in [
                "key",
                "created",
                "updated",
                "readonly",
                "automation",
                "cidr_whitelist",
                "name",
                "expires",
            ] {
                assert!(o.get(field).is_some(), "{field} missing in {o}");
            }
        }
        // The listed `token` is a prefix of the real one, and never the real one.
        for t in &made {
            assert!(listed
                .iter()
                .any(|o| t.starts_with(o["token"].as_str().unwrap())));
            assert!(!listed.iter().any(|o| o["token"] == json!(t)));
        }
        // Bob sees only his own session.
        let theirs = h.list_all(&bob).await;
        assert_eq!(theirs.len(), 1);
        assert_eq!(theirs[0]["name"], "npm login");
    }
}

fn names_of(page: &Value) -> Vec<&str> {
    page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect()
}

/// npm follows `urls.next`; a page that starts after the last token shown neither skips nor
/// repeats a token when tokens are revoked between pages (an offset would skip).
#[tokio::test]
async fn token_list_next_page_starts_after_the_last_token_shown() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let made = h.create_named(&session, 5).await;
        let a = h
            .call(
                Method::GET,
                "/-/npm/v1/tokens?perPage=2",
                Some(&session),
                None,
            )
            .await;
        assert_eq!(names_of(&a.body), ["t4", "t3"]);
        let next = a.body["urls"]["next"].as_str().unwrap().to_owned();

        // t4, already shown, is revoked before npm asks for the next page: counted from the
        // start, the next page would begin one token later and skip t2.
        let key = tokengate::token::TokenKey::of(&made[4]).0;
        let gone = h.revoke(&session, &key).await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.body);

        let mut seen = Vec::new();
        let mut next = Some(next);
        while let Some(path) = next {
            let a = h.call(Method::GET, &path, Some(&session), None).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            assert_eq!(a.body["total"], json!(5), "{}", a.body);
            seen.extend(names_of(&a.body).into_iter().map(str::to_owned));
            next = a.body["urls"]["next"].as_str().map(str::to_owned);
        }
        assert_eq!(seen, ["t2", "t1", "t0", "npm login"]);

        // A cursor not written by the server is refused, saying what to send.
        for bad in ["x", "-1.ab", "5.", "12.zz"] {
            let a = h
                .call(
                    Method::GET,
                    &format!("/-/npm/v1/tokens?after={bad}"),
                    Some(&session),
                    None,
                )
                .await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}: {}", a.body);
            assert!(
                a.body["error"].as_str().unwrap().contains("urls.next"),
                "{}",
                a.body
            );
        }
    }
}

/// The list's `total` is a count kept by the database: it follows every way a token starts
/// and ends, and counts only the caller's own.
#[tokio::test]
async fn token_list_total_follows_creation_revocation_logout_and_password_change() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        assert_eq!(h.listed_total(&session).await, 1);
        let other = h.login("alice").await;
        let bob = h.login("bob").await;
        let t0 = h.create_ok(&session, json!({"name": "t0"})).await;
        h.create_ok(&session, json!({"name": "t1"})).await;
        assert_eq!(h.listed_total(&session).await, 4);
        assert_eq!(h.listed_total(&bob).await, 1);

        let key = tokengate::token::TokenKey::of(&t0).0;
        let a = h.revoke(&session, &key).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
        // Revoking it again changes nothing.
        let a = h.revoke(&session, &key).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
        assert_eq!(h.listed_total(&session).await, 3);

        let a = h
            .call(
                Method::DELETE,
                &format!("/-/user/token/{other}"),
                Some(&other),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(h.listed_total(&session).await, 2);

        // A password change ends the other login sessions.
        h.login("alice").await;
        h.login("alice").await;
        assert_eq!(h.listed_total(&session).await, 4);
        let change = json!({"password": {"old": PW, "new": "a new long password"}});
        let a = h.profile_post(&session, None, change).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(h.listed_total(&session).await, 2);
        assert_eq!(h.listed_total(&bob).await, 1);
    }
}

#[tokio::test]
async fn revoke_by_key_or_token_only_own() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let bob = h.login("bob").await;
        let by_key = h.create_ok(&session, json!({"name": "k"})).await;
        let by_value = h.create_ok(&session, json!({"name": "v"})).await;
        let key = tokengate::token::TokenKey::of(&by_key).0;

        // Bob cannot revoke Alice's token: it is unknown to him.
        let a = h.revoke(&bob, &key).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(h.whoami(&by_key).await.status, StatusCode::OK);

        let a = h.revoke(&session, &key).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        let a = h.whoami(&by_key).await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Bearer"))
        );
        let a = h.revoke(&session, &by_value).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        assert_eq!(h.whoami(&by_value).await.status, StatusCode::UNAUTHORIZED);
        // Twice: 404.
        let a = h.revoke(&session, &key).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(h.list_all(&session).await.len(), 1);
    }
}

#[tokio::test]
async fn logout_revokes_and_never_fails_for_dead_tokens() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let bob = h.login("bob").await;
        let path = |t: &str| format!("/-/user/token/{}", t);

        // Someone else's token: refused, and it still works.
        let a = h
            .call(Method::DELETE, &path(&session), Some(&bob), None)
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(h.whoami(&session).await.status, StatusCode::OK);

        let a = h
            .call(Method::DELETE, &path(&session), Some(&session), None)
            .await;
        assert_eq!(
            (a.status, a.body.clone()),
            (StatusCode::OK, json!({"ok": true}))
        );
        assert_eq!(h.whoami(&session).await.status, StatusCode::UNAUTHORIZED);
        // Again, and with unknown tokens: still 200 so npm can clean its config.
        for t in [session.as_str(), "npm_unknown", "abc%2Fdef%2Bghi%3D"] {
            let a = h.call(Method::DELETE, &path(t), Some(t), None).await;
            assert_eq!(a.status, StatusCode::OK, "{t}");
        }
    }
}

#[tokio::test]
async fn expired_tokens_and_disabled_users_are_refused() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let token = PlainToken::generate("npm_");
        let now = Utc::now();
        h.store
            .insert_token(
                &TokenSpec::unrestricted(
                    TokenKind::Publish,
                    Some("old".into()),
                    Some(now - Duration::seconds(1)),
                )
                .into_record(
                    token.key(),
                    alice.id,
                    token.redacted("npm_"),
                    now - Duration::days(2),
                ),
            )
            .await
            .unwrap();
        let a = h.whoami(token.expose()).await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Bearer"))
        );
        assert!(a.error().contains("expired"), "{}", a.error());
        // An expired token can still log itself out.
        let a = h
            .call(
                Method::DELETE,
                &format!("/-/user/token/{}", token.expose()),
                Some(token.expose()),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn cidr_lists_use_the_right_client_address() {
    for backend in BACKENDS {
        let h = harness(backend, |c| {
            c.trusted_proxies = vec!["10.9.0.0/16".parse().unwrap()]
        })
        .await;
        let session = h.login("alice").await;
        let limited = h
            .create_ok(
                &session,
                json!({"cidr_whitelist": ["192.0.2.0/24", "2001:db8::/32"]}),
            )
            .await;
        let auth = format!("Bearer {limited}");
        let whoami = |peer: &'static str, xff: Option<&'static str>| {
            let auth = auth.clone();
            let h = &h;
            async move {
                let mut headers = vec![("authorization", auth.as_str())];
                if let Some(x) = xff {
                    headers.push(("x-forwarded-for", x));
                }
                h.call_from(peer, Method::GET, "/-/whoami", &headers, None)
                    .await
            }
        };
        let cases = [
            ("192.0.2.7:1000", None, true),
            ("[2001:db8::1]:1000", None, true),
            ("[::ffff:192.0.2.9]:1000", None, true),
            ("127.0.0.1:1000", None, false),
            // An untrusted peer's X-Forwarded-For is ignored.
            ("127.0.0.1:1000", Some("192.0.2.7"), false),
            // A trusted proxy's is believed: the right-most untrusted hop.
            ("10.9.0.1:1000", Some("192.0.2.7"), true),
            ("10.9.0.1:1000", Some("192.0.2.7, 10.9.0.2"), true),
            ("10.9.0.1:1000", Some("192.0.2.7, 198.51.100.1"), false),
            ("10.9.0.1:1000", None, false),
        ];
        for (peer, xff, ok) in cases {
            let a = whoami(peer, xff).await;
            if ok {
                assert_eq!(a.status, StatusCode::OK, "{peer} {xff:?}: {}", a.body);
            } else {
                assert_eq!(
                    (a.status, a.challenge()),
                    (StatusCode::UNAUTHORIZED, Some("ipaddress")),
                    "{peer} {xff:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn token_count_is_capped_per_user() {
    for backend in BACKENDS {
        let h = harness(backend, |c| c.max_tokens_per_user = 2).await;
        let session = h.login("alice").await;
        h.create_ok(&session, json!({})).await;
        let second = h.create_ok(&session, json!({})).await;
        let a = h.create(&session, json!({"password": PW})).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(a.error().contains("revoke"), "{}", a.error());
        // Revoking one frees a place; login sessions never count.
        h.revoke(&session, &second).await;
        h.login("alice").await;
        h.create_ok(&session, json!({})).await;
    }
}

#[tokio::test]
async fn password_change_revokes_sessions_only() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let publish = h.create_ok(&session, json!({})).await;
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let hash = tokengate::password::hash("another password".into())
            .await
            .unwrap();
        assert_eq!(
            h.store.set_password(alice.id, &hash, true).await.unwrap(),
            1
        );
        assert_eq!(h.whoami(&session).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(h.whoami(&publish).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn database_outage_is_a_503_not_a_500() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        h.store.close().await;
        let a = h.whoami(&session).await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
        assert!(a.error().contains("unavailable"), "{}", a.error());
        // Garbage tokens are still refused without the database.
        assert_eq!(
            h.whoami("npm_garbage").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[test]
fn admin_cli_manages_users() {
    for backend in BACKENDS {
        let db = TestDb::new(backend);
        common::add_user(&db, "alice", PW);
        let listed = common::cli(&db, &["user", "list"], "");
        assert!(
            listed.contains("alice") && listed.contains("alice@example.com"),
            "{listed}"
        );
        let out = common::cli(
            &db,
            &["user", "passwd", "alice", "--password-stdin"],
            "a new password\n",
        );
        assert!(out.contains("password of alice changed"), "{out}");
        // Too short, duplicate names and bad names are refused with a message.
        for (args, stdin, want) in [
            (
                vec![
                    "user",
                    "add",
                    "bob",
                    "--email",
                    "b@example.com",
                    "--password-stdin",
                ],
                "short\n",
                "at least 8",
            ),
            (
                vec![
                    "user",
                    "add",
                    "alice",
                    "--email",
                    "a@example.com",
                    "--password-stdin",
                ],
                "long enough pw\n",
                "exists",
            ),
            (
                vec![
                    "user",
                    "add",
                    "Bob",
                    "--email",
                    "b@example.com",
                    "--password-stdin",
                ],
                "long enough pw\n",
                "lowercase",
            ),
        ] {
            let out = std::process::Command::new(common::binary())
                .args(&args)
                .env("TOKENGATE_DATABASE_URL", &db.url)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(stdin.as_bytes())?;
                    c.wait_with_output()
                })
                .unwrap();
            assert!(!out.status.success(), "{args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}

#[test]
fn config_errors_name_the_key() {
    let out = std::process::Command::new(common::binary())
        .args(["config", "check"])
        .env("TOKENGATE_REGISTRATION", "sometimes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sometimes") || err.contains("registration"),
        "{err}"
    );
    let out = std::process::Command::new(common::binary())
        .args([
            "config",
            "check",
            "--database-url",
            "postgres://u:secret@h/db",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("u:***@h") && !text.contains("secret"),
        "{text}"
    );
}

// ---- Profile and two-factor authentication ----

const OTP_MESSAGE: &str = "This operation requires a one-time password.";

/// The raw TOTP secret inside an `otpauth://` URL.
fn secret_of(url: &str) -> Vec<u8> {
    let encoded = url
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap_or_else(|| panic!("no secret in {url}"));
    totp_rs::Secret::Encoded(encoded.to_owned())
        .to_bytes()
        .unwrap()
}

/// The current TOTP step, after waiting out the end of a step so that a test that runs for a
/// few seconds stays within it.
async fn steady_step() -> i64 {
    let now = Utc::now().timestamp();
    if 30 - now % 30 < 8 {
        tokio::time::sleep(std::time::Duration::from_secs((30 - now % 30) as u64 + 1)).await;
    }
    tokengate::totp::step_of(Utc::now().timestamp())
}

impl Harness {
    /// A call with a bearer token and an optional `npm-otp` header, from `peer`.
    async fn call_otp(
        &self,
        peer: &str,
        method: Method,
        path: &str,
        token: &str,
        otp: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(otp) = otp {
            headers.push(("npm-otp", otp));
        }
        self.call_from(
            peer,
            method,
            path,
            &headers,
            body.map(|b| Body::from(b.to_string())),
        )
        .await
    }

    async fn profile_post(&self, token: &str, otp: Option<&str>, body: Value) -> Answer {
        self.call_otp(
            LOCAL,
            Method::POST,
            "/-/npm/v1/user",
            token,
            otp,
            Some(body),
        )
        .await
    }

    async fn login_with(
        &self,
        peer: &str,
        name: &str,
        password: &str,
        otp: Option<&str>,
    ) -> Answer {
        let mut headers = vec![];
        if let Some(otp) = otp {
            headers.push(("npm-otp", otp));
        }
        let body = json!({"name": name, "password": password}).to_string();
        self.call_from(
            peer,
            Method::PUT,
            &format!("/-/user/org.couchdb.user:{name}"),
            &headers,
            Some(Body::from(body)),
        )
        .await
    }
}

fn assert_otp_challenge(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    assert_eq!(a.challenge(), Some("OTP"));
    assert_eq!(a.error(), OTP_MESSAGE);
}

#[tokio::test]
async fn profile_read_and_change() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let other = h.login("alice").await;
        let a = h
            .call(Method::GET, "/-/npm/v1/user", Some(&session), None)
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body["name"], "alice");
        assert_eq!(a.body["email"], "alice@example.com");
        assert_eq!(a.body["email_verified"], false);
        assert_eq!(a.body["tfa"], Value::Null);
        assert_eq!(a.body["cidr_whitelist"], Value::Null);
        assert!(a.body["created"].as_str().unwrap().ends_with('Z'));

        // What `npm profile set fullname …` sends: every writable key, nulls included.
        let a = h
            .profile_post(
                &session,
                None,
                json!({"email": "alice@example.com", "fullname": "Alice A.", "homepage": null,
                       "freenode": null, "twitter": null, "github": "alice"}),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["fullname"], "Alice A.");
        assert_eq!(a.body["github"], "alice");
        let a = h
            .profile_post(&session, None, json!({"email": "new@example.org"}))
            .await;
        assert_eq!(
            (a.body["email"].clone(), a.body["fullname"].clone()),
            (json!("new@example.org"), json!("Alice A."))
        );
        let a = h
            .profile_post(&session, None, json!({"email": "nope"}))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        let a = h
            .profile_post(&session, None, json!({"name": "mallory"}))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.error().contains("name"), "{}", a.error());
        let a = h.profile_post(&session, None, json!({"tfa": 7})).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.error().contains("tfa"), "{}", a.error());

        // Password change: the old one is checked, the new one must be long enough, other
        // sessions end and the caller's own goes on.
        let change = |old: &str, new: &str| json!({"password": {"old": old, "new": new}});
        let a = h
            .profile_post(
                &session,
                None,
                change("wrong password!", "a new long password"),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.challenge(), Some("Basic"));
        let a = h.profile_post(&session, None, change(PW, "short")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.error().contains("at least"), "{}", a.error());
        let a = h
            .profile_post(&session, None, change(PW, "a new long password"))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert!(a.body.get("password").is_none());
        assert_eq!(h.whoami(&session).await.status, StatusCode::OK);
        assert_eq!(h.whoami(&other).await.status, StatusCode::UNAUTHORIZED);
        let a = h
            .login_with(LOCAL, "alice", "a new long password", None)
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
        assert_eq!(
            h.login_with(LOCAL, "alice", PW, None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn two_factor_enrolment_and_challenges() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        // A wrong password does not start enrolment; an unknown mode is named.
        let a = h
            .profile_post(
                &session,
                None,
                json!({"tfa": {"password": "wrong", "mode": "auth-only"}}),
            )
            .await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Basic"))
        );
        let a = h
            .profile_post(
                &session,
                None,
                json!({"tfa": {"password": PW, "mode": "always"}}),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.error().contains("always"), "{}", a.error());
        // Confirming with nothing pending is refused.
        let a = h
            .profile_post(&session, None, json!({"tfa": ["123456"]}))
            .await;
        assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);

        // Pending: nothing is enforced yet, a wrong code does not confirm, and a second start
        // gives a new secret.
        let a = h
            .profile_post(
                &session,
                None,
                json!({"tfa": {"password": PW, "mode": "auth-only"}}),
            )
            .await;
        let first = secret_of(a.body["tfa"].as_str().unwrap());
        let a = h
            .call(Method::GET, "/-/npm/v1/user", Some(&session), None)
            .await;
        assert_eq!(a.body["tfa"], json!({"pending": true, "mode": "auth-only"}));
        h.create_ok(&session, json!({})).await;
        assert_eq!(
            h.login_with(LOCAL, "alice", PW, None).await.status,
            StatusCode::CREATED
        );
        let step = steady_step().await;
        let wrong = if tokengate::totp::code_at_step(&first, step) == "000000" {
            "111111"
        } else {
            "000000"
        };
        assert_otp_challenge(
            &h.profile_post(&session, None, json!({"tfa": [wrong]}))
                .await,
        );
        let a = h
            .profile_post(
                &session,
                None,
                json!({"tfa": {"password": PW, "mode": "auth-and-writes"}}),
            )
            .await;
        let secret = secret_of(a.body["tfa"].as_str().unwrap());
        assert_ne!(first, secret);
        // The first secret's code no longer confirms.
        let stale = tokengate::totp::code_at_step(&first, step);
        assert_otp_challenge(
            &h.profile_post(&session, None, json!({"tfa": [stale]}))
                .await,
        );
        let code = tokengate::totp::code_at_step(&secret, step);
        let a = h.profile_post(&session, None, json!({"tfa": [code]})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let recovery: Vec<String> = serde_json::from_value(a.body["tfa"].clone()).unwrap();
        assert_eq!(recovery.len(), 10);
        let a = h
            .call(Method::GET, "/-/npm/v1/user", Some(&session), None)
            .await;
        assert_eq!(
            a.body["tfa"],
            json!({"pending": false, "mode": "auth-and-writes"})
        );

        // The secret is sealed in the database, not stored in the clear.
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let sealed = &alice.tfa.as_ref().unwrap().sealed_secret;
        assert!(sealed.starts_with("v1:"), "{sealed}");
        assert!(!sealed.contains(&tokengate::totp::base32(&secret)));

        // Enforced now: token create and revoke, login, profile changes.
        let tokens = "/-/npm/v1/tokens";
        let create = json!({"password": PW});
        assert_otp_challenge(
            &h.call_otp(
                LOCAL,
                Method::POST,
                tokens,
                &session,
                None,
                Some(create.clone()),
            )
            .await,
        );
        assert_otp_challenge(
            &h.call_otp(
                LOCAL,
                Method::POST,
                tokens,
                &session,
                Some("999999"),
                Some(create.clone()),
            )
            .await,
        );
        // The enrolment code's step is used up; the next step's code (skew) works once.
        let a = h
            .call_otp(
                LOCAL,
                Method::POST,
                tokens,
                &session,
                Some(&code),
                Some(create.clone()),
            )
            .await;
        assert_otp_challenge(&a);
        let next = tokengate::totp::code_at_step(&secret, step + 1);
        let a = h
            .call_otp(
                LOCAL,
                Method::POST,
                tokens,
                &session,
                Some(&next),
                Some(create.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let made = a.body["key"].as_str().unwrap().to_owned();
        assert_otp_challenge(
            &h.call_otp(
                LOCAL,
                Method::POST,
                tokens,
                &session,
                Some(&next),
                Some(create.clone()),
            )
            .await,
        );
        // Reading needs no OTP.
        assert_eq!(h.whoami(&session).await.status, StatusCode::OK);
        assert_eq!(h.list_all(&session).await.len(), 4);
        // Recovery codes work once each, wherever an OTP is asked.
        let revoke = format!("{tokens}/token/{made}");
        assert_otp_challenge(
            &h.call_otp(LOCAL, Method::DELETE, &revoke, &session, None, None)
                .await,
        );
        let a = h
            .call_otp(
                LOCAL,
                Method::DELETE,
                &revoke,
                &session,
                Some(&recovery[0]),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
        assert_otp_challenge(&h.login_with(LOCAL, "alice", PW, None).await);
        assert_otp_challenge(&h.login_with(LOCAL, "alice", PW, Some(&recovery[0])).await);
        let a = h.login_with(LOCAL, "alice", PW, Some(&recovery[1])).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        // A wrong password is still a plain 401, whatever the OTP.
        let a = h
            .login_with(LOCAL, "alice", "wrong", Some(&recovery[2]))
            .await;
        assert_eq!((a.status, a.challenge()), (StatusCode::UNAUTHORIZED, None));

        // Changing the mode and turning it off need an OTP too.
        let to_auth_only = json!({"tfa": {"password": PW, "mode": "auth-only"}});
        assert_otp_challenge(&h.profile_post(&session, None, to_auth_only.clone()).await);
        let a = h
            .profile_post(&session, Some(&recovery[2]), to_auth_only)
            .await;
        assert_eq!(
            a.body["tfa"],
            json!({"pending": false, "mode": "auth-only"}),
            "{}",
            a.body
        );
        assert_otp_challenge(
            &h.profile_post(&session, None, json!({"fullname": "A"}))
                .await,
        );
        let disable = json!({"tfa": {"password": PW, "mode": "disable"}});
        assert_otp_challenge(&h.profile_post(&session, None, disable.clone()).await);
        let a = h.profile_post(&session, Some(&recovery[3]), disable).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.body["tfa"], Value::Null);
        h.create_ok(&session, json!({})).await;
        assert_eq!(
            h.login_with(LOCAL, "alice", PW, None).await.status,
            StatusCode::CREATED
        );
        // Its recovery codes went with it.
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let hash = tokengate::totp::hash_recovery_code(&recovery[4]);
        assert!(!h.store.use_recovery_code(alice.id, &hash).await.unwrap());
    }
}

#[tokio::test]
async fn totp_skew_and_replay() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let secret = tokengate::totp::generate_secret();
        let sealed = h.state.keys.seal(&secret);
        h.store
            .start_tfa(alice.id, tokengate::store::TfaMode::AuthOnly, &sealed)
            .await
            .unwrap();
        let now = steady_step().await;
        // Confirmed long ago: every step near now is unused.
        assert!(h.store.confirm_tfa(alice.id, now - 10, &[]).await.unwrap());
        let code = |s: i64| tokengate::totp::code_at_step(&secret, s);
        let create = |otp: String| {
            let h = &h;
            let session = session.clone();
            async move {
                h.call_otp(
                    LOCAL,
                    Method::POST,
                    "/-/npm/v1/tokens",
                    &session,
                    Some(&otp),
                    Some(json!({"password": PW})),
                )
                .await
            }
        };
        assert_otp_challenge(&create(code(now - 2)).await);
        assert_otp_challenge(&create(code(now + 2)).await);
        assert_eq!(create(code(now - 1)).await.status, StatusCode::CREATED);
        assert_otp_challenge(&create(code(now - 1)).await);
        assert_eq!(create(code(now)).await.status, StatusCode::CREATED);
        assert_otp_challenge(&create(code(now)).await);
        assert_eq!(create(code(now + 1)).await.status, StatusCode::CREATED);
        // Once a step is used, older codes are refused even within the skew.
        assert_otp_challenge(&create(code(now)).await);
        assert_otp_challenge(&create(code(now - 1)).await);
    }
}

#[tokio::test]
async fn failures_are_limited_per_account_and_address() {
    for backend in BACKENDS {
        let h = harness(backend, |c| {
            c.auth_failure_limit = 3;
            c.auth_failure_window_secs = 300;
        })
        .await;
        let (a_addr, b_addr) = ("10.1.1.1:5000", "10.2.2.2:5000");
        for _ in 0..3 {
            let a = h.login_with(a_addr, "bob", "wrong password", None).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        }
        // Bob at that address must wait, even with the right password, and is told how long.
        let a = h.login_with(a_addr, "bob", PW, None).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
        let wait: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=300).contains(&wait), "{wait}");
        assert!(a.error().contains("try again in"), "{}", a.error());
        // Alice at the same address and Bob elsewhere are unaffected.
        assert_eq!(
            h.login_with(a_addr, "alice", PW, None).await.status,
            StatusCode::CREATED
        );
        assert_eq!(
            h.login_with(b_addr, "bob", PW, None).await.status,
            StatusCode::CREATED
        );
        // Unknown names are limited the same way (no way to tell them apart).
        for _ in 0..3 {
            h.login_with(b_addr, "nobody", "x", None).await;
        }
        let a = h.login_with(b_addr, "nobody", "x", None).await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);

        // Wrong OTPs count too, and token create's password checks.
        let session = h.login("alice").await;
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let secret = tokengate::totp::generate_secret();
        h.store
            .start_tfa(
                alice.id,
                tokengate::store::TfaMode::AuthOnly,
                &h.state.keys.seal(&secret),
            )
            .await
            .unwrap();
        let step = steady_step().await;
        h.store.confirm_tfa(alice.id, step - 10, &[]).await.unwrap();
        let wrong = if tokengate::totp::code_at_step(&secret, step) == "000000" {
            "111111"
        } else {
            "000000"
        };
        let tokens = "/-/npm/v1/tokens";
        for _ in 0..2 {
            let a = h
                .call_otp(
                    b_addr,
                    Method::POST,
                    tokens,
                    &session,
                    Some(wrong),
                    Some(json!({"password": PW})),
                )
                .await;
            assert_otp_challenge(&a);
        }
        let a = h
            .call_otp(
                b_addr,
                Method::POST,
                tokens,
                &session,
                Some(&tokengate::totp::code_at_step(&secret, step)),
                Some(json!({"password": "wrong"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let right = tokengate::totp::code_at_step(&secret, step + 1);
        let a = h
            .call_otp(
                b_addr,
                Method::POST,
                tokens,
                &session,
                Some(&right),
                Some(json!({"password": PW})),
            )
            .await;
        assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
        let a = h
            .call_otp(
                LOCAL,
                Method::POST,
                tokens,
                &session,
                Some(&right),
                Some(json!({"password": PW})),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrator_turns_off_two_factor() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        let sealed = h.state.keys.seal(&tokengate::totp::generate_secret());
        h.store
            .start_tfa(alice.id, tokengate::store::TfaMode::AuthOnly, &sealed)
            .await
            .unwrap();
        h.store.confirm_tfa(alice.id, 1, &[]).await.unwrap();
        assert_otp_challenge(&h.login_with(LOCAL, "alice", PW, None).await);
        let db = &h._db;
        let out =
            tokio::task::block_in_place(|| common::cli(db, &["user", "disable-2fa", "alice"], ""));
        assert!(out.contains("disabled"), "{out}");
        let alice = h.store.user_by_name("alice").await.unwrap().unwrap();
        assert!(alice.tfa.is_none());
        assert_eq!(
            h.login_with(LOCAL, "alice", PW, None).await.status,
            StatusCode::CREATED
        );
    }
}

// ---- The gate on registry routes, forward auth, and the proxy ----

/// A stand-in upstream that answers every request with what it received.
async fn echo_upstream() -> String {
    use axum::extract::Request;
    let app = axum::Router::new().fallback(|req: Request| async move {
        let headers: serde_json::Map<String, Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        let uri = req.uri().to_string();
        let method = req.method().to_string();
        let own = format!(
            "http://{}/registry/x/-/x-1.0.0.tgz",
            req.headers()["host"].to_str().unwrap()
        );
        let body = String::from_utf8(
            axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        let link = own.replace("/registry/x/-/x-1.0.0.tgz", "/registry/@acme/x");
        axum::Json(json!({
            "method": method, "uri": uri, "headers": headers, "body": body,
            // What a search answers: every package, which the gate filters for limited tokens.
            "objects": [
                {"package": {"name": "@acme/x", "links": {"npm": link}}},
                {"package": {"name": "@other/y"}},
                {"package": {"name": "foo"}},
            ],
            "total": 3,
            "versions": {
                "1.0.0": {"dist": {"tarball": own}},
                "2.0.0": {"dist": {"tarball": "http://upstream.invalid/x/-/x-2.0.0.tgz"}}
            }
        }))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test]
async fn proxy_forwards_without_client_credentials() {
    for backend in BACKENDS {
        let upstream = echo_upstream().await;
        let up = upstream.clone();
        let h = harness(backend, move |c| {
            c.upstream.url = format!("{up}/registry");
            c.upstream.authorization = "Bearer upstream-service-account".into();
            c.public_url = "https://npm.example.com".into();
        })
        .await;
        let session = h.login("alice").await;
        let auth = format!("Bearer {session}");
        let a = h
            .call_from(
                LOCAL,
                Method::PUT,
                "/@acme%2fx",
                &[
                    ("authorization", &auth),
                    ("x-forwarded-user", "mallory"),
                    ("npm-otp", "123456"),
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "1"),
                    ("npm-command", "publish"),
                    ("x-request-id", "not a plain id"),
                ],
                Some(Body::from(r#"{"name":"@acme/x"}"#)),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let seen = &a.body["headers"];
        assert_eq!(a.body["uri"], "/registry/@acme%2fx");
        assert_eq!(a.body["method"], "PUT");
        assert_eq!(a.body["body"], r#"{"name":"@acme/x"}"#);
        assert_eq!(seen["authorization"], "Bearer upstream-service-account");
        assert_eq!(seen["x-forwarded-user"], "alice");
        assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        assert_eq!(seen["x-forwarded-proto"], "https");
        assert_eq!(seen["npm-command"], "publish");
        // The registry behind logs the same request id as tokengate: here the one replacing
        // the client's odd one.
        let id = a.headers["x-request-id"].to_str().unwrap();
        assert_ne!(id, "not a plain id");
        assert_eq!(seen["x-request-id"], id);
        assert!(
            seen.get("npm-otp").is_none() && seen.get("x-hop").is_none(),
            "{seen}"
        );
        assert!(!a.body.to_string().contains(&session));

        // Package documents: tarball URLs of the upstream point at the gate. Others are not
        // rewritten.
        let a = h.call(Method::GET, "/x", Some(&session), None).await;
        assert_eq!(
            a.body["versions"]["1.0.0"]["dist"]["tarball"],
            "https://npm.example.com/x/-/x-1.0.0.tgz"
        );
        assert_eq!(
            a.body["versions"]["2.0.0"]["dist"]["tarball"],
            "http://upstream.invalid/x/-/x-2.0.0.tgz"
        );
        // Refusals happen before anything is forwarded.
        let a = h.call(Method::GET, "/x", None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        // tokengate's own routes are never forwarded.
        let a = h.call(Method::GET, "/-/whoami", Some(&session), None).await;
        assert_eq!(a.body, json!({"username": "alice"}));
    }
}

#[tokio::test]
async fn proxy_rewrites_tarball_urls_of_its_upstream() {
    let upstream = echo_upstream().await;
    let authority = upstream.trim_start_matches("http://").to_owned();
    let up = upstream.clone();
    let h = harness(Backend::Sqlite, move |c| c.upstream.url = up).await;
    let session = h.login("alice").await;
    // The echo upstream's document names itself when asked for its own authority.
    let a = h
        .call_from(
            LOCAL,
            Method::GET,
            "/x",
            &[
                ("authorization", &format!("Bearer {session}")),
                ("host", "gate.example:8443"),
            ],
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["headers"]["host"], authority.as_str());
    assert_eq!(a.body["headers"]["x-forwarded-host"], "gate.example:8443");
    assert_eq!(a.body["headers"]["accept-encoding"], "identity");
    // Without public_url, the gate's own Host names it.
    assert_eq!(
        a.body["versions"]["1.0.0"]["dist"]["tarball"],
        "http://gate.example:8443/registry/x/-/x-1.0.0.tgz"
    );
}

#[tokio::test]
async fn upstream_down_is_a_502() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let h = harness(Backend::Sqlite, move |c| {
        c.upstream.url = format!("http://127.0.0.1:{port}");
    })
    .await;
    let session = h.login("alice").await;
    let a = h.call(Method::GET, "/lodash", Some(&session), None).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert!(a.error().contains("unreachable"), "{}", a.error());
}

#[tokio::test]
async fn anonymous_reads_only_when_configured() {
    for anonymous_read in [false, true] {
        let h = harness(Backend::Sqlite, move |c| c.anonymous_read = anonymous_read).await;
        // No upstream: a read that passes the gate ends in a 404.
        let a = h.call(Method::GET, "/lodash", None, None).await;
        let want = if anonymous_read {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(a.status, want, "{}", a.body);
        let a = h.call(Method::PUT, "/lodash", None, Some(json!({}))).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let a = h.call(Method::GET, "/-/whoami", None, None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn forward_auth_answers_for_the_original_request() {
    for backend in BACKENDS {
        let h = harness(backend, |c| {
            c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            c.registry_path_prefix = "/npm".into();
        })
        .await;
        let session = h.login("alice").await;
        let read_only = h.create_ok(&session, json!({"readonly": true})).await;
        let acme = h
            .create_ok(
                &session,
                json!({"scopes": ["@acme"], "packages_and_scopes_permission": "read-write"}),
            )
            .await;
        let cidr = h
            .create_ok(&session, json!({"cidr_whitelist": ["10.0.0.0/8"]}))
            .await;
        let verify = |token: Option<String>, method: &str, uri: &str| {
            let h = &h;
            let (method, uri) = (method.to_owned(), uri.to_owned());
            async move {
                let auth = token.map(|t| format!("Bearer {t}"));
                let mut headers = vec![
                    ("x-original-method", method.as_str()),
                    ("x-original-uri", uri.as_str()),
                ];
                if let Some(a) = &auth {
                    headers.push(("authorization", a.as_str()));
                }
                headers.push(("x-forwarded-for", "192.0.2.7"));
                h.call_from(LOCAL, Method::GET, "/-/auth/verify", &headers, None)
                    .await
            }
        };
        let a = verify(Some(session.clone()), "PUT", "/npm/@acme%2fx").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(a.headers["x-auth-user"], "alice");
        assert_eq!(a.headers["x-auth-token-key"].len(), 12);
        let a = verify(Some(read_only.clone()), "GET", "/npm/@acme%2fx").await;
        assert_eq!(a.status, StatusCode::OK);
        let a = verify(Some(read_only), "PUT", "/npm/@acme%2fx").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(a.error().contains("read-only"), "{}", a.error());
        assert!(a.headers["x-auth-error"]
            .to_str()
            .unwrap()
            .contains("read-only"));
        let a = verify(Some(acme.clone()), "PUT", "/npm/@acme%2fy").await;
        assert_eq!(a.status, StatusCode::OK);
        let a = verify(Some(acme), "PUT", "/npm/@other%2fy").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(a.error().contains("@other/y"), "{}", a.error());
        let a = verify(None, "GET", "/npm/lodash").await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("Bearer"))
        );
        // The client address comes from X-Forwarded-For of the trusted proxy.
        let a = verify(Some(cidr), "GET", "/npm/lodash").await;
        assert_eq!(
            (a.status, a.challenge()),
            (StatusCode::UNAUTHORIZED, Some("ipaddress"))
        );
        let a = h
            .call_from(LOCAL, Method::GET, "/-/auth/verify", &[], None)
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.error().contains("X-Original-URI"), "{}", a.error());
        // Paths a proxy would resolve to another route are refused, and tokengate's own
        // routes are never approved for forwarding to the registry.
        let a = verify(Some(session.clone()), "GET", "/npm/-/web/../@acme%2fx").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        let a = verify(None, "PUT", "/npm/-/ping/%2e%2e/@acme%2fx").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        let a = verify(None, "GET", "/npm/-/web/tokens").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        // The gate refuses them too.
        let a = h
            .call(
                Method::GET,
                "/@acme%2fx/../../-/whoami",
                Some(&session),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    }
}

// ---- The threat model (docs/security.md): every header a client sends is its own choice ----

/// A verify request as a proxy sends it: `pairs` are the headers naming the original request.
async fn verify_with(h: &Harness, token: Option<&str>, pairs: &[(&str, &str)]) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = pairs.to_vec();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    h.call_from(LOCAL, Method::GET, "/-/auth/verify", &headers, None)
        .await
}

#[tokio::test]
async fn forward_auth_reads_only_the_header_pair_of_the_configured_proxy() {
    for backend in BACKENDS {
        for anonymous_read in [false, true] {
            // nginx, the default.
            let h = harness(backend, move |c| c.anonymous_read = anonymous_read).await;
            let session = h.login("alice").await;
            let read_only = h.create_ok(&session, json!({"readonly": true})).await;
            let acme = h
                .create_ok(
                    &session,
                    json!({"scopes": ["@acme"], "packages_and_scopes_permission": "read-write"}),
                )
                .await;
            // The attacks of the issue: Traefik's pair added by the client to a request nginx
            // describes truthfully.
            let spoofs: [(Option<&str>, &str, &str, &str, &str); 3] = [
                // A read-only token publishing, calling it a GET.
                (
                    Some(&read_only),
                    "PUT",
                    "/@acme%2fx",
                    "x-forwarded-method",
                    "GET",
                ),
                // An @acme token unpublishing @other/y, calling it @acme/x.
                (
                    Some(&acme),
                    "DELETE",
                    "/@other%2fy/-rev/1-a",
                    "x-forwarded-uri",
                    "/@acme%2fx",
                ),
                // Anyone publishing, calling it a read.
                (None, "PUT", "/@acme%2fx", "x-forwarded-method", "GET"),
            ];
            for (token, method, uri, name, value) in spoofs {
                let honest = [("x-original-method", method), ("x-original-uri", uri)];
                let a = verify_with(&h, token, &honest).await;
                assert!(
                    matches!(a.status.as_u16(), 401 | 403),
                    "{method} {uri} without spoofing: {}",
                    a.status
                );
                let mut spoofed = honest.to_vec();
                spoofed.push((name, value));
                let a = verify_with(&h, token, &spoofed).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}: {}", a.body);
                assert!(a.error().contains("forward_auth_headers"), "{}", a.error());
                assert!(a.headers.contains_key("x-auth-error"));
            }
            // The legitimate requests still pass.
            let a = verify_with(
                &h,
                Some(&acme),
                &[
                    ("x-original-method", "PUT"),
                    ("x-original-uri", "/@acme%2fx"),
                ],
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            // Two values: which one the registry acts on is unknown.
            let a = verify_with(
                &h,
                Some(&read_only),
                &[
                    ("x-original-method", "GET"),
                    ("x-original-method", "PUT"),
                    ("x-original-uri", "/@acme%2fx"),
                ],
            )
            .await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
            assert!(a.error().contains("more than once"), "{}", a.error());
            let a = verify_with(
                &h,
                Some(&session),
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/@acme%2fx"),
                    ("x-original-uri", "/@other%2fy"),
                ],
            )
            .await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
            // A missing method is not taken for a GET.
            let a = verify_with(&h, Some(&read_only), &[("x-original-uri", "/@acme%2fx")]).await;
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
            assert!(a.error().contains("X-Original-Method"), "{}", a.error());

            // Traefik: its pair is read, nginx's refused.
            let h = harness(backend, move |c| {
                c.anonymous_read = anonymous_read;
                c.forward_auth_headers = tokengate::config::ForwardAuthHeaders::Traefik;
            })
            .await;
            let session = h.login("alice").await;
            let read_only = h.create_ok(&session, json!({"readonly": true})).await;
            let traefik = [
                ("x-forwarded-method", "PUT"),
                ("x-forwarded-uri", "/@acme%2fx"),
            ];
            let a = verify_with(&h, Some(&read_only), &traefik).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
            let a = verify_with(&h, Some(&session), &traefik).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            for (name, value) in [("x-original-method", "GET"), ("x-original-uri", "/x")] {
                let mut spoofed = traefik.to_vec();
                spoofed.push((name, value));
                let a = verify_with(&h, Some(&read_only), &spoofed).await;
                assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}: {}", a.body);
                assert!(a.error().contains("X-Original-Method"), "{}", a.error());
            }
        }
    }
}

impl Harness {
    /// Turns on two-factor authentication for `session`'s account; the secret and a recovery
    /// code. The enrolment uses the current step's code.
    async fn enable_tfa(&self, session: &str, mode: &str) -> (Vec<u8>, Vec<String>) {
        let a = self
            .profile_post(
                session,
                None,
                json!({"tfa": {"password": PW, "mode": mode}}),
            )
            .await;
        let secret = secret_of(a.body["tfa"].as_str().unwrap());
        let step = steady_step().await;
        let code = tokengate::totp::code_at_step(&secret, step);
        let a = self
            .profile_post(session, None, json!({"tfa": [code]}))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let recovery = serde_json::from_value(a.body["tfa"].clone()).unwrap();
        (secret, recovery)
    }

    /// A call with `Authorization: Basic name:password` and an optional `npm-otp`.
    async fn call_basic(
        &self,
        method: Method,
        path: &str,
        user: &str,
        otp: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PW}"));
        let auth = format!("Basic {basic}");
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(otp) = otp {
            headers.push(("npm-otp", otp));
        }
        self.call_from(
            LOCAL,
            method,
            path,
            &headers,
            body.map(|b| Body::from(b.to_string())),
        )
        .await
    }
}

#[tokio::test]
async fn a_password_of_an_account_with_two_factor_needs_the_code_on_every_request() {
    for backend in BACKENDS {
        for mode in ["auth-only", "auth-and-writes"] {
            let upstream = echo_upstream().await;
            let h = harness(backend, move |c| c.upstream.url = upstream).await;
            let session = h.login("alice").await;
            // Without 2FA a password works as before.
            let a = h
                .call_basic(Method::GET, "/-/whoami", "alice", None, None)
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            let (secret, recovery) = h.enable_tfa(&session, mode).await;
            // Reads, token lists, publishes and dist-tag moves: each asks for the code.
            let requests = [
                (Method::GET, "/-/whoami", None),
                (Method::GET, "/-/npm/v1/tokens", None),
                (Method::GET, "/@acme%2fx", None),
                (Method::PUT, "/@acme%2fx", Some(json!({"name": "@acme/x"}))),
                (
                    Method::PUT,
                    "/-/package/@acme%2fx/dist-tags/latest",
                    Some(json!("1.0.0")),
                ),
            ];
            for (method, path, body) in &requests {
                let a = h
                    .call_basic(method.clone(), path, "alice", None, body.clone())
                    .await;
                assert_eq!(
                    (a.status, a.challenge()),
                    (StatusCode::UNAUTHORIZED, Some("OTP")),
                    "{mode} {method} {path}: {}",
                    a.body
                );
                assert!(a.error().contains("password alone"), "{}", a.error());
                assert!(a.error().contains("one-time password"), "{}", a.error());
            }
            // A wrong code is refused; a right one lets the request through.
            let a = h
                .call_basic(Method::GET, "/-/whoami", "alice", Some("000000"), None)
                .await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
            let step = tokengate::totp::step_of(Utc::now().timestamp());
            let code = tokengate::totp::code_at_step(&secret, step + 1);
            let a = h
                .call_basic(Method::GET, "/-/whoami", "alice", Some(&code), None)
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            let a = h
                .call_basic(
                    Method::PUT,
                    "/@acme%2fx",
                    "alice",
                    Some(&recovery[0]),
                    Some(json!({"name": "@acme/x"})),
                )
                .await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            assert_eq!(a.body["method"], "PUT", "{}", a.body);
            // Through forward auth the same.
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PW}"));
            let auth = format!("Basic {basic}");
            let a = h
                .call_from(
                    LOCAL,
                    Method::GET,
                    "/-/auth/verify",
                    &[
                        ("authorization", &auth),
                        ("x-original-method", "GET"),
                        ("x-original-uri", "/@acme%2fx"),
                    ],
                    None,
                )
                .await;
            assert_eq!(
                (a.status, a.challenge()),
                (StatusCode::UNAUTHORIZED, Some("OTP")),
                "{}",
                a.body
            );
            // Logout does not take the password alone as its owner's word.
            let other = h.login_with(LOCAL, "alice", PW, Some(&recovery[1])).await;
            let other = other.body["token"].as_str().unwrap().to_owned();
            let a = h
                .call_basic(
                    Method::DELETE,
                    &format!("/-/user/token/{other}"),
                    "alice",
                    None,
                    None,
                )
                .await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
            assert_eq!(h.whoami(&other).await.status, StatusCode::OK);
            // Tokens are unaffected: a session reads without a code.
            assert_eq!(h.whoami(&session).await.status, StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn limited_tokens_may_not_use_registry_routes_the_gate_does_not_recognise() {
    for backend in BACKENDS {
        let upstream = echo_upstream().await;
        let up = upstream.clone();
        let h = harness(backend, move |c| {
            c.upstream.url = format!("{up}/registry");
            c.public_url = "https://npm.example.com".into();
        })
        .await;
        let session = h.login("alice").await;
        let publish = h.create_ok(&session, json!({})).await;
        let read_only = h.create_ok(&session, json!({"readonly": true})).await;
        let automation = h.create_ok(&session, json!({"automation": true})).await;
        let foo = h
            .create_ok(
                &session,
                json!({"packages": ["foo"], "packages_and_scopes_permission": "read-write"}),
            )
            .await;
        let no_access = h
            .create_ok(
                &session,
                json!({"packages": ["foo"], "packages_and_scopes_permission": "no-access"}),
            )
            .await;
        let acme_reader = h
            .create_ok(
                &session,
                json!({"scopes": ["@acme"], "packages_and_scopes_permission": "read-only"}),
            )
            .await;
        let all_reader = h
            .create_ok(
                &session,
                json!({"packages_all": true, "packages_and_scopes_permission": "read-only"}),
            )
            .await;
        let all_writer = h
            .create_ok(
                &session,
                json!({"packages_all": true, "packages_and_scopes_permission": "read-write"}),
            )
            .await;
        let unrecognised_reads = [
            "/-/verdaccio/data/packages",
            "/-/verdaccio/data/sidebar/%40other%2fy",
            "/-/verdaccio/data/package/readme/%40other%2fy",
            "/-/all",
            "/",
            "/-/package/foo/unknown",
            "/foo/1.0.0/unknown",
        ];
        for path in unrecognised_reads {
            for token in [&foo, &no_access, &acme_reader] {
                let a = h.call(Method::GET, path, Some(token), None).await;
                assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.body);
                assert!(a.error().contains("names no package"), "{}", a.error());
            }
            for token in [&session, &publish, &read_only, &automation, &all_reader] {
                let a = h.call(Method::GET, path, Some(token), None).await;
                assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
                // The upstream's own URLs never reach the client, whatever the route.
                let text = a.body.to_string();
                assert!(!text.contains(&upstream), "{path}: {text}");
                assert_eq!(
                    a.body["versions"]["1.0.0"]["dist"]["tarball"],
                    "https://npm.example.com/x/-/x-1.0.0.tgz"
                );
            }
        }
        // Writes to unrecognised routes need what a publish needs.
        for (token, allowed) in [
            (&session, true),
            (&publish, true),
            (&automation, true),
            (&all_writer, true),
            (&read_only, false),
            (&all_reader, false),
            (&foo, false),
        ] {
            let a = h
                .call(
                    Method::POST,
                    "/-/verdaccio/sec/login",
                    Some(token),
                    Some(json!({})),
                )
                .await;
            let want = if allowed {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            };
            assert_eq!(a.status, want, "{}", a.body);
        }
        // Search: a limited token sees only its packages; others see everything.
        let names = |a: &Answer| -> Vec<String> {
            a.body["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["package"]["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let a = h
            .call(Method::GET, "/-/v1/search?text=x", Some(&acme_reader), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(names(&a), ["@acme/x"]);
        assert_eq!(a.body["total"], 1);
        assert!(!a.body.to_string().contains(&upstream), "{}", a.body);
        let a = h
            .call(Method::GET, "/-/v1/search?text=x", Some(&foo), None)
            .await;
        assert_eq!(names(&a), ["foo"]);
        let a = h
            .call(Method::GET, "/-/v1/search?text=x", Some(&no_access), None)
            .await;
        assert!(names(&a).is_empty(), "{}", a.body);
        let a = h
            .call(Method::GET, "/-/v1/search?text=x", Some(&read_only), None)
            .await;
        assert_eq!(names(&a), ["@acme/x", "@other/y", "foo"]);
        // Behind a proxy the answer cannot be filtered, so a limited token's search is refused.
        let search = [
            ("x-original-method", "GET"),
            ("x-original-uri", "/-/v1/search?text=x"),
        ];
        let a = verify_with(&h, Some(&acme_reader), &search).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
        let a = verify_with(&h, Some(&all_reader), &search).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        for path in unrecognised_reads {
            let original = [("x-original-method", "GET"), ("x-original-uri", path)];
            let a = verify_with(&h, Some(&foo), &original).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.body);
            let a = verify_with(&h, Some(&publish), &original).await;
            assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        }
        // The package routes a limited token may use still work.
        let a = h.call(Method::GET, "/foo", Some(&foo), None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let a = h
            .call(Method::GET, "/@acme%2fx", Some(&acme_reader), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    }
}

#[tokio::test]
async fn stage_only_tokens_read_and_never_write() {
    for backend in BACKENDS {
        let upstream = echo_upstream().await;
        let h = harness(backend, move |c| c.upstream.url = upstream).await;
        let session = h.login("alice").await;
        let stage = h
            .create_ok(
                &session,
                json!({"scopes": ["@acme"], "packages_and_scopes_permission": "read-write-stage-only"}),
            )
            .await;
        let a = h.call(Method::GET, "/@acme%2fx", Some(&stage), None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let writes = [
            (Method::PUT, "/@acme%2fx", json!({"name": "@acme/x"})),
            (
                Method::PUT,
                "/-/package/@acme%2fx/dist-tags/latest",
                json!("1.0.0"),
            ),
            (Method::DELETE, "/@acme%2fx/-rev/1-a", json!(null)),
            (Method::POST, "/-/stage/package/@acme%2fx", json!({})),
        ];
        for (method, path, body) in writes {
            let a = h.call(method.clone(), path, Some(&stage), Some(body)).await;
            assert_eq!(
                a.status,
                StatusCode::FORBIDDEN,
                "{method} {path}: {}",
                a.body
            );
            assert!(a.error().contains("stage-only"), "{}", a.error());
        }
        let a = verify_with(
            &h,
            Some(&stage),
            &[
                ("x-original-method", "PUT"),
                ("x-original-uri", "/@acme%2fx"),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    }
}

#[tokio::test]
async fn other_users_records_show_their_email_only_to_full_credentials() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let publish = h.create_ok(&session, json!({})).await;
        let narrow = [
            h.create_ok(&session, json!({"readonly": true})).await,
            h.create_ok(&session, json!({"automation": true})).await,
            h.create_ok(
                &session,
                json!({"packages": ["foo"], "packages_and_scopes_permission": "no-access"}),
            )
            .await,
            h.create_ok(
                &session,
                json!({"packages_all": true, "packages_and_scopes_permission": "read-write"}),
            )
            .await,
        ];
        let bob = "/-/user/org.couchdb.user:bob";
        let alice = "/-/user/org.couchdb.user:alice";
        for token in [&session, &publish] {
            let a = h.call(Method::GET, bob, Some(token), None).await;
            assert_eq!(
                a.body,
                json!({"_id": "org.couchdb.user:bob", "name": "bob", "email": "bob@example.com"})
            );
        }
        let a = h.call_basic(Method::GET, bob, "alice", None, None).await;
        assert_eq!(a.body["email"], "bob@example.com", "{}", a.body);
        for token in &narrow {
            let a = h.call(Method::GET, bob, Some(token), None).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.body);
            assert_eq!(
                a.body,
                json!({"_id": "org.couchdb.user:bob", "name": "bob"})
            );
            // Their own record in full.
            let a = h.call(Method::GET, alice, Some(token), None).await;
            assert_eq!(a.body["email"], "alice@example.com", "{}", a.body);
        }
    }
}

#[tokio::test]
async fn headers_that_rename_the_method_or_path_never_reach_the_upstream() {
    let upstream = echo_upstream().await;
    let h = harness(Backend::Sqlite, move |c| c.upstream.url = upstream).await;
    let session = h.login("alice").await;
    let read_only = h.create_ok(&session, json!({"readonly": true})).await;
    let auth = format!("Bearer {read_only}");
    let overrides = [
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-original-url", "/@other%2fy/-rev/1-a"),
        ("x-rewrite-url", "/@other%2fy/-rev/1-a"),
        ("x-forwarded-prefix", "/admin"),
        ("x-original-method", "DELETE"),
        ("x-original-uri", "/@other%2fy"),
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-uri", "/@other%2fy"),
        ("x-forwarded-port", "1"),
        ("x-real-ip", "10.0.0.1"),
        ("x-auth-user", "mallory"),
    ];
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(&overrides);
    let a = h
        .call_from(LOCAL, Method::GET, "/@acme%2fx", &headers, None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let seen = a.body["headers"].as_object().unwrap();
    for (name, _) in overrides {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(a.body["method"], "GET");
}

// ---- Audit log, last use, administration ----

#[tokio::test]
async fn audit_log_and_last_use() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let a = h.login_with(LOCAL, "alice", "wrong password", None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        let read_only = h.create_ok(&session, json!({"readonly": true})).await;
        let cidr = h
            .create_ok(&session, json!({"cidr_whitelist": ["10.0.0.0/8"]}))
            .await;
        let auth = format!("Bearer {read_only}");
        let a = h
            .call_from(
                "192.0.2.1:9",
                Method::POST,
                "/-/npm/v1/tokens",
                &[
                    ("authorization", &auth),
                    ("user-agent", "npm/11.0.0 node/v20"),
                ],
                Some(Body::from(json!({"password": PW}).to_string())),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(h.whoami(&cidr).await.status, StatusCode::UNAUTHORIZED);
        let key = tokengate::token::TokenKey::of(&read_only);
        let a = h
            .call(
                Method::DELETE,
                &format!("/-/npm/v1/tokens/token/{}", key.0),
                Some(&session),
                None,
            )
            .await;
        assert_eq!(a.status, StatusCode::NO_CONTENT);
        h.state.audit.flush().await;
        let events = h
            .store
            .list_audit(&tokengate::store::AuditFilter {
                user: Some("alice".into()),
                since: None,
                limit: 100,
            })
            .await
            .unwrap();
        let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
        for want in [
            "login.success",
            "login.failure",
            "token.created",
            "refused.permission",
            "refused.cidr",
            "token.revoked",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let refused = events
            .iter()
            .find(|e| e.event == "refused.permission")
            .unwrap();
        assert_eq!(refused.key_id.as_deref(), Some(key.short()));
        assert_eq!(refused.client.as_deref(), Some("192.0.2.1"));
        assert_eq!(refused.user_agent.as_deref(), Some("npm/11.0.0 node/v20"));
        let text = format!("{events:?}");
        for secret in [session.as_str(), &read_only, &cidr, PW] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }

        // Last use: kept in memory, written in a batch.
        assert_eq!(h.whoami(&session).await.status, StatusCode::OK);
        let own = |items: &[Value]| {
            items
                .iter()
                .find(|t| t["key"] == tokengate::token::TokenKey::of(&session).0)
                .cloned()
                .unwrap()
        };
        h.state.usage.flush().await;
        let after = h.list_all(&session).await;
        assert!(own(&after)["last_used"].is_string(), "{}", own(&after));
        assert_eq!(own(&after)["last_used_ip"], "127.0.0.1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cli_disables_users_and_manages_tokens() {
    for backend in BACKENDS {
        let h = harness(backend, |_| {}).await;
        let session = h.login("alice").await;
        let publish = h.create_ok(&session, json!({"name": "ci"})).await;
        let bob = h.login("bob").await;
        let db = &h._db;
        let cli = |args: &[&str]| tokio::task::block_in_place(|| common::cli(db, args, ""));

        let out = cli(&["user", "disable", "alice"]);
        assert!(out.contains("disabled"), "{out}");
        assert_eq!(h.whoami(&publish).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(h.whoami(&bob).await.status, StatusCode::OK);
        cli(&["user", "enable", "alice"]);
        assert_eq!(h.whoami(&publish).await.status, StatusCode::OK);

        let out = cli(&["token", "list", "alice"]);
        let key = tokengate::token::TokenKey::of(&publish);
        assert!(
            out.contains(key.short()) && out.contains("publish") && out.contains("ci"),
            "{out}"
        );
        assert!(out.contains("2 token(s)"), "{out}");
        assert!(!out.contains(&publish), "{out}");
        let out = cli(&["token", "revoke", &key.0[..10]]);
        assert!(
            out.contains("revoked token") && out.contains("alice"),
            "{out}"
        );
        assert_eq!(h.whoami(&publish).await.status, StatusCode::UNAUTHORIZED);
        let out = cli(&["token", "revoke-all", "alice"]);
        assert!(out.contains("revoked 1 token(s)"), "{out}");
        assert_eq!(h.whoami(&session).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(h.whoami(&bob).await.status, StatusCode::OK);

        let out = cli(&["audit", "--json", "--user", "alice", "--since", "1h"]);
        let events: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for want in [
            "user.disabled",
            "user.enabled",
            "token.revoked",
            "token.revoked_all",
        ] {
            assert!(
                events.iter().any(|e| e["event"] == want),
                "{want} missing: {out}"
            );
        }
        assert!(events.iter().all(|e| e["user"] == "alice"), "{out}");
        let out = cli(&["audit", "--since", "2000-01-01"]);
        assert!(out.contains("token.revoked_all"), "{out}");
    }
}

#[tokio::test]
async fn old_audit_events_are_pruned() {
    for backend in BACKENDS {
        // The server's own hourly pruning (also run at start) is off, so only this test prunes.
        let h = harness(backend, |c| c.audit_retention_days = 0).await;
        let event = |days: i64| tokengate::store::AuditRecord {
            at: Utc::now() - Duration::days(days),
            event: "login.success".into(),
            user: Some("alice".into()),
            key_id: None,
            client: Some("127.0.0.1".into()),
            user_agent: None,
            detail: json!({}),
        };
        h.store
            .insert_audit(&[event(100), event(10), event(0)])
            .await
            .unwrap();
        let pruned = h
            .store
            .prune_audit(Utc::now() - Duration::days(90))
            .await
            .unwrap();
        assert_eq!(pruned, 1);
        let left = h
            .store
            .list_audit(&tokengate::store::AuditFilter {
                user: None,
                since: Some(Utc::now() - Duration::days(30)),
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 2);
        assert!(left[0].at > left[1].at, "newest first");
    }
}

#[tokio::test]
async fn openapi_description_is_public_and_names_only_real_routes() {
    let h = harness(Backend::Sqlite, |_| {}).await;
    let token = h.login("alice").await;
    let a = h.call(Method::GET, "/-/openapi.json", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.headers["content-type"], "application/json");
    assert_eq!(a.body["openapi"], "3.1.0");
    let paths = a.body["paths"].as_object().unwrap();
    assert!(paths.contains_key("/-/openapi.json"));
    // Every documented operation reaches a handler: neither the fallback's 404 nor a 405.
    let mut operations = 0;
    for (template, item) in paths {
        let path = template
            .replace("{id}", "org.couchdb.user:nobody")
            .replace("{rev}", "1-a")
            .replace("{token}", "npm_unknown")
            .replace("{key}", "npm_unknown");
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let m: Method = method.to_uppercase().parse().unwrap();
            let a = h.call(m, &path, Some(&token), Some(json!({}))).await;
            assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if a.status == StatusCode::NOT_FOUND {
                assert!(
                    !a.error().contains("no such endpoint"),
                    "{method} {path}: {}",
                    a.body
                );
            }
        }
    }
    assert!(operations >= 17, "{operations}");
}

#[tokio::test]
async fn web_login_start_refuses_large_bodies_as_json_and_takes_null() {
    let h = harness(Backend::Sqlite, |c| c.max_body_bytes = 1024).await;
    // Was axum's plain-text 413, which npm cannot show and the description does not allow.
    let big = json!({ "create": false, "pad": "x".repeat(2048) });
    let a = h.call(Method::POST, "/-/v1/login", None, Some(big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.body);
    assert!(a.error().contains("larger than"), "{}", a.body);
    let a = h
        .call(Method::POST, "/-/v1/login", None, Some(Value::Null))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert!(a.body["doneUrl"]
        .as_str()
        .unwrap()
        .contains("/-/v1/done?session="));
}
