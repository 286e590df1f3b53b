//! Turning what a user typed (a path, a glob, or a `file://`, `memory://` or
//! `s3://` URL) into an object store and a path within it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;

use super::Error;

/// A place in an object store: the store, and a path (prefix) inside it.
#[derive(Clone)]
pub struct Location {
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The path within the store.
    pub path: Path,
    /// How to show this location to a user, e.g. `/data/in.txt` or `s3://b/k`.
    pub display: String,
    /// The scheme and authority, e.g. `file://` or `s3://bucket`, to show child paths.
    root: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    // `memory://NAME` is one in-process store per name, so the coordinator,
    // the workers and the tests of one process all see the same objects.
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = match stores.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    stores
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// One S3 client per bucket for the whole process: a reducer reading a
/// thousand map outputs reuses one connection pool and one credential
/// lookup rather than building a client for each.
fn s3_store(bucket: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = match stores.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(store) = stores.get(bucket) {
        return Ok(store.clone());
    }
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::from_env()
            // Create-if-absent (If-None-Match: *) fences the coordinator's
            // journal and lease; S3 and its usual stand-ins support it.
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .with_bucket_name(bucket)
            .build()?,
    );
    stores.insert(bucket.to_string(), store.clone());
    Ok(store)
}

impl Location {
    /// Parse a user-given path or URL.
    ///
    /// # Errors
    /// [`Error::BadLocation`] for an unknown scheme or a malformed URL.
    pub fn parse(input: &str) -> Result<Location, Error> {
        let bad = |reason: String| Error::BadLocation {
            input: input.to_string(),
            reason,
        };
        if let Some((scheme, rest)) = input.split_once("://") {
            match scheme {
                "file" => Self::local(input, rest),
                "memory" => {
                    let (name, key) = rest.split_once('/').unwrap_or((rest, ""));
                    Ok(Location {
                        store: memory_store(name),
                        path: Path::from(key),
                        display: input.to_string(),
                        root: format!("memory://{name}"),
                    })
                }
                "s3" => {
                    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                    let store = s3_store(bucket)
                        .map_err(|e| bad(format!("{e}; set AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and, for a custom server, AWS_ENDPOINT")))?;
                    Ok(Location {
                        store,
                        path: Path::from(key),
                        display: input.to_string(),
                        root: format!("s3://{bucket}"),
                    })
                }
                other => Err(bad(format!(
                    "unknown scheme {other:?}; use a plain path, file://, memory:// or s3://"
                ))),
            }
        } else {
            Self::local(input, input)
        }
    }

    fn local(input: &str, path: &str) -> Result<Location, Error> {
        let bad = |reason: String| Error::BadLocation {
            input: input.to_string(),
            reason,
        };
        let p = std::path::Path::new(path);
        let absolute = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| bad(format!("no current directory: {e}")))?
                .join(p)
        };
        // object_store paths have no `.` or `..`: resolve them here, through
        // the filesystem when the path exists (for symlinks), else lexically.
        let absolute = std::fs::canonicalize(&absolute).unwrap_or_else(|_| {
            let mut normal = std::path::PathBuf::new();
            for part in absolute.components() {
                match part {
                    std::path::Component::ParentDir => {
                        normal.pop();
                    }
                    std::path::Component::CurDir => {}
                    other => normal.push(other),
                }
            }
            normal
        });
        let text = absolute
            .to_str()
            .ok_or_else(|| bad("the path is not valid UTF-8".into()))?;
        let path = Path::from_absolute_path(text).map_err(|e| bad(e.to_string()))?;
        Ok(Location {
            store: Arc::new(LocalFileSystem::new()),
            path,
            display: input.to_string(),
            root: "file://".to_string(),
        })
    }

    /// A path below this location.
    pub fn child(&self, name: &str) -> Location {
        let path = name
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.path.clone(), |p, part| p.join(part));
        Location {
            store: self.store.clone(),
            display: self.show(&path),
            path,
            root: self.root.clone(),
        }
    }

    /// How to show another path of the same store to a user.
    pub fn show(&self, path: &Path) -> String {
        if self.root == "file://" {
            format!("/{path}")
        } else {
            format!("{}/{path}", self.root)
        }
    }

    /// The same store at another path.
    pub fn at(&self, path: Path) -> Location {
        Location {
            store: self.store.clone(),
            display: self.show(&path),
            path,
            root: self.root.clone(),
        }
    }

    /// Whether `self` is `other` or lies inside it (same store, and its
    /// path starts with all of `other`'s parts).
    pub fn is_within(&self, other: &Location) -> bool {
        self.root == other.root && self.path.prefix_match(&other.path).is_some()
    }

    /// Whether this is a local filesystem location.
    pub fn is_local(&self) -> bool {
        self.root == "file://"
    }

    /// The file this location names, if it is on the local filesystem.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        if !self.is_local() {
            return None;
        }
        LocalFileSystem::new().path_to_filesystem(&self.path).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_urls() {
        let l = Location::parse("/nonexistent-wmr/x/../y.txt").unwrap();
        assert_eq!(l.path.as_ref(), "nonexistent-wmr/y.txt");
        assert!(l.is_local());
        let m = Location::parse("memory://t1/a/b").unwrap();
        assert_eq!(m.path.as_ref(), "a/b");
        assert_eq!(m.child("c").display, "memory://t1/a/b/c");
        let e = Location::parse("ftp://x/y").unwrap_err().to_string();
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
    }
}
