//! Who may do what: pure rules over a principal's credential and an operation.

use crate::registry_path::Operation;
use crate::store::{TfaMode, TokenKind, TokenRecord};

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
    match op {
        Operation::Ping | Operation::Login | Operation::WebLogin => Requirement::Public,
        Operation::Logout => Requirement::Lenient,
        Operation::Whoami | Operation::TokenList | Operation::ProfileRead => {
            Requirement::Authenticated(Access::Read)
        }
        Operation::TokenCreate | Operation::TokenRevoke => {
            Requirement::Authenticated(Access::ManageTokens)
        }
        Operation::ProfileWrite => Requirement::Authenticated(Access::ChangeProfile),
        Operation::Other { read: true } => Requirement::Authenticated(Access::Read),
        Operation::Other { read: false } => Requirement::Authenticated(Access::Write),
    }
}

/// How the caller proved who they are.
#[derive(Clone, Debug)]
pub enum Credential {
    /// A bearer token.
    Token(Box<TokenRecord>),
    /// `Authorization: Basic` with the account password: everything the user may do.
    Password,
}

/// Why a valid credential may not do something; the text is shown by npm after E403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial(pub String);

/// May this credential perform an operation needing `access`?
pub fn authorize(credential: &Credential, access: Access) -> Result<(), Denial> {
    let token = match credential {
        Credential::Password => return Ok(()),
        Credential::Token(t) => t,
    };
    if access == Access::Read {
        return Ok(());
    }
    if token.readonly || token.kind == TokenKind::ReadOnly {
        return Err(Denial(format!(
            "This token is read-only: it can read, but it cannot {}. Use a login session \
             (npm login) or a token with write access.",
            verb(access)
        )));
    }
    match (token.kind, access) {
        (TokenKind::Session | TokenKind::Publish, _) => Ok(()),
        (TokenKind::Automation | TokenKind::Granular, Access::Write) => Ok(()),
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

/// Must a request needing `access` carry a one-time password? `mode` is the account's
/// two-factor mode when enabled. Login asks for one too (see the login handler).
///
/// Token management and profile changes always need one; package writes only in
/// `auth-and-writes`, and not from automation tokens or granular tokens with `bypass_2fa`.
pub fn otp_required(mode: Option<TfaMode>, credential: &Credential, access: Access) -> bool {
    let Some(mode) = mode else {
        return false;
    };
    match access {
        Access::Read => false,
        Access::ManageTokens | Access::ChangeProfile => true,
        Access::Write => {
            let bypass = match credential {
                Credential::Token(t) => t.kind == TokenKind::Automation || t.bypass_2fa,
                Credential::Password => false,
            };
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
        Credential::Token(Box::new(TokenRecord {
            key: TokenKey::of("x"),
            user_id: 1,
            redacted: "npm_x".into(),
            kind,
            name: None,
            description: None,
            readonly,
            automation: kind == TokenKind::Automation,
            bypass_2fa: false,
            cidr_whitelist: None,
            packages: vec![],
            packages_all: false,
            scopes: vec![],
            orgs: vec![],
            packages_and_scopes_permission: None,
            orgs_permission: None,
            created: Utc::now(),
            expires: None,
            revoked: None,
        }))
    }

    #[test]
    fn permission_table() {
        use Access::*;
        use TokenKind::*;
        // (credential, access, allowed)
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
            (token(Granular, false), Write, true),
            (token(Granular, false), ManageTokens, false),
            (token(Granular, true), Read, true),
            (token(Granular, true), Write, false),
            (token(Granular, true), ManageTokens, false),
            (Credential::Password, ManageTokens, true),
            (Credential::Password, Write, true),
        ];
        for (cred, access, allowed) in rows {
            assert_eq!(
                authorize(&cred, access).is_ok(),
                allowed,
                "{cred:?} {access:?}"
            );
        }
    }

    #[test]
    fn otp_table() {
        use Access::*;
        use TfaMode::*;
        let mut bypassing = token(TokenKind::Granular, false);
        if let Credential::Token(t) = &mut bypassing {
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
        let err = authorize(&token(TokenKind::ReadOnly, true), Access::ManageTokens).unwrap_err();
        assert!(err.0.contains("read-only"), "{}", err.0);
        let err = authorize(&token(TokenKind::Granular, false), Access::ManageTokens).unwrap_err();
        assert!(err.0.starts_with("A granular token"), "{}", err.0);
        let err =
            authorize(&token(TokenKind::Automation, false), Access::ManageTokens).unwrap_err();
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
    }
}
