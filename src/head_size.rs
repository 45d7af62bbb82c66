//! The size of a request head as the client sent it, for `max_header_bytes`. hyper's own limit
//! is on its read buffer, which one read can fill to about twice the limit before hyper looks,
//! so a head between the limit and twice it got through; this count is checked on every request
//! instead, and hyper's buffer limit only bounds the memory a connection holds.

use axum::http::{Request, Uri};

/// The bytes of `req`'s head: the request line, each header line (`name: value` and its line
/// end) and the empty line that ends the head. Whitespace around a header value, which the
/// parser drops, is not counted.
pub fn of<B>(req: &Request<B>) -> usize {
    const SP: usize = 1;
    const CRLF: usize = 2;
    const VERSION: usize = "HTTP/1.1".len();
    const COLON_SP: usize = 2;
    let line = req.method().as_str().len() + SP + target_len(req.uri()) + SP + VERSION + CRLF;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + COLON_SP + value.len() + CRLF)
        .sum();
    line + fields + CRLF
}

/// The request target as sent: origin form (`/path?query`), absolute form
/// (`http://host/path`) or authority form (`host:port`, CONNECT).
fn target_len(uri: &Uri) -> usize {
    let path_and_query = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            scheme.len() + "://".len() + authority.as_str().len() + path_and_query
        }
        (None, Some(authority)) => authority.as_str().len(),
        _ => path_and_query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_head_as_sent() {
        type Case = (
            &'static str,
            &'static str,
            &'static [(&'static str, &'static str)],
        );
        let cases: [Case; 4] = [
            ("GET", "/-/whoami", &[]),
            ("GET", "/-/whoami", &[("host", "127.0.0.1:4874")]),
            (
                "PUT",
                "/@acme%2fx?write=true",
                &[
                    ("host", "h"),
                    ("authorization", "Bearer npm_x"),
                    ("x-a", ""),
                ],
            ),
            ("GET", "http://h:1/a?b", &[("accept", "*/*")]),
        ];
        for (method, target, headers) in cases {
            let mut text = format!("{method} {target} HTTP/1.1\r\n");
            let mut req = Request::builder().method(method).uri(target);
            for (name, value) in headers {
                text.push_str(&format!("{name}: {value}\r\n"));
                req = req.header(*name, *value);
            }
            text.push_str("\r\n");
            let req = req.body(()).unwrap();
            assert_eq!(of(&req), text.len(), "{text:?}");
        }
    }
}
