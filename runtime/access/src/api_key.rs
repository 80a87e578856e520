//! Static API keys for services and CI: configuration keeps only their SHA-256, and a
//! presented key is compared against every configured digest in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyConfig;

/// Bytes of randomness in a generated key.
const KEY_BYTES: usize = 32;

/// A configured key with its digest decoded.
#[derive(Debug, Clone)]
pub(crate) struct StoredKey {
    pub(crate) id: String,
    pub(crate) roles: Vec<String>,
    digest: [u8; 32],
}

/// A digest in configuration that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("API key `{0}`: `sha256` must be 64 hex digits")]
pub struct BadDigest(pub String);

impl StoredKey {
    pub(crate) fn from_config(config: &ApiKeyConfig) -> Result<Self, BadDigest> {
        let digest = decode_hex(&config.sha256).ok_or_else(|| BadDigest(config.id.clone()))?;
        Ok(Self {
            id: config.id.clone(),
            roles: config.roles.clone(),
            digest,
        })
    }
}

/// The configured key `presented` is, if any. Every digest is compared, each in constant time,
/// so the answer's timing says nothing about which key or how much of it matched.
pub(crate) fn find<'a>(keys: &'a [StoredKey], presented: &str) -> Option<&'a StoredKey> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = None;
    for key in keys {
        if bool::from(key.digest.ct_eq(&digest)) {
            found = Some(key);
        }
    }
    found
}

/// The lowercase hex SHA-256 of `key`, as configuration stores it.
pub fn digest_hex(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh random API key, `nexus_` and 64 hex digits.
pub fn generate_api_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "nexus_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, key: &str) -> StoredKey {
        StoredKey::from_config(&ApiKeyConfig {
            id: id.to_owned(),
            sha256: digest_hex(key),
            roles: vec!["writer".to_owned()],
        })
        .unwrap()
    }

    #[test]
    fn a_key_is_found_by_its_digest_only() {
        let key = generate_api_key().unwrap();
        assert!(key.starts_with("nexus_") && key.len() == 70);
        let keys = [stored("ci", &key), stored("other", "nexus_other")];
        assert_eq!(find(&keys, &key).map(|k| k.id.as_str()), Some("ci"));
        assert!(find(&keys, &key[..69]).is_none());
        assert!(find(&keys, "").is_none());
    }

    #[test]
    fn digests_must_be_64_hex_digits() {
        let config = |sha256: &str| ApiKeyConfig {
            id: "ci".to_owned(),
            sha256: sha256.to_owned(),
            roles: Vec::new(),
        };
        assert!(StoredKey::from_config(&config("00")).is_err());
        assert!(StoredKey::from_config(&config(&"zz".repeat(32))).is_err());
        assert!(StoredKey::from_config(&config(&"AB".repeat(32))).is_ok());
    }
}
