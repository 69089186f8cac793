//! Signed messages (`docs/security.md`): with a cluster key configured, every message a
//! process publishes carries an HMAC-SHA256 over its exact bytes and the time it was signed,
//! with the key's id, in the AMQP headers; a process that has a key accepts only messages
//! signed with a key it holds (its current one, or the previous one while keys rotate). A key
//! is named by its id: the first 8 hex digits of its SHA-256, so that no configuration names
//! it twice.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The AMQP header that names the key a message was signed with.
pub const KEY_HEADER: &str = "gorgon-key";
/// The AMQP header with the HMAC-SHA256, in hex, of the signing time and the body.
pub const MAC_HEADER: &str = "gorgon-mac";
/// The AMQP header with the signing time, in milliseconds since the Unix epoch.
pub const SIGNED_AT_HEADER: &str = "gorgon-signed-at";

/// A job definition signed longer ago than this is refused as a replay (and one signed more
/// than this far in the future, as from a clock that cannot be trusted).
pub const JOB_MAX_AGE: Duration = Duration::from_secs(300);

/// The shortest key accepted, in bytes.
const MIN_KEY_BYTES: usize = 16;

/// The keys of one process, as configured: the key it signs with, and the previous one it
/// still accepts while a cluster rotates keys. They travel to a worker manager in its
/// assignment (never to workers).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeys {
    pub current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("current", &key_id(self.current.as_bytes()))
            .field(
                "previous",
                &self.previous.as_deref().map(|k| key_id(k.as_bytes())),
            )
            .finish()
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key file {path} can be read by others (mode {mode:o}); make it readable by its owner only (chmod 600)")]
    Readable { path: String, mode: u32 },
    #[error("a signing key must be at least {MIN_KEY_BYTES} bytes long")]
    Short,
}

/// Reads a key file: its text without surrounding whitespace. The file must be readable by
/// its owner only.
pub fn read_key_file(path: &Path) -> Result<String, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Readable { path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: shown,
        source,
    })?;
    let key = text.trim().to_owned();
    if key.len() < MIN_KEY_BYTES {
        return Err(KeyError::Short);
    }
    Ok(key)
}

/// Checks an inline key.
pub fn check_key(key: &str) -> Result<String, KeyError> {
    let key = key.trim();
    if key.len() < MIN_KEY_BYTES {
        return Err(KeyError::Short);
    }
    Ok(key.to_owned())
}

