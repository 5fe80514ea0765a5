//! TLS to a pool's backends (`tls`, `protocol = "h2"`, or `"auto"` over TLS), with rustls, as the
//! LB's requests and the orchestrator's probes both reach them: the
//! backend's certificate verified against the pool's `ca_file` for `server_name` (or the
//! backend's IP address), a client certificate for backends that ask for one (mutual TLS), and
//! ALPN offering what the pool speaks. Verification is only skipped by an explicit
//! `insecure_skip_verify`, which warns each time the pool is loaded.
//!
//! The client configuration is built once per pool definition, so every connection of every
//! worker shares rustls's session cache: a new connection to a backend resumes a session rather
//! than paying a full handshake.

use std::net::SocketAddr;
use std::sync::Arc;

use ballast_config::{PoolPolicy, UpstreamProtocol};
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How a pool's backend connections are secured; equal when built from the same fields, which
/// is how a revision is told to have changed it.
pub struct BackendTls {
    source: Source,
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

/// The fields a [`BackendTls`] is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    ca_file: Option<String>,
    server_name: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    insecure: bool,
    alpn: Vec<Vec<u8>>,
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for BackendTls {}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why TLS to a pool's backends could not be set up: the policy field at fault and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BackendTlsError {
    /// The policy field at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn error(field: &'static str, reason: impl ToString) -> BackendTlsError {
    BackendTlsError {
        field,
        reason: reason.to_string(),
    }
}

impl BackendTls {
    /// For a pool with `policy` (already validated), if it speaks TLS to its backends: the CA and
    /// client certificate files are read now.
    pub fn of(policy: &PoolPolicy) -> Result<Option<Arc<Self>>, BackendTlsError> {
        if !policy.tls_to_backends() {
            return Ok(None);
        }
        let alpn: Vec<Vec<u8>> = match policy.protocol.unwrap_or_default() {
            UpstreamProtocol::H2 => vec![b"h2".to_vec()],
            UpstreamProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            UpstreamProtocol::Http1 | UpstreamProtocol::H2c => vec![b"http/1.1".to_vec()],
        };
        let source = Source {
            ca_file: policy.ca_file.clone(),
            server_name: policy.server_name.clone(),
            client_cert: policy.client_cert.clone(),
            client_key: policy.client_key.clone(),
            insecure: policy.insecure_skip_verify == Some(true),
            alpn,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| error("tls", e))?;
        let builder = match &source.ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certificates = CertificateDer::pem_file_iter(path)
                    .map_err(|e| error("ca_file", format!("{path}: {e}")))?;
                for certificate in certificates {
                    let certificate =
                        certificate.map_err(|e| error("ca_file", format!("{path}: {e}")))?;
                    roots
                        .add(certificate)
                        .map_err(|e| error("ca_file", format!("{path}: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(error("ca_file", format!("{path}: no certificate in it")));
                }
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        };
        let mut config = match (&source.client_cert, &source.client_key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect())
                    .map_err(|e| error("client_cert", format!("{cert}: {e}")))?;
                if chain.is_empty() {
                    return Err(error(
                        "client_cert",
                        format!("{cert}: no certificate in it"),
                    ));
                }
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| error("client_key", format!("{key}: {e}")))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| error("client_key", e))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = source.alpn.clone();
        let server_name = source
            .server_name
            .as_deref()
            .map(|name| ServerName::try_from(name.to_owned()))
            .transpose()
            .map_err(|e| error("server_name", e))?;
        Ok(Some(Arc::new(Self {
            source,
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })))
    }

    /// Whether verification is off (the pool's loader warns about it).
    pub fn is_insecure(&self) -> bool {
        self.source.insecure
    }

    /// The TLS handshake on `stream`, connected to the backend at `address`.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        address: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        self.connector.connect(name, stream).await
    }
}

/// Whether the backend agreed to HTTP/2 on `stream`.
pub fn speaks_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

/// `insecure_skip_verify`: any certificate is accepted, its signature over the handshake still
/// checked (the connection is encrypted to whoever holds the key, whoever that is).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
