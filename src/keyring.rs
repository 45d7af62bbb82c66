//! Encryption at rest for second-factor secrets: ChaCha20-Poly1305 under a server key.
//!
//! Sealed values are `v1:KEYID:NONCE:CIPHERTEXT` (base64), so the key can be rotated: the key
//! file holds the current key on its first line and retired keys on the following lines, and
//! values sealed under any of them can still be opened.

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

const VERSION: &str = "v1";

#[derive(Clone)]
struct ServerKey {
    id: String,
    key: [u8; 32],
}

impl ServerKey {
    fn from_bytes(key: [u8; 32]) -> Self {
        let id = hex::encode(&Sha256::digest(key)[..4]);
        ServerKey { id, key }
    }

    fn parse(line: &str) -> anyhow::Result<Self> {
        let bytes = B64.decode(line.trim()).context("a key is not base64")?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("a key must be 32 bytes (44 base64 characters)"))?;
        Ok(Self::from_bytes(key))
    }
}

/// The current key and the retired ones.
#[derive(Clone)]
pub struct KeyRing {
    current: ServerKey,
    retired: Vec<ServerKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyRing(current {}, {} retired)",
            self.current.id,
            self.retired.len()
        )
    }
}

impl KeyRing {
    /// A new random key (tests, and the first start).
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        KeyRing {
            current: ServerKey::from_bytes(key),
            retired: vec![],
        }
    }

    /// Keys as text: one base64 key per line, current first; `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(ServerKey::parse);
        let current = keys.next().context("no key found")??;
        let retired = keys.collect::<anyhow::Result<Vec<_>>>()?;
        Ok(KeyRing { current, retired })
    }

    /// The key text for a new key file.
    pub fn to_file_text(&self) -> String {
        let mut text = String::from(
            "# tokengate server key: encrypts two-factor secrets. Keep it with the database backups.\n\
             # First key: current; further lines: retired keys still accepted for reading.\n",
        );
        for k in std::iter::once(&self.current).chain(&self.retired) {
            text.push_str(&B64.encode(k.key));
            text.push('\n');
        }
        text
    }

    /// Loads the key ring from `inline` (a setting) or from `path`, creating the file with a new
    /// key when neither exists. Returns whether a key was created.
    pub fn load_or_create(inline: Option<&str>, path: &Path) -> anyhow::Result<(Self, bool)> {
        if let Some(text) = inline.filter(|t| !t.trim().is_empty()) {
            return Ok((Self::parse(text).context("setting tfa_key")?, false));
        }
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((
                Self::parse(&text).with_context(|| format!("key file {}", path.display()))?,
                false,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self::generate();
                write_private(path, &ring.to_file_text())
                    .with_context(|| format!("cannot create key file {}", path.display()))?;
                Ok((ring, true))
            }
            Err(e) => Err(e).with_context(|| format!("cannot read key file {}", path.display())),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> String {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.current.key));
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(&nonce, plaintext)
            .expect("encryption does not fail");
        format!(
            "{VERSION}:{}:{}:{}",
            self.current.id,
            B64.encode(nonce),
            B64.encode(sealed)
        )
    }

    pub fn open(&self, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let parts: Vec<&str> = sealed.split(':').collect();
        let [VERSION, id, nonce, data] = parts.as_slice() else {
            bail!("unknown sealed-value format");
        };
        let key = std::iter::once(&self.current)
            .chain(&self.retired)
            .find(|k| k.id == *id)
            .with_context(|| format!("the key {id} that sealed this value is not configured"))?;
        let nonce = B64.decode(nonce).context("bad nonce")?;
        if nonce.len() != 12 {
            bail!("bad nonce length");
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.key));
        cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                B64.decode(data).context("bad data")?.as_ref(),
            )
            .map_err(|_| anyhow::anyhow!("sealed value does not authenticate"))
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_rotate() {
        let old = KeyRing::generate();
        let sealed = old.seal(b"secret");
        assert!(!sealed.contains("secret"));
        assert_eq!(old.open(&sealed).unwrap(), b"secret");
        assert!(KeyRing::generate().open(&sealed).is_err());
        // Rotation: a new current key, the old one retired, old values still open.
        let text = format!(
            "{}{}",
            KeyRing::generate().to_file_text(),
            old.to_file_text()
        );
        let rotated = KeyRing::parse(&text).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), b"secret");
        assert_ne!(
            rotated.seal(b"x").split(':').nth(1),
            sealed.split(':').nth(1)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let ring = KeyRing::generate();
        let sealed = ring.seal(b"secret");
        let mut parts: Vec<String> = sealed.split(':').map(str::to_owned).collect();
        parts[3] = B64.encode(b"something else entirely");
        assert!(ring.open(&parts.join(":")).is_err());
        assert!(ring.open("garbage").is_err());
    }

    #[test]
    fn key_file_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let (a, created) = KeyRing::load_or_create(None, &path).unwrap();
        assert!(created);
        let (b, created) = KeyRing::load_or_create(None, &path).unwrap();
        assert!(!created);
        assert_eq!(b.open(&a.seal(b"x")).unwrap(), b"x");
        assert!(KeyRing::parse("not base64!").is_err());
        assert!(format!("{a:?}").starts_with("KeyRing(current"));
    }
}
