//! Transport security for the cluster's RPC: PEM files read and checked
//! into the coordinator's TLS identity ([`ServerTls`]) and a client's trust
//! roots and optional identity ([`ClientTls`]). rustls does the TLS, through
//! tonic; this module only loads, checks and explains.
//!
//! The same three flags mean the same thing on both ends: `--tls-cert` and
//! `--tls-key` are this process's own certificate and key, and `--ca` is the
//! authority it trusts for the other end. A coordinator given `--ca`
//! therefore requires every client and worker to present a certificate
//! signed by it (mutual TLS).

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Errors loading TLS files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("can't read {path} (given to --{flag}): {source}")]
    Read {
        /// The file.
        path: String,
        /// The flag it came from.
        flag: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM block of the kind expected.
    #[error("{path} (given to --{flag}) holds no PEM {what}; give a PEM file with a `-----BEGIN {label}-----` block")]
    NoPem {
        /// The file.
        path: String,
        /// The flag it came from.
        flag: &'static str,
        /// What was looked for, for people.
        what: &'static str,
        /// The PEM label expected.
        label: &'static str,
    },
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key go together: give both, or neither")]
    HalfIdentity,
    /// rustls refused the certificate or key for the HTTP address.
    #[error(
        "the certificate and key of --tls-cert and --tls-key can't serve HTTPS: {0}; give a certificate chain and \
         the private key that goes with it"
    )]
    Refused(String),
    /// The coordinator got `--ca` without an identity of its own.
    #[error(
        "--ca on the coordinator makes clients prove who they are over TLS, so it needs the coordinator's own --tls-cert and --tls-key too"
    )]
    ClientCaWithoutTls,
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        flag,
        source,
    })
}

/// The PEM text of `path` if it holds at least one certificate.
fn read_certificates(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = read(path, flag)?;
    if !CertificateDer::pem_slice_iter(&pem).any(|c| c.is_ok()) {
        return Err(TlsError::NoPem {
            path: path.display().to_string(),
            flag,
            what: "certificate",
            label: "CERTIFICATE",
        });
    }
    Ok(pem)
}

/// A certificate chain and its private key, checked to be PEM.
fn read_identity(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let chain = read_certificates(cert, "tls-cert")?;
    let key_pem = read(key, "tls-key")?;
    if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
        return Err(TlsError::NoPem {
            path: key.display().to_string(),
            flag: "tls-key",
            what: "private key",
            label: "PRIVATE KEY",
        });
    }
    Ok((chain, key_pem))
}

/// Both of `--tls-cert` and `--tls-key`, or neither.
fn pair<'a>(cert: Option<&'a Path>, key: Option<&'a Path>) -> Result<Option<(&'a Path, &'a Path)>, TlsError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(TlsError::HalfIdentity),
    }
}

/// The coordinator's TLS settings.
#[derive(Debug, Clone)]
pub struct ServerTls {
    identity: Identity,
    client_ca: Option<Certificate>,
    /// The PEM chain and key behind `identity`, for the HTTP address.
    pem: (Vec<u8>, Vec<u8>),
}

impl ServerTls {
    /// Settings from the coordinator's flags: `None` without `--tls-cert`
    /// and `--tls-key`. `client_ca` (`--ca`) makes client certificates
    /// signed by it required.
    ///
    /// # Errors
    /// If a file is unreadable or not PEM of the right kind, if only half of
    /// the identity is given, or if `--ca` comes without one.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, TlsError> {
        let Some((cert, key)) = pair(cert, key)? else {
            return match client_ca {
                Some(_) => Err(TlsError::ClientCaWithoutTls),
                None => Ok(None),
            };
        };
        let (chain, key) = read_identity(cert, key)?;
        Ok(Some(ServerTls {
            identity: Identity::from_pem(&chain, &key),
            pem: (chain, key),
            client_ca: client_ca
                .map(|ca| read_certificates(ca, "ca").map(Certificate::from_pem))
                .transpose()?,
        }))
    }

    /// A TLS acceptor for the coordinator's HTTP address: the same
    /// certificate, and no client certificates (callers there prove who
    /// they are with a token).
    ///
    /// # Errors
    /// If rustls refuses the certificate or the key.
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        use tokio_rustls::rustls;
        let refused = |e: rustls::Error| TlsError::Refused(e.to_string());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.pem.0)
            .filter_map(Result::ok)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&self.pem.1).map_err(|e| TlsError::Refused(format!("the key: {e}")))?;
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(refused)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The settings for tonic's server.
    pub fn config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(self.identity.clone());
        match &self.client_ca {
            Some(ca) => config.client_ca_root(ca.clone()),
            None => config,
        }
    }
}

