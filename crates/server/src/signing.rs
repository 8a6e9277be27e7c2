//! The cluster's signing key (issue 12, section 4): the leader signs the
//! hash chain's head with it (`ChainHeadSigned`), and an auditor who
//! trusts the public key proves a copy of the log is the one that was
//! signed (`kaon audit verify --public-key`).
//!
//! ed25519 (ed25519-dalek): deterministic signatures, 32-byte keys that
//! fit in a line of hex. The key file holds the 32-byte secret seed as 64
//! hex digits; the public key file (`.pub`) the public key the same way.
//! The pure core decides when and what is signed (`Effect::SignChainHead`);
//! only this shell holds the key.

use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::{Signer, Verifier};
use kaon_core::decide::hex;

/// What is signed: a domain tag, the event index and the chain head.
pub fn message(index: u64, chain_head: &[u8]) -> Vec<u8> {
    let mut m = b"kaon chain head v1".to_vec();
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(chain_head);
    m
}

fn unhex(s: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let s = s.trim();
    anyhow::ensure!(
        s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "{what}: not hex digits"
    );
    Ok((0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("checked hex"))
        .collect())
}

/// A loaded signing key.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "SigningKey(public {})", self.public_hex())
    }
}

impl SigningKey {
    /// Reads a key file (64 hex digits); errors name the file.
    pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--signing-key {}: cannot read it", path.display()))?;
        let seed = unhex(&text, &format!("--signing-key {}", path.display()))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| {
            anyhow::anyhow!(
                "--signing-key {}: a key is 64 hex digits (`kaon audit keygen` makes one)",
                path.display()
            )
        })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A new random key: (secret file text, public file text).
    pub fn generate() -> anyhow::Result<(String, String)> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
        let k = ed25519_dalek::SigningKey::from_bytes(&seed);
        Ok((hex(&seed), hex(k.verifying_key().as_bytes())))
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The public key as hex (what `.pub` files hold).
    pub fn public_hex(&self) -> String {
        hex(&self.public_key())
    }

    /// Signs the chain head after event `index`.
    pub fn sign(&self, index: u64, chain_head: &[u8]) -> [u8; 64] {
        self.0.sign(&message(index, chain_head)).to_bytes()
    }
}

/// Reads a public key file (64 hex digits).
pub fn load_public_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--public-key {}: cannot read it", path.display()))?;
    unhex(&text, &format!("--public-key {}", path.display()))?
        .try_into()
        .map_err(|_| {
            anyhow::anyhow!(
                "--public-key {}: a public key is 64 hex digits",
                path.display()
            )
        })
}

/// Whether `signature` is `public_key`'s signature of the chain head after
/// event `index`.
pub fn verify(public_key: &[u8], index: u64, chain_head: &[u8], signature: &[u8]) -> bool {
    let Ok(pk) = <[u8; 32]>::try_from(public_key) else {
        return false;
    };
    let Ok(sig) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    let Ok(vk) = ed25519_dalek::VerifyingKey::from_bytes(&pk) else {
        return false;
    };
    vk.verify(
        &message(index, chain_head),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .is_ok()
}

/// Hex of a public key, for messages.
pub fn key_hex(public_key: &[u8]) -> String {
    hex(public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_key_index_and_head() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, public) = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("k"), &secret).unwrap();
        std::fs::write(dir.path().join("k.pub"), &public).unwrap();
        let k = SigningKey::load(&dir.path().join("k")).unwrap();
        let pk = load_public_key(&dir.path().join("k.pub")).unwrap();
        assert_eq!(pk, k.public_key());
        let head = [7u8; 32];
        let sig = k.sign(42, &head);
        assert!(verify(&pk, 42, &head, &sig));
        assert!(!verify(&pk, 43, &head, &sig), "another index");
        assert!(!verify(&pk, 42, &[8u8; 32], &sig), "another head");
        let (_, other) = SigningKey::generate().unwrap();
        std::fs::write(dir.path().join("o.pub"), &other).unwrap();
        let other = load_public_key(&dir.path().join("o.pub")).unwrap();
        assert!(!verify(&other, 42, &head, &sig), "another key");
        assert!(!format!("{k:?}").contains(&secret), "Debug shows no secret");
        std::fs::write(dir.path().join("bad"), "xyz").unwrap();
        let e = format!(
            "{:#}",
            SigningKey::load(&dir.path().join("bad")).unwrap_err()
        );
        assert!(e.contains("--signing-key") && e.contains("bad"), "{e}");
    }
}
