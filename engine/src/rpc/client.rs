//! Connecting to a coordinator, for clients and workers.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::auth::{SendToken, Token};
use super::tls::{self, ClientTls};

use super::pb::job_service_client::JobServiceClient;
use super::pb::worker_service_client::WorkerServiceClient;

/// Errors connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not one.
    #[error(
        "coordinator address {url:?} is not valid ({reason}); give host:port, http://host:port or https://host:port"
    )]
    BadUrl {
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// Nothing answered.
    #[error("can't reach the coordinator at {url}: {reason}; is `wmr coordinator` running there?")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// TLS settings were given for a plain-text address.
    #[error("TLS settings (--ca, --tls-cert) were given but the coordinator address {url} says http://; use https://")]
    TlsOverHttp {
        /// As given.
        url: String,
    },
    /// The connection failed in a way that points at TLS settings: a
    /// failed handshake, or one end speaking TLS and the other not.
    #[error("talking to the coordinator at {url} failed: {advice} ({reason})")]
    Tls {
        /// Where.
        url: String,
        /// What to do.
        advice: &'static str,
        /// The error underneath.
        reason: String,
    },
}

/// `host:port` or a URL, as a URL: a bare address is `https://` when TLS
/// settings are given, else `http://`.
pub fn normalize(url: &str, tls: &ClientTls) -> String {
    if url.contains("://") {
        url.to_string()
    } else if tls.is_configured() {
        format!("https://{url}")
    } else {
        format!("http://{url}")
    }
}

/// A channel to the coordinator at `url`, over TLS for an `https://`
/// address (trusting `tls`'s CA, or the system's roots without one).
/// Several addresses, comma-separated (a coordinator and its standbys), are
/// tried in turn: the first that answers is used.
///
/// # Errors
/// If the URL is malformed, nothing answers, or TLS fails (the last
/// address's error, when there are several).
pub async fn connect(url: &str, tls: &ClientTls) -> Result<Channel, ConnectError> {
    let mut last = None;
    for one in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match connect_one(one, tls).await {
            Ok(channel) => return Ok(channel),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::BadUrl {
        url: url.to_string(),
        reason: "no address given".into(),
    }))
}

async fn connect_one(url: &str, tls: &ClientTls) -> Result<Channel, ConnectError> {
    let full = normalize(url, tls);
    let bad_url = |reason: String| ConnectError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(full.clone()).map_err(|e| bad_url(e.to_string()))?;
    if full.starts_with("https://") {
        endpoint = endpoint.tls_config(tls.config()).map_err(|e| bad_url(e.to_string()))?;
    } else if tls.is_configured() {
        return Err(ConnectError::TlsOverHttp { url: full });
    }
    let channel = endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            let reason = crate::error_chain(&e);
            match tls::advice(&reason) {
                Some(advice) => ConnectError::Tls {
                    url: full.clone(),
                    advice,
                    reason,
                },
                None => ConnectError::Unreachable {
                    url: full.clone(),
                    reason,
                },
            }
        })?;
    probe(&channel, &full, tls).await?;
    Ok(channel)
}

/// How long a new connection's health check may take.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One health check over a fresh channel, so that a mismatch shows up here,
/// explained, rather than as a closed connection at the first call. In TLS
/// 1.3 the server checks a client's certificate after the client's
/// handshake is done, so a refused certificate is often seen only as a
/// closed connection; a plain client talking to a TLS server likewise.
async fn probe(channel: &Channel, url: &str, tls: &ClientTls) -> Result<(), ConnectError> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let checked = tokio::time::timeout(
        PROBE_TIMEOUT,
        health.check(tonic_health::pb::HealthCheckRequest::default()),
    )
    .await
    .map_err(|_| ConnectError::Unreachable {
        url: url.to_string(),
        reason: format!(
            "it accepted the connection but did not answer within {}",
            humantime::format_duration(PROBE_TIMEOUT)
        ),
    })?;
    let Err(status) = checked else {
        return Ok(());
    };
    // Any answer from the service means the transport works; a transport
    // failure carries its cause as the status's source.
    let transport = std::error::Error::source(&status).is_some()
        || matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        );
    if !transport {
        return Ok(());
    }
    let reason = reason(&status);
    let url = url.to_string();
    let advice = if !url.starts_with("https://") {
        tls::advice(&reason).unwrap_or(
            "the coordinator closed the connection at once; if it serves TLS, use https:// (and --ca for a private CA)",
        )
    } else if let Some(advice) = tls::advice(&reason) {
        advice
    } else if tls.has_identity() {
        "the coordinator closed the connection after the handshake; it may not accept this process's certificate: give one signed by the CA the coordinator trusts (its --ca)"
    } else {
        "the coordinator closed the connection after the handshake; it may require a client certificate: give --tls-cert and --tls-key"
    };
    Err(ConnectError::Tls { url, advice, reason })
}

/// What went wrong in a failed call, for people: the status message, the
/// transport errors beneath it (where TLS failures hide), and advice when
/// TLS is the cause.
pub fn explain(status: &tonic::Status) -> String {
    let line = reason(status);
    // Only a transport failure carries a source; a status the coordinator
    // sent is its own words, never a TLS problem.
    if std::error::Error::source(status).is_none() {
        return line;
    }
    match tls::advice(&line) {
        Some(advice) => format!("{advice} ({line})"),
        None => line,
    }
}

/// The status message and the transport errors beneath it.
fn reason(status: &tonic::Status) -> String {
    let mut line = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = crate::error_chain(source);
        if chain.starts_with(&line) {
            line = chain;
        } else if !line.ends_with(&chain) {
            line = format!("{line}: {chain}");
        }
    }
    line
}

/// A channel whose calls carry the cluster's token, if any.
pub type AuthedChannel = InterceptedService<Channel, SendToken>;

/// A job service client over `channel`, sending `token`.
pub fn jobs(channel: Channel, token: Option<Token>) -> JobServiceClient<AuthedChannel> {
    JobServiceClient::with_interceptor(channel, SendToken(token)).max_decoding_message_size(256 << 20)
}

/// A worker service client over `channel`, sending `token`.
pub fn workers(channel: Channel, token: Option<Token>) -> WorkerServiceClient<AuthedChannel> {
    WorkerServiceClient::with_interceptor(channel, SendToken(token)).max_decoding_message_size(256 << 20)
}
