//! WireGuard keys: X25519, clamped and base64-encoded exactly as `wg genkey` / `wg pubkey` do.
//!
//! Nodes make their own private keys ([`PrivateKey::generate`]); only public keys travel to the plan.
//! Tests and snapshots use [`PrivateKey::from_seed`] so rendered files are reproducible.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

/// A WireGuard private key. Its `Debug` hides the key; `to_base64` is the only way out.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

/// A WireGuard public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

/// Why a key could not be read.
#[derive(Debug, displaydoc::Display, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// a WireGuard key is 44 characters of base64 encoding 32 bytes
    Malformed,
    /// could not get random bytes for a new key: {0}
    Random(String),
}

fn clamp(mut bytes: [u8; 32]) -> [u8; 32] {
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    bytes
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let v = STANDARD.decode(s.trim()).map_err(|_| KeyError::Malformed)?;
    v.try_into().map_err(|_| KeyError::Malformed)
}

impl PrivateKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(PrivateKey(clamp(bytes)))
    }

    /// A deterministic key for tests and snapshots: never use for a real cluster.
    pub fn from_seed(seed: &str) -> Self {
        // FNV-1a spread over 32 bytes: reproducible and dependency-free; not secret by design.
        let mut bytes = [0u8; 32];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (i, b) in bytes.iter_mut().enumerate() {
            for c in seed.bytes().chain([i as u8]) {
                h ^= u64::from(c);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            *b = (h >> 24) as u8;
        }
        PrivateKey(clamp(bytes))
    }

    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        Ok(PrivateKey(clamp(decode32(s)?)))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn public_key(&self) -> PublicKey {
        let secret = StaticSecret::from(self.0);
        PublicKey(*DalekPublic::from(&secret).as_bytes())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<hidden>)")
    }
}

impl PublicKey {
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode32(s).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let k = PrivateKey::generate().unwrap();
        let b = k.as_bytes();
        assert_eq!(b[0] & 7, 0);
        assert_eq!(b[31] & 0xc0, 0x40);
        assert_eq!(PrivateKey::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(k.to_base64().len(), 44);
    }

    #[test]
    fn seeded_keys_are_stable_and_distinct() {
        assert_eq!(PrivateKey::from_seed("a"), PrivateKey::from_seed("a"));
        assert_ne!(PrivateKey::from_seed("a"), PrivateKey::from_seed("b"));
    }

    #[test]
    fn debug_hides_private_key() {
        let k = PrivateKey::from_seed("x");
        assert!(!format!("{k:?}").contains(&k.to_base64()));
    }

    #[test]
    fn malformed_keys_are_rejected() {
        assert_eq!(PublicKey::from_base64("abc"), Err(KeyError::Malformed));
    }
}

/// The results store's token, which every request to the store must carry
/// (`Authorization: Bearer`): HMAC-SHA256 of a fixed label under the cluster's munge key, in hex.
/// Every Slurm node holds the munge key already, so each derives the token itself and no second
/// cluster secret is made, delivered or kept; `rotate --munge` changes it with the key. The token
/// does not reveal the key.
pub fn results_token(munge_key: &[u8]) -> String {
    use hmac::{KeyInit as _, Mac as _};
    use std::fmt::Write as _;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(munge_key).expect("HMAC takes any key length");
    mac.update(b"hybridgrid results store token v1");
    mac.finalize()
        .into_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests
mod results_token_tests {
    use super::results_token;

    #[test]
    fn the_token_follows_the_munge_key_and_does_not_show_it() {
        let a = results_token(b"munge key one");
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, results_token(b"munge key one"));
        assert_ne!(a, results_token(b"munge key two"));
        assert!(!a.contains("6d756e6765"), "no bytes of the key in hex");
    }
}
