//! Accepting connections: the cap on open connections, the time a client may take to send its
//! request head (also the idle time of kept-alive connections), the size of that head, the pause
//! allowed while a body arrives, and the graceful shutdown.

use crate::{app, AppState};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::Service;
use tower_http::timeout::TimeoutBody;

/// What a connection over `max_connections` is told before it is closed.
const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 503 Service Unavailable\r\n\
    content-type: application/json\r\n\
    retry-after: 1\r\n\
    connection: close\r\n\
    content-length: 72\r\n\r\n\
    {\"error\":\"The server has too many open connections; try again shortly.\"}";

/// Serves the application on an already-bound listener until `shutdown` completes. Then no
/// connection is accepted any more, and requests in flight get `shutdown_timeout_secs` to
/// finish before this returns anyway.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = state.config.clone();
    let router = app(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(config.header_timeout_secs))
        .max_buf_size(config.max_header_bytes);
    let body_timeout = Duration::from_secs(config.body_timeout_secs);
    let stall_limit = stall_limit(&config);
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_AT_ONCE));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    backoff_after_accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            // Answering costs a descriptor for a moment; past a few at once, just close.
            if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            router
                .clone()
                .call(req.map(|body| TimeoutBody::new(body_timeout, body)))
        });
        let activity = Arc::new(Activity::now());
        let stream = Watched {
            inner: stream,
            activity: activity.clone(),
        };
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _open = crate::metrics::OpenConnection::count();
            tokio::select! {
                ended = connection => {
                    if let Err(e) = ended {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                }
                () = stalled(&activity, stall_limit) => {
                    tracing::debug!(%peer, "closed a connection that moved no byte for {}s", stall_limit.as_secs());
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let grace = Duration::from_secs(config.shutdown_timeout_secs);
    tracing::info!(
        "no longer accepting connections; waiting up to {}s for requests in flight",
        grace.as_secs()
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(
                "requests still in flight {}s after the shutdown signal; stopping without them",
                grace.as_secs()
            );
        }
    }
    Ok(())
}

/// Connections over the cap answered at once; beyond that they are closed without an answer.
const MAX_REFUSALS_AT_ONCE: usize = 64;

/// How long a connection may move no byte at all before it is closed: longer than any wait a
/// well-behaved exchange has (a request head, a handler, the upstream, a body pause), so only
/// a client that stopped reading its answer (or sending) reaches it.
fn stall_limit(config: &crate::config::Config) -> Duration {
    let longest = [
        config.header_timeout_secs,
        config.request_timeout_secs,
        config.body_timeout_secs,
        config.upstream.timeout_secs,
    ]
    .into_iter()
    .max()
    .unwrap_or_default();
    Duration::from_secs(longest + 5)
}

/// When a connection last moved a byte, in milliseconds since the process started.
struct Activity(AtomicU64);

static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Activity {
    fn now() -> Activity {
        Activity(AtomicU64::new(Self::clock()))
    }

    fn clock() -> u64 {
        STARTED.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.0.store(Self::clock(), Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(Self::clock().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// Completes once `activity` has been idle for `limit`.
async fn stalled(activity: &Activity, limit: Duration) {
    loop {
        let idle = activity.idle();
        if idle >= limit {
            return;
        }
        tokio::time::sleep(limit - idle).await;
    }
}

/// A stream that notes every byte it moves in its [`Activity`].
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Errors of one connection (reset before it was accepted) are skipped at once; others (out of
/// file descriptors) would repeat in a busy loop, so the loop pauses first.
async fn backoff_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::error!("cannot accept connections: {e}; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Answers a connection over the cap with a 503 and closes it. What the client sent is read
/// (briefly, and only up to 64 KiB) before closing, so the close does not reset the connection
/// before the client has read the answer.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(TOO_MANY_CONNECTIONS.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_whose_peer_stops_reading_stalls_and_one_that_reads_does_not() {
        let (server, mut client) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::now());
        let mut watched = Watched {
            inner: server,
            activity: activity.clone(),
        };
        let limit = Duration::from_millis(300);
        // The peer reads: every write moves bytes, so no stall while it lasts.
        let writer = async {
            for _ in 0..10 {
                watched.write_all(&[7u8; 512]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let reader = async {
            let mut sink = vec![0u8; 512 * 10];
            client.read_exact(&mut sink).await.unwrap();
        };
        tokio::select! {
            _ = async { tokio::join!(writer, reader) } => {}
            () = stalled(&activity, limit) => panic!("stalled while bytes moved"),
        }
        // The peer stops reading: the writer blocks once the pipe is full, and the stall is
        // seen about `limit` after the last byte moved.
        let blocked = watched.write_all(&[7u8; 4096]);
        let started = Instant::now();
        tokio::select! {
            _ = blocked => panic!("the write finished though nobody read"),
            () = stalled(&activity, limit) => {}
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn the_refusal_is_a_complete_json_answer() {
        let (head, body) = TOO_MANY_CONNECTIONS.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("too many"));
    }
}
