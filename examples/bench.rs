//! Benchmark helpers for `bench/run.sh`:
//!
//! - `bench floor --listen ADDR --tokens FILE`: the floor, a bare axum server whose
//!   `/-/whoami` does only what any token check must (SHA-512 of the bearer token and an
//!   in-memory map lookup); any other GET answers a small package document, so it also serves
//!   as the upstream registry for proxied reads.
//! - `bench seed --database-url URL --user NAME --tokens N --out FILE`: creates the user (if
//!   missing) and N publish tokens in batches, and writes the first 1000 tokens to FILE.
//! - `bench inproc --database-url URL --tokens FILE [--requests N] [--case whoami|verify]`:
//!   calls tokengate's whole application (every layer, the gate and the handler, no network)
//!   with authenticated `GET /-/whoami` (or `/-/auth/verify`) requests on one thread, and
//!   prints the time per request. It isolates the application's own cost from HTTP parsing
//!   and TCP, which the wrk runs cannot.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::json;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::sync::Arc;
use tokengate::store::{NewUser, PoolSettings, SqlStore, Store, TokenKind};
use tokengate::token::PlainToken;
use tokengate::token_request::TokenSpec;

type Keys = Arc<HashMap<String, String>>;

async fn whoami(State(keys): State<Keys>, headers: HeaderMap) -> impl IntoResponse {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let key = hex::encode(Sha512::digest(token.as_bytes()));
    match keys.get(&key) {
        Some(user) => (StatusCode::OK, Json(json!({ "username": user }))),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "unknown token" })),
        ),
    }
}

async fn document() -> Json<serde_json::Value> {
    Json(json!({
        "name": "bench-pkg",
        "dist-tags": { "latest": "1.0.0" },
        "versions": { "1.0.0": { "name": "bench-pkg", "version": "1.0.0",
            "dist": { "tarball": "http://127.0.0.1/bench-pkg/-/bench-pkg-1.0.0.tgz" } } }
    }))
}

async fn floor(listen: &str, tokens_file: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(tokens_file)?;
    let keys: HashMap<String, String> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|t| {
            (
                hex::encode(Sha512::digest(t.as_bytes())),
                "bench".to_owned(),
            )
        })
        .collect();
    let app = Router::new()
        .route("/-/whoami", get(whoami))
        .fallback(get(document))
        .with_state(Arc::new(keys));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("floor listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn seed(url: &str, user: &str, count: usize, out: &str) -> anyhow::Result<()> {
    let store = SqlStore::connect(
        url,
        &PoolSettings {
            max_connections: 4,
            acquire_timeout: std::time::Duration::from_secs(30),
        },
    )
    .await?;
    let owner = match store
        .user_by_name(user)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        Some(u) => u,
        None => {
            let password_hash = tokengate::password::hash("bench-password-1".into()).await?;
            store
                .create_user(&NewUser {
                    name: user.into(),
                    email: format!("{user}@example.com"),
                    password_hash,
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    let started = std::time::Instant::now();
    let mut shown = Vec::new();
    let mut batch = Vec::with_capacity(5000);
    for i in 0..count {
        let token = PlainToken::generate("npm_");
        if shown.len() < 1000 {
            shown.push(token.expose().to_owned());
        }
        let spec = TokenSpec::unrestricted(TokenKind::Publish, Some(format!("bench-{i}")), None);
        batch.push(spec.into_record(token.key(), owner.id, token.redacted("npm_"), Utc::now()));
        if batch.len() == batch.capacity() || i + 1 == count {
            store
                .insert_tokens(&batch)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            batch.clear();
        }
    }
    std::fs::write(out, shown.join("\n") + "\n")?;
    eprintln!(
        "seeded {count} tokens for {user} in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(())
}

async fn inproc(url: &str, tokens_file: &str, requests: u32, case: &str) -> anyhow::Result<()> {
    use tower::ServiceExt;
    let token = std::fs::read_to_string(tokens_file)?
        .lines()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no token in {tokens_file}"))?
        .to_owned();
    let config = tokengate::config::Config {
        database_url: url.into(),
        ..Default::default()
    };
    let pool = PoolSettings {
        max_connections: 4,
        acquire_timeout: std::time::Duration::from_secs(5),
    };
    let store = Arc::new(SqlStore::connect(url, &pool).await?);
    let settings = tokengate::store::cache::CacheSettings::of(&config);
    store.enable_cache(settings, url).await?;
    let state = tokengate::AppState::new(config, store, tokengate::keyring::KeyRing::generate());
    let app = tokengate::app(state);
    let peer: std::net::SocketAddr = "127.0.0.1:40000".parse()?;
    let path = match case {
        "whoami" => "/-/whoami",
        "verify" => "/-/auth/verify",
        _ => anyhow::bail!("--case is whoami or verify"),
    };
    let request = || {
        let mut req = axum::http::Request::get(path)
            .header("authorization", format!("Bearer {token}"))
            .header("x-original-method", "GET")
            .header("x-original-uri", "/bench-pkg")
            .header(
                "user-agent",
                "npm/11.0.0 node/v22.0.0 linux x64 workspaces/false",
            )
            .body(axum::body::Body::empty())
            .expect("a valid request");
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        req
    };
    for round in 0..3 {
        let started = std::time::Instant::now();
        for _ in 0..requests {
            let response = app.clone().oneshot(request()).await?;
            anyhow::ensure!(response.status() == StatusCode::OK, "{}", response.status());
            let _ = axum::body::to_bytes(response.into_body(), 1024).await?;
        }
        let per = started.elapsed() / requests;
        println!("round {round}: {requests} requests, {per:?} per request");
    }
    Ok(())
}

fn arg(args: &[String], name: &str) -> anyhow::Result<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("missing {name}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("floor") => floor(&arg(&args, "--listen")?, &arg(&args, "--tokens")?).await,
        Some("seed") => {
            seed(
                &arg(&args, "--database-url")?,
                &arg(&args, "--user")?,
                arg(&args, "--tokens")?.parse()?,
                &arg(&args, "--out")?,
            )
            .await
        }
        Some("inproc") => {
            let requests = arg(&args, "--requests").map_or(Ok(200_000), |n| n.parse())?;
            let case = arg(&args, "--case").unwrap_or_else(|_| "whoami".into());
            inproc(
                &arg(&args, "--database-url")?,
                &arg(&args, "--tokens")?,
                requests,
                &case,
            )
            .await
        }
        _ => anyhow::bail!("usage: bench floor --listen ADDR --tokens FILE | bench seed --database-url URL --user NAME --tokens N --out FILE"),
    }
}
