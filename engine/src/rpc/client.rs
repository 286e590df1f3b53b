//! Connecting to a coordinator, for clients and workers.

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::auth::{SendToken, Token};

use super::pb::job_service_client::JobServiceClient;
use super::pb::worker_service_client::WorkerServiceClient;

/// Errors connecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not one.
    #[error("coordinator address {url:?} is not valid ({reason}); give host:port or http://host:port")]
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
}

/// `host:port` or a URL, as an http URL.
pub fn normalize(url: &str) -> String {
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// A channel to the coordinator at `url`.
///
/// # Errors
/// If the URL is malformed or nothing answers.
pub async fn connect(url: &str) -> Result<Channel, ConnectError> {
    let full = normalize(url);
    let endpoint = Endpoint::from_shared(full.clone()).map_err(|e| ConnectError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    endpoint
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: full,
            reason: crate::worker::error_chain(&e),
        })
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