/// Signing keys named in a config file in a way that cannot be used. Each message is the
/// second half of a sentence that starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    #[error("set {name} or {name}_file, not both")]
    Both { name: &'static str },
    #[error("{name} must be a string")]
    NotText { name: &'static str },
    #[error("{name}_file must be a path")]
    NotPath { name: &'static str },
    /// `key` is the config key the key came from (`signing_key` or `signing_key_file`...).
    #[error("{key}: {source}")]
    Unusable {
        key: String,
        #[source]
        source: KeyError,
    },
    #[error("previous_signing_key is set without signing_key")]
    PreviousAlone,
}

/// The keys a config file names at its top level: `signing_key` (inline, for
/// `gorgon_secret.json`) or `signing_key_file` (a path, relative to `base`), and the same
/// with `previous_` for the key a listener still accepts while keys rotate. `None` without a
/// key.
pub fn keys_from_config(
    config: &serde_json::Value,
    base: &Path,
) -> Result<Option<SigningKeys>, KeyConfigError> {
    let current = key_from_config(config, base, "signing_key")?;
    let previous = key_from_config(config, base, "previous_signing_key")?;
    match (current, previous) {
        (Some(current), previous) => Ok(Some(SigningKeys { current, previous })),
        (None, Some(_)) => Err(KeyConfigError::PreviousAlone),
        (None, None) => Ok(None),
    }
}

/// The key that `config` names as `name` (inline) or `name_file` (a path), if any.
fn key_from_config(
    config: &serde_json::Value,
    base: &Path,
    name: &'static str,
) -> Result<Option<String>, KeyConfigError> {
    let inline = config.get(name).filter(|v| !v.is_null());
    let file_key = format!("{name}_file");
    let file = config.get(&file_key).filter(|v| !v.is_null());
    let unusable = |key: String| move |source| KeyConfigError::Unusable { key, source };
    match (inline, file) {
        (Some(_), Some(_)) => Err(KeyConfigError::Both { name }),
        (Some(serde_json::Value::String(text)), None) => {
            check_key(text).map(Some).map_err(unusable(name.to_owned()))
        }
        (Some(_), None) => Err(KeyConfigError::NotText { name }),
        (None, Some(serde_json::Value::String(path))) => read_key_file(&base.join(path))
            .map(Some)
            .map_err(unusable(file_key)),
        (None, Some(_)) => Err(KeyConfigError::NotPath { name }),
        (None, None) => Ok(None),
    }
}

/// The id of a key: the first 8 hex digits of its SHA-256.
pub fn key_id(key: &[u8]) -> String {
    hex(&Sha256::digest(key)[..4])
}

/// A message's signature, as carried in its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub key_id: String,
    pub signed_at_ms: u64,
    pub mac: String,
}

/// Why a message is not trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("it is not signed")]
    Unsigned,
    #[error("it is signed with key {0}, which this process does not hold")]
    UnknownKey(String),
    #[error("its signature does not match its contents (tampered with, or a wrong key)")]
    Tampered,
}

impl Untrusted {
    /// A name for the reason alone (without the key id), under which refusals are logged
    /// once a minute.
    pub fn kind(&self) -> &'static str {
        match self {
            Untrusted::Unsigned => "unsigned",
            Untrusted::UnknownKey(_) => "unknown key",
            Untrusted::Tampered => "tampered",
        }
    }
}

/// What a process signs with and accepts.
pub struct Trust {
    current: (String, Vec<u8>),
    accepted: Vec<(String, Vec<u8>)>,
}

impl Trust {
    pub fn new(keys: &SigningKeys) -> Trust {
        let entry = |key: &str| (key_id(key.as_bytes()), key.as_bytes().to_vec());
        let current = entry(&keys.current);
        let mut accepted = vec![current.clone()];
        accepted.extend(keys.previous.as_deref().map(entry));
        Trust { current, accepted }
    }

    /// The id of the key this process signs with.
    pub fn key_id(&self) -> &str {
        &self.current.0
    }

    /// Signs `body` as sent now.
    pub fn sign(&self, body: &[u8]) -> Signature {
        self.sign_at(body, now_ms())
    }

    /// Signs `body` as sent at `signed_at_ms` (milliseconds since the Unix epoch).
    pub fn sign_at(&self, body: &[u8], signed_at_ms: u64) -> Signature {
        Signature {
            key_id: self.current.0.clone(),
            signed_at_ms,
            mac: hex(&mac(&self.current.1, signed_at_ms, body)),
        }
    }

    /// Checks `signature` over `body`.
    pub fn verify(&self, body: &[u8], signature: Option<&Signature>) -> Result<(), Untrusted> {
        let signature = signature.ok_or(Untrusted::Unsigned)?;
        let (_, key) = self
            .accepted
            .iter()
            .find(|(id, _)| *id == signature.key_id)
            .ok_or_else(|| Untrusted::UnknownKey(signature.key_id.clone()))?;
        let expected = unhex(&signature.mac).ok_or(Untrusted::Tampered)?;
        keyed(key, signature.signed_at_ms, body)
            .verify_slice(&expected)
            .map_err(|_| Untrusted::Tampered)
    }
}

/// How long ago a message was signed (negative: in the future), in milliseconds.
pub fn age_ms(signature: &Signature) -> i128 {
    i128::from(now_ms()) - i128::from(signature.signed_at_ms)
}

