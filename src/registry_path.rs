//! What a request is: a pure function from method, path and query to a [`Route`]: the
//! [`Operation`] and the package or org it concerns.

use axum::http::Method;
use percent_encoding::percent_decode_str;

/// The operations tokengate tells apart. Each maps to what it requires in [`crate::policy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `GET /-/ping`, `/-/health/live`, `/-/health/ready`: no credentials needed.
    Ping,
    /// `GET /-/openapi.json`: the description of the JSON endpoints; no credentials needed.
    ApiDescription,
    /// `PUT /-/user/org.couchdb.user:NAME` (also `/-rev/REV`): login or adduser.
    Login,
    /// `POST /-/v1/login` and its polls: npm's web login.
    WebLogin,
    /// `/-/web/…`: the pages for people; they check their own session cookie and CSRF token.
    Web,
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
    /// `/-/auth/verify`: the forward-auth endpoint decides for itself.
    Verify,
    /// `GET /NAME`, `GET /NAME/VERSION` (also `?write=true`, a read before a write).
    PackageRead,
    /// `GET /NAME/-/FILE.tgz`.
    TarballDownload,
    /// `PUT /NAME` (publish, deprecate, star), `PUT /NAME/-rev/REV` (owner change, partial
    /// unpublish), `POST /-/stage/package/NAME` (staged publish).
    PackageWrite,
    /// `DELETE /NAME/-rev/REV`, `DELETE /NAME/-/FILE.tgz/-rev/REV`.
    Unpublish,
    /// `GET /-/package/NAME/dist-tags`.
    DistTagsRead,
    /// `PUT`/`DELETE`/`POST /-/package/NAME/dist-tags/TAG`.
    DistTagsWrite,
    /// `GET /-/package/NAME/access|visibility|collaborators`.
    AccessRead,
    /// `POST`/`PUT /-/package/NAME/access`.
    AccessWrite,
    /// `GET /-/org/ORG/…`, `GET /-/team/ORG/…`.
    OrgRead,
    /// Changes to `/-/org/ORG/…`, `/-/team/ORG/…`.
    OrgWrite,
    /// `GET /-/v1/search`.
    Search,
    /// `POST /-/npm/v1/security/…` (`npm audit`): a POST that only reads.
    Audit,
    /// Anything else: a read when the method is GET or HEAD, else a write.
    Other { read: bool },
    /// A path with `.` or `..` segments (also percent-encoded): refused, since a proxy or
    /// registry that resolves them would reach another route than the one checked.
    DotSegments,
}

impl Operation {
    /// Whether the operation belongs to the registry behind tokengate (forwarded in proxy
    /// mode) rather than to tokengate itself.
    pub fn is_registry(self) -> bool {
        use Operation::*;
        matches!(
            self,
            PackageRead
                | TarballDownload
                | PackageWrite
                | Unpublish
                | DistTagsRead
                | DistTagsWrite
                | AccessRead
                | AccessWrite
                | OrgRead
                | OrgWrite
                | Search
                | Audit
                | Other { .. }
        )
    }

    /// Whether tokengate knows what the operation concerns: everything but [`Operation::Other`],
    /// whose answer may concern any package.
    pub fn is_recognised(self) -> bool {
        !matches!(self, Operation::Other { .. })
    }

    /// Registry operations that change nothing.
    pub fn is_registry_read(self) -> bool {
        use Operation::*;
        matches!(
            self,
            PackageRead
                | TarballDownload
                | DistTagsRead
                | AccessRead
                | OrgRead
                | Search
                | Audit
                | Other { read: true }
        )
    }
}

/// A classified request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub op: Operation,
    /// The package, decoded: `lodash` or `@scope/name`.
    pub package: Option<String>,
    /// The org of org and team routes.
    pub org: Option<String>,
}

impl Route {
    fn plain(op: Operation) -> Route {
        Route {
            op,
            package: None,
            org: None,
        }
    }

    fn package(op: Operation, package: String) -> Route {
        Route {
            op,
            package: Some(package),
            org: None,
        }
    }
}

/// Classifies a request by method and path (the path as it arrived, still percent-encoded).
pub fn classify(method: &Method, path: &str) -> Operation {
    route(method, path, "").op
}

