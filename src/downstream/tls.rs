//! TLS on the listener (`[listener] tls_cert`, `tls_key`, `tls_client_ca`):
//! rustls with the ring provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN.
//!
//! The files are read at start (a bad one stops the start with an error
//! naming it) and again when one of them changes or on SIGHUP: a new
//! certificate serves new connections, open ones keep theirs, and files
//! that do not load leave the current certificate in place (logged).
//!
//! With `tls_client_ca`, a client may present a certificate that chains to
//! one of its CAs (mTLS); a client that presents none may still use a
//! bearer token. A presented certificate is named by the SHA-256 of its DER
//! bytes, which `[[clients]] cert_sha256` maps to a client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How often the files are looked at for a change.
const WATCH_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{path}`: {message}")]
    File { path: String, message: String },
    #[error("the TLS settings do not hold together: {0}")]
    Setup(String),
}

/// The verified certificate a client presented: the SHA-256 of its DER
/// bytes (hex), as `[[clients]] cert_sha256` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate(pub String);

impl PeerCertificate {
    pub fn of(certificate: &CertificateDer<'_>) -> Self {
        Self(hex::encode(Sha256::digest(certificate.as_ref())))
    }
}

/// The listener's TLS: the acceptor for new connections, replaced when the
/// files change.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<(TlsAcceptor, Vec<Option<SystemTime>>)>,
}

impl Tls {
    pub fn load(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let stamps = stamps(config);
        let acceptor = build(config)?;
        Ok(Arc::new(Self {
            config: config.clone(),
            current: RwLock::new((acceptor, stamps)),
        }))
    }

    /// The acceptor new connections are served with.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Reads the files again when they changed (or always, when `force`):
    /// whether the acceptor was replaced.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let stamps = stamps(&self.config);
        let changed = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            current.1 != stamps
        };
        if !(force || changed) {
            return Ok(false);
        }
        // The stamps are taken either way, so that files that do not load
        // are reported once per change, not every few seconds.
        let built = build(&self.config);
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        current.1 = stamps;
        current.0 = built?;
        Ok(true)
    }

    /// Reloads on a change of the files and on SIGHUP, until `shutdown`.
    pub fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                let signalled = async {
                    match hangup.as_mut() {
                        Some(hangup) => hangup.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                let force = tokio::select! {
                    () = tokio::time::sleep(WATCH_EVERY) => false,
                    signalled = signalled => signalled,
                    () = shutdown.cancelled() => return,
                };
                match self.reload(force) {
                    Ok(true) => tracing::info!(
                        cert = %self.config.cert.display(),
                        "TLS: loaded the certificate again; new connections use it"
                    ),
                    Ok(false) => {}
                    Err(err) => tracing::error!(
                        error = %err,
                        "TLS: the changed files do not load; still serving the previous certificate"
                    ),
                }
            }
        });
    }
}

/// When each file was last changed (`None`: unreadable now).
fn stamps(config: &TlsConfig) -> Vec<Option<SystemTime>> {
    [
        Some(&config.cert),
        Some(&config.key),
        config.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
    .collect()
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(path, err))?;
    if certificates.is_empty() {
        return Err(file_error(path, "holds no PEM certificate"));
    }
    Ok(certificates)
}

fn build(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let chain = certificates(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|err| file_error(&config.key, format!("no PEM private key: {err}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Setup(err.to_string()))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates(path)? {
                roots
                    .add(certificate)
                    .map_err(|err| file_error(path, err))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|err| file_error(path, err))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|err| file_error(&config.cert, format!("does not go with the key: {err}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}
