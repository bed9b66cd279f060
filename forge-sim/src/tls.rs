//! HTTPS for the simulator: the certificate and key it serves with, and rustls' settings.
//!
//! Optional, so that a gateway that reaches its Forge servers over https can be tested
//! against the simulator too. rustls runs on the `ring` provider: aws-lc-rs, rustls' default,
//! takes minutes to build.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// A certificate chain and its private key, both PEM, that the simulator serves HTTPS with.
///
/// Checked when made, so that a server given one starts; its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    cert_chain_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
}

/// A certificate or key that cannot be served with.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate PEM holds no certificate.
    #[error("the certificate PEM holds no CERTIFICATE block")]
    NoCertificate,
    /// The certificate PEM does not parse.
    #[error("invalid certificate PEM: {0}")]
    Certificate(String),
    /// The key PEM does not parse or holds no private key.
    #[error("invalid private key PEM: {0}")]
    Key(String),
    /// rustls refuses the pair, e.g. because the key does not belong to the certificate.
    #[error("unusable certificate and key: {0}")]
    Refused(#[from] rustls::Error),
}

impl TlsIdentity {
    /// A certificate chain (leaf first) and the leaf's private key (PKCS#8, PKCS#1 or SEC1),
    /// both PEM.
    pub fn from_pem(
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Result<TlsIdentity, TlsError> {
        let identity = TlsIdentity {
            cert_chain_pem: cert_chain_pem.into().into(),
            key_pem: key_pem.into().into(),
        };
        identity.server_config()?;
        Ok(identity)
    }

    /// Reads [`from_pem`](Self::from_pem)'s two PEM texts from files.
    pub fn from_pem_files(cert_chain: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        TlsIdentity::from_pem(read(cert_chain)?, read(key)?)
    }

    /// The certificate chain, PEM, as given: what a client may choose to trust.
    pub fn cert_chain_pem(&self) -> &[u8] {
        &self.cert_chain_pem
    }

    /// rustls' server settings for this identity, speaking HTTP/1.1 only.
    pub(crate) fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| TlsError::Certificate(err.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|err| TlsError::Key(err.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // Offered to clients that negotiate by ALPN, so that none picks HTTP/2, which the
        // simulator does not speak.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field(
                "cert_chain_pem",
                &format_args!("{} bytes", self.cert_chain_pem.len()),
            )
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> rcgen::CertifiedKey<rcgen::KeyPair> {
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen")
    }

    #[test]
    fn a_matching_pair_is_accepted_and_its_key_never_shown() {
        let pair = self_signed();
        let key = pair.signing_key.serialize_pem();
        let identity = TlsIdentity::from_pem(pair.cert.pem(), key.clone()).expect("accepted");
        assert_eq!(identity.cert_chain_pem(), pair.cert.pem().as_bytes());
        let shown = format!("{identity:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains(key.trim()),
            "{shown}"
        );
    }

    #[test]
    fn unusable_pems_are_refused() {
        let (one, other) = (self_signed(), self_signed());
        let cert = one.cert.pem();
        let key = one.signing_key.serialize_pem();
        let refused = |cert: &str, key: &str| TlsIdentity::from_pem(cert, key).err();
        assert!(matches!(
            refused(&cert, &other.signing_key.serialize_pem()),
            Some(TlsError::Refused(_))
        ));
        assert!(matches!(refused("", &key), Some(TlsError::NoCertificate)));
        assert!(matches!(refused(&key, &key), Some(TlsError::NoCertificate)));
        assert!(matches!(refused(&cert, &cert), Some(TlsError::Key(_))));
        assert!(matches!(refused(&cert, ""), Some(TlsError::Key(_))));
    }

    #[test]
    fn a_missing_file_names_itself() {
        let missing = Path::new("/nonexistent/forge-sim/cert.pem");
        let err = TlsIdentity::from_pem_files(missing, missing).expect_err("no such file");
        assert!(
            err.to_string().contains("/nonexistent/forge-sim/cert.pem"),
            "{err}"
        );
    }
}
