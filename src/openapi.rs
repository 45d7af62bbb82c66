//! The OpenAPI 3.1 description of tokengate's JSON endpoints, served at `GET /-/openapi.json`.
//!
//! Each handler documents its own answers (`#[utoipa::path]` next to it); what every request
//! may meet before its handler runs is added here from the code that does it: the gate's
//! security requirement and refusals (from [`policy::requirement`] of the route's
//! classification), the 400 for `.`/`..` path segments, and the 503 of the request deadline
//! and of an unavailable database.

use crate::error::ErrorBody;
use crate::policy::{self, Requirement};
use crate::registry_path;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use std::sync::OnceLock;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Object, Ref, RefOr, Type};
use utoipa::{IntoParams, Modify, OpenApi};

const DESCRIPTION: &str = "\
The JSON endpoints of tokengate, an npm-compatible access-token service: npm's login, logout, \
whoami, token and profile endpoints, health checks, and the forward-authentication endpoint for \
a proxy in front of the registry.

Left out: the HTML pages for people under `/-/web/`, and every other path, which tokengate \
forwards to the registry behind it in reverse-proxy mode (the registry's own API) or answers \
`404 {\"error\": …}` without one. A method a documented path does not accept is answered \
`405 {\"error\": …}` once the gate has let the request through.

Credentials: an npm token as `Authorization: Bearer npm_…`, or the account's name and password \
as `Authorization: Basic`. An account with two-factor authentication needs a one-time password \
in the `npm-otp` header for logins, token changes and profile changes; a 401 with \
`WWW-Authenticate: OTP` asks for it. Every error answer is `{\"error\": \"…\"}`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "tokengate", description = DESCRIPTION),
    paths(
        document,
        crate::api::user::ping,
        crate::api::user::live,
        crate::api::user::ready,
        crate::api::user::whoami,
        crate::api::user::login,
        crate::api::user::login_rev,
        crate::api::user::user_doc,
        crate::api::user::logout,
        crate::api::user::web_login,
        crate::api::user::web_login_done,
        crate::api::tokens::list,
        crate::api::tokens::create,
        crate::api::tokens::revoke,
        crate::api::profile::get,
        crate::api::profile::update,
        crate::api::verify::verify,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Gate),
)]
struct ApiDoc;

/// The one-time password header npm sends after a `WWW-Authenticate: OTP` challenge.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct OtpHeader {
    /// A code from the authenticator app, or a recovery code, when the account has two-factor
    /// authentication.
    #[param(rename = "npm-otp", required = false)]
    #[allow(dead_code)]
    npm_otp: String,
}

/// The description as a value.
pub fn description() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The description as served, made once.
fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        description()
            .to_json()
            .expect("the OpenAPI description serialises")
    })
}

/// `GET /-/openapi.json`: this description; needs no credentials.
#[utoipa::path(
    get,
    path = "/-/openapi.json",
    tag = "meta",
    summary = "This OpenAPI description",
    responses((status = 200, description = "The OpenAPI 3.1 description of the JSON endpoints.",
        body = Object)),
)]
pub async fn document() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document_json(),
    )
        .into_response()
}

/// Adds the security schemes, and to each operation what the layers before its handler do.
struct Gate;

impl Modify for Gate {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("npm_…".into());
        bearer.description = Some(
            "An npm token (`npm_` and 36 letters and digits), from npm login or npm token create."
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        let mut basic = Http::new(HttpAuthScheme::Basic);
        basic.description = Some("The account's name and password.".into());
        components.add_security_scheme("basic", SecurityScheme::Http(basic));

        for (path, item) in api.paths.paths.iter_mut() {
            let operations = [
                (Method::GET, &mut item.get),
                (Method::PUT, &mut item.put),
                (Method::POST, &mut item.post),
                (Method::DELETE, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    before_handler(&method, path, operation);
                }
            }
        }
    }
}

/// A path of this template as a client would send it, for the classifier.
fn sample_path(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{id}" => "org.couchdb.user:someone",
            s if s.starts_with('{') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn before_handler(method: &Method, path: &str, operation: &mut Operation) {
    let requirement = policy::requirement(registry_path::classify(method, &sample_path(path)));
    let bearer = || SecurityRequirement::new("bearer", Vec::<String>::new());
    let basic = || SecurityRequirement::new("basic", Vec::<String>::new());
    operation.security = Some(match requirement {
        Requirement::Public => vec![SecurityRequirement::default()],
        Requirement::Lenient => vec![SecurityRequirement::default(), bearer(), basic()],
        Requirement::Authenticated(_) => vec![bearer(), basic()],
    });
    let responses = &mut operation.responses.responses;
    let mut add = |status: &str, response: ApiResponse| {
        responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(response));
    };
    if path.contains('{') {
        add(
            "400",
            error("A path segment is `.` or `..` (also percent-encoded)."),
        );
    }
    if matches!(requirement, Requirement::Authenticated(_)) {
        add("401", unauthorized());
        add(
            "403",
            error("The credential may not do this (a read-only or narrow token)."),
        );
        add("429", too_many());
    }
    if operation.request_body.is_some() {
        add(
            "408",
            error("The request body paused for longer than `body_timeout_secs`."),
        );
    }
    add(
        "503",
        error(
            "The database is unavailable, or the request took longer than `request_timeout_secs`.",
        ),
    );
}

