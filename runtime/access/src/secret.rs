//! The development signing secret: created once, readable by its owner only.

use std::io::Write as _;
use std::path::Path;

/// The shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;

/// Reads the HS256 secret in `path`, creating it first (64 random hex digits, mode 0600 on
/// Unix, parent folders included) if it does not exist. Returns the secret and whether it was
/// created.
pub fn ensure_secret_file(path: &Path) -> std::io::Result<(Vec<u8>, bool)> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok((bytes.trim_ascii().to_vec(), false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    Ok((secret.into_bytes(), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth").join("key");
        let (first, created) = ensure_secret_file(&path).unwrap();
        assert!(created);
        assert_eq!(first.len(), 64);
        let (second, created) = ensure_secret_file(&path).unwrap();
        assert!(!created);
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
