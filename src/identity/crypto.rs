//! The signature checks behind `jsonwebtoken`, done by `ring` (the crypto
//! the proxy's TLS already uses). Verification only: the proxy never signs
//! a token. HMAC is refused outright: the proxy holds public keys, and a
//! public key taken as an HMAC secret is the classic forgery.

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as sig, RsaPublicKeyComponents, UnparsedPublicKey};

/// The provider installed for the process (once; see [`install`]).
static RING: CryptoProvider = CryptoProvider {
    signer_factory: no_signer,
    verifier_factory: verifier,
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes `ring` the process's JWT crypto. Idempotent; `jsonwebtoken` is
/// built with no crypto of its own, so this must run before any token is
/// checked (the verifier's constructor does it).
pub(super) fn install() {
    let _ = RING.install_default();
}

fn no_signer(_: &Algorithm, _: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    Err(ErrorKind::InvalidAlgorithm.into())
}

/// A key and the one algorithm it checks.
struct Verifier {
    algorithm: Algorithm,
    key: Key,
}

enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An EC point (uncompressed) or an Ed25519 public key.
    Bytes(Vec<u8>),
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    use Algorithm::*;
    let key = match (algorithm, key.kind()) {
        (
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512,
            DecodingKeyKind::RsaModulusExponent { n, e },
        ) => Key::Rsa {
            n: n.clone(),
            e: e.clone(),
        },
        (ES256 | ES384, DecodingKeyKind::SecretOrDer(point))
            if key.family() == AlgorithmFamily::Ec =>
        {
            Key::Bytes(point.clone())
        }
        (EdDSA, DecodingKeyKind::SecretOrDer(public)) if key.family() == AlgorithmFamily::Ed => {
            Key::Bytes(public.clone())
        }
        // HMAC, or a key of another family than the algorithm's.
        _ => return Err(ErrorKind::InvalidAlgorithm.into()),
    };
    Ok(Box::new(Verifier {
        algorithm: *algorithm,
        key,
    }))
}

impl signature::Verifier<Vec<u8>> for Verifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        use Algorithm::*;
        let ok = match (&self.key, self.algorithm) {
            (Key::Rsa { n, e }, algorithm) => {
                let params: &sig::RsaParameters = match algorithm {
                    RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                    RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                    RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                    PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                    PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                    PS512 => &sig::RSA_PSS_2048_8192_SHA512,
                    _ => return Err(signature::Error::new()),
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            (Key::Bytes(key), ES256) => UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, key)
                .verify(message, signature)
                .is_ok(),
            (Key::Bytes(key), ES384) => UnparsedPublicKey::new(&sig::ECDSA_P384_SHA384_FIXED, key)
                .verify(message, signature)
                .is_ok(),
            (Key::Bytes(key), EdDSA) => UnparsedPublicKey::new(&sig::ED25519, key)
                .verify(message, signature)
                .is_ok(),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(signature::Error::new())
        }
    }
}

impl JwtVerifier for Verifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}
