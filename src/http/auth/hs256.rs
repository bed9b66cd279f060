//! HS256, the one JWT algorithm the gateway accepts, as jsonwebtoken's crypto provider.
//!
//! jsonwebtoken's bundled backends (`rust_crypto`, `aws_lc_rs`) bring every algorithm it
//! knows: RSA, ECDSA and EdDSA with their big-number and curve crates, about 25 crates compiled
//! for nothing (`docs/benchmarks.md`, build time). jsonwebtoken documents a provider of one's
//! own for this. A token of any other algorithm is refused here as well as by the validation,
//! which names HS256 alone.

use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// A key ready to sign or verify HS256.
struct Hs256(HmacSha256);

impl Hs256 {
    fn new(algorithm: &Algorithm, key: &[u8]) -> Result<Hs256> {
        if *algorithm != Algorithm::HS256 {
            return Err(ErrorKind::InvalidAlgorithm.into());
        }
        HmacSha256::new_from_slice(key)
            .map(Hs256)
            .map_err(|_| ErrorKind::InvalidKeyFormat.into())
    }
}

impl Signer<Vec<u8>> for Hs256 {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl Verifier<Vec<u8>> for Hs256 {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        let mut mac = self.0.clone();
        mac.update(message);
        // Constant-time comparison.
        mac.verify_slice(signature)
            .map_err(signature::Error::from_source)
    }
}

impl JwtSigner for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

impl JwtVerifier for Hs256 {
    fn algorithm(&self) -> Algorithm {
        Algorithm::HS256
    }
}

fn signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Ok(Box::new(Hs256::new(algorithm, key.as_bytes())?))
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    Ok(Box::new(Hs256::new(algorithm, key.try_get_as_bytes()?)?))
}

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: signer,
    verifier_factory: verifier,
    // Only JWK handling uses these; the gateway reads no JWK.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes HS256 jsonwebtoken's provider for this process; later calls change nothing.
pub fn install() {
    let _ = PROVIDER.install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Header, Validation, decode, encode};
    use serde_json::{Value, json};

    #[test]
    fn signs_and_verifies_hs256_and_refuses_other_algorithms_and_keys() {
        install();
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = json!({"sub": "alice", "exp": 4102444800i64});
        let token = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key).expect("key"),
        )
        .expect("signed");
        let validation = Validation::new(Algorithm::HS256);
        let read = decode::<Value>(
            &token,
            &DecodingKey::from_secret(key).expect("key"),
            &validation,
        )
        .expect("verified");
        assert_eq!(read.claims, claims);

        let other = DecodingKey::from_secret(b"another key, 32 bytes long......").expect("key");
        let err = decode::<Value>(&token, &other, &validation).expect_err("wrong key");
        assert_eq!(err.kind(), &ErrorKind::InvalidSignature);

        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(key).expect("key"),
        );
        assert!(hs512.is_err(), "only HS256 is signed");
    }
}
