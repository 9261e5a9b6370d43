//! Sealing a secret for a repository: libsodium's `crypto_box_seal` with
//! the repository's public key, as GitHub's API requires. The `crypto_box`
//! crate (RustCrypto, audited, interoperable with libsodium's sealed boxes)
//! does the cryptography; nothing here is more than encoding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crypto_box::PublicKey;
use crypto_box::aead::OsRng;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::GithubError;

/// `GET /repos/{owner}/{repo}/actions/secrets/public-key`, as GitHub
/// answers it.
#[derive(Deserialize)]
pub(crate) struct PublicKeyAnswer {
    key_id: String,
    key: String,
}

/// A repository's public key for Actions secrets and the id GitHub wants
/// back with every value sealed for it.
#[derive(Clone)]
pub(crate) struct RepoKey {
    key_id: String,
    key: PublicKey,
}

/// The body of `PUT /repos/{owner}/{repo}/actions/secrets/{name}`.
#[derive(serde::Serialize)]
pub(crate) struct SealedSecret {
    encrypted_value: String,
    key_id: String,
}

impl RepoKey {
    /// Checks GitHub's answer: the key is 32 bytes of base64 (an X25519
    /// public key).
    pub fn from_answer(answer: PublicKeyAnswer, what: &str) -> Result<RepoKey, GithubError> {
        let malformed = |problem: &str| GithubError::Malformed {
            what: what.to_owned(),
            problem: problem.to_owned(),
        };
        let bytes = STANDARD
            .decode(answer.key.trim())
            .map_err(|_| malformed("the public key is not base64"))?;
        let key = PublicKey::from_slice(&bytes)
            .map_err(|_| malformed("the public key is not 32 bytes"))?;
        if answer.key_id.is_empty() {
            return Err(malformed("the key id is empty"));
        }
        Ok(RepoKey {
            key_id: answer.key_id,
            key,
        })
    }

    /// `value` sealed for this key, base64-encoded, with the key's id.
    pub fn seal(&self, value: &SecretString) -> Result<SealedSecret, GithubError> {
        let sealed = self
            .key
            .seal(&mut OsRng, value.expose_secret().as_bytes())
            .map_err(|_| GithubError::Setup("sealing a secret failed".to_owned()))?;
        Ok(SealedSecret {
            encrypted_value: STANDARD.encode(sealed),
            key_id: self.key_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_box::SecretKey;

    #[test]
    fn a_sealed_value_opens_with_the_repository_private_key_only() {
        let private = SecretKey::generate(&mut OsRng);
        let answer = PublicKeyAnswer {
            key_id: "568250167242549743".into(),
            key: STANDARD.encode(private.public_key().as_bytes()),
        };
        let key = RepoKey::from_answer(answer, "the public key of o/r").unwrap();
        let sealed = key.seal(&SecretString::from("hunter2-value")).unwrap();
        assert_eq!(sealed.key_id, "568250167242549743");
        let bytes = STANDARD.decode(&sealed.encrypted_value).unwrap();
        assert!(!sealed.encrypted_value.contains("hunter2"));
        assert_eq!(private.unseal(&bytes).unwrap(), b"hunter2-value");
        let other = SecretKey::generate(&mut OsRng);
        assert!(other.unseal(&bytes).is_err());
    }

    #[test]
    fn a_key_that_is_not_32_bytes_of_base64_is_malformed() {
        for key in ["not base64!", "AAAA"] {
            let answer = PublicKeyAnswer {
                key_id: "1".into(),
                key: key.into(),
            };
            let e = RepoKey::from_answer(answer, "the public key of o/r")
                .err()
                .unwrap();
            assert!(matches!(e, GithubError::Malformed { .. }), "{e}");
        }
    }
}
