//! HTTPS: the rustls server configuration from `serve --tls-cert FILE --tls-key FILE`.
//!
//! Administrators hand over whatever their CA or `openssl` made, so this accepts every
//! PEM private key form rustls can use (PKCS#8, PKCS#1 RSA, SEC1 EC) and checks the pair
//! before the server starts. Every problem (a missing or empty file, garbage, a key of an
//! unsupported kind, a key that does not belong to the certificate) is one line that names
//! the file and says what to do, never a panic.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// A file whose content is wrong (its path is fine, so no "check the path" advice).
fn input(what: &'static str, path: &Path, why: impl Into<String>) -> Error {
    Error::Usage(format!("{what} {}: {}", path.display(), why.into()))
}

/// Reads a PEM file, refusing an empty or unreadable one with a clear reason.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::Input {
        what,
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(input(what, path, "the file is empty"));
    }
    Ok(bytes)
}

/// The certificate chain in `path` (PEM, leaf first).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = read_pem("TLS certificate", path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| input("TLS certificate", path, format!("not valid PEM ({e})")))?;
    if certs.is_empty() {
        return Err(input(
            "TLS certificate",
            path,
            "no \"BEGIN CERTIFICATE\" block in it (expected a PEM certificate chain, leaf first)",
        ));
    }
    Ok(certs)
}

/// The private key in `path` (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = read_pem("TLS key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        input(
            "TLS key",
            path,
            format!(
                "no usable private key in it ({e}); expected an unencrypted PEM key (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")"
            ),
        )
    })
}

/// Builds the server configuration from a certificate chain and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Load the key on its own first: the error then names the key file, not the pair.
    provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| {
            input(
                "TLS key",
                key,
                format!(
                    "the key cannot be used ({e}); use an RSA, ECDSA P-256/P-384 or Ed25519 key"
                ),
            )
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            Error::Usage(format!(
                "TLS certificate {} and key {} do not work together: {e}; check that the key is the certificate's",
                cert.display(),
                key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
