//! The machine's cache of compiled modules: a directory of wasmtime
//! artifacts, one per module digest and engine configuration, shared by
//! every wmr process of the user on the machine and kept across restarts.
//!
//! A 12-18 MB Python or JavaScript component takes seconds to compile, so
//! a job's module is compiled once per machine, not once per process. Each
//! entry is written to a temporary file and renamed into place, so
//! concurrent writers of the same entry each leave a whole file and readers
//! never see half of one. Each carries its length and an xxh3-128 checksum,
//! checked before wasmtime loads it: a truncated or corrupt entry is
//! deleted and the module compiled again. An artifact from another wasmtime
//! or engine configuration has another name (the engine's compatibility
//! hash is part of it), and wasmtime refuses it besides. Because loading an
//! artifact runs its code, the directory must belong to this user and be
//! writable by no one else (otherwise the cache is not used), and every
//! entry is opened without following symlinks and loaded only if it is a
//! regular file of this user's that no one else may write: a file planted
//! by someone else, even in a directory swapped in later, is never run.
//! The directory is kept under a size bound by deleting the least recently
//! used entries.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use wasmtime::Engine;

use crate::ids::ModuleDigest;

/// Leads every entry, then the artifact's length (u64 LE), its xxh3-128
/// (u128 LE) and the module's digest (64 hex digits), so that an entry
/// renamed or linked under another module's name is refused.
const MAGIC: &[u8; 8] = b"WMRCWAS2";
const HEADER_LEN: usize = 8 + 8 + 16 + 64;
/// A temporary file older than this was left by a process that died
/// writing it.
const STALE_WRITE: std::time::Duration = std::time::Duration::from_secs(3600);
/// The file name's ending of an entry.
const EXTENSION: &str = "cwasm";

/// Where compiled modules are kept, and how much of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileCacheConfig {
    /// The directory (created, mode 0700, if missing).
    pub dir: PathBuf,
    /// The most the entries may take together; the least recently used go
    /// first once they take more.
    pub max_bytes: u64,
}

impl CompileCacheConfig {
    /// The default size bound.
    pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

    /// The per-user default directory: `$XDG_CACHE_HOME/wmr/modules`, or
    /// `$HOME/.cache/wmr/modules`; `None` when neither is set.
    pub fn default_dir() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
        };
        Some(base.join("wmr").join("modules"))
    }
}

