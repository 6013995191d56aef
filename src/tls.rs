//! TLS for both hops, with rustls (no OpenSSL).
//!
//! TLS roles follow the TCP roles, not the HTTP ones: the dialer is always the TLS *client*
//! (it verifies the listener's certificate and sends SNI), the listener always the TLS
//! *server*, even though after the flip the listener sends the HTTP requests. The handshake
//! functions of [`crate::dialer`] and [`crate::listener`] then run on the TLS stream unchanged.
//!
//! This module builds the rustls configs from PEM files (with errors that name the file and the
//! problem), wraps streams, turns rustls's certificate errors into sentences a user understands
//! ([`TlsError`], with a [`TlsFailure`] kind a tool can turn into advice of its own), and checks a
//! client certificate against a claimed name for mutual TLS.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};

pub use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

/// The only application protocol spoken: PTTH is an HTTP/1.1 upgrade.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },
    /// rustls refused the certificate or key (mismatched pair, unsupported key type, ...).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// No trusted roots were found (no system store, and no CA file given).
    #[error("no trusted root certificates: the system store is empty; pass a CA file")]
    NoRoots,
    /// The client-certificate verifier could not be built from the CA file.
    #[error("client CA {path}: {what}")]
    ClientCa {
        /// The CA file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (a full chain: leaf first, then intermediates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            path: path.to_path_buf(),
            what: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsConfigError::Pem {
        path: path.to_path_buf(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".into(),
            other => format!("invalid private key PEM: {other}"),
        },
    })
}

fn roots_from(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|source| TlsConfigError::Rustls {
            context: format!("CA certificate in {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}

/// The system's trusted roots (`/etc/ssl/certs` and friends).
fn system_roots() -> Result<RootCertStore, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::debug!(%err, "skipping part of the system certificate store");
    }
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(roots)
}

/// Server side: certificate chain and key, ALPN `http/1.1`, and optionally client certificates
/// signed by `client_ca`.
///
/// Client certificates are *requested but optional* at the TLS level, because public clients
/// share the listener with agents; the relay demands a verified one from agents before it
/// switches (see [`peer_certificate`]).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots_from(ca)?))
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsConfigError::ClientCa {
                    path: ca.to_path_buf(),
                    what: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config =
        builder
            .with_single_cert(chain, key_der)
            .map_err(|source| TlsConfigError::Rustls {
                context: format!("certificate {} with key {}", cert.display(), key.display()),
                source,
            })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Client side: trust `ca` if given, else the system's roots; present `identity` (certificate
/// chain file, key file) for mutual TLS if given; ALPN `http/1.1`.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let roots = match ca {
        Some(ca) => roots_from(ca)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|source| TlsConfigError::Rustls {
                context: format!(
                    "client certificate {} with key {}",
                    cert.display(),
                    key.display()
                ),
                source,
            })?,
    };
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// TLS-connect over `io` to `server_name` (sent as SNI and verified against the certificate).
pub async fn connect<IO>(
    io: IO,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<client::TlsStream<IO>, crate::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    Ok(connect_typed(io, server_name, config).await?)
}

/// [`connect`], with the TLS error itself (the agent files it under the address it dialled).
pub(crate) async fn connect_typed<IO>(
    io: IO,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<client::TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|source| TlsError::ServerName {
            name: server_name.to_string(),
            source,
        })?;
    TlsConnector::from(config)
        .connect(name, io)
        .await
        .map_err(|source| TlsError::Handshake {
            peer: server_name.to_string(),
            source,
        })
}

/// TLS-accept over `io`.
pub async fn accept<IO>(
    io: IO,
    config: Arc<ServerConfig>,
) -> Result<server::TlsStream<IO>, crate::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    TlsAcceptor::from(config)
        .accept(io)
        .await
        .map_err(|source| {
            crate::Error::from(TlsError::Handshake {
                peer: "client".to_string(),
                source,
            })
        })
}

