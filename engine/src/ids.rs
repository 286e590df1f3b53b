//! Typed identifiers: a job id can't be passed where a task id is expected.
//!
//! ```compile_fail
//! fn takes_job(_: wmr::JobId) {}
//! takes_job(wmr::TaskId::map(3));
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job, unique per coordinator store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(String);

impl JobId {
    /// A fresh, random job id (`job-` and 12 hex digits).
    pub fn generate() -> Self {
        let u = uuid::Uuid::new_v4().simple().to_string();
        JobId(format!("job-{}", &u[..12]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A job id received from outside: `job-` then letters and digits only,
    /// since ids become parts of storage paths.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("job-")?;
        (!rest.is_empty() && rest.len() <= 64 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then(|| JobId(s.to_string()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which phase a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Reads one split, writes one shuffle object.
    Map,
    /// Reads one partition of every shuffle object, writes one output file.
    Reduce,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Map => "map",
            Phase::Reduce => "reduce",
        })
    }
}

/// A task of a job: map task `i` or reduce task (partition) `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId {
    /// The phase.
    pub phase: Phase,
    /// The index within the phase: the split number or the partition.
    pub index: u32,
}

impl TaskId {
    /// Map task `index`.
    pub fn map(index: u32) -> Self {
        TaskId {
            phase: Phase::Map,
            index,
        }
    }

    /// Reduce task `index` (partition `index`).
    pub fn reduce(index: u32) -> Self {
        TaskId {
            phase: Phase::Reduce,
            index,
        }
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} task {}", self.phase, self.index)
    }
}

/// One attempt at running a task; unique within a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId(pub u64);

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt {}", self.0)
    }
}

/// A worker process (or, embedded, the one in-process worker).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A module's content address: the sha256 of its bytes, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModuleDigest(String);

impl ModuleDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(bytes);
        ModuleDigest(hash.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The digest as hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A digest received from outside: 64 lowercase hex digits.
    pub fn parse(hex: &str) -> Option<Self> {
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| ModuleDigest(hex.to_string()))
    }
}

impl fmt::Display for ModuleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", &self.0)
    }
}
