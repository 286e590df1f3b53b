//! Where a submitted job's data may be. An operator lists the URL prefixes
//! jobs may read and write (`wmr coordinator --allow-prefix`); a coordinator
//! with authentication refuses any input or output outside them, and every
//! coordinator refuses its own store (journal, modules), whose contents
//! would otherwise be one `--input` or `--overwrite` away. `wmr run` does
//! not use this: there the user acts with their own rights.
//!
//! Local paths are checked as the filesystem resolves them (symlinks
//! followed), and every file a job's inputs expand to is checked, not only
//! what the submitter typed.

use crate::data::Location;

/// Why a job may not use a location.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The location is in (or contains) the coordinator's own store.
    #[error(
        "{what} {given} overlaps the coordinator's own store {store}; jobs may not read or write it, \
         choose a location outside it"
    )]
    OwnStore {
        /// "input" or "output".
        what: &'static str,
        /// The location as given (or as a file it expanded to).
        given: String,
        /// The store.
        store: String,
    },
    /// The location is outside every allowed prefix.
    #[error(
        "{what} {given} is outside the prefixes this coordinator allows ({allowed}); \
         use a location under one of them, or ask its operator to add one with --allow-prefix"
    )]
    NotAllowed {
        /// "input" or "output".
        what: &'static str,
        /// The location as given (or as a file it expanded to).
        given: String,
        /// The allowed prefixes, comma-separated.
        allowed: String,
    },
    /// Authentication is on but the operator allowed no prefix.
    #[error(
        "this coordinator lets jobs use no data: with authentication on, its operator must list the \
         prefixes jobs may read and write with --allow-prefix"
    )]
    NoneAllowed,
}

/// The prefixes jobs may use, and the store they may never use.
#[derive(Debug, Clone)]
pub struct DataAccess {
    allowed: Vec<Location>,
    store: Location,
    /// Whether the prefixes are enforced (always with authentication).
    enforce: bool,
}

impl DataAccess {
    /// Jobs may use locations under `allowed`, never `store`. With
    /// `enforce` (the coordinator authenticates its callers), no prefix
    /// means no data at all; without it, no prefix means anywhere but the
    /// store.
    pub fn new(allowed: Vec<Location>, store: Location, enforce: bool) -> Self {
        let enforce = enforce || !allowed.is_empty();
        DataAccess {
            allowed,
            store,
            enforce,
        }
    }

    fn check(&self, what: &'static str, given: &str, location: &Location) -> Result<(), AccessError> {
        if location.is_within(&self.store) || (what == "output" && self.store.is_within(location)) {
            return Err(AccessError::OwnStore {
                what,
                given: given.to_string(),
                store: self.store.display.clone(),
            });
        }
        if !self.enforce || self.allowed.iter().any(|a| location.is_within(a)) {
            return Ok(());
        }
        if self.allowed.is_empty() {
            return Err(AccessError::NoneAllowed);
        }
        Err(AccessError::NotAllowed {
            what,
            given: given.to_string(),
            allowed: self
                .allowed
                .iter()
                .map(|a| a.display.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// Whether a job may read `location` (an input, its glob's base, or a
    /// file an input expanded to), given as `given`.
    ///
    /// # Errors
    /// If it is in the store or outside the allowed prefixes.
    pub fn check_input(&self, given: &str, location: &Location) -> Result<(), AccessError> {
        self.check("input", given, location)
    }

    /// Whether a job may write (and, with `--overwrite`, delete in)
    /// `location`, given as `given`.
    ///
    /// # Errors
    /// If it overlaps the store or is outside the allowed prefixes.
    pub fn check_output(&self, given: &str, location: &Location) -> Result<(), AccessError> {
        self.check("output", given, location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Location {
        Location::parse(s).expect("location")
    }

    #[test]
    fn only_allowed_prefixes_and_never_the_store() {
        let access = DataAccess::new(vec![at("/srv/data"), at("s3://bucket/jobs")], at("/srv/wmr"), true);
        assert!(access.check_input("/srv/data/in", &at("/srv/data/in")).is_ok());
        assert!(
            access
                .check_output("s3://bucket/jobs/out", &at("s3://bucket/jobs/out"))
                .is_ok()
        );
        // A sibling that shares the prefix's text is not under it.
        let e = access
            .check_input("/srv/database", &at("/srv/database"))
            .expect_err("outside")
            .to_string();
        assert!(
            e.contains(
                "input /srv/database is outside the prefixes this coordinator allows (/srv/data, s3://bucket/jobs)"
            ),
            "{e}"
        );
        assert!(access.check_input("s3://other/jobs", &at("s3://other/jobs")).is_err());
        assert!(access.check_input("/etc/passwd", &at("/etc/passwd")).is_err());
        assert!(
            access
                .check_input("/srv/data/../wmr/journal", &at("/srv/data/../wmr/journal"))
                .is_err()
        );
        // The store, even when allowed, and an output that contains it.
        let open = DataAccess::new(vec![], at("/srv/wmr"), false);
        let e = open
            .check_input("/srv/wmr/journal/1.json", &at("/srv/wmr/journal/1.json"))
            .expect_err("store")
            .to_string();
        assert!(e.contains("overlaps the coordinator's own store /srv/wmr"), "{e}");
        assert!(open.check_output("/srv", &at("/srv")).is_err());
        assert!(
            open.check_input("/srv", &at("/srv")).is_ok(),
            "its files are checked one by one"
        );
        assert!(open.check_output("/tmp/out", &at("/tmp/out")).is_ok());
        // Authentication without prefixes allows nothing.
        let closed = DataAccess::new(vec![], at("/srv/wmr"), true);
        assert!(matches!(
            closed.check_input("/tmp/in", &at("/tmp/in")),
            Err(AccessError::NoneAllowed)
        ));
    }
}