/// A TLS handshake that failed. It reads as a sentence a user can act on ([`describe`]), and
/// [`TlsError::kind`] says what went wrong for a caller that wants to advise its own user (a
/// command-line tool naming the flag that fixes it, say).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The name to verify the peer against cannot be a TLS server name.
    #[error("{name:?} is not a valid TLS server name")]
    ServerName {
        /// The name given.
        name: String,
        /// What rustls said.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The handshake itself failed (the peer's certificate, or the peer).
    #[error("{}", describe(source, peer))]
    Handshake {
        /// Who the handshake was with: the server name, or `client` on the server side.
        peer: String,
        /// The I/O error of the handshake; a [`rustls::Error`] inside it when rustls refused.
        #[source]
        source: io::Error,
    },
}

/// What kind of TLS failure a [`TlsError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The peer's certificate is signed by a CA not among the trusted roots.
    UnknownIssuer,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet (often: a clock that is wrong).
    NotValidYet,
    /// The peer's certificate is not valid for the name dialled.
    WrongName,
    /// The peer's certificate has been revoked.
    Revoked,
    /// The peer's certificate was rejected for another reason.
    BadCertificate,
    /// The peer presented no certificate.
    NoCertificate,
    /// The peer does not speak TLS (plain HTTP on a TLS port, say).
    NotTls,
    /// The name to verify against is not a valid server name.
    BadServerName,
    /// Anything else (the connection broke, no common protocol version, ...).
    Other,
}

impl TlsError {
    /// What kind of failure this is.
    pub fn kind(&self) -> TlsFailure {
        let TlsError::Handshake { source, .. } = self else {
            return TlsFailure::BadServerName;
        };
        match rustls_error(source) {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                CertificateError::UnknownIssuer => TlsFailure::UnknownIssuer,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    TlsFailure::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    TlsFailure::NotValidYet
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::WrongName,
                CertificateError::Revoked => TlsFailure::Revoked,
                _ => TlsFailure::BadCertificate,
            },
            Some(rustls::Error::NoCertificatesPresented) => TlsFailure::NoCertificate,
            Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. }) => {
                TlsFailure::NotTls
            }
            _ => TlsFailure::Other,
        }
    }

    /// The rustls error behind the failure, when rustls refused the handshake.
    pub fn rustls(&self) -> Option<&rustls::Error> {
        match self {
            TlsError::Handshake { source, .. } => rustls_error(source),
            TlsError::ServerName { .. } => None,
        }
    }
}

/// Whether a failed handshake's peer did not speak TLS at all (plain HTTP sent to a TLS port,
/// typically): rustls found no TLS record where the first one had to be.
pub fn is_not_tls(err: &io::Error) -> bool {
    matches!(
        rustls_error(err),
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. })
    )
}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}

/// The verified client certificate of an accepted TLS stream, if the client sent one.
pub fn peer_certificate<IO>(stream: &server::TlsStream<IO>) -> Option<CertificateDer<'static>> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
}

/// Whether a (verified) certificate is valid for the DNS name `name` (its SAN lists it, or a
/// matching wildcard). Used to tie a claimed agent name to a certificate identity.
pub fn certificate_matches_name(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(end_entity) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    end_entity
        .verify_is_valid_for_subject_name(&server_name)
        .is_ok()
}

/// A TLS failure in words a user can act on. It says what failed, not how to fix it: the fix
/// (which file to trust, which flag to pass) is the caller's to tell ([`TlsError::kind`]).
pub fn describe(err: &io::Error, peer: &str) -> String {
    let Some(tls) = rustls_error(err) else {
        return format!("TLS handshake with {peer} failed: {err}");
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => {
            let why = match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet (check the clock)".to_string()
                }
                CertificateError::UnknownIssuer => "it is signed by an unknown CA".to_string(),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("it is not valid for the name {peer:?}")
                }
                CertificateError::Revoked => "it has been revoked".to_string(),
                other => format!("{other:?}"),
            };
            format!("the certificate of {peer} was rejected: {why}")
        }
        rustls::Error::NoCertificatesPresented => {
            format!("{peer} did not present a certificate")
        }
        _ if is_not_tls(err) => {
            format!("{peer} does not speak TLS here (is it plain HTTP?): {tls}")
        }
        other => format!("TLS handshake with {peer} failed: {other}"),
    }
}
