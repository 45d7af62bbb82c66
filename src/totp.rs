//! RFC 6238 TOTP (SHA-1, 6 digits, 30 s, one step of skew either way) and recovery codes.
//! Pure: the caller stores the last accepted step so a code is never accepted twice.

use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

pub const STEP_SECS: u64 = 30;
const DIGITS: usize = 6;
const SECRET_BYTES: usize = 20;
pub const RECOVERY_CODES: usize = 10;

/// A fresh 160-bit secret.
pub fn generate_secret() -> Vec<u8> {
    let mut bytes = vec![0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// The secret as authenticator apps want it: base32 without padding.
pub fn base32(secret: &[u8]) -> String {
    match Secret::Raw(secret.to_vec()).to_encoded() {
        Secret::Encoded(s) => s,
        Secret::Raw(_) => unreachable!("to_encoded gives Encoded"),
    }
}

/// `otpauth://totp/ISSUER:ACCOUNT?secret=…&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`
pub fn otpauth_url(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        base32(secret),
        enc(issuer)
    )
}

fn totp(secret: &[u8]) -> TOTP {
    TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 1, STEP_SECS, secret.to_vec())
}

/// The code for a time step (for tests and for authenticator-like tools).
pub fn code_at_step(secret: &[u8], step: i64) -> String {
    totp(secret).generate(step.max(0) as u64 * STEP_SECS)
}

pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS as i64)
}

/// Whether `code` looks like a TOTP code (six digits) rather than a recovery code.
pub fn is_totp_shape(code: &str) -> bool {
    code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit())
}

/// The step (within one of `now`) whose code is `code` and that is newer than `last_used`.
pub fn matching_step(
    secret: &[u8],
    code: &str,
    unix_now: i64,
    last_used: Option<i64>,
) -> Option<i64> {
    if !is_totp_shape(code) {
        return None;
    }
    let now = step_of(unix_now);
    let mut found = None;
    // Check every candidate so the time taken does not depend on which one matched.
    for step in [now - 1, now, now + 1] {
        let matches: bool = code_at_step(secret, step)
            .as_bytes()
            .ct_eq(code.as_bytes())
            .into();
        if matches && last_used.is_none_or(|last| step > last) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// Ten single-use recovery codes of 64 hex characters (256 bits), the shape npm's OTP prompt
/// accepts besides digits.
pub fn generate_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 32];
            OsRng.fill_bytes(&mut bytes);
            hex::encode(bytes)
        })
        .collect()
}

/// How a recovery code is stored; the codes carry 256 random bits, so a fast hash suffices.
pub fn hash_recovery_code(code: &str) -> String {
    hex::encode(Sha256::digest(code.trim().to_ascii_lowercase().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 6238 appendix B, SHA-1: secret "12345678901234567890", T = 59 → 94287082 (8 digits).
    #[test]
    fn rfc6238_vector_in_six_digits() {
        let secret = b"12345678901234567890";
        assert_eq!(code_at_step(secret, 59 / 30), "287082");
        assert_eq!(code_at_step(secret, 1111111109 / 30), "081804");
    }

    #[test]
    fn skew_and_replay() {
        let secret = generate_secret();
        let now = 1_700_000_000;
        let step = step_of(now);
        for (delta, ok) in [(-2, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = code_at_step(&secret, step + delta);
            assert_eq!(
                matching_step(&secret, &code, now, None).is_some(),
                ok,
                "{delta}"
            );
        }
        let code = code_at_step(&secret, step);
        assert_eq!(
            matching_step(&secret, &code, now, Some(step)),
            None,
            "replay"
        );
        assert_eq!(
            matching_step(&secret, &code, now, Some(step - 1)),
            Some(step)
        );
        assert_eq!(matching_step(&secret, "12345", now, None), None);
        assert_eq!(matching_step(&secret, "abcdef", now, None), None);
    }

    #[test]
    fn otpauth_urls_carry_the_base32_secret() {
        let url = otpauth_url("tokengate", "alice", b"12345678901234567890");
        assert!(url.starts_with("otpauth://totp/tokengate:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=tokengate"), "{url}");
    }

    #[test]
    fn recovery_codes_are_distinct_and_hashed() {
        let codes = generate_recovery_codes();
        assert_eq!(codes.len(), 10);
        assert!(codes
            .iter()
            .all(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit())));
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), 10);
        assert_eq!(
            hash_recovery_code(&codes[0]),
            hash_recovery_code(&codes[0].to_uppercase())
        );
        assert_ne!(hash_recovery_code(&codes[0]), hash_recovery_code(&codes[1]));
        assert!(!is_totp_shape(&codes[0]));
    }
}