/// Classifies a request by method and path (still percent-encoded, with or without a query),
/// after stripping `prefix` (a registry mounted under a path, e.g. `/npm`).
pub fn route(method: &Method, path: &str, prefix: &str) -> Route {
    // By bytes: a `char` pattern decodes every character, and this runs on every request.
    let path = match path.bytes().position(|b| b == b'?' || b == b'#') {
        Some(end) => &path[..end],
        None => path,
    };
    let path = match path.strip_prefix(prefix) {
        Some(rest) if !prefix.is_empty() && (rest.is_empty() || rest.starts_with('/')) => rest,
        _ => path,
    };
    let read = method == Method::GET || method == Method::HEAD;
    // Every request is classified: the segments of usual paths stay on the stack.
    let mut short = [""; SHORT_PATH];
    let mut long = Vec::new();
    let mut count = 0;
    for (i, segment) in path.trim_start_matches('/').split('/').enumerate() {
        match short.get_mut(i) {
            Some(slot) => *slot = segment,
            None => {
                if long.is_empty() {
                    long.extend_from_slice(&short);
                }
                long.push(segment);
            }
        }
        count = i + 1;
    }
    let raw: &[&str] = if long.is_empty() {
        &short[..count]
    } else {
        &long
    };
    if raw.iter().any(|seg| is_dot_segment(seg)) {
        return Route::plain(Operation::DotSegments);
    }
    if raw.first() == Some(&"-") {
        return tokengate_or_registry_route(method, raw, read);
    }
    package_route(method, raw, read)
}

/// Whether a segment is `.` or `..`, or decodes to pieces that are: a decoded segment may
/// hold encoded slashes (`@scope%2f.`), and each piece counts.
fn is_dot_segment(segment: &str) -> bool {
    let dots = |piece: &str| piece == "." || piece == "..";
    if segment.contains('%') {
        decoded(segment).split('/').any(dots)
    } else {
        dots(segment)
    }
}

/// Paths with up to this many segments are split without an allocation.
const SHORT_PATH: usize = 8;

fn tokengate_or_registry_route(method: &Method, raw: &[&str], read: bool) -> Route {
    use Operation::*;
    let op = match (method, raw) {
        (&Method::GET, ["-", "ping"]) => Ping,
        (&Method::GET, ["-", "health", "live" | "ready"]) => Ping,
        (&Method::GET, ["-", "openapi.json"]) => ApiDescription,
        (_, ["-", "auth", "verify"]) => Verify,
        (&Method::GET, ["-", "whoami"]) => Whoami,
        (&Method::PUT, ["-", "user", user, ..]) if is_couch_user(user) => Login,
        (&Method::GET, ["-", "user", user]) if is_couch_user(user) => ProfileRead,
        (&Method::DELETE, ["-", "user", "token", _]) => Logout,
        (&Method::POST, ["-", "v1", "login"]) => WebLogin,
        (&Method::GET, ["-", "v1", "done" | "login", ..]) => WebLogin,
        (_, ["-", "web", ..]) => Web,
        (&Method::GET, ["-", "v1", "search"]) => Search,
        (&Method::GET, ["-", "npm", "v1", "tokens"]) => TokenList,
        (&Method::POST, ["-", "npm", "v1", "tokens"]) => TokenCreate,
        (&Method::DELETE, ["-", "npm", "v1", "tokens", "token", _]) => TokenRevoke,
        (&Method::GET, ["-", "npm", "v1", "user"]) => ProfileRead,
        (&Method::POST, ["-", "npm", "v1", "user"]) => ProfileWrite,
        (&Method::POST, ["-", "npm", "v1", "security", ..]) => Audit,
        (_, ["-", "package", rest @ ..]) => return package_admin_route(rest, read),
        (&Method::POST, ["-", "stage", "package", rest @ ..]) => {
            return match package_name(rest) {
                Some((name, _)) => Route::package(PackageWrite, name),
                None => Route::plain(Other { read }),
            };
        }
        (_, ["-", "org" | "team", org, ..]) if !org.is_empty() => {
            return Route {
                op: if read { OrgRead } else { OrgWrite },
                package: None,
                org: Some(decode(org).trim_start_matches('@').to_owned()),
            };
        }
        _ => Other { read },
    };
    Route::plain(op)
}

/// `/-/package/NAME/dist-tags[/TAG]`, `/-/package/NAME/access|visibility|collaborators`.
fn package_admin_route(rest: &[&str], read: bool) -> Route {
    use Operation::*;
    let Some((name, tail)) = package_name(rest) else {
        return Route::plain(Other { read });
    };
    let op = match (tail.first().copied(), read) {
        (Some("dist-tags"), true) => DistTagsRead,
        (Some("dist-tags"), false) => DistTagsWrite,
        (Some("access" | "visibility" | "collaborators"), true) => AccessRead,
        (Some("access" | "visibility" | "collaborators"), false) => AccessWrite,
        _ => Other { read },
    };
    Route::package(op, name)
}

