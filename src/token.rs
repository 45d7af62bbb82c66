//! Token format: `PREFIX` + 30 random base62 characters + a 6-character base62 CRC32 of the
//! random part. Only the SHA-512 hex of the whole token (its key) is ever stored.

use rand::{distributions::Alphanumeric, rngs::OsRng, Rng};
use sha2::{Digest, Sha512};
use std::fmt;

/// Length of the random part of a token.
pub const RANDOM_LEN: usize = 30;
/// Length of the base62 checksum that follows the random part.
pub const CHECKSUM_LEN: usize = 6;
/// How many random characters the listed (redacted) form keeps after the prefix.
const VISIBLE_RANDOM: usize = 4;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A token in clear. It never prints itself: `Debug` and `Display` show a redacted form.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainToken(String);

/// The SHA-512 hex digest of a token: its identity in storage and in the API (`key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenKey(pub String);

impl std::hash::Hash for TokenKey {
    /// Hashes the first 16 hex digits only. A digest is already evenly spread, so 64 of its bits
    /// are plenty for a hash table, and hashing all 128 digits showed in the per-request check's
    /// profile (the verification cache is keyed by it). Equal keys still hash equally.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(self.head());
    }
}

/// Why a string is not one of our tokens.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenFormatError {
    #[error("the token does not start with the expected prefix")]
    Prefix,
    #[error("the token has the wrong length")]
    Length,
    #[error("the token contains characters that are not letters or digits")]
    Charset,
    #[error("the token's checksum does not match")]
    Checksum,
}

impl PlainToken {
    /// A new token from the operating system's CSPRNG.
    pub fn generate(prefix: &str) -> Self {
        let random: String = OsRng
            .sample_iter(&Alphanumeric)
            .take(RANDOM_LEN)
            .map(char::from)
            .collect();
        let checksum = checksum(&random);
        PlainToken(format!("{prefix}{random}{checksum}"))
    }

    /// Checks prefix, length, alphabet and checksum without any I/O.
    pub fn parse(prefix: &str, s: &str) -> Result<Self, TokenFormatError> {
        Self::check(prefix, s)?;
        Ok(PlainToken(s.to_owned()))
    }

    /// What [`PlainToken::parse`] checks, without keeping a copy of the token: the
    /// per-request check only needs its key.
    pub fn check(prefix: &str, s: &str) -> Result<(), TokenFormatError> {
        let body = s.strip_prefix(prefix).ok_or(TokenFormatError::Prefix)?;
        if body.len() != RANDOM_LEN + CHECKSUM_LEN {
            return Err(TokenFormatError::Length);
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenFormatError::Charset);
        }
        let (random, sum) = body.split_at(RANDOM_LEN);
        if checksum_digits(random) != sum.as_bytes() {
            return Err(TokenFormatError::Checksum);
        }
        Ok(())
    }

    /// The secret itself, for the one answer that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> TokenKey {
        TokenKey::of(&self.0)
    }

    /// The listed form: the prefix and a few characters, a true prefix of the token so that
    /// `npm token revoke <full token>` can match it.
    pub fn redacted(&self, prefix: &str) -> String {
        self.0
            .chars()
            .take(prefix.chars().count() + VISIBLE_RANDOM)
            .collect()
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlainToken(<redacted>)")
    }
}

impl TokenKey {
    /// The key of any string, also of one that is not a well-formed token.
    pub fn of(secret: &str) -> Self {
        TokenKey(lower_hex(&Sha512::digest(secret.as_bytes()).into()))
    }

    /// A 128-character lowercase hex string, as a key arrives in a revoke path.
    pub fn parse_hex(s: &str) -> Option<Self> {
        (s.len() == 128
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| TokenKey(s.to_owned()))
    }

    /// The first 16 hex digits (64 bits of the digest), which tell keys apart well enough for
    /// a hash table or for noticing the same token used twice in a row.
    pub fn head(&self) -> &[u8] {
        let digits = self.0.as_bytes();
        &digits[..digits.len().min(16)]
    }

