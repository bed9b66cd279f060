//! TLS to Forge backends behind https: the system's root certificates, plus the certificates
//! of `FORGE_CA_FILE` (a private CA, or a self-signed Forge). rustls with the `ring` provider
//! (the one the database driver already uses).

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
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

    /// The client TLS settings: the platform's verifier with the extra roots.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
            self.extra.iter().cloned(),
            provider.clone(),
        )
        .map_err(|err| format!("cannot load the TLS roots: {err}"))?;
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| format!("TLS settings: {err}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }
}
