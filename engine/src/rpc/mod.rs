//! The gRPC layer: generated code for `proto/wmr.proto` (in [`pb`], never
//! edited), conversions between wire messages and domain types
//! ([`convert`]), and client connections ([`client`]), with the shared
//! token ([`auth`]) and TLS ([`tls`]). Only the edges that speak gRPC
//! (`coordinator::grpc`, `worker::remote`, `cli`'s client) see `pb` types.
//! It knows the messages ([`crate::protocol`]) and not who sends them: the
//! coordinator's services over it are `coordinator::grpc`, the worker's
//! link is `worker::remote`, and the command line's client is `cli`.

pub mod auth;
pub mod client;
pub mod convert;
pub mod tls;

/// Code generated from `proto/wmr.proto` at build time.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::restriction,
    reason = "generated code"
)]
pub mod pb {
    tonic::include_proto!("wmr.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("wmr_descriptor");
}

/// A wire message that lacks a field or carries a value out of range.
#[derive(Debug, thiserror::Error)]
#[error("malformed {message}: {problem}")]
pub struct MalformedMessage {
    /// The message type.
    pub message: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl MalformedMessage {
    /// `message` lacks required field `field`.
    pub fn missing(message: &'static str, field: &str) -> Self {
        MalformedMessage {
            message,
            problem: format!("field {field} is missing"),
        }
    }
}

impl From<MalformedMessage> for tonic::Status {
    fn from(e: MalformedMessage) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}
