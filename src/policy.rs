//! Who may do what: pure rules over a principal's credential and an operation.

use crate::registry_path::{Operation, Route};
use crate::store::{Permission, TfaMode, TokenKind, TokenRecord};

/// What an operation needs from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Anyone; a stale or invalid credential is ignored.
    Public,
    /// The handler decides (logout must succeed for tokens that are already dead).
    Lenient,
    /// A valid credential with this access.
    Authenticated(Access),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading: whoami, token list, profile, package reads.
    Read,
    /// Creating or revoking tokens.
    ManageTokens,
    /// Changing the account (email, password, 2FA).
    ChangeProfile,
    /// Writing packages.
    Write,
}

pub fn requirement(op: Operation) -> Requirement {
    use Operation::*;
    match op {
        Ping | ApiDescription | Login | WebLogin | Web | Verify => Requirement::Public,
        Logout => Requirement::Lenient,
        Whoami | TokenList | ProfileRead => Requirement::Authenticated(Access::Read),
        TokenCreate | TokenRevoke => Requirement::Authenticated(Access::ManageTokens),
        ProfileWrite => Requirement::Authenticated(Access::ChangeProfile),
        op if op.is_registry_read() => Requirement::Authenticated(Access::Read),
        _ => Requirement::Authenticated(Access::Write),
    }
}

/// May a request without credentials go ahead? Registry reads only, and only when the
/// registry is configured with `anonymous_read`.
pub fn anonymous_allowed(op: Operation, anonymous_read: bool) -> bool {
    anonymous_read && op.is_registry_read()
}

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A bearer token.
    Token(std::sync::Arc<TokenRecord>),
    /// `Authorization: Basic` with the account password: everything the user may do.
    Password,
}

/// Why a valid credential may not do something; the text is shown by npm after E403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial(pub String);

/// May this credential perform an operation needing `access` on what `route` names?
pub fn authorize(credential: &Credential, access: Access, route: &Route) -> Result<(), Denial> {
    let token = match credential {
        Credential::Password => return Ok(()),
        Credential::Token(t) => t,
    };
    if access != Access::Read && token.is_read_only() {
        return Err(Denial(format!(
            "This token is read-only: it can read, but it cannot {}{}. Use a login session \
             (npm login) or a token with write access.",
            verb(access),
            target_name(route)
        )));
    }
    match (token.kind, access) {
        (TokenKind::Session | TokenKind::Publish, _) => Ok(()),
        (TokenKind::ReadOnly, _) => Ok(()),
        (TokenKind::Automation, Access::Read | Access::Write) => Ok(()),
        (TokenKind::Granular, Access::Read | Access::Write) => granular(token, access, route),
        (kind, _) => {
            let which = match kind {
                TokenKind::Automation => "An automation",
                _ => "A granular",
            };
            Err(Denial(format!(
                "{which} token cannot {}. Log in with `npm login` and use that session instead.",
                verb(access)
            )))
        }
    }
}

/// A granular token: packages and scopes with one permission, orgs with another.
fn granular(token: &TokenRecord, access: Access, route: &Route) -> Result<(), Denial> {
    let write = access == Access::Write;
    if !route.op.is_recognised() {
        return unrecognised(token, write);
    }
    if let Some(org) = &route.org {
        if !token.orgs.iter().any(|o| o == org) {
            return Err(Denial(format!(
                "This token has no access to the org {org}: it is limited to {}.",
                listing(&token.orgs, "no orgs")
            )));
        }
        return permits(token.orgs_permission, write, &format!("the org {org}"));
    }
    let Some(package) = &route.package else {
        // The recognised routes that name no package: search (its answer is filtered to the
        // token's packages, see [`search_filter`]) and audit (public advisories), both reads.
        return if write {
            Err(Denial(
                "A granular token can only change the packages, scopes and orgs it lists.".into(),
            ))
        } else {
            Ok(())
        };
    };
    if !covers(token, package) {
        return Err(Denial(format!(
            "This token has no access to the package {package}: it is limited to {}.",
            package_limits(token)
        )));
    }
    permits(
        token.packages_and_scopes_permission,
        write,
        &format!("the package {package}"),
    )
}

