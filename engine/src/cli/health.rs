//! `wmr health`: ask a coordinator's gRPC health service whether it serves
//! (a Kubernetes exec probe, or a script's check); exit 0 if it does.

use clap::Args;

use super::client::ConnectionArgs;
use super::{Failure, exit, io_runtime};
use crate::rpc::client;

/// Check that a coordinator serves.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The coordinator and how to reach it (no token is needed).
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Give up after this long.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub timeout: humantime::Duration,
}

pub(super) fn health(args: HealthArgs) -> Result<u8, Failure> {
    let (_, tls) = args.connection.load()?;
    let unavailable = |message: String| Failure {
        code: exit::INFRASTRUCTURE,
        message,
    };
    let coordinator = args.connection.coordinator.clone();
    io_runtime(1)?.block_on(async move {
        let check = async {
            let channel = client::connect(&coordinator, &tls)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map_err(|s| unavailable(format!("{coordinator}: {}", client::explain(&s))))?
                .into_inner();
            let serving = reply.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if !serving {
                return Err(unavailable(format!("{coordinator} is up but not serving")));
            }
            super::print(&format!("{coordinator} is serving\n"));
            Ok(exit::SUCCESS)
        };
        tokio::time::timeout(*args.timeout, check).await.unwrap_or_else(|_| {
            Err(unavailable(format!(
                "{coordinator} did not answer within {}",
                args.timeout
            )))
        })
    })
}