fn mac(key: &[u8], signed_at_ms: u64, body: &[u8]) -> Vec<u8> {
    keyed(key, signed_at_ms, body)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// The HMAC of a message: the signing time in decimal, a newline, the body.
fn keyed(key: &[u8], signed_at_ms: u64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(signed_at_ms.to_string().as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str, previous: Option<&str>) -> Trust {
        Trust::new(&SigningKeys {
            current: current.into(),
            previous: previous.map(String::from),
        })
    }

    #[test]
    fn a_signature_holds_for_its_bytes_and_key_only() {
        let trust = keys("the-cluster-key-1", None);
        let body = br#"{"protocol":1}"#;
        let signature = trust.sign(body);
        assert_eq!(signature.key_id, key_id(b"the-cluster-key-1"));
        assert_eq!(trust.verify(body, Some(&signature)), Ok(()));
        assert_eq!(trust.verify(body, None), Err(Untrusted::Unsigned));
        assert_eq!(
            trust.verify(br#"{"protocol":2}"#, Some(&signature)),
            Err(Untrusted::Tampered)
        );
        let mut later = signature.clone();
        later.signed_at_ms += 1;
        assert_eq!(trust.verify(body, Some(&later)), Err(Untrusted::Tampered));
        let other = keys("another-cluster-key", None).sign(body);
        assert_eq!(
            trust.verify(body, Some(&other)),
            Err(Untrusted::UnknownKey(other.key_id.clone()))
        );
        // A forged signature under a known key id.
        let forged = Signature {
            mac: "00".repeat(32),
            ..signature
        };
        assert_eq!(trust.verify(body, Some(&forged)), Err(Untrusted::Tampered));
    }

    #[test]
    fn the_previous_key_is_accepted_while_keys_rotate() {
        let old = keys("the-old-cluster-key", None);
        let rotating = keys("the-new-cluster-key", Some("the-old-cluster-key"));
        let rotated = keys("the-new-cluster-key", None);
        let body = b"job";
        let by_old = old.sign(body);
        let by_new = rotating.sign(body);
        assert_eq!(rotating.verify(body, Some(&by_old)), Ok(()));
        assert_eq!(rotating.verify(body, Some(&by_new)), Ok(()));
        assert_eq!(rotated.verify(body, Some(&by_new)), Ok(()));
        assert!(matches!(
            rotated.verify(body, Some(&by_old)),
            Err(Untrusted::UnknownKey(_))
        ));
    }

    #[test]
    fn keys_are_read_from_the_top_of_a_config() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.key");
        std::fs::write(&file, "key-of-the-new-cluster\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let config = serde_json::json!({
            "signing_key_file": "cluster.key",
            "previous_signing_key": "key-of-the-old-cluster"
        });
        let keys = keys_from_config(&config, dir.path()).unwrap().unwrap();
        assert_eq!(keys.current, "key-of-the-new-cluster");
        assert_eq!(keys.previous.as_deref(), Some("key-of-the-old-cluster"));
        assert_eq!(
            keys_from_config(&serde_json::json!({}), dir.path()).unwrap(),
            None
        );
        let both = serde_json::json!({"signing_key": "x".repeat(20), "signing_key_file": "k"});
        assert_eq!(
            keys_from_config(&both, dir.path()).unwrap_err().to_string(),
            "set signing_key or signing_key_file, not both"
        );
        let short = serde_json::json!({"signing_key": "short"});
        assert!(keys_from_config(&short, dir.path())
            .unwrap_err()
            .to_string()
            .starts_with("signing_key: "));
    }

    #[test]
    fn key_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "a-long-enough-cluster-key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_key_file(&path),
            Err(KeyError::Readable { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&path).unwrap(), "a-long-enough-cluster-key");
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(read_key_file(&path), Err(KeyError::Short)));
        assert!(matches!(check_key(" short "), Err(KeyError::Short)));
    }
}
