//! [`RetryingBackend`]: retries transient failures with exponential
//! backoff and full jitter.
//!
//! HTTP stores of `object_store` retry their own requests (decorrelated
//! jitter, up to ten times within three minutes); this decorator covers
//! every backend the same way at the level of whole operations, so a
//! custom or fault-injecting backend gets the same treatment.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{Backend, ObjectInfo, StorageError};
use crate::format::BlobType;
use crate::format::ObjectKind;

/// How often and how long to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Tries in all (the first one included).
    pub attempts: u32,
    /// The first backoff; each further one may be twice as long.
    pub base: Duration,
    /// No single wait is longer than this.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(50),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait before try `n + 1` (n ≥ 1): uniform in
    /// `[0, min(max, base · 2^(n-1))]` ("full jitter", so that many
    /// clients failing together do not retry together).
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            return cap;
        }
        let frac = u64::from_le_bytes(seed) as f64 / u64::MAX as f64;
        cap.mul_f64(frac)
    }
}

/// Retries [`StorageError::Transient`] failures of the backend it wraps.
///
/// A create-only put retried after a transient failure may find its own
/// first attempt stored (the failure was a lost reply): when the stored
/// bytes are the ones being put, the put succeeded.
#[derive(Debug)]
pub struct RetryingBackend {
    inner: Arc<dyn Backend>,
    policy: RetryPolicy,
}

impl RetryingBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, policy: RetryPolicy) -> Self {
        RetryingBackend { inner, policy }
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        self.run_counted(op).await.0
    }

    /// Runs `op` until it succeeds, fails for good or runs out of tries;
    /// also returns how many tries it took.
    async fn run_counted<T, F, Fut>(&self, mut op: F) -> (Result<T, StorageError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let mut tried = 1;
        loop {
            match op().await {
                Err(e) if e.is_transient() && tried < self.policy.attempts => {
                    tokio::time::sleep(self.policy.backoff(tried)).await;
                    tried += 1;
                }
                other => return (other, tried),
            }
        }
    }

    /// A put that may have been stored by an attempt whose reply was lost.
    async fn put_retried<F, Fut>(
        &self,
        kind: ObjectKind,
        name: &str,
        data: &Bytes,
        op: F,
    ) -> Result<(), StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), StorageError>>,
    {
        match self.run_counted(op).await {
            (Err(StorageError::AlreadyExists { object }), tried) if tried > 1 => {
                match self.run(|| self.inner.get(kind, name)).await {
                    Ok(stored) if stored == *data => Ok(()),
                    _ => Err(StorageError::AlreadyExists { object }),
                }
            }
            (other, _) => other,
        }
    }
}

#[async_trait::async_trait]
impl Backend for RetryingBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    async fn put(&self, kind: ObjectKind, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_retried(kind, name, &data, || {
            self.inner.put(kind, name, data.clone())
        })
        .await
    }

    async fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes, StorageError> {
        self.run(|| self.inner.get(kind, name)).await
    }

    async fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.run(|| self.inner.get_range(kind, name, range.clone()))
            .await
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.run(|| self.inner.list(kind)).await
    }

    async fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        self.run(|| self.inner.delete(kind, name)).await
    }

    async fn put_pack(&self, name: &str, data: Bytes, class: BlobType) -> Result<(), StorageError> {
        self.put_retried(ObjectKind::Pack, name, &data, || {
            self.inner.put_pack(name, data.clone(), class)
        })
        .await
    }

    async fn get_pack_range(
        &self,
        name: &str,
        range: Range<u64>,
        class: BlobType,
    ) -> Result<Bytes, StorageError> {
        self.run(|| self.inner.get_pack_range(name, range.clone(), class))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_grows() {
        let p = RetryPolicy {
            attempts: 10,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for n in 1..30 {
            let cap = Duration::from_millis(100 * (1u64 << (n - 1).min(20))).min(p.max);
            assert!(p.backoff(n) <= cap, "try {n}");
        }
        // Full jitter: over many draws, later tries wait longer on average.
        let mean = |n| (0..200).map(|_| p.backoff(n).as_secs_f64()).sum::<f64>() / 200.0;
        assert!(mean(4) > mean(1) * 2.0);
    }
}