fn error_builder(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    )
}

fn error(description: &str) -> ApiResponse {
    error_builder(description).build()
}

/// The gate's 401, with npm's challenge.
pub fn unauthorized() -> ApiResponse {
    error_builder(
        "No credentials, or they are not valid (unknown, revoked or expired token, wrong \
         password, an address outside the token's CIDR list), or a one-time password is needed.",
    )
    .header("WWW-Authenticate", www_authenticate())
    .build()
}

fn www_authenticate() -> Header {
    let mut h = Header::new(
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["Bearer", "Basic", "OTP", "ipaddress"])),
    );
    h.description = Some(
        "What npm should ask for: `Bearer` (log in), `Basic` (the password), `OTP` (a \
         one-time password), `ipaddress` (the token may not be used from this address)."
            .into(),
    );
    h
}

/// 429 after too many failed password or one-time password attempts.
pub fn too_many() -> ApiResponse {
    let mut retry = Header::new(Object::with_type(Type::Integer));
    retry.description = Some("Seconds to wait before trying again.".into());
    error_builder("Too many failed password or one-time password attempts lately.")
        .header("Retry-After", retry)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(method, path)` of every `.route(…)` in `routes()` with a literal path, read from the
    /// source so that a new route cannot be left out of the description (`any` is documented as
    /// GET).
    fn routes_in_app() -> Vec<(String, String)> {
        let src = include_str!("lib.rs");
        let start = src.find("fn routes(").expect("routes() in lib.rs");
        let end = start + src[start..].find("\n}\n").expect("end of routes()");
        let body = &src[start..end];
        let mut routes = Vec::new();
        for (at, _) in body.match_indices(".route(") {
            // The call's arguments, up to its closing parenthesis.
            let args = &body[at + ".route(".len()..];
            let mut depth = 1;
            let close = args
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .expect("balanced parentheses")
                .0;
            let args = args[..close].trim_start();
            let Some(rest) = args.strip_prefix('"') else {
                continue; // a path from the configuration (the metrics)
            };
            let path = &rest[..rest.find('"').unwrap()];
            for (call, method) in [
                ("get(", "get"),
                ("put(", "put"),
                ("post(", "post"),
                ("delete(", "delete"),
                ("any(", "get"),
            ] {
                let called = rest.match_indices(call).any(|(i, _)| {
                    let before = rest[..i].chars().next_back();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                });
                if called {
                    routes.push((method.to_owned(), path.to_owned()));
                }
            }
        }
        routes
    }

    fn documented() -> Vec<(String, String)> {
        let api = description();
        let mut ops = Vec::new();
        for (path, item) in &api.paths.paths {
            for (method, op) in [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
            ] {
                if op.is_some() {
                    ops.push((method.to_owned(), path.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn every_json_route_is_documented_and_nothing_else() {
        let mut routes = routes_in_app();
        routes.sort();
        routes.dedup();
        assert!(routes.len() >= 15, "the route reader broke: {routes:?}");
        let mut docs = documented();
        docs.sort();
        assert_eq!(routes, docs);
    }

    #[test]
    fn security_and_gate_answers_follow_the_policy() {
        let api = description();
        let op = |path: &str| api.paths.get_path_item(path).unwrap();
        let json = serde_json::to_value(&api).unwrap();
        let tokens = &json["paths"]["/-/npm/v1/tokens"]["get"];
        assert_eq!(
            tokens["security"],
            serde_json::json!([{"bearer": []}, {"basic": []}])
        );
        for status in ["401", "403", "429", "503"] {
            assert!(tokens["responses"][status].is_object(), "{status}");
        }
        let ping = &json["paths"]["/-/ping"]["get"];
        assert_eq!(ping["security"], serde_json::json!([{}]));
        assert!(ping["responses"]["401"].is_null());
        assert!(op("/-/user/token/{token}").delete.is_some());
        assert!(json["paths"]["/-/user/token/{token}"]["delete"]["responses"]["400"].is_object());
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
    }
}