/// `/NAME…` and `/@scope%2fname…`.
fn package_route(method: &Method, raw: &[&str], read: bool) -> Route {
    use Operation::*;
    let Some((name, tail)) = package_name(raw) else {
        return Route::plain(Other { read });
    };
    let op = match (method, tail) {
        (&Method::GET | &Method::HEAD, []) | (&Method::GET | &Method::HEAD, [_]) => PackageRead,
        (&Method::GET | &Method::HEAD, ["-", file]) if !file.is_empty() => TarballDownload,
        (&Method::PUT, []) | (&Method::PUT, ["-rev", _]) => PackageWrite,
        (&Method::DELETE, _) => Unpublish,
        (_, _) if read => Other { read },
        // Any other change to a package is a write to that package.
        _ => PackageWrite,
    };
    Route::package(op, name)
}

/// The package name at the start of `segments` and the segments after it. A scoped name is
/// one encoded segment (`@scope%2fname`) or two (`@scope/name`).
fn package_name<'a, 'b>(segments: &'a [&'b str]) -> Option<(String, &'a [&'b str])> {
    let first = decode(segments.first()?);
    if first.is_empty() {
        return None;
    }
    if first.starts_with('@') {
        if first.contains('/') {
            return Some((first, &segments[1..]));
        }
        let second = decode(segments.get(1)?);
        if second.is_empty() {
            return None;
        }
        return Some((format!("{first}/{second}"), &segments[2..]));
    }
    Some((first, &segments[1..]))
}

fn decode(segment: &str) -> String {
    decoded(segment).into_owned()
}

/// A segment percent-decoded, borrowed when it has nothing to decode.
fn decoded(segment: &str) -> std::borrow::Cow<'_, str> {
    percent_decode_str(segment).decode_utf8_lossy()
}

fn is_couch_user(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    lower.starts_with("org.couchdb.user:") || lower.starts_with("org.couchdb.user%3a")
}

/// Replaces the secret part of paths that carry a token, for logs: everything after a logout
/// or revoke marker but a short head, and any run of letters and digits as long as a token's
/// body wherever else it sits (a token sent to a wrong path must not reach the log either).
pub fn redact_path(path: &str) -> String {
    let marker = ["/-/user/token/", "/-/npm/v1/tokens/token/"]
        .iter()
        .filter_map(|m| path.find(m).map(|i| i + m.len()))
        .min();
    let Some(end) = marker else {
        return mask_long_runs(path);
    };
    // A 128-hex key is not a secret, but a raw token is: keep only a short head.
    let shown: String = path[end..].chars().take(SHOWN_CHARS).collect();
    format!("{}{shown}…", mask_long_runs(&path[..end]))
}

/// Characters of a secret that a redacted path keeps.
const SHOWN_CHARS: usize = 6;

