//! TLS termination with rustls (the `ring` provider), offering HTTP/2 and HTTP/1.1 by ALPN.
//!
//! A listener may hold several certificates, chosen per handshake by the name the client asks
//! for (SNI) against each certificate's DNS names: an exact name first, then a wildcard
//! (`*.example.com` covers one label below it, RFC 6125 §6.4.3), else the first certificate, which
//! is also what clients that send no name get. The set sits in a [`Certificate`] slot that a
//! reload swaps whole (a renewed certificate at the same path, or other files): handshakes from
//! then on see the new set, connections already open keep theirs.
//!
//! Sessions resume by stateless tickets (TLS 1.3 and 1.2), so a returning client skips the
//! certificate's signature, the costly part of a handshake, however many clients there are.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::crypto::hash::HashAlgorithm;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::settings::TlsFiles;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// TLS 1.2 sessions a listener remembers by ID (about 10 MB at most when full).
const SESSION_CACHE: usize = 16 * 1024;

/// ring's algorithms, the suites hashed with SHA-256 first: CPUs hash SHA-256 in hardware
/// (SHA-NI) and SHA-384 in software, and a TLS 1.3 handshake's key schedule, transcript and
/// tickets are mostly hashing. A profile of new connections from OpenSSL clients, which list
/// AES-256-GCM-SHA384 first, had SHA-512's block function at 12% of the LB's time.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        let hash = match suite {
            SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
            SupportedCipherSuite::Tls12(suite) => suite.common.hash_provider,
        };
        hash.algorithm() != HashAlgorithm::SHA256
    });
    Arc::new(provider)
}

/// One listener's certificates, swapped whole by a reload.
#[derive(Debug)]
pub(crate) struct Certificate(ArcSwap<Certificates>);

/// A listener's certificates, each with the DNS names it is for (lower case).
#[derive(Debug)]
pub(crate) struct Certificates(Vec<(Vec<String>, Arc<CertifiedKey>)>);

impl Certificate {
    /// Puts `loaded` (from [`load`]) in place for the handshakes to come.
    pub(crate) fn replace(&self, loaded: Certificates) {
        self.0.store(Arc::new(loaded));
    }
}

impl Certificates {
    /// The certificate for a client that asked for `name` (none: the first).
    fn for_name(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let first = self.0.first().map(|(_, key)| key);
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return first;
        };
        let exact = self.0.iter().find(|(names, _)| names.contains(&name));
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            let wanted = format!("*.{parent}");
            self.0.iter().find(|(names, _)| names.contains(&wanted))
        };
        exact.or_else(wildcard).map(|(_, key)| key).or(first)
    }
}

/// The certificate one TLS connection was made with: its listener's set and the name the client
/// asked for.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    pub certificates: Arc<Certificate>,
    pub sni: Option<Box<str>>,
}

impl Served {
    /// Whether a request for `host` (the Host header or `:authority`, a port allowed) belongs on
    /// another certificate than this connection's (RFC 9110 §15.5.20): a browser reuses an
    /// HTTP/2 connection for every name its certificate covers, so a wildcard made for one site
    /// can carry requests for a name that has a certificate (and a configuration) of its own.
    /// Such a request gets 421 and the client connects again. A listener with one certificate
    /// never misdirects.
    pub(crate) fn misdirected(&self, host: &[u8]) -> bool {
        let certificates = self.certificates.0.load();
        if certificates.0.len() < 2 {
            return false;
        }
        let Ok(host) = std::str::from_utf8(host) else {
            return false;
        };
        let name = match host.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit())
                    && (!host.starts_with('[') || name.ends_with(']')) =>
            {
                name
            }
            _ => host,
        };
        let this = certificates.for_name(self.sni.as_deref());
        let wanted = certificates.for_name(Some(name));
        match (this, wanted) {
            (Some(this), Some(wanted)) => !Arc::ptr_eq(this, wanted),
            _ => false,
        }
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().for_name(hello.server_name()).cloned()
    }
}

/// Reads every certificate chain and key in `files`, checking that each key belongs to its
/// certificate, and the names each certificate is for.
pub(crate) fn load(files: &[TlsFiles]) -> Result<Certificates, TlsError> {
    files
        .iter()
        .map(|files| {
            let key = load_one(files)?;
            let end_entity = webpki::EndEntityCert::try_from(&key.cert[0])
                .map_err(|e| file_error(&files.cert, format!("unreadable certificate: {e}")))?;
            let names = end_entity
                .valid_dns_names()
                .map(str::to_ascii_lowercase)
                .collect();
            Ok((names, Arc::new(key)))
        })
        .collect::<Result<_, _>>()
        .map(Certificates)
}

/// One certificate chain and its key, checked to belong together.
fn load_one(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_error(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(&files.cert, e))?;
    if certs.is_empty() {
        return Err(file_error(&files.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error(&files.key, e))?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => {
            file_error(&files.key, "this key does not belong to the certificate")
        }
        other => TlsError::Config(other),
    })
}

/// An acceptor for the certificates in `files`, and the slot a reload swaps.
pub(crate) fn acceptor(files: &[TlsFiles]) -> Result<(TlsAcceptor, Arc<Certificate>), TlsError> {
    let certificate = Arc::new(Certificate(ArcSwap::from_pointee(load(files)?)));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order of suites (see `provider`), not the client's: every suite offered is safe.
    config.ignore_client_order = true;
    // Stateless tickets, so that any number of clients resume without a full handshake (no
    // certificate signature): keys random per listener, rotated every 6 hours, shared by every
    // worker through the one configuration. TLS 1.2 clients without tickets resume from the
    // session cache.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}
