//! Who calls the coordinator: an identity (a name) and its role. How a
//! caller proves it is the transport's business (`rpc::auth`); what each
//! role may do is decided here and in the coordinator's service. Below
//! both, so that the transport need not depend on the coordinator.

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Submits jobs, and sees and cancels its own.
    Client,
    /// A client that sees and cancels every job.
    Admin,
    /// Runs tasks: the worker service only.
    Worker,
    /// Reads the coordinator's `/metrics` (Prometheus), nothing else.
    Metrics,
}

impl Role {
    /// A role as a tokens file spells it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client" => Some(Role::Client),
            "admin" => Some(Role::Admin),
            "worker" => Some(Role::Worker),
            "metrics" => Some(Role::Metrics),
            _ => None,
        }
    }
}

/// The caller of a request, as proven by its token or certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its name: a job's owner, a worker's registrant.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// The owner of jobs submitted to a coordinator without authentication.
pub const ANONYMOUS: &str = "anonymous";

impl Identity {
    /// The caller on a coordinator without authentication, and the user
    /// of `wmr run`: may do anything.
    pub fn anonymous() -> Identity {
        Identity {
            name: ANONYMOUS.into(),
            role: Role::Admin,
        }
    }

    /// Whether this caller may see and cancel a job owned by `owner`.
    pub fn may_see(&self, owner: &str) -> bool {
        self.role == Role::Admin || self.name == owner
    }
}