/// Runs of ASCII letters and digits at least as long as a token's random part and checksum
/// keep their first few characters only.
fn mask_long_runs(path: &str) -> String {
    const TOKEN_BODY: usize = crate::token::RANDOM_LEN + crate::token::CHECKSUM_LEN;
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i - start >= TOKEN_BODY {
            // ASCII boundaries are char boundaries.
            out.push_str(&path[copied..start + SHOWN_CHARS]);
            out.push('…');
            copied = i;
        }
    }
    out.push_str(&path[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_the_npm_client() {
        let cases = [
            ("GET", "/-/ping", Operation::Ping),
            ("GET", "/-/health/ready", Operation::Ping),
            ("GET", "/-/openapi.json", Operation::ApiDescription),
            ("PUT", "/-/openapi.json", Operation::Other { read: false }),
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
            ("GET", "/-/v1/done?session=abc", Operation::WebLogin),
            ("GET", "/-/web", Operation::Web),
            ("GET", "/-/web/", Operation::Web),
            ("GET", "/-/web/tokens", Operation::Web),
            ("POST", "/-/web/login", Operation::Web),
            ("POST", "/-/web/tokens/revoke", Operation::Web),
            ("GET", "/-/web/npm-login?id=abc", Operation::Web),
            ("GET", "/-/webby", Operation::Other { read: true }),
            ("GET", "/-/npm/v1/tokens", Operation::TokenList),
            ("POST", "/-/npm/v1/tokens", Operation::TokenCreate),
            (
                "DELETE",
                "/-/npm/v1/tokens/token/abc",
                Operation::TokenRevoke,
            ),
            ("GET", "/-/npm/v1/user", Operation::ProfileRead),
            ("POST", "/-/npm/v1/user", Operation::ProfileWrite),
            ("GET", "/lodash", Operation::PackageRead),
            ("HEAD", "/lodash", Operation::PackageRead),
            ("PUT", "/lodash", Operation::PackageWrite),
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
    fn registry_routes_of_npm_9_to_11() {
        use Operation::*;
        let p = |s: &str| Some(s.to_owned());
        // (method, path, operation, package, org)
        type Case = (
            &'static str,
            &'static str,
            Operation,
            Option<String>,
            Option<String>,
        );
        let cases: &[Case] = &[
            ("GET", "/lodash", PackageRead, p("lodash"), None),
            ("HEAD", "/lodash", PackageRead, p("lodash"), None),
            ("GET", "/lodash?write=true", PackageRead, p("lodash"), None),
            ("GET", "/lodash/4.17.21", PackageRead, p("lodash"), None),
            ("GET", "/@acme%2fx", PackageRead, p("@acme/x"), None),
            ("GET", "/@acme%2Fx", PackageRead, p("@acme/x"), None),
            ("GET", "/@acme/x", PackageRead, p("@acme/x"), None),
            ("GET", "/%40acme%2fx", PackageRead, p("@acme/x"), None),
            ("GET", "/@acme/x/1.0.0", PackageRead, p("@acme/x"), None),
            (
                "GET",
                "/lodash/-/lodash-4.17.21.tgz",
                TarballDownload,
                p("lodash"),
                None,
            ),
            (
                "GET",
                "/@acme/x/-/x-1.0.0.tgz",
                TarballDownload,
                p("@acme/x"),
                None,
            ),
            (
                "GET",
                "/@acme%2fx/-/x-1.0.0.tgz",
                TarballDownload,
                p("@acme/x"),
                None,
            ),
            ("PUT", "/@acme%2fx", PackageWrite, p("@acme/x"), None),
            ("PUT", "/lodash", PackageWrite, p("lodash"), None),
            ("PUT", "/lodash/-rev/3-abc", PackageWrite, p("lodash"), None),
            ("DELETE", "/lodash/-rev/3-abc", Unpublish, p("lodash"), None),
            (
                "DELETE",
                "/@acme%2fx/-rev/3-abc",
                Unpublish,
                p("@acme/x"),
                None,
            ),
            (
                "DELETE",
                "/lodash/-/lodash-1.0.0.tgz/-rev/4-def",
                Unpublish,
                p("lodash"),
                None,
            ),
            (
                "POST",
                "/-/stage/package/@acme%2fx",
                PackageWrite,
                p("@acme/x"),
                None,
            ),
            (
                "GET",
                "/-/package/@acme%2fx/dist-tags",
                DistTagsRead,
                p("@acme/x"),
                None,
            ),
            (
                "GET",
                "/-/package/lodash/dist-tags",
                DistTagsRead,
                p("lodash"),
                None,
            ),
            (
                "PUT",
                "/-/package/@acme%2fx/dist-tags/beta",
                DistTagsWrite,
                p("@acme/x"),
                None,
            ),
            (
                "DELETE",
                "/-/package/lodash/dist-tags/beta",
                DistTagsWrite,
                p("lodash"),
                None,
            ),
            (
                "GET",
                "/-/package/@acme%2fx/access",
                AccessRead,
                p("@acme/x"),
                None,
            ),
            (
                "POST",
                "/-/package/@acme%2fx/access",
                AccessWrite,
                p("@acme/x"),
                None,
            ),
            (
                "GET",
                "/-/package/lodash/visibility",
                AccessRead,
                p("lodash"),
                None,
            ),
            (
                "GET",
                "/-/package/lodash/collaborators",
                AccessRead,
                p("lodash"),
                None,
            ),
            ("GET", "/-/org/acme/user", OrgRead, None, p("acme")),
            ("PUT", "/-/org/acme/user", OrgWrite, None, p("acme")),
            ("DELETE", "/-/org/%40acme/user", OrgWrite, None, p("acme")),
            (
                "PUT",
                "/-/team/acme/devs/package",
                OrgWrite,
                None,
                p("acme"),
            ),
            ("GET", "/-/team/acme/devs/user", OrgRead, None, p("acme")),
            ("GET", "/-/v1/search?text=x", Search, None, None),
            (
                "POST",
                "/-/npm/v1/security/advisories/bulk",
                Audit,
                None,
                None,
            ),
            ("POST", "/-/npm/v1/security/audits/quick", Audit, None, None),
            (
                "GET",
                "/-/user/bob/package",
                Other { read: true },
                None,
                None,
            ),
            ("GET", "/-/auth/verify", Verify, None, None),
            ("GET", "/", Other { read: true }, None, None),
            ("POST", "/lodash", PackageWrite, p("lodash"), None),
            ("GET", "/-/web/../@corp/pkg", DotSegments, None, None),
            ("PUT", "/-/ping/%2e%2e/@corp%2fpkg", DotSegments, None, None),
            (
                "GET",
                "/@corp/pkg/./-/pkg-1.0.0.tgz",
                DotSegments,
                None,
                None,
            ),
            ("GET", "/@corp%2f..%2fother", DotSegments, None, None),
        ];
        for (method, path, op, package, org) in cases {
            let m: Method = method.parse().unwrap();
            let want = Route {
                op: *op,
                package: package.clone(),
                org: org.clone(),
            };
            assert_eq!(route(&m, path, ""), want, "{method} {path}");
        }
        assert!(PackageRead.is_registry_read() && !PackageWrite.is_registry_read());
        assert!(!Login.is_registry() && Other { read: false }.is_registry());
    }

    #[test]
    fn a_registry_under_a_path_prefix() {
        let get = Method::GET;
        assert_eq!(
            route(&get, "/npm/@acme%2fx/-/x-1.0.0.tgz", "/npm"),
            Route::package(Operation::TarballDownload, "@acme/x".into())
        );
        assert_eq!(
            route(&get, "/npm", "/npm").op,
            Operation::Other { read: true }
        );
        assert_eq!(route(&get, "/npm/-/whoami", "/npm").op, Operation::Whoami);
        // Only whole segments are a prefix.
        assert_eq!(
            route(&get, "/npmx", "/npm"),
            Route::package(Operation::PackageRead, "npmx".into())
        );
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
        // Found by the properties: the later marker was used when both appear, and a token
        // elsewhere in the path was logged whole.
        let token = "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";
        assert_eq!(
            redact_path(&format!("/-/npm/v1/tokens/token/{token}/-/user/token/x")),
            "/-/npm/v1/tokens/token/npm_0a…"
        );
        assert_eq!(redact_path(&format!("//_{}/", &token[4..])), "//_0a0a0A…/");
        assert_eq!(
            redact_path("/lodash/-/lodash-4.17.21.tgz"),
            "/lodash/-/lodash-4.17.21.tgz"
        );
    }

    /// Found by the properties: a `.` hidden behind an encoded slash was let through.
    #[test]
    fn dot_segments_behind_encoded_slashes() {
        for path in [
            "/a%2f%2e",
            "/@corp%2f.",
            "/@corp%2F.%2Fpkg",
            "/.%2Fx",
            "/-/package/@corp%2f./dist-tags",
        ] {
            assert_eq!(
                classify(&Method::GET, path),
                Operation::DotSegments,
                "{path}"
            );
        }
        assert_eq!(classify(&Method::GET, "/a..b"), Operation::PackageRead);
    }

    /// Paths longer than the segments kept on the stack are classified the same way.
    #[test]
    fn long_paths_are_classified_whole() {
        let long = "/@corp/pkg/a/b/c/d/e/f/g/h/i";
        assert!(long.split('/').count() > SHORT_PATH + 1);
        let routed = route(&Method::PUT, long, "");
        assert_eq!(routed.op, Operation::PackageWrite);
        assert_eq!(routed.package.as_deref(), Some("@corp/pkg"));
        assert_eq!(
            classify(&Method::GET, "/@corp/pkg/a/b/c/d/e/f/g/h/.."),
            Operation::DotSegments
        );
        assert_eq!(
            classify(&Method::GET, "/@corp/pkg/a/b/c/d/e/f/g/h/%2e"),
            Operation::DotSegments
        );
        // Exactly as many segments as fit, and one more.
        for path in ["/-/a/b/c/d/e/f/g", "/-/a/b/c/d/e/f/g/h"] {
            assert_eq!(
                classify(&Method::GET, path),
                Operation::Other { read: true }
            );
        }
    }
}
