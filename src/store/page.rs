//! Where a page of a user's token list starts. Lists run newest first, ties broken by key.
//! A page that starts after the last token of the previous one (keyset paging) costs the same
//! however deep it is, and neither skips nor repeats a token when others are created or
//! revoked between pages; an offset is kept for clients that ask for `?page=N` directly.

use super::TokenRecord;
use crate::token::TokenKey;
use std::fmt;
use std::str::FromStr;

/// Where a page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokensFrom {
    /// After skipping this many tokens.
    Offset(i64),
    /// Just after this token's place in the list.
    After(TokenCursor),
}

/// A place in a user's token list: a token's creation time and key. Written into the
/// `after` parameter of the list's `urls.next` as `CREATED_MS.KEY`; the key is already shown in
/// the list, so the cursor reveals nothing new.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenCursor {
    pub created_ms: i64,
    pub key: TokenKey,
}

impl TokenCursor {
    /// The place just after `token`.
    pub fn after(token: &TokenRecord) -> Self {
        TokenCursor {
            created_ms: token.created.timestamp_millis(),
            key: token.key.clone(),
        }
    }
}

impl fmt::Display for TokenCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.created_ms, self.key.0)
    }
}

/// The cursor is not `CREATED_MS.KEY`.
#[derive(Debug, PartialEq, Eq)]
pub struct BadCursor;

impl FromStr for TokenCursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        let (created, key) = s.split_once('.').ok_or(BadCursor)?;
        // Digits only: `i64::from_str` would also take a sign.
        if created.is_empty() || !created.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadCursor);
        }
        Ok(TokenCursor {
            created_ms: created.parse().map_err(|_| BadCursor)?,
            key: TokenKey::parse_hex(key).ok_or(BadCursor)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> String {
        std::iter::repeat_n(c, 128).collect()
    }

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let cursor = TokenCursor {
            created_ms: 1_764_000_000_123,
            key: TokenKey(key('a')),
        };
        let written = cursor.to_string();
        assert_eq!(written, format!("1764000000123.{}", key('a')));
        assert_eq!(written.parse::<TokenCursor>(), Ok(cursor));
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for bad in [
            String::new(),
            "123".into(),
            key('a'),
            format!(".{}", key('a')),
            format!("-5.{}", key('a')),
            format!("+5.{}", key('a')),
            format!("1e3.{}", key('a')),
            format!("99999999999999999999.{}", key('a')),
            "5.abc".into(),
            format!("5.{}", key('A')),
            format!("5.{}", key('g')),
            format!("5.{}.", key('a')),
        ] {
            assert_eq!(bad.parse::<TokenCursor>(), Err(BadCursor), "{bad:?}");
        }
    }
}