/// A registry route tokengate does not recognise (Verdaccio's `/-/verdaccio/…`, `/-/all`, `GET
/// /`): its answer may concern any package, so only a token that reaches every package may use
/// it, a write needing write access to every package. Default deny: what is not known to stay
/// within a token's packages is not allowed to a token limited to some.
fn unrecognised(token: &TokenRecord, write: bool) -> Result<(), Denial> {
    if token.packages_all {
        return permits(token.packages_and_scopes_permission, write, "every package");
    }
    Err(Denial(format!(
        "This token is limited to {}, and this registry route names no package tokengate can \
         check it against. Use a login session, a publish token or a token for all packages \
         (--packages-all) for it.",
        package_limits(token)
    )))
}

/// Whether a granular token's packages and scopes include `package` (its permission aside).
fn covers(token: &TokenRecord, package: &str) -> bool {
    let scope = package
        .strip_prefix('@')
        .and_then(|rest| rest.split_once('/'))
        .map(|(scope, _)| scope);
    token.packages_all
        || token.packages.iter().any(|p| p == package)
        || scope.is_some_and(|s| token.scopes.iter().any(|t| t.strip_prefix('@') == Some(s)))
}

/// The packages and scopes a token is limited to, for messages.
fn package_limits(token: &TokenRecord) -> String {
    let mut limits: Vec<String> = token.packages.clone();
    limits.extend(token.scopes.iter().map(|s| format!("{s}/*")));
    listing(&limits, "no packages")
}

/// The token a search answer must be filtered for: a granular token limited to some packages
/// may search, but may see only the packages it may read. `None`: the answer goes out whole.
pub fn search_filter(credential: &Credential) -> Option<&TokenRecord> {
    match credential {
        Credential::Token(t) if t.kind == TokenKind::Granular && !t.packages_all => Some(t),
        _ => None,
    }
}

/// Whether a caller sees other users' e-mail addresses: a login session, the password or a
/// full-permission token, as on the public registry (npm's `owner add` fills `maintainers`
/// from them). A read-only, automation or granular token, the kind a CI holds, does not: a
/// leaked one must not harvest the team's addresses.
pub fn sees_others_emails(credential: &Credential) -> bool {
    match credential {
        Credential::Password => true,
        Credential::Token(t) => {
            matches!(t.kind, TokenKind::Session | TokenKind::Publish) && !t.is_read_only()
        }
    }
}

/// Whether `token` may read `package` (for filtering search answers).
pub fn may_read(token: &TokenRecord, package: &str) -> bool {
    match token.kind {
        TokenKind::Granular => {
            covers(token, package)
                && token
                    .packages_and_scopes_permission
                    .is_some_and(|p| p != Permission::NoAccess)
        }
        _ => true,
    }
}

fn permits(permission: Option<Permission>, write: bool, what: &str) -> Result<(), Denial> {
    match permission.unwrap_or(Permission::NoAccess) {
        Permission::NoAccess => Err(Denial(format!(
            "This token's permission for {what} is no-access."
        ))),
        // Staged publishing is not offered: such a token can stage nothing, so it may only
        // read. It must never write directly.
        Permission::ReadWriteStageOnly if write => Err(Denial(format!(
            "This token is read-write-stage-only: it may stage versions of {what} for approval, \
             never publish or change them directly, and this registry does not take staged \
             versions. Use a read-write token or a login session."
        ))),
        Permission::ReadOnly if write => Err(Denial(format!(
            "This token has read-only access to {what}: it cannot change it."
        ))),
        _ => Ok(()),
    }
}

fn listing(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_owned()
    } else {
        items.join(", ")
    }
}

/// ` (the package X)` for messages about a package or org route.
fn target_name(route: &Route) -> String {
    match (&route.package, &route.org) {
        (Some(p), _) => format!(" (the package {p})"),
        (None, Some(o)) => format!(" (the org {o})"),
        _ => String::new(),
    }
}

