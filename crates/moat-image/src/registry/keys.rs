//! ECDSA P-256 signing keys in cosign's file formats: the private key as
//! an `ENCRYPTED SIGSTORE PRIVATE KEY` PEM (PKCS#8 DER sealed with
//! NaCl secretbox under a scrypt-derived key, the JSON envelope of
//! go-securesystemslib's `encrypted` package), the public key as a
//! `PUBLIC KEY` PEM (SubjectPublicKeyInfo). skopeo's
//! `--sign-by-sigstore-private-key` and cosign read the same files.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::XSalsa20Poly1305;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

pub const PRIVATE_PEM: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
const COSIGN_PRIVATE_PEM: &str = "ENCRYPTED COSIGN PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: reading the key")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a {what} PEM file")]
    Format { path: PathBuf, what: &'static str },
    #[error("{path}: wrong password, or the key file is damaged")]
    Decrypt { path: PathBuf },
    #[error("{path}: the key is not an ECDSA P-256 key")]
    Curve { path: PathBuf },
    #[error("{path}: scrypt parameters N={n} r={r} p={p} are out of range")]
    Kdf {
        path: PathBuf,
        n: u64,
        r: u32,
        p: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
}
#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    #[serde(with = "b64")]
    salt: Vec<u8>,
}
#[derive(Serialize, Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}
#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    #[serde(with = "b64")]
    nonce: Vec<u8>,
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The body of the first PEM block labelled with one of `labels`.
fn pem_decode(text: &str, labels: &[&str]) -> Option<Vec<u8>> {
    for label in labels {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        if let Some(i) = text.find(&begin) {
            let rest = &text[i + begin.len()..];
            let j = rest.find(&end)?;
            let body: String = rest[..j].chars().filter(|c| !c.is_whitespace()).collect();
            return STANDARD.decode(body).ok();
        }
    }
    None
}

fn scrypt_key(password: &[u8], salt: &[u8], n: u64, r: u32, p: u32) -> Option<[u8; 32]> {
    if !n.is_power_of_two()
        || !(2..=(1 << 20)).contains(&n)
        || !(1..=32).contains(&r)
        || !(1..=16).contains(&p)
    {
        return None;
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32).ok()?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key).ok()?;
    Some(key)
}

/// A new key pair: (encrypted private key PEM, public key PEM).
pub fn generate(password: &[u8]) -> (String, String) {
    let sk = SigningKey::random(&mut OsRng);
    let der = sk.to_pkcs8_der().expect("a P-256 key encodes");
    let mut salt = [0u8; 32];
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut nonce);
    let (n, r, p) = (32768, 8, 1);
    let key = scrypt_key(password, &salt, n, r, p).expect("standard parameters");
    let sealed = XSalsa20Poly1305::new(&key.into())
        .encrypt(&nonce.into(), der.as_bytes())
        .expect("sealing cannot fail");
    let env = Envelope {
        kdf: Kdf {
            name: "scrypt".into(),
            params: KdfParams { n, r, p },
            salt: salt.to_vec(),
        },
        cipher: Cipher {
            name: "nacl/secretbox".into(),
            nonce: nonce.to_vec(),
        },
        ciphertext: sealed,
    };
    let json = serde_json::to_vec(&env).expect("envelope serialises");
    let public = VerifyingKey::from(&sk)
        .to_public_key_pem(LineEnding::LF)
        .expect("a P-256 key encodes");
    (pem_encode(PRIVATE_PEM, &json), public)
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a cosign/sigstore encrypted private key.
pub fn load_private(path: &Path, password: &[u8]) -> Result<SigningKey, KeyError> {
    let text = read(path)?;
    let format = || KeyError::Format {
        path: path.to_path_buf(),
        what: "ENCRYPTED SIGSTORE PRIVATE KEY (or ENCRYPTED COSIGN PRIVATE KEY)",
    };
    let json = pem_decode(&text, &[PRIVATE_PEM, COSIGN_PRIVATE_PEM]).ok_or_else(format)?;
    let env: Envelope = serde_json::from_slice(&json).map_err(|_| format())?;
    if env.kdf.name != "scrypt"
        || env.cipher.name != "nacl/secretbox"
        || env.cipher.nonce.len() != 24
    {
        return Err(format());
    }
    let p = &env.kdf.params;
    let key = scrypt_key(password, &env.kdf.salt, p.n, p.r, p.p).ok_or(KeyError::Kdf {
        path: path.to_path_buf(),
        n: p.n,
        r: p.r,
        p: p.p,
    })?;
    let nonce: [u8; 24] = env
        .cipher
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| format())?;
    let der = XSalsa20Poly1305::new(&key.into())
        .decrypt(&nonce.into(), env.ciphertext.as_slice())
        .map_err(|_| KeyError::Decrypt {
            path: path.to_path_buf(),
        })?;
    SigningKey::from_pkcs8_der(&der).map_err(|_| KeyError::Curve {
        path: path.to_path_buf(),
    })
}

/// Reads a `PUBLIC KEY` PEM (P-256).
pub fn load_public(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = read(path)?;
    if !text.contains("-----BEGIN PUBLIC KEY-----") {
        return Err(KeyError::Format {
            path: path.to_path_buf(),
            what: "PUBLIC KEY",
        });
    }
    VerifyingKey::from_public_key_pem(text.trim()).map_err(|_| KeyError::Curve {
        path: path.to_path_buf(),
    })
}

/// The DER ECDSA-SHA256 signature of `payload`.
pub fn sign(key: &SigningKey, payload: &[u8]) -> Vec<u8> {
    let sig: DerSignature = key.sign(payload);
    sig.as_bytes().to_vec()
}

/// Checks a DER (or raw r||s) signature over `payload`.
pub fn verify(key: &VerifyingKey, payload: &[u8], signature: &[u8]) -> bool {
    let sig = match Signature::from_der(signature) {
        Ok(s) => s,
        Err(_) => match Signature::from_slice(signature) {
            Ok(s) => s,
            Err(_) => return false,
        },
    };
    key.verify(payload, &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_sign_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = generate(b"pw");
        assert!(private.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let kp = dir.path().join("k.key");
        let pp = dir.path().join("k.pub");
        std::fs::write(&kp, &private).unwrap();
        std::fs::write(&pp, &public).unwrap();
        let sk = load_private(&kp, b"pw").unwrap();
        let vk = load_public(&pp).unwrap();
        let sig = sign(&sk, b"payload");
        assert!(verify(&vk, b"payload", &sig));
        assert!(!verify(&vk, b"payloaD", &sig));
        assert_eq!(
            load_private(&kp, b"wrong").unwrap_err().to_string(),
            format!(
                "{}: wrong password, or the key file is damaged",
                kp.display()
            )
        );
        assert!(load_public(&kp).is_err());
    }
}