/// Why the cache directory can't be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory could not be created or read.
    #[error("the compile cache {dir}: {source}; fix its permissions or pass --compile-cache DIR")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Someone else could plant code in it.
    #[error(
        "the compile cache {dir} {problem}, and its compiled code would run in this process; \
         `chmod 700 {dir}` if it is yours, or pass --compile-cache DIR"
    )]
    Unsafe {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

/// An open compile cache, bound to one engine configuration.
#[derive(Debug)]
pub struct CompileCache {
    config: CompileCacheConfig,
    /// The engine's compatibility hash, as hex: part of every entry's name.
    engine_key: String,
}

/// What a lookup found.
pub(super) enum Lookup {
    /// A whole, checked artifact.
    Hit(Vec<u8>),
    /// No entry (or one that could not be read, now deleted).
    Miss,
}

impl CompileCache {
    /// Open (creating if need be) the directory for artifacts of `engine`.
    ///
    /// # Errors
    /// If the directory can't be created, or belongs to someone else, or
    /// others may write to it.
    pub fn open(config: CompileCacheConfig, engine: &Engine) -> Result<Self, CacheError> {
        let dir = &config.dir;
        let io = |source| CacheError::Io {
            dir: dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let meta = fs::metadata(dir).map_err(io)?;
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(CacheError::Unsafe {
                dir: dir.clone(),
                problem: format!("belongs to user {}, not to this user ({me})", meta.uid()),
            });
        }
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(CacheError::Unsafe {
                dir: dir.clone(),
                problem: format!(
                    "may be written by others (mode {:o})",
                    meta.permissions().mode() & 0o777
                ),
            });
        }
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            config,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.config.dir
    }

    /// The entry of `digest`.
    pub(super) fn path(&self, digest: &ModuleDigest) -> PathBuf {
        self.config
            .dir
            .join(format!("{}-{}.{EXTENSION}", digest.as_str(), self.engine_key))
    }

    /// The artifact of `digest`, checked whole; an entry that fails the
    /// check is deleted (and compiled again by the caller).
    pub(super) fn get(&self, digest: &ModuleDigest) -> Lookup {
        let path = self.path(digest);
        let opened = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::File::options()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
        };
        let mut file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => {
                tracing::warn!(
                    "can't read the compiled module {}: {e}; compiling it again",
                    path.display()
                );
                return Lookup::Miss;
            }
        };
        let mut bytes = Vec::new();
        let checked = file
            .metadata()
            .map_err(|e| e.to_string())
            .and_then(|meta| trusted(&meta))
            .and_then(|()| file.read_to_end(&mut bytes).map_err(|e| e.to_string()))
            .and_then(|_| unwrap_entry(bytes, digest));
        match checked {
            Ok(artifact) => {
                // Least recently used goes first: a hit is a use.
                let _ = file.set_modified(SystemTime::now());
                Lookup::Hit(artifact)
            }
            Err(problem) => {
                tracing::warn!(
                    "the compiled module {} {problem}; deleting it and compiling again",
                    path.display()
                );
                let _ = fs::remove_file(&path);
                Lookup::Miss
            }
        }
    }

    /// Keep `artifact` as the entry of `digest`, then trim the directory to
    /// its bound. Best effort: a failure is logged, and the module is simply
    /// compiled again next time.
    pub(super) fn put(&self, digest: &ModuleDigest, artifact: &[u8]) {
        let path = self.path(digest);
        let written = tempfile::Builder::new()
            .prefix(".writing-")
            .tempfile_in(&self.config.dir)
            .and_then(|mut file| {
                file.write_all(&entry_header(artifact, digest))?;
                file.write_all(artifact)?;
                file.as_file().sync_data()?;
                file.persist(&path).map_err(|e| e.error)?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::warn!("can't keep the compiled module in {}: {e}", self.config.dir.display());
            return;
        }
        self.trim();
    }

    /// Delete the least recently used entries while they take more than
    /// the bound, down to three quarters of it.
    fn trim(&self) {
        let Ok(entries) = fs::read_dir(&self.config.dir) else {
            return;
        };
        let now = SystemTime::now();
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let stale_write = e.file_name().to_string_lossy().starts_with(".writing-")
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > STALE_WRITE);
                if stale_write {
                    let _ = fs::remove_file(e.path());
                }
                e.path().extension().is_some_and(|x| x == EXTENSION)
            })
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        if total <= self.config.max_bytes {
            return;
        }
        files.sort();
        let target = self.config.max_bytes / 4 * 3;
        for (_, len, path) in files {
            if total <= target {
                break;
            }
            // Another process may have deleted it first; either way it's gone.
            let _ = fs::remove_file(&path);
            total = total.saturating_sub(len);
            tracing::info!("compile cache over its bound: deleted {}", path.display());
        }
    }
}

fn entry_header(artifact: &[u8], digest: &ModuleDigest) -> Vec<u8> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(artifact.len() as u64).to_le_bytes());
    header.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(artifact).to_le_bytes());
    header.extend_from_slice(digest.as_str().as_bytes());
    header
}