    /// A short id for logs: enough to find the token, useless to an attacker.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

/// Lowercase hex, filled in place rather than through `char` iterators or a push per digit:
/// this runs on every request.
fn lower_hex(digest: &[u8; 64]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 128];
    for (pair, b) in out.chunks_exact_mut(2).zip(digest) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0f)];
    }
    String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
}

/// CRC32 of the random part, as 6 base62 digits (62^6 > 2^32).
pub fn checksum(random: &str) -> String {
    String::from_utf8(checksum_digits(random).to_vec()).expect("base62 is ASCII")
}

fn checksum_digits(random: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(random.as_bytes()) as u64;
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = PlainToken::generate("npm_");
        let b = PlainToken::generate("npm_");
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 4 + RANDOM_LEN + CHECKSUM_LEN);
        assert_eq!(PlainToken::parse("npm_", a.expose()), Ok(a.clone()));
        assert!(a.expose().starts_with(&a.redacted("npm_")));
        assert_eq!(a.redacted("npm_").len(), 8);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = PlainToken::generate("npm_");
        let s = t.expose();
        assert_eq!(PlainToken::parse("tg_", s), Err(TokenFormatError::Prefix));
        assert_eq!(
            PlainToken::parse("npm_", &s[..s.len() - 1]),
            Err(TokenFormatError::Length)
        );
        let mut bad = s.to_owned();
        bad.replace_range(5..6, "-");
        assert_eq!(
            PlainToken::parse("npm_", &bad),
            Err(TokenFormatError::Charset)
        );
        // Change one random character: the checksum no longer matches.
        let mut flipped = s.to_owned().into_bytes();
        flipped[6] = if flipped[6] == b'a' { b'b' } else { b'a' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            PlainToken::parse("npm_", &flipped),
            Err(TokenFormatError::Checksum)
        );
    }

    #[test]
    fn check_agrees_with_parse() {
        let token = PlainToken::generate("npm_");
        let good = token.expose();
        let mut bad_sum = good.to_owned();
        let last = if bad_sum.ends_with('a') { "b" } else { "a" };
        bad_sum.replace_range(bad_sum.len() - 1.., last);
        for s in [good, bad_sum.as_str(), "npm_short", "xyz_", ""] {
            assert_eq!(
                PlainToken::check("npm_", s),
                PlainToken::parse("npm_", s).map(|_| ()),
                "{s}"
            );
        }
        assert_eq!(
            PlainToken::check("npm_", &bad_sum),
            Err(TokenFormatError::Checksum)
        );
    }

    /// Keys hash by their first 16 digits only; keys alike there are still told apart.
    #[test]
    fn keys_alike_in_their_first_digits_stay_distinct_in_maps() {
        use std::collections::HashMap;
        let a = TokenKey(format!("{}{}", "0".repeat(16), "a".repeat(112)));
        let b = TokenKey(format!("{}{}", "0".repeat(16), "b".repeat(112)));
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(
            std::hash::BuildHasher::hash_one(&state, &a),
            std::hash::BuildHasher::hash_one(&state, &b)
        );
        let map: HashMap<TokenKey, u8> = [(a.clone(), 1), (b.clone(), 2)].into();
        assert_eq!((map[&a], map[&b]), (1, 2));
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn checksum_is_fixed_width_base62() {
        assert_eq!(checksum("").len(), CHECKSUM_LEN);
        assert_eq!(checksum("abc"), checksum("abc"));
        assert_ne!(checksum("abc"), checksum("abd"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = PlainToken::generate("npm_");
        assert!(!format!("{t:?}").contains(t.expose()));
    }

    #[test]
    fn keys_are_sha512_hex() {
        let k = TokenKey::of("abc");
        assert_eq!(k.0.len(), 128);
        assert!(k.0.starts_with("ddaf35a193617aba"));
        assert_eq!(TokenKey::parse_hex(&k.0), Some(k.clone()));
        assert_eq!(TokenKey::parse_hex(&k.0.to_uppercase()), None);
        assert_eq!(TokenKey::parse_hex("abc"), None);
    }
}
