//! The directory: loaded from a file at start, then kept in the
//! `directory` KV bucket (key `current`) and followed by every service that
//! uses it, so an operator can change staff, schedules, overrides, patients,
//! consents and the ladder at run time without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv::{self, Operation};
use nwd_proto::directory::{Directory, DirectoryError};
use tokio_util::sync::CancellationToken;

use crate::ops::Readiness;

/// The key of the current directory in the `directory` bucket.
pub const KEY: &str = nwd_proto::wire::key::DIRECTORY_CURRENT;

/// The readiness condition [`follow`] maintains.
pub const READY: &str = "directory";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read directory file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("directory file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("directory file {path} is inconsistent: {source}")]
    Invalid {
        path: PathBuf,
        source: DirectoryError,
    },
}

/// Reads, parses and validates a TOML directory.
pub fn load(path: &Path) -> Result<Directory, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let dir: Directory = toml::from_str(&text).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })?;
    dir.validate().map_err(|source| LoadError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(dir)
}

/// Parses and validates a directory stored as JSON (the bucket's form).
pub fn from_json(bytes: &[u8]) -> Result<Directory, String> {
    let dir: Directory = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    dir.validate().map_err(|e| e.to_string())?;
    Ok(dir)
}

/// A service's own extra check of a directory (e.g. that every schedule
/// parses), on top of [`Directory::validate`].
pub type Check = fn(&Directory) -> Result<(), String>;

/// The directory as a service sees it now. Cheap to clone and to read
/// (`get` hands out the current version; a change swaps it whole).
#[derive(Debug, Clone)]
pub struct Live {
    current: Arc<RwLock<Arc<Directory>>>,
    check: Check,
}

impl Live {
    pub fn new(dir: Directory) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(dir))),
            check: |_| Ok(()),
        }
    }

    /// A live directory whose versions must also pass `check`: the file's
    /// now (an error stops the service at start), and every later version
    /// (one that fails is ignored, like an invalid one).
    pub fn checked(dir: Directory, check: Check) -> Result<Self, String> {
        check(&dir)?;
        Ok(Self {
            check,
            ..Self::new(dir)
        })
    }

    pub fn get(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, dir: Directory) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dir);
    }
}

/// Writes a directory as the current one (validated first).
pub async fn publish(store: &kv::Store, dir: &Directory) -> Result<u64, String> {
    dir.validate().map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(dir).map_err(|e| e.to_string())?;
    store.put(KEY, json.into()).await.map_err(|e| e.to_string())
}

/// Follows the bucket until `shutdown`, applying every stored version; until
/// the bucket holds one, `live` keeps the file's directory. Services never
/// write the bucket (only the operator may: `nwd-directory put`). A version
/// that does not parse or validate is logged and ignored — the last good
/// directory stays in force, so a bad edit never empties the line.
pub async fn follow(
    store: kv::Store,
    live: Live,
    readiness: Readiness,
    service: &'static str,
    shutdown: CancellationToken,
) {
    let apply = move |entry: kv::Entry| {
        if entry.key != KEY || entry.operation != Operation::Put {
            return;
        }
        match from_json(&entry.value).and_then(|d| (live.check)(&d).map(|()| d)) {
            Ok(dir) => {
                tracing::info!(
                    service,
                    revision = entry.revision,
                    staff = dir.staff.len(),
                    patients = dir.patients.len(),
                    "directory updated"
                );
                metrics::counter!("nwd_directory_updates_total", "service" => service, "outcome" => "applied").increment(1);
                live.set(dir);
            }
            Err(e) => {
                tracing::error!(service, revision = entry.revision, error = %e, "invalid directory in the bucket; keeping the last good one");
                metrics::counter!("nwd_directory_updates_total", "service" => service, "outcome" => "rejected").increment(1);
            }
        }
    };
    crate::kv::watch_bucket(store, READY, readiness, shutdown, apply).await;
}

/// The demo directory shipped in `deploy/local/demo/`, for tests and local runs.
pub fn demo_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/demo/directory.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_directory_loads() {
        let dir = load(&demo_path()).unwrap();
        assert!(dir.partners.len() >= 2);
        assert!(dir.staff.len() >= 5);
        assert!(
            dir.patients
                .iter()
                .any(|p| p.trusted_contacts.iter().any(|t| t.consent.is_some()))
        );
        assert!(
            dir.patients
                .iter()
                .any(|p| p.trusted_contacts.iter().any(|t| t.consent.is_none()))
        );
    }

    #[test]
    fn json_round_trip_and_bad_versions_are_refused() {
        let dir = load(&demo_path()).unwrap();
        let json = serde_json::to_vec(&dir).unwrap();
        assert_eq!(from_json(&json).unwrap(), dir);
        assert!(from_json(b"{").is_err());
        let mut broken = dir.clone();
        broken
            .staff
            .retain(|s| s.role != nwd_proto::directory::Role::Supervisor);
        assert!(from_json(&serde_json::to_vec(&broken).unwrap()).is_err());
        let live = Live::new(dir.clone());
        live.set(broken.clone());
        assert_eq!(*live.get(), broken);
    }

    #[test]
    fn a_checked_directory_refuses_what_its_check_refuses() {
        let dir = load(&demo_path()).unwrap();
        assert!(Live::checked(dir.clone(), |_| Ok(())).is_ok());
        let err = Live::checked(dir, |_| Err("no".into())).unwrap_err();
        assert_eq!(err, "no");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = load(Path::new("/nonexistent/dir.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir.toml"));
    }
}
