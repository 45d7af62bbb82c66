//! `max_body_bytes` for the requests that can carry a body. axum's `DefaultBodyLimit` tells the
//! body extractors the limit through a request extension, an allocation and a hash insert on
//! every request; GET and HEAD requests, the per-request check's hot path, have no body for
//! tokengate to read (a proxied one streams to the upstream unlimited either way).

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Method;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// `inner` with `DefaultBodyLimit::max` for every method but GET and HEAD.
#[derive(Clone)]
pub struct BodyLimit<S> {
    inner: S,
    max_bytes: usize,
}

impl<S> BodyLimit<S> {
    pub fn new(inner: S, max_bytes: usize) -> BodyLimit<S> {
        BodyLimit { inner, max_bytes }
    }
}

impl<S> Service<Request> for BodyLimit<S>
where
    S: Service<Request> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> S::Future {
        if matches!(*req.method(), Method::GET | Method::HEAD) {
            return self.inner.call(req);
        }
        // The ready inner service goes into the limit's service and a fresh clone takes its
        // place: a clone for the requests that can carry a body, none for GET and HEAD.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        DefaultBodyLimit::max(self.max_bytes).layer(ready).call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;
    use axum::routing::any;
    use axum::Router;
    use tower::ServiceExt;

    async fn status(method: Method, body_bytes: usize) -> StatusCode {
        let router = Router::new().route(
            "/",
            any(|body: Bytes| async move { body.len().to_string() }),
        );
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(Body::from(vec![b'x'; body_bytes]))
            .unwrap();
        BodyLimit::new(router, 1024)
            .oneshot(req)
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_for_methods_that_send_them() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(
                status(method.clone(), 1024).await,
                StatusCode::OK,
                "{method}"
            );
            assert_eq!(
                status(method.clone(), 1025).await,
                StatusCode::PAYLOAD_TOO_LARGE,
                "{method}"
            );
        }
    }

    #[tokio::test]
    async fn get_requests_carry_no_limit_extension() {
        // Without the extension axum applies its own default (2 MB), not `max_bytes`.
        assert_eq!(status(Method::GET, 1025).await, StatusCode::OK);
    }
}
