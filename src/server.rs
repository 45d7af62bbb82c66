//! Accepting connections: the cap on open connections, the time a client may take to send its
//! request head (also the idle time of kept-alive connections), the size of that head, the pause
//! allowed while a body arrives, and the graceful shutdown.

use crate::AppState;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
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
    let app = crate::service(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    // No hyper header timer: it costs a timer per request; the connection's watchdog enforces
    // `header_timeout_secs` instead.
    // hyper's limit is on its read buffer, which a read can take to about twice the limit
    // before hyper checks it; the exact limit on the head is the observe layer's
    // (`crate::head_size`), and this bounds a connection's buffer at twice it, where hyper
    // answers a bare 431 itself.
    http.max_buf_size(2 * config.max_header_bytes);
    let header_limit = Duration::from_secs(config.header_timeout_secs);
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
        let app = app.clone();
        let activity = Arc::new(Activity::default());
        let exchanges = activity.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let answered = Answered::start(exchanges.clone());
            let response = app
                .clone()
                .call(req.map(|body| Body::new(TimeoutBody::new(body_timeout, body))));
            async move {
                let Ok(response) = response.await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                    inner,
                    _answered: answered,
                }))
            }
        });
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
                why = watchdog(&activity, stall_limit, header_limit) => {
                    tracing::debug!(%peer, "closed a connection: {why}");
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

/// What a connection's watchdog reads: how many times it moved bytes, and how many requests it
/// began and finished answering. Counters rather than times, so the requests do not each read
/// the clock or arm a timer.
#[derive(Default)]
struct Activity {
    moves: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        // A connection is read and written by one task at a time: no lost updates.
        bump(&self.moves);
    }

    fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Whether no request is being answered: the connection waits for (or receives) a head.
    fn between_requests(&self) -> (bool, u64) {
        let finished = self.finished.load(Ordering::Relaxed);
        (self.started.load(Ordering::Relaxed) == finished, finished)
    }
}

fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

/// One request being answered, from its head until its answer's body is written (or dropped).
struct Answered(Arc<Activity>);

impl Answered {
    fn start(activity: Arc<Activity>) -> Answered {
        bump(&activity.started);
        Answered(activity)
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        bump(&self.0.finished);
    }
}

/// An answer's body that counts the request as finished once hyper is done with it.
struct TrackedBody<B> {
    inner: B,
    /// Held for its drop.
    _answered: Answered,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Checks per limit: a limit is enforced within a quarter of it (a little more for the head).
const CHECKS_PER_LIMIT: u32 = 4;

/// Completes, saying why, once the connection has moved no byte for `stall_limit`, or has
/// spent `header_limit` between requests (sending a head, or idle in keep-alive) without
/// completing one: a head trickled byte by byte does not reset the second.
async fn watchdog(activity: &Activity, stall_limit: Duration, header_limit: Duration) -> String {
    let step = (stall_limit.min(header_limit) / CHECKS_PER_LIMIT).max(Duration::from_millis(50));
    let opened = tokio::time::Instant::now();
    let (mut last_moves, mut moved_at) = (activity.moves(), opened);
    let (mut last_finished, mut waiting_since) = (0, opened);
    loop {
        tokio::time::sleep(step).await;
        let now = tokio::time::Instant::now();
        let moves = activity.moves();
        if moves != last_moves {
            (last_moves, moved_at) = (moves, now);
        }
        if now - moved_at >= stall_limit {
            return format!("it moved no byte for {}s", stall_limit.as_secs());
        }
        let (idle, finished) = activity.between_requests();
        if finished != last_finished {
            // A request ended since the last look (at most a step ago): the next head is due.
            (last_finished, waiting_since) = (finished, now);
        }
        if idle && now - waiting_since >= header_limit {
            return format!(
                "no complete request head within {}s (header_timeout_secs)",
                header_limit.as_secs()
            );
        }
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
    use std::time::Instant;

    #[tokio::test]
    async fn a_connection_whose_peer_stops_reading_stalls_and_one_that_reads_does_not() {
        let (server, mut client) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::default());
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
            why = watchdog(&activity, limit, HOUR) => panic!("closed while bytes moved: {why}"),
        }
        // The peer stops reading: the writer blocks once the pipe is full, and the stall is
        // seen about `limit` after the last byte moved.
        let blocked = watched.write_all(&[7u8; 4096]);
        let started = Instant::now();
        tokio::select! {
            _ = blocked => panic!("the write finished though nobody read"),
            why = watchdog(&activity, limit, HOUR) => assert!(why.contains("no byte"), "{why}"),
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    const HOUR: Duration = Duration::from_secs(3600);

    /// Moves a byte every 50 ms, as a client trickling its head would.
    async fn trickle(activity: &Activity) {
        loop {
            activity.touch();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_head_trickled_too_slowly_is_cut_off_but_a_long_answer_is_not() {
        let limit = Duration::from_millis(400);
        // No request yet: bytes keep moving, yet the head is due within the limit.
        let activity = Arc::new(Activity::default());
        let started = Instant::now();
        let why = tokio::select! {
            () = trickle(&activity) => unreachable!(),
            why = watchdog(&activity, HOUR, limit) => why,
        };
        let took = started.elapsed();
        assert!(why.contains("header_timeout_secs"), "{why}");
        assert!(took >= limit && took < Duration::from_secs(2), "{took:?}");
        // A request being answered (its body still streaming) is not a head.
        let answered = Answered::start(activity.clone());
        tokio::select! {
            () = trickle(&activity) => unreachable!(),
            why = watchdog(&activity, HOUR, limit) => panic!("closed during an answer: {why}"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // Once it is written, the next head is due within the limit again.
        let watching = watchdog(&activity, HOUR, limit);
        tokio::pin!(watching);
        let started = Instant::now();
        tokio::select! {
            () = async { tokio::time::sleep(Duration::from_millis(300)).await; drop(answered); std::future::pending::<()>().await } => {}
            () = trickle(&activity) => unreachable!(),
            why = &mut watching => assert!(why.contains("header_timeout_secs"), "{why}"),
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(3),
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
