//! TLS to Forge backends behind https: the system's root certificates, plus the certificates
//! of `FORGE_CA_FILE` (a private CA, or a self-signed Forge). rustls with the `ring` provider
//! (the one the database driver already uses).
//!
//! A self-signed certificate made the usual way (`openssl req -x509 …`) carries `CA:TRUE`, and
//! WebPKI refuses a CA certificate presented as the server's own (`CaUsedAsEndEntity`), where
//! curl and Python accept it. So a server presenting, as itself, exactly one of the
//! certificates of `FORGE_CA_FILE` is accepted when the certificate names the host it was
//! reached at: the operator pinned that certificate. (Its dates are not checked: the pin is the
//! operator's own.) Everything else goes through the platform's verifier.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::path::Path;
use std::sync::Arc;

/// Makes `ring` the process's default TLS provider, if none is yet. reqwest is built without
/// a provider of its own (the default one, aws-lc, takes minutes to build), so every HTTP
/// client of the process, Forge's and any other, needs one installed before it is built.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The certificates a Forge backend's may chain to, besides the system's.
#[derive(Clone, Debug, Default)]
pub struct TlsRoots {
    extra: Vec<CertificateDer<'static>>,
}

impl TlsRoots {
    /// The system's roots, plus every certificate of the PEM file `ca_file` if given.
    pub fn load(ca_file: Option<&Path>) -> Result<TlsRoots, String> {
        let Some(path) = ca_file else {
            return Ok(TlsRoots::default());
        };
        let extra = CertificateDer::pem_file_iter(path)
            .map_err(|err| format!("FORGE_CA_FILE {}: {err}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| format!("FORGE_CA_FILE {}: {err}", path.display()))?;
        if extra.is_empty() {
            return Err(format!(
                "FORGE_CA_FILE {}: no certificate in it (expected PEM)",
                path.display()
            ));
        }
        Ok(TlsRoots { extra })
    }

    /// The client TLS settings: the platform's verifier with the extra roots, and the extra
    /// certificates pinned (see the module doc).
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(
            self.extra.iter().cloned(),
            provider.clone(),
        )
        .map_err(|err| format!("cannot load the TLS roots: {err}"))?;
        let verifier = PinnedOrPlatform {
            pinned: self.extra.clone(),
            platform,
        };
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS settings: {err}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }
}

/// The platform's verifier, which also takes a server presenting one of the pinned
/// certificates as itself (see the module doc).
#[derive(Debug)]
struct PinnedOrPlatform {
    pinned: Vec<CertificateDer<'static>>,
    platform: rustls_platform_verifier::Verifier,
}

impl ServerCertVerifier for PinnedOrPlatform {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.platform.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(refused) => {
                if !self
                    .pinned
                    .iter()
                    .any(|pin| pin.as_ref() == end_entity.as_ref())
                {
                    return Err(refused);
                }
                let parsed = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform
            .verify_tls12_signature(message, cert, signature)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform
            .verify_tls13_signature(message, cert, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.platform.supported_verify_schemes()
    }
}