/// Whether an entry may be run: a regular file of this user's that no one
/// else may write.
fn trusted(meta: &fs::Metadata) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != me {
        return Err(format!("belongs to user {}, not to this user ({me})", meta.uid()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err("may be written by others".into());
    }
    Ok(())
}

/// The artifact inside an entry's bytes, or what is wrong with them.
fn unwrap_entry(mut bytes: Vec<u8>, digest: &ModuleDigest) -> Result<Vec<u8>, String> {
    let header = bytes.get(..HEADER_LEN).ok_or("is shorter than its header")?;
    if !header.starts_with(MAGIC) {
        return Err("is not a wmr compile cache entry".into());
    }
    let len = header
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or("has a damaged header")?;
    let sum = header
        .get(16..32)
        .and_then(|b| b.try_into().ok())
        .map(u128::from_le_bytes)
        .ok_or("has a damaged header")?;
    if header.get(32..) != Some(digest.as_str().as_bytes()) {
        return Err("is another module's".into());
    }
    if (bytes.len() - HEADER_LEN) as u64 != len {
        return Err(format!(
            "holds {} bytes, not the {len} it says",
            bytes.len() - HEADER_LEN
        ));
    }
    let artifact = bytes.split_off(HEADER_LEN);
    if xxhash_rust::xxh3::xxh3_128(&artifact) != sum {
        return Err("fails its checksum".into());
    }
    Ok(artifact)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max_bytes: u64) -> CompileCache {
        let engine = Engine::default();
        CompileCache::open(
            CompileCacheConfig {
                dir: dir.to_path_buf(),
                max_bytes,
            },
            &engine,
        )
        .unwrap()
    }

    fn digest(n: u8) -> ModuleDigest {
        ModuleDigest::of(&[n])
    }

    #[test]
    fn an_entry_comes_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(&dir.path().join("modules"), 1 << 20);
        assert!(matches!(cache.get(&digest(1)), Lookup::Miss));
        cache.put(&digest(1), b"compiled code");
        let Lookup::Hit(bytes) = cache.get(&digest(1)) else {
            panic!("no hit")
        };
        assert_eq!(bytes, b"compiled code");
        let mode = fs::metadata(cache.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_corrupt_or_truncated_entry_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        for damage in [
            |b: &mut Vec<u8>| b.truncate(b.len() - 1),
            |b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 1,
            |b: &mut Vec<u8>| b[0] = b'X',
            |b: &mut Vec<u8>| b.truncate(3),
        ] {
            cache.put(&digest(2), b"compiled code");
            let path = cache.path(&digest(2));
            let mut bytes = fs::read(&path).unwrap();
            damage(&mut bytes);
            fs::write(&path, bytes).unwrap();
            assert!(matches!(cache.get(&digest(2)), Lookup::Miss));
            assert!(!path.exists());
        }
    }

    #[test]
    fn an_entry_under_another_modules_name_a_symlink_or_a_writable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 1 << 20);
        cache.put(&digest(1), b"module one");
        // Renamed to another module's name.
        fs::copy(cache.path(&digest(1)), cache.path(&digest(2))).unwrap();
        assert!(matches!(cache.get(&digest(2)), Lookup::Miss));
        assert!(!cache.path(&digest(2)).exists());
        // A symlink to a whole entry.
        std::os::unix::fs::symlink(cache.path(&digest(1)), cache.path(&digest(3))).unwrap();
        assert!(matches!(cache.get(&digest(3)), Lookup::Miss));
        // A file others may write.
        fs::set_permissions(cache.path(&digest(1)), fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(cache.get(&digest(1)), Lookup::Miss));
    }

    #[test]
    fn the_least_recently_used_go_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), 3 * (HEADER_LEN as u64 + 100));
        let old = SystemTime::now() - std::time::Duration::from_secs(3600);
        for n in 1..=3 {
            cache.put(&digest(n), &[n; 100]);
            fs::File::options()
                .write(true)
                .open(cache.path(&digest(n)))
                .unwrap()
                .set_modified(old + std::time::Duration::from_secs(u64::from(n)))
                .unwrap();
        }
        // Using the first makes the second the least recently used.
        assert!(matches!(cache.get(&digest(1)), Lookup::Hit(_)));
        cache.put(&digest(4), &[4; 100]);
        assert!(cache.path(&digest(1)).exists());
        assert!(!cache.path(&digest(2)).exists());
        assert!(cache.path(&digest(4)).exists());
    }

    #[test]
    fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = CompileCache::open(
            CompileCacheConfig {
                dir: dir.path().to_path_buf(),
                max_bytes: 1,
            },
            &Engine::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("may be written by others (mode 777)"), "{e}");
        assert!(e.to_string().contains("chmod 700"), "{e}");
    }
}
