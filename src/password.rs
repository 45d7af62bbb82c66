//! Password hashing with argon2id, always off the async executor.

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// The hashing pool: half the cores (at least one) of dedicated threads, at a lower scheduling
/// priority. Jobs beyond them wait in the queue.
fn hashing_pool() -> &'static std::sync::mpsc::Sender<Job> {
    static POOL: OnceLock<std::sync::mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel::<Job>();
        let receive = Arc::new(Mutex::new(receive));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for n in 0..(cores / 2).max(1) {
            let receive = receive.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = receive.lock().map(|r| r.recv());
                        match job {
                            // A panicking job fails its own request, not the thread.
                            Ok(Ok(job)) => {
                                let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                            }
                            _ => return,
                        }
                    }
                })
                .expect("start a password hashing thread");
        }
        send
    })
}

/// Nice value of the hashing threads: when the cores are busy, the per-request token check
/// (at the default 0) wins over password hashing, so a login storm slows logins, not every
/// other request. 19, the lowest: at 10, whoami kept 0.58-0.87x its throughput during 20
/// concurrent logins on a 2-core machine (Linux 6.18), at 19 0.85x. Not `SCHED_IDLE`, which
/// measured 0.92x: it would let any other busy process on the machine starve logins, where
/// nice 19 still gets them a share.
const HASHING_NICE: i32 = 19;

/// Lowers the calling thread's priority. Only on Linux, where nice values are per thread
/// (elsewhere the call would renice the whole process).
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority has no memory effects; `who = 0` is the calling thread on Linux.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICE) } != 0;
    if failed {
        tracing::debug!("cannot lower the priority of the password hashing thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Runs `work` on the hashing pool.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    hashing_pool()
        .send(Box::new(move || {
            // A request that gave up (deadline, client gone) while its job waited in the queue
            // costs no hashing: the cores go to the requests still waiting.
            if !done.is_closed() {
                let _ = done.send(work());
            }
        }))
        .map_err(|_| anyhow::anyhow!("the password hashing pool has stopped"))?;
    result
        .await
        .map_err(|_| anyhow::anyhow!("password hashing failed"))
}

/// Hashes a password into a PHC string (argon2id, the crate's OWASP-level defaults).
pub async fn hash(password: String) -> anyhow::Result<String> {
    bounded(move || hash_blocking(&password)).await?
}

pub fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// Verifies a password against a stored hash. With no hash (an unknown user) a dummy hash is
/// verified instead, so the answer takes as long and names cannot be probed by timing.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    bounded(move || {
        let found = stored.is_some();
        let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = PasswordHash::new(&phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && found
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_blocking("tokengate-dummy-password").expect("hashing works"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let h = hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse".into(), Some(h.clone())).await);
        assert!(!verify("wrong".into(), Some(h)).await);
        assert!(!verify("tokengate-dummy-password".into(), None).await);
    }
}