/// Must a request needing `access` carry a one-time password? `mode` is the account's
/// two-factor mode when enabled. Login asks for one too (see the login handler).
///
/// A password (`Authorization: Basic`) of an account with two-factor authentication needs one
/// on every request, as login does: a phished password alone is not enough. Token management
/// and profile changes always need one; package writes only in `auth-and-writes`, and not from
/// automation tokens or granular tokens with `bypass_2fa`.
pub fn otp_required(mode: Option<TfaMode>, credential: &Credential, access: Access) -> bool {
    let Some(mode) = mode else {
        return false;
    };
    let token = match credential {
        Credential::Password => return true,
        Credential::Token(t) => t,
    };
    match access {
        Access::Read => false,
        Access::ManageTokens | Access::ChangeProfile => true,
        Access::Write => {
            let bypass = token.kind == TokenKind::Automation || token.bypass_2fa;
            mode == TfaMode::AuthAndWrites && !bypass
        }
    }
}

fn verb(access: Access) -> &'static str {
    match access {
        Access::Read => "read",
        Access::ManageTokens => "create or revoke tokens",
        Access::ChangeProfile => "change the account's profile",
        Access::Write => "publish or change packages",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::TokenKey;
    use chrono::Utc;

    fn token(kind: TokenKind, readonly: bool) -> Credential {
        let mut record = crate::token_request::TokenSpec::unrestricted(kind, None, None)
            .into_record(TokenKey::of("x"), 1, "npm_x".into(), Utc::now());
        record.readonly = readonly;
        record.automation = kind == TokenKind::Automation;
        Credential::Token(std::sync::Arc::new(record))
    }

    fn no_target() -> Route {
        crate::registry_path::route(&axum::http::Method::GET, "/-/whoami", "")
    }

    fn on(method: &str, path: &str) -> Route {
        crate::registry_path::route(&method.parse().unwrap(), path, "")
    }

    #[test]
    fn permission_table() {
        use Access::*;
        use TokenKind::*;
        // (credential, access, allowed) on a route without a package
        let rows = [
            (token(Session, false), Read, true),
            (token(Session, false), ManageTokens, true),
            (token(Session, false), ChangeProfile, true),
            (token(Session, false), Write, true),
            (token(Publish, false), ManageTokens, true),
            (token(Publish, false), Write, true),
            (token(ReadOnly, true), Read, true),
            (token(ReadOnly, true), ManageTokens, false),
            (token(ReadOnly, true), ChangeProfile, false),
            (token(ReadOnly, true), Write, false),
            (token(Automation, false), Read, true),
            (token(Automation, false), Write, true),
            (token(Automation, false), ManageTokens, false),
            (token(Automation, false), ChangeProfile, false),
            (token(Granular, false), Read, true),
            (token(Granular, false), Write, false),
            (token(Granular, false), ManageTokens, false),
            (token(Granular, true), Read, true),
            (token(Granular, true), Write, false),
            (token(Granular, true), ManageTokens, false),
            (Credential::Password, ManageTokens, true),
            (Credential::Password, Write, true),
        ];
        for (cred, access, allowed) in rows {
            assert_eq!(
                authorize(&cred, access, &no_target()).is_ok(),
                allowed,
                "{cred:?} {access:?}"
            );
        }
    }

    fn granular(
        packages: &[&str],
        scopes: &[&str],
        all: bool,
        permission: Permission,
        orgs: &[&str],
        orgs_permission: Option<Permission>,
    ) -> Credential {
        let mut cred = token(TokenKind::Granular, !permission.can_write());
        if let Credential::Token(t) = &mut cred {
            let t = std::sync::Arc::make_mut(t);
            t.packages = packages.iter().map(|p| p.to_string()).collect();
            t.scopes = scopes.iter().map(|p| p.to_string()).collect();
            t.packages_all = all;
            t.packages_and_scopes_permission = Some(permission);
            t.orgs = orgs.iter().map(|p| p.to_string()).collect();
            t.orgs_permission = orgs_permission;
            t.readonly = false;
        }
        cred
    }

    #[test]
    fn granular_tokens_are_limited_to_their_packages_scopes_and_orgs() {
        use Access::*;
        use Permission::*;
        let acme = granular(&["lodash"], &["@acme"], false, ReadWrite, &[], None);
        let reader = granular(&["lodash"], &["@acme"], false, ReadOnly, &[], None);
        let all = granular(&[], &[], true, ReadWrite, &[], None);
        let none = granular(&[], &[], true, NoAccess, &[], None);
        let org = granular(&[], &[], false, ReadWrite, &["acme"], Some(ReadWrite));
        let org_reader = granular(&[], &[], false, ReadWrite, &["acme"], Some(ReadOnly));
        // (credential, access, method, path, allowed)
        let rows = [
            (&acme, Write, "PUT", "/@acme%2fx", true),
            (&acme, Write, "PUT", "/@other%2fy", false),
            (&acme, Write, "PUT", "/lodash", true),
            (&acme, Write, "PUT", "/lodash-extra", false),
            (&acme, Read, "GET", "/@acme/x/-/x-1.0.0.tgz", true),
            (&acme, Read, "GET", "/@other%2fy", false),
            (
                &acme,
                Write,
                "PUT",
                "/-/package/@acme%2fx/dist-tags/beta",
                true,
            ),
            (&acme, Write, "DELETE", "/@acme%2fx/-rev/1-a", true),
            (&acme, Read, "GET", "/-/v1/search?text=x", true),
            (&acme, Write, "PUT", "/-/org/acme/user", false),
            (&reader, Read, "GET", "/@acme%2fx", true),
            (&reader, Write, "PUT", "/@acme%2fx", false),
            (&all, Write, "PUT", "/anything", true),
            (&all, Write, "PUT", "/@any%2fthing", true),
            (&none, Read, "GET", "/anything", false),
            (&org, Write, "PUT", "/-/org/acme/user", true),
            (&org, Write, "PUT", "/-/team/acme/devs/user", true),
            (&org, Write, "PUT", "/-/org/other/user", false),
            // orgs never grant publishing.
            (&org, Write, "PUT", "/@acme%2fx", false),
            (&org_reader, Read, "GET", "/-/org/acme/user", true),
            (&org_reader, Write, "PUT", "/-/org/acme/user", false),
        ];
        for (cred, access, method, path, allowed) in rows {
            let got = authorize(cred, access, &on(method, path));
            assert_eq!(got.is_ok(), allowed, "{method} {path}: {got:?}");
        }
        let denial = authorize(&acme, Write, &on("PUT", "/@other%2fy")).unwrap_err();
        assert!(
            denial.0.contains("@other/y") && denial.0.contains("@acme/*"),
            "{}",
            denial.0
        );
        let denial = authorize(&reader, Write, &on("PUT", "/@acme%2fx")).unwrap_err();
        assert!(denial.0.contains("read-only"), "{}", denial.0);
    }

    /// Every route the gate forwards to the registry, and who may use it (the second factor
    /// aside). Columns: session, publish, read-only, automation, `foo` read-write, `@acme`
    /// read-only, all packages read-only, all packages read-write, `@acme` stage-only, org
    /// `acme` read-write, `foo` no-access, the account password.
    #[test]
    fn who_may_use_each_forwarded_route() {
        use Permission::*;
        let credentials = [
            token(TokenKind::Session, false),
            token(TokenKind::Publish, false),
            token(TokenKind::ReadOnly, true),
            token(TokenKind::Automation, false),
            granular(&["foo"], &[], false, ReadWrite, &[], None),
            granular(&[], &["@acme"], false, ReadOnly, &[], None),
            granular(&[], &[], true, ReadOnly, &[], None),
            granular(&[], &[], true, ReadWrite, &[], None),
            granular(&[], &["@acme"], false, ReadWriteStageOnly, &[], None),
            granular(&[], &[], false, ReadWrite, &["acme"], Some(ReadWrite)),
            granular(&["foo"], &[], false, NoAccess, &[], None),
            Credential::Password,
        ];
        let rows = [
            ("GET", "/foo", "yyyyynyynnny"),
            ("HEAD", "/foo", "yyyyynyynnny"),
            ("GET", "/foo/1.0.0", "yyyyynyynnny"),
            ("GET", "/@acme%2fx", "yyyynyyyynny"),
            ("GET", "/@acme/x/-/x-1.0.0.tgz", "yyyynyyyynny"),
            ("PUT", "/@acme%2fx", "yynynnnynnny"),
            ("PUT", "/foo", "yynyynnynnny"),
            ("PUT", "/foo/-rev/1-a", "yynyynnynnny"),
            ("POST", "/foo", "yynyynnynnny"),
            ("DELETE", "/foo/-rev/1-a", "yynyynnynnny"),
            ("DELETE", "/foo/-/foo-1.0.0.tgz/-rev/1-a", "yynyynnynnny"),
            ("GET", "/-/package/foo/dist-tags", "yyyyynyynnny"),
            ("PUT", "/-/package/@acme%2fx/dist-tags/beta", "yynynnnynnny"),
            ("DELETE", "/-/package/foo/dist-tags/beta", "yynyynnynnny"),
            ("GET", "/-/package/@acme%2fx/access", "yyyynyyyynny"),
            ("POST", "/-/package/@acme%2fx/access", "yynynnnynnny"),
            ("POST", "/-/stage/package/@acme%2fx", "yynynnnynnny"),
            ("GET", "/-/org/acme/user", "yyyynnnnnyny"),
            ("PUT", "/-/org/acme/user", "yynynnnnnyny"),
            ("PUT", "/-/team/acme/devs/user", "yynynnnnnyny"),
            ("GET", "/-/org/other/user", "yyyynnnnnnny"),
            // Answers filtered to the token's packages (search) or public (audit).
            ("GET", "/-/v1/search?text=x", "yyyyyyyyyyyy"),
            ("POST", "/-/npm/v1/security/advisories/bulk", "yyyyyyyyyyyy"),
            // Unrecognised: only for credentials that may read (or write) every package.
            ("GET", "/-/verdaccio/data/packages", "yyyynnyynnny"),
            ("GET", "/-/all", "yyyynnyynnny"),
            ("GET", "/", "yyyynnyynnny"),
            ("HEAD", "/-/v1/search", "yyyynnyynnny"),
            ("GET", "/-/package/foo/unknown", "yyyynnyynnny"),
            ("GET", "/foo/1.0.0/unknown", "yyyynnyynnny"),
            ("POST", "/-/verdaccio/sec/login", "yynynnnynnny"),
            ("PATCH", "/-/anything", "yynynnnynnny"),
        ];
        for (method, path, expected) in rows {
            let route = on(method, path);
            assert!(route.op.is_registry(), "{method} {path} is forwarded");
            let access = match requirement(route.op) {
                Requirement::Authenticated(access) => access,
                other => panic!("{method} {path}: {other:?}"),
            };
            let got: String = credentials
                .iter()
                .map(|c| {
                    if authorize(c, access, &route).is_ok() {
                        'y'
                    } else {
                        'n'
                    }
                })
                .collect();
            assert_eq!(got, expected, "{method} {path}");
        }
    }

    #[test]
    fn search_answers_are_filtered_for_tokens_limited_to_some_packages() {
        use Permission::*;
        let acme = granular(&["foo"], &["@acme"], false, ReadOnly, &[], None);
        let Some(filter) = search_filter(&acme) else {
            panic!("a limited token's search is filtered");
        };
        assert!(may_read(filter, "foo") && may_read(filter, "@acme/x"));
        assert!(!may_read(filter, "@other/y") && !may_read(filter, "foobar"));
        assert!(!may_read(filter, "@acmex/y"));
        let none = granular(&["foo"], &[], false, NoAccess, &[], None);
        assert!(!may_read(search_filter(&none).unwrap(), "foo"));
        for whole in [
            token(TokenKind::Session, false),
            token(TokenKind::ReadOnly, true),
            granular(&[], &[], true, ReadOnly, &[], None),
            Credential::Password,
        ] {
            assert!(search_filter(&whole).is_none(), "{whole:?}");
        }
    }

    #[test]
    fn anonymous_reads_only_when_configured() {
        assert!(anonymous_allowed(Operation::PackageRead, true));
        assert!(anonymous_allowed(Operation::TarballDownload, true));
        assert!(!anonymous_allowed(Operation::PackageRead, false));
        assert!(!anonymous_allowed(Operation::PackageWrite, true));
        assert!(!anonymous_allowed(Operation::Whoami, true));
        assert!(!anonymous_allowed(Operation::TokenList, true));
    }

    #[test]
    fn otp_table() {
        use Access::*;
        use TfaMode::*;
        let mut bypassing = token(TokenKind::Granular, false);
        if let Credential::Token(t) = &mut bypassing {
            let t = std::sync::Arc::make_mut(t);
            t.bypass_2fa = true;
        }
        let session = token(TokenKind::Session, false);
        let automation = token(TokenKind::Automation, false);
        // (mode, credential, access, required)
        let rows = [
            (None, &session, ManageTokens, false),
            (None, &session, Write, false),
            (Some(AuthOnly), &session, Read, false),
            (Some(AuthOnly), &session, ManageTokens, true),
            (Some(AuthOnly), &session, ChangeProfile, true),
            (Some(AuthOnly), &session, Write, false),
            (Some(AuthAndWrites), &session, Read, false),
            (Some(AuthAndWrites), &session, Write, true),
            (Some(AuthAndWrites), &Credential::Password, Write, true),
            // A password alone never passes two-factor authentication.
            (Some(AuthOnly), &Credential::Password, Read, true),
            (Some(AuthOnly), &Credential::Password, Write, true),
            (Some(AuthAndWrites), &Credential::Password, Read, true),
            (None, &Credential::Password, Write, false),
            (Some(AuthAndWrites), &automation, Write, false),
            (Some(AuthAndWrites), &automation, ManageTokens, true),
            (Some(AuthAndWrites), &bypassing, Write, false),
            (Some(AuthAndWrites), &bypassing, ChangeProfile, true),
        ];
        for (mode, cred, access, required) in rows {
            assert_eq!(
                otp_required(mode, cred, access),
                required,
                "{mode:?} {cred:?} {access:?}"
            );
        }
    }

    #[test]
    fn read_only_refusal_says_so() {
        let none = no_target();
        let err = authorize(
            &token(TokenKind::ReadOnly, true),
            Access::ManageTokens,
            &none,
        )
        .unwrap_err();
        assert!(err.0.contains("read-only"), "{}", err.0);
        let err = authorize(
            &token(TokenKind::Granular, false),
            Access::ManageTokens,
            &none,
        )
        .unwrap_err();
        assert!(err.0.starts_with("A granular token"), "{}", err.0);
        let err = authorize(
            &token(TokenKind::Automation, false),
            Access::ManageTokens,
            &none,
        )
        .unwrap_err();
        assert!(err.0.starts_with("An automation token"), "{}", err.0);
    }

    #[test]
    fn requirements() {
        assert_eq!(requirement(Operation::Login), Requirement::Public);
        assert_eq!(requirement(Operation::Logout), Requirement::Lenient);
        assert_eq!(
            requirement(Operation::TokenCreate),
            Requirement::Authenticated(Access::ManageTokens)
        );
        assert_eq!(
            requirement(Operation::Other { read: false }),
            Requirement::Authenticated(Access::Write)
        );
        assert_eq!(
            requirement(Operation::Audit),
            Requirement::Authenticated(Access::Read)
        );
        assert_eq!(
            requirement(Operation::Unpublish),
            Requirement::Authenticated(Access::Write)
        );
        assert_eq!(requirement(Operation::Verify), Requirement::Public);
        assert_eq!(requirement(Operation::ApiDescription), Requirement::Public);
        assert!(!Operation::ApiDescription.is_registry());
        // The pages authenticate by session cookie themselves.
        assert_eq!(requirement(Operation::Web), Requirement::Public);
        assert!(!Operation::Web.is_registry());
    }
}
