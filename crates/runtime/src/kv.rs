//! JSON records in KV buckets, changed only by compare-and-swap.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("kv read failed: {0}")]
    Read(#[from] kv::EntryError),
    #[error("kv write failed: {0}")]
    Write(String),
    #[error("record {key} is not valid JSON: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("gave up on {key} after {attempts} lost races")]
    Contended { key: String, attempts: u32 },
}

/// A record and the revision it was read at (0 = absent).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: Option<T>,
    pub revision: u64,
}

/// Reads a JSON record.
pub async fn get<T: DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Versioned<T>, KvError> {
    match store.entry(key).await? {
        Some(e) if e.operation == Operation::Put => {
            let value = serde_json::from_slice(&e.value).map_err(|source| KvError::Corrupt {
                key: key.to_owned(),
                source,
            })?;
            Ok(Versioned {
                value: Some(value),
                revision: e.revision,
            })
        }
        Some(e) => Ok(Versioned {
            value: None,
            revision: e.revision,
        }),
        None => Ok(Versioned {
            value: None,
            revision: 0,
        }),
    }
}

/// What a compare-and-swap decision wants.
#[derive(Debug)]
pub enum Cas<T, R> {
    /// Write this record, then return `R`.
    Write(T, R),
    /// Change nothing, return `R`.
    Keep(R),
}

const MAX_ATTEMPTS: u32 = 64;

/// Reads the record, lets `decide` choose, and writes with the expected
/// revision. A lost race re-reads and re-decides: `decide` must be a pure
/// function of the record it is given.
pub async fn cas<T, R, F>(store: &kv::Store, key: &str, decide: F) -> Result<(R, u64), KvError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> Cas<T, R>,
{
    cas_from(store, key, None, decide).await
}

/// [`cas`] starting from a guess of the current record (a cached copy and
/// its revision, or "absent" for a key that is new) instead of a read: a
/// right guess saves a round trip; a wrong one loses the write race and is
/// re-read. A decision to change nothing is never taken on a guess: the
/// record is read and decided again.
pub async fn cas_from<T, R, F>(
    store: &kv::Store,
    key: &str,
    mut guess: Option<Versioned<T>>,
    mut decide: F,
) -> Result<(R, u64), KvError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> Cas<T, R>,
{
    for _ in 0..MAX_ATTEMPTS {
        let guessed = guess.is_some();
        let current = match guess.take() {
            Some(g) => g,
            None => get::<T>(store, key).await?,
        };
        let revision = current.revision;
        let exists = current.value.is_some();
        match decide(current.value) {
            Cas::Keep(_) if guessed => continue,
            Cas::Keep(r) => return Ok((r, revision)),
            Cas::Write(value, r) => {
                let bytes = serde_json::to_vec(&value)
                    .map_err(|e| KvError::Write(e.to_string()))?
                    .into();
                let written = if exists {
                    match store.update(key, bytes, revision).await {
                        Ok(rev) => Some(rev),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                        Err(e) => return Err(KvError::Write(e.to_string())),
                    }
                } else {
                    match store.create(key, bytes).await {
                        Ok(rev) => Some(rev),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                        Err(e) => return Err(KvError::Write(e.to_string())),
                    }
                };
                if let Some(rev) = written {
                    return Ok((r, rev));
                }
                if !guessed {
                    metrics::counter!("nwd_kv_cas_conflicts_total").increment(1);
                }
            }
        }
    }
    Err(KvError::Contended {
        key: key.to_owned(),
        attempts: MAX_ATTEMPTS,
    })
}

/// Watches every key of a bucket — the latest value of each first, then
/// every change — calling `on_entry` for each, until `shutdown`. Rewatches
/// with backoff after an error. `ready_key` is ready once the history is
/// delivered (at once for an empty bucket) and while the watch runs.
pub async fn watch_bucket(
    store: kv::Store,
    ready_key: &'static str,
    readiness: crate::ops::Readiness,
    shutdown: tokio_util::sync::CancellationToken,
    on_entry: impl Fn(kv::Entry) + Send + 'static,
) {
    use futures::StreamExt;
    use std::time::Duration;
    let mut delay = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                delay = Duration::from_millis(100);
                let empty = store.status().await.is_ok_and(|s| s.values() == 0);
                readiness.set(ready_key, empty);
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        next = watch.next() => next,
                    };
                    match next {
                        Some(Ok(entry)) => {
                            let caught_up = entry.delta == 0;
                            on_entry(entry);
                            if caught_up {
                                readiness.set(ready_key, true);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(watch = ready_key, error = %e, "watch failed; rewatching");
                            break;
                        }
                        None => break,
                    }
                }
                readiness.set(ready_key, false);
            }
            Err(e) => tracing::warn!(watch = ready_key, error = %e, "cannot watch; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}
