//! What a request is: a pure function from method and path to an [`Operation`].

use axum::http::Method;

/// The operations tokengate tells apart. Each maps to what it requires in [`crate::policy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `GET /-/ping`, `/-/health/live`, `/-/health/ready`: no credentials needed.
    Ping,
    /// `PUT /-/user/org.couchdb.user:NAME` (also `/-rev/REV`): login or adduser.
    Login,
    /// `POST /-/v1/login` and its polls: npm's web login.
    WebLogin,
    /// `DELETE /-/user/token/TOKEN`.
    Logout,
    /// `GET /-/whoami`.
    Whoami,
    /// `GET /-/npm/v1/tokens`.
    TokenList,
    /// `POST /-/npm/v1/tokens`.
    TokenCreate,
    /// `DELETE /-/npm/v1/tokens/token/KEY`.
    TokenRevoke,
    /// `GET /-/npm/v1/user`, `GET /-/user/org.couchdb.user:NAME`.
    ProfileRead,
    /// `POST /-/npm/v1/user`.
    ProfileWrite,
    /// Anything else: a read when the method is GET or HEAD, else a write.
    Other { read: bool },
}

/// Classifies a request by method and path (the path as it arrived, still percent-encoded).
pub fn classify(method: &Method, path: &str) -> Operation {
    let read = method == Method::GET || method == Method::HEAD;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["-", "ping"]) => Operation::Ping,
        (&Method::GET, ["-", "health", "live" | "ready"]) => Operation::Ping,
        (&Method::GET, ["-", "whoami"]) => Operation::Whoami,
        (&Method::PUT, ["-", "user", user, ..]) if is_couch_user(user) => Operation::Login,
        (&Method::GET, ["-", "user", user]) if is_couch_user(user) => Operation::ProfileRead,
        (&Method::DELETE, ["-", "user", "token", _]) => Operation::Logout,
        (&Method::POST, ["-", "v1", "login"]) => Operation::WebLogin,
        (&Method::GET, ["-", "v1", "done" | "login", ..]) => Operation::WebLogin,
        (&Method::GET, ["-", "npm", "v1", "tokens"]) => Operation::TokenList,
        (&Method::POST, ["-", "npm", "v1", "tokens"]) => Operation::TokenCreate,
        (&Method::DELETE, ["-", "npm", "v1", "tokens", "token", _]) => Operation::TokenRevoke,
        (&Method::GET, ["-", "npm", "v1", "user"]) => Operation::ProfileRead,
        (&Method::POST, ["-", "npm", "v1", "user"]) => Operation::ProfileWrite,
        _ => Operation::Other { read },
    }
}

fn is_couch_user(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    lower.starts_with("org.couchdb.user:") || lower.starts_with("org.couchdb.user%3a")
}

/// Replaces the secret part of paths that carry a token, for logs.
pub fn redact_path(path: &str) -> String {
    for marker in ["/-/user/token/", "/-/npm/v1/tokens/token/"] {
        if let Some(i) = path.find(marker) {
            let rest = &path[i + marker.len()..];
            // A 128-hex key is not a secret, but a raw token is: keep only a short head.
            let shown: String = rest.chars().take(6).collect();
            return format!("{}{shown}…", &path[..i + marker.len()]);
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_the_npm_client() {
        let cases = [
            ("GET", "/-/ping", Operation::Ping),
            ("GET", "/-/health/ready", Operation::Ping),
            ("GET", "/-/whoami", Operation::Whoami),
            ("PUT", "/-/user/org.couchdb.user:alice", Operation::Login),
            ("PUT", "/-/user/org.couchdb.user%3Aalice", Operation::Login),
            (
                "PUT",
                "/-/user/org.couchdb.user:alice/-rev/3-abc",
                Operation::Login,
            ),
            (
                "GET",
                "/-/user/org.couchdb.user:alice",
                Operation::ProfileRead,
            ),
            ("DELETE", "/-/user/token/npm_abc", Operation::Logout),
            ("POST", "/-/v1/login", Operation::WebLogin),
            ("GET", "/-/npm/v1/tokens", Operation::TokenList),
            ("POST", "/-/npm/v1/tokens", Operation::TokenCreate),
            (
                "DELETE",
                "/-/npm/v1/tokens/token/abc",
                Operation::TokenRevoke,
            ),
            ("GET", "/-/npm/v1/user", Operation::ProfileRead),
            ("POST", "/-/npm/v1/user", Operation::ProfileWrite),
            ("GET", "/lodash", Operation::Other { read: true }),
            ("HEAD", "/lodash", Operation::Other { read: true }),
            ("PUT", "/lodash", Operation::Other { read: false }),
            (
                "DELETE",
                "/-/npm/v1/tokens",
                Operation::Other { read: false },
            ),
            (
                "GET",
                "/-/npm/v1/tokens/token/abc",
                Operation::Other { read: true },
            ),
        ];
        for (method, path, want) in cases {
            let m: Method = method.parse().unwrap();
            assert_eq!(classify(&m, path), want, "{method} {path}");
        }
    }

    #[test]
    fn secrets_in_paths_are_redacted() {
        assert_eq!(
            redact_path("/-/user/token/npm_abcdefghijklmnop"),
            "/-/user/token/npm_ab…"
        );
        assert_eq!(
            redact_path("/-/npm/v1/tokens/token/npm_zzzzzzzz"),
            "/-/npm/v1/tokens/token/npm_zz…"
        );
        assert_eq!(redact_path("/-/whoami"), "/-/whoami");
    }
}