/// A client's (or worker's) TLS settings.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl ClientTls {
    /// Settings from a client's flags: the authority that signed the
    /// coordinator's certificate (`--ca`; without it, the system's roots),
    /// and this client's own certificate and key for a coordinator that
    /// requires them.
    ///
    /// # Errors
    /// If a file is unreadable or not PEM of the right kind, or if only half
    /// of the identity is given.
    pub fn from_flags(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self, TlsError> {
        Ok(ClientTls {
            ca: ca
                .map(|ca| read_certificates(ca, "ca").map(Certificate::from_pem))
                .transpose()?,
            identity: pair(cert, key)?
                .map(|(c, k)| read_identity(c, k).map(|(chain, key)| Identity::from_pem(chain, key)))
                .transpose()?,
        })
    }

    /// Whether any TLS setting was given, which makes a bare `host:port`
    /// mean `https://`.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// Whether this client has a certificate of its own to present.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The settings for tonic's channel.
    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

/// A line of advice for a failed TLS connection, from the error's text
/// (rustls errors reach us only as text through tonic and hyper).
pub fn advice(reason: &str) -> Option<&'static str> {
    let advice = if reason.contains("UnknownIssuer") || reason.contains("unknown issuer") {
        "the coordinator's certificate is not signed by an authority this process trusts; give its CA with --ca"
    } else if reason.contains("NotValidForName") || reason.contains("not valid for name") {
        "the coordinator's certificate does not name the host in the address; connect by a name or IP the certificate lists"
    } else if reason.contains("certificate: Expired") || reason.contains("certificate expired") {
        "the coordinator's certificate has expired"
    } else if reason.contains("CertificateRequired") || reason.contains("certificate required") {
        "the coordinator requires a client certificate: give --tls-cert and --tls-key"
    } else if reason.contains("InvalidContentType")
        || reason.contains("CorruptMessage")
        || reason.contains("invalid content type")
        || reason.contains("received corrupt message")
    {
        "the coordinator does not speak TLS here; use http:// and drop --ca, or start the coordinator with --tls-cert and --tls-key"
    } else if reason.contains("frame with invalid size") {
        // What a plain HTTP/2 client makes of a TLS alert.
        "the coordinator did not answer in plain HTTP/2: if it serves TLS, use https:// (and --ca for a private CA)"
    } else if reason.contains("BadCertificate") || reason.contains("bad certificate") || reason.contains("UnknownCA") {
        "the coordinator refused this process's certificate: give one signed by the CA the coordinator trusts (its --ca)"
    } else {
        return None;
    };
    Some(advice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_for_pem() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = ClientTls::from_flags(Some(&junk), None, None).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        assert!(e.to_string().contains("--ca"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = ServerTls::from_flags(Some(&missing), Some(&junk), None).unwrap_err();
        assert!(e.to_string().contains("missing.pem (given to --tls-cert)"), "{e}");
    }

    #[test]
    fn half_an_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pem");
        assert!(matches!(
            ClientTls::from_flags(None, Some(&f), None),
            Err(TlsError::HalfIdentity)
        ));
        assert!(matches!(
            ServerTls::from_flags(None, None, Some(&f)),
            Err(TlsError::ClientCaWithoutTls)
        ));
        assert!(ServerTls::from_flags(None, None, None).unwrap().is_none());
    }

    #[test]
    fn advice_names_the_fix() {
        assert!(
            advice("invalid peer certificate: UnknownIssuer")
                .unwrap()
                .contains("--ca")
        );
        assert!(advice("connection refused").is_none());
        // Words of ours that merely resemble a TLS failure.
        assert!(advice("worker w-1 is not registered (its lease expired)").is_none());
        assert!(advice("invalid peer certificate: Expired").unwrap().contains("expired"));
    }
}
