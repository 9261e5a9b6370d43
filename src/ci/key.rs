//! The key pair a repository's CI logs in with: ed25519, made in memory for
//! one project on one server. The private half is only ever a
//! `SecretString` (wiped when dropped) on its way to GitHub; it is never a
//! file, an argument or a log line. The public half and its fingerprint are
//! not secret.

use secrecy::SecretString;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};

/// A fresh CI key pair.
pub struct CiKey {
    private: SecretString,
    public: String,
    fingerprint: String,
}

/// The key could not be made or encoded (the system's random source failed).
#[derive(Debug, thiserror::Error)]
#[error("making the CI key pair: {0}")]
pub struct KeyError(String);

impl CiKey {
    /// Makes a key pair from the operating system's random source.
    pub fn generate() -> Result<CiKey, KeyError> {
        let mut rng = crypto_box::aead::OsRng;
        let pair = PrivateKey::random(&mut rng, Algorithm::Ed25519)
            .map_err(|e| KeyError(e.to_string()))?;
        // `to_openssh` hands the text back in a `Zeroizing` string: the copy
        // into the `SecretString` is the only one left once it is dropped.
        let private = pair
            .to_openssh(LineEnding::LF)
            .map_err(|e| KeyError(e.to_string()))?;
        let public = pair
            .public_key()
            .to_openssh()
            .map_err(|e| KeyError(e.to_string()))?;
        Ok(CiKey {
            private: SecretString::from(private.as_str()),
            public: public.trim().to_owned(),
            fingerprint: pair.public_key().fingerprint(HashAlg::Sha256).to_string(),
        })
    }

    /// The private half, in OpenSSH's format (what `ssh -i` reads).
    pub fn private_openssh(&self) -> &SecretString {
        &self.private
    }

    /// The public half as `ssh-ed25519 AAAA...`, without a comment.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl std::fmt::Debug for CiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CiKey")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_new_key_is_an_openssh_ed25519_pair_with_its_sha256_fingerprint() {
        let key = CiKey::generate().unwrap();
        let private = key.private_openssh().expose_secret();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        assert!(private.ends_with("-----END OPENSSH PRIVATE KEY-----\n"));
        let parsed = PrivateKey::from_openssh(private).unwrap();
        assert_eq!(
            parsed.public_key().to_openssh().unwrap().trim(),
            key.public()
        );
        assert!(
            key.public().starts_with("ssh-ed25519 AAAA"),
            "{}",
            key.public()
        );
        assert_eq!(key.public().split(' ').count(), 2, "no comment");
        assert!(key.fingerprint().starts_with("SHA256:"));
        assert!(
            !key.fingerprint().ends_with('='),
            "unpadded, as ssh prints it"
        );
    }

    #[test]
    fn every_key_is_new_and_debug_shows_only_the_fingerprint() {
        let (a, b) = (CiKey::generate().unwrap(), CiKey::generate().unwrap());
        assert_ne!(a.public(), b.public());
        let shown = format!("{a:?}");
        assert!(shown.contains(a.fingerprint()), "{shown}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}
