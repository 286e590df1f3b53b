//! The failure record of a task attempt, made here, once, from the task's
//! error ([`AttemptFailure::of`]) or for an attempt whose worker was lost,
//! and carried unchanged through the report, the journal, status and exit
//! codes. Its kind decides whether another attempt may succeed and whether
//! the failure uses up one of the task's `--max-attempts`.

use serde::{Deserialize, Serialize};

use super::Error;

/// What kind of failure ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The job's code failed: it returned an error, panicked or trapped.
    #[default]
    Guest,
    /// A limit was hit: guest memory or call time, output, log, record.
    Limit,
    /// The input is missing, malformed or not readable as its format.
    Input,
    /// The store failed reading or writing; another try may succeed.
    Storage,
    /// The worker could not fetch or load the job's module.
    Module,
    /// The attempt's worker died or went silent while running it.
    Lost,
    /// A map output a reduce needed was gone or corrupt: the map runs again.
    MapOutput,
    /// Our own bug.
    Internal,
}

impl FailureKind {
    /// Whether such a failure uses up one of the task's attempts. A store
    /// outage, or a module that could not be fetched, says nothing about
    /// the task; a lost worker does (a task that kills its worker would
    /// otherwise be retried forever).
    pub fn counts(self) -> bool {
        !matches!(
            self,
            FailureKind::Storage | FailureKind::Module | FailureKind::MapOutput
        )
    }

    /// The kind as `status` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Guest => "guest",
            FailureKind::Limit => "limit",
            FailureKind::Input => "input",
            FailureKind::Storage => "storage",
            FailureKind::Module => "module",
            FailureKind::Lost => "lost",
            FailureKind::MapOutput => "map_output",
            FailureKind::Internal => "internal",
        }
    }
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// One line naming the thing, the place and the fix.
    pub message: String,
    /// The input record the guest failed on ([`super::record_id`]), if known.
    pub record: Option<u64>,
    /// Whether another attempt could succeed.
    pub retryable: bool,
    /// The map task whose output was gone or corrupt, for
    /// [`FailureKind::MapOutput`].
    #[serde(default)]
    pub bad_map: Option<u32>,
}

impl AttemptFailure {
    /// The failure record of a task error.
    pub fn of(e: &Error) -> Self {
        use crate::data::Error as D;
        use crate::runtime::{Error as R, GuestError as G};
        let kind = match e {
            Error::Guest { source, .. } => match source {
                R::Guest {
                    kind: G::MemoryLimit { .. } | G::TimeLimit { .. },
                    ..
                } => FailureKind::Limit,
                R::Internal(_) => FailureKind::Internal,
                // This worker could not make an instance; the job is not at fault.
                R::HostResources { .. } => FailureKind::Module,
                _ => FailureKind::Guest,
            },
            Error::Data(D::Io { .. }) => FailureKind::Storage,
            Error::Data(D::RecordTooLong { .. }) | Error::OutputLimit { .. } => FailureKind::Limit,
            Error::Data(_) => FailureKind::Input,
            Error::Shuffle(_) => FailureKind::Storage,
            Error::Spill(_) => FailureKind::Storage,
            Error::MapOutputLost { .. } => FailureKind::MapOutput,
            Error::Panic(_) => FailureKind::Internal,
        };
        AttemptFailure {
            kind,
            message: crate::limits::bounded_message(&crate::error_chain(e)),
            record: e.bad_record(),
            retryable: e.retryable(),
            bad_map: match e {
                Error::MapOutputLost { map, .. } => Some(*map),
                _ => None,
            },
        }
    }

    /// A failure of `kind` with `message`, retryable.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        AttemptFailure {
            kind,
            message: crate::limits::bounded_message(&message.into()),
            record: None,
            retryable: true,
            bad_map: None,
        }
    }

    /// Whether it uses up one of the task's attempts.
    pub fn counts(&self) -> bool {
        self.kind.counts()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_gets_one_kind_and_only_outages_are_free() {
        let io = Error::Data(crate::data::Error::io(
            "s3://b/k",
            "reading",
            object_store::Error::NotFound {
                path: "k".into(),
                source: "gone".into(),
            },
        ));
        let f = AttemptFailure::of(&io);
        assert_eq!(f.kind, FailureKind::Storage);
        assert!(f.retryable && !f.counts());
        let missing = Error::Data(crate::data::Error::MissingInput { input: "x".into() });
        let f = AttemptFailure::of(&missing);
        assert_eq!(f.kind, FailureKind::Input);
        assert!(!f.retryable && f.counts());
        let over = Error::OutputLimit {
            what: "output",
            written: 2,
            limit: 1,
        };
        assert_eq!(AttemptFailure::of(&over).kind, FailureKind::Limit);
        assert!(FailureKind::Lost.counts());
        assert!(!FailureKind::Module.counts());
    }
}
