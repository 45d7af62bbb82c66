//! The `tokengate` command: the server and its administration.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokengate::audit::Event;
use tokengate::config::{Config, LogFormat, Overrides};
use tokengate::keyring::KeyRing;
use tokengate::store::{NewUser, SqlStore, Store};
use tokengate::{admin, AppState};

// The per-request path allocates many small, short-lived values; mimalloc handles them
// markedly faster than glibc's allocator under load (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tokengate",
    version,
    about = "An npm-compatible access-token service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand takes.
#[derive(Args, Clone)]
struct Common {
    /// TOML configuration file (also TOKENGATE_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Database URL: sqlite://FILE or postgres://… (also TOKENGATE_DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (pending migrations run first).
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (also TOKENGATE_LISTEN).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        common: Common,
    },
    /// Manage user accounts.
    User {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage tokens of any user.
    Token {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List audit events, newest first.
    Audit {
        #[command(flatten)]
        common: Common,
        /// Only events of this user.
        #[arg(long)]
        user: Option<String>,
        /// Only events since a time: 30m, 24h, 7d, 2w, 2026-01-31 or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Check that the server answers and its database is reachable (exit 0) or not (exit 1).
    Probe {
        #[command(flatten)]
        common: Common,
        /// Address of the server; defaults to the configured listen address.
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Inspect the configuration.
    Config {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Add {
        name: String,
        #[arg(long)]
        email: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set an account's password; its login sessions are revoked unless --keep-sessions.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        keep_sessions: bool,
    },
    /// List accounts.
    List,
    /// Disable an account: its tokens are refused at once, and it cannot log in.
    Disable { name: String },
    /// Enable a disabled account again.
    Enable { name: String },
    /// Turn off two-factor authentication for a user who lost their authenticator.
    #[command(name = "disable-2fa")]
    Disable2fa { name: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// A user's tokens with kind, limits, expiry and last use.
    List { name: String },
    /// Revoke one token, named by the start of its id (at least 6 hex characters).
    Revoke { key_prefix: String },
    /// Revoke every token of a user, login sessions included.
    RevokeAll { name: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print the effective settings, secrets masked.
    Check,
}

fn load_config(common: &Common, listen: Option<SocketAddr>) -> anyhow::Result<Config> {
    let overrides = Overrides {
        config_file: common.config.clone(),
        listen,
        database_url: common.database_url.clone(),
    };
    Ok(Config::load(&overrides)?)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn open_store(config: &Config) -> anyhow::Result<SqlStore> {
    SqlStore::connect(
        &config.database_url,
        &tokengate::store::PoolSettings {
            max_connections: config.database_max_connections,
            acquire_timeout: std::time::Duration::from_secs(config.database_acquire_timeout_secs),
        },
    )
    .await
}

fn read_password(from_stdin: bool, min_len: usize) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            bail!("the passwords differ");
        }
        first
    };
    if password.chars().count() < min_len {
        bail!("the password must be at least {min_len} characters long (password_min_length)");
    }
    Ok(password)
}

/// The server key that seals TOTP secrets; created on first start when none is configured.
fn load_keys(config: &Config) -> anyhow::Result<KeyRing> {
    let inline = Some(config.tfa_key.as_str()).filter(|k| !k.is_empty());
    let (keys, created) = KeyRing::load_or_create(inline, &config.tfa_key_file)?;
    if created {
        tracing::warn!(
            "created a new server key in {}: it encrypts two-factor secrets, so keep it (and back              it up) together with the database, or every user must enrol two-factor again",
            config.tfa_key_file.display()
        );
    }
    Ok(keys)
}

/// How long closing the database pool may take at exit.
const POOL_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes on SIGTERM (container stop) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { common, listen } => {
            let config = load_config(&common, listen)?;
            init_logging(config.log_format);
            let store = Arc::new(open_store(&config).await?);
            if config.token_cache_capacity > 0 {
                let settings = tokengate::store::cache::CacheSettings::of(&config);
                store.enable_cache(settings, &config.database_url).await?;
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            tracing::info!(
                "tokengate listening on http://{} (database {})",
                listener.local_addr()?,
                tokengate::config::mask_url_password(&config.database_url)
            );
            let keys = load_keys(&config)?;
            let stats = store.clone();
            let state = AppState::new(config, store.clone(), keys)
                .with_pool_stats(Arc::new(move || stats.pool_stats()));
            let (audit, usage) = (state.audit.clone(), state.usage.clone());
            tokengate::serve(listener, state, shutdown_signal()).await?;
            // What is still in memory goes to the database before the pool closes.
            let flushed = async {
                audit.flush().await;
                usage.flush().await;
            };
            if tokio::time::timeout(POOL_CLOSE_TIMEOUT, flushed)
                .await
                .is_err()
            {
                tracing::warn!("audit events or last-used times could not be stored in time");
            }
            // Requests abandoned at the shutdown timeout may still hold connections: closing
            // waits for them only briefly, and their transactions roll back when dropped.
            if tokio::time::timeout(POOL_CLOSE_TIMEOUT, store.close())
                .await
                .is_err()
            {
                tracing::warn!("database connections still in use; exiting without them");
            }
            tracing::info!("stopped");
        }
        Command::Probe { common, addr } => {
            let config = load_config(&common, None)?;
            let addr = addr.unwrap_or_else(|| tokengate::probe::local_addr(config.listen));
            tokengate::probe::probe(addr, "/-/health/ready").await?;
            println!("ok: {addr} is ready");
        }
        Command::Migrate { common } => {
            let config = load_config(&common, None)?;
            open_store(&config).await?;
            println!("migrations applied");
        }
        Command::Config {
            common,
            command: ConfigCommand::Check,
        } => {
            let config = load_config(&common, None)?;
            print!("{}", config.to_masked_toml());
        }
        Command::Token { common, command } => {
            let config = load_config(&common, None)?;
            let store = open_store(&config).await?;
            let out = match command {
                TokenCommand::List { name } => admin::token_list(&store, &name).await,
                TokenCommand::Revoke { key_prefix } => {
                    admin::token_revoke(&store, &key_prefix).await
                }
                TokenCommand::RevokeAll { name } => admin::token_revoke_all(&store, &name).await,
            };
            store.close().await;
            print!("{}", with_newline(out?));
        }
        Command::Audit {
            common,
            user,
            since,
            json,
            limit,
        } => {
            let config = load_config(&common, None)?;
            let store = open_store(&config).await?;
            let out = admin::audit_list(&store, user, since.as_deref(), json, limit).await;
            store.close().await;
            print!("{}", out?);
        }
        Command::User { common, command } => {
            let config = load_config(&common, None)?;
            let store = open_store(&config).await?;
            user_command(&config, &store, command).await?;
            store.close().await;
        }
    }
    Ok(())
}

async fn find_user(store: &SqlStore, name: &str) -> anyhow::Result<tokengate::store::User> {
    store
        .user_by_name(name)
        .await?
        .with_context(|| format!("no user named {name}"))
}

async fn user_command(
    config: &Config,
    store: &SqlStore,
    command: UserCommand,
) -> anyhow::Result<()> {
    match command {
        UserCommand::Add {
            name,
            email,
            password_stdin,
        } => {
            tokengate::names::validate_username(&name).map_err(anyhow::Error::msg)?;
            tokengate::names::validate_email(&email).map_err(anyhow::Error::msg)?;
            let password = read_password(password_stdin, config.password_min_length)?;
            let password_hash = tokengate::password::hash(password).await?;
            store
                .create_user(&NewUser {
                    name: name.clone(),
                    email,
                    password_hash,
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create user {name}: {e}"))?;
            admin::note(store, Event::UserCreated, &name, None, json!({})).await?;
            println!("user {name} created");
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            keep_sessions,
        } => {
            let user = find_user(store, &name).await?;
            let password = read_password(password_stdin, config.password_min_length)?;
            let password_hash = tokengate::password::hash(password).await?;
            let revoked = store
                .set_password(user.id, &password_hash, !keep_sessions)
                .await?;
            let detail = json!({ "sessions_revoked": revoked });
            admin::note(store, Event::PasswordChanged, &name, None, detail).await?;
            println!("password of {name} changed; {revoked} login session(s) revoked");
        }
        UserCommand::Disable { name } => {
            println!("{}", admin::set_disabled(store, &name, true).await?);
        }
        UserCommand::Enable { name } => {
            println!("{}", admin::set_disabled(store, &name, false).await?);
        }
        UserCommand::Disable2fa { name } => {
            let user = find_user(store, &name).await?;
            if user.tfa.is_none() {
                println!("{name} has no two-factor authentication; nothing changed");
            } else {
                store.disable_tfa(user.id).await?;
                admin::note(store, Event::TfaDisabled, &name, None, json!({})).await?;
                println!("two-factor authentication of {name} disabled");
            }
        }
        UserCommand::List => {
            let users = store.list_users().await?;
            println!("{:<24} {:<32} {:<8} created", "name", "email", "status");
            for u in users {
                println!(
                    "{:<24} {:<32} {:<8} {}",
                    u.name,
                    u.email,
                    if u.disabled { "disabled" } else { "active" },
                    u.created.format("%Y-%m-%d")
                );
            }
        }
    }
    Ok(())
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("tokengate: {e:#}");
        std::process::exit(1);
    }
}
