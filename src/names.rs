//! npm's naming rules for users, packages, scopes and orgs.

use crate::error::clip;

/// npm's rules for user names (npm-user-validate): lowercase, URL-safe, not starting with a dot.
pub fn validate_username(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("A user name is required.".into());
    }
    if name.len() > 214 {
        return Err("A user name may be at most 214 characters long.".into());
    }
    if name.to_lowercase() != name {
        return Err(format!("The user name {:?} must be lowercase.", clip(name)));
    }
    if name.starts_with('.') {
        return Err(format!(
            "The user name {:?} may not start with a dot.",
            clip(name)
        ));
    }
    if !name.bytes().all(is_url_safe) {
        return Err(format!(
            "The user name {:?} may contain only letters, digits and - _ . ! ~ * ' ( ).",
            clip(name)
        ));
    }
    Ok(())
}

/// A plausible e-mail address: something@something.something, no spaces.
pub fn validate_email(email: &str) -> Result<(), String> {
    let ok = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{:?} is not a valid e-mail address.", clip(email)))
    }
}

/// Characters `encodeURIComponent` leaves alone.
fn is_url_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// One part of a package name (the name or the scope without `@`) as npm accepts new ones.
fn valid_part(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && !part.starts_with('_')
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._~".contains(&b))
}

/// A package name per npm's rules: `name` or `@scope/name`, lowercase, URL-safe, ≤ 214 chars.
pub fn validate_package(name: &str) -> Result<(), String> {
    let ok = name.len() <= 214
        && match name.strip_prefix('@') {
            Some(scoped) => scoped
                .split_once('/')
                .is_some_and(|(scope, pkg)| valid_part(scope) && valid_part(pkg)),
            // `-` is the path of npm's own namespace (`/-/…`): no request can reach it.
            None => valid_part(name) && !matches!(name, "node_modules" | "favicon.ico" | "-"),
        };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a valid package name: use lowercase letters, digits, - . _ ~, \
             optionally as @scope/name.",
            clip(name)
        ))
    }
}

/// A scope, given with or without `@`; returns it with `@`.
pub fn normalize_scope(scope: &str) -> Result<String, String> {
    let bare = scope.strip_prefix('@').unwrap_or(scope);
    if valid_part(bare) && bare.len() <= 214 {
        Ok(format!("@{bare}"))
    } else {
        Err(format!(
            "{:?} is not a valid scope: use @ followed by lowercase letters, digits, - . _ ~.",
            clip(scope)
        ))
    }
}

/// An org name, given with or without `@`; returns it without `@`.
pub fn normalize_org(org: &str) -> Result<String, String> {
    let bare = org.strip_prefix('@').unwrap_or(org);
    if valid_part(bare) && bare.len() <= 214 {
        Ok(bare.to_owned())
    } else {
        Err(format!(
            "{:?} is not a valid org name: use lowercase letters, digits, - . _ ~.",
            clip(org)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["alice", "bob-1", "a.b_c", "x~y"] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Alice",
            ".alice",
            "al ice",
            "al/ice",
            "älice",
            &"a".repeat(215),
        ] {
            assert!(validate_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(validate_email("a@example.com").is_ok());
        for bad in ["", "a", "a@b", "@b.c", "a b@c.d", "a@.c", "a@c."] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn packages() {
        for ok in ["lodash", "@acme/x", "a.b", "a-b_c", "@a/b~c"] {
            assert!(validate_package(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Lodash",
            ".x",
            "_x",
            "@acme",
            "@acme/",
            "@/x",
            "a b",
            "a/b",
            "node_modules",
            "@acme/x/y",
            "x!",
            // Found by the properties: `/-` is no package's path.
            "-",
        ] {
            assert!(validate_package(bad).is_err(), "{bad}");
        }
    }

    /// Found by the properties: a refusal repeated a name of any length (a body may be 1 MiB).
    #[test]
    fn refusals_repeat_only_the_start_of_a_long_name() {
        let long = "  \u{1d552}".repeat(34);
        for msg in [
            validate_username(&long),
            validate_email(&long),
            validate_package(&long),
            normalize_scope(&long).map(drop),
            normalize_org(&long).map(drop),
        ] {
            let msg = msg.unwrap_err();
            assert!(msg.len() < 300 && msg.contains('…'), "{msg}");
        }
        assert_eq!(
            validate_package("Bad").unwrap_err(),
            "\"Bad\" is not a valid package name: use lowercase letters, digits, - . _ ~, \
             optionally as @scope/name."
        );
    }

    #[test]
    fn scopes_and_orgs() {
        assert_eq!(normalize_scope("acme").unwrap(), "@acme");
        assert_eq!(normalize_scope("@acme").unwrap(), "@acme");
        assert!(normalize_scope("@").is_err());
        assert!(normalize_scope("@Acme").is_err());
        assert_eq!(normalize_org("@acme").unwrap(), "acme");
        assert!(normalize_org("a/b").is_err());
    }
}
