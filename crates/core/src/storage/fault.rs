//! [`FaultyBackend`]: injects the failures real storage has, for tests and
//! benchmarks: transient errors, torn connections, latency, a disk that
//! fills up, and credentials that may not delete.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::{Backend, ObjectInfo, StorageError};
use crate::format::BlobType;
use crate::format::ObjectKind;

/// Which faults to inject. Parsed from a comma-separated list such as
/// `transient=0.1,torn=0.05,latency=2ms,full-after=40,deny-delete,seed=7`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Share of calls that fail with [`StorageError::Transient`] without
    /// touching the store.
    pub transient: f64,
    /// Share of puts that store the object and then fail transiently, as
    /// a connection torn before the reply arrives; and of reads that fail
    /// after the store was read.
    pub torn: f64,
    /// Added to every call.
    pub latency: Duration,
    /// After this many successful puts, every put fails with "no space
    /// left on device" (a permanent error).
    pub full_after_puts: Option<u64>,
    /// Deletes fail with "access denied", as with credentials that may
    /// only create (object-lock and append-only setups).
    pub deny_delete: bool,
    /// After this many puts and deletes have landed, the process is as
    /// good as killed: every later call fails (see
    /// [`FaultyBackend::crash_after`]).
    pub crash_after: Option<u64>,
    /// Seed of the fault sequence.
    pub seed: u64,
}

impl FromStr for FaultPlan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut plan = FaultPlan::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            let bad = |what: &str| format!("fault plan {item:?}: {what}");
            let share = || -> Result<f64, String> {
                let v: f64 = value.parse().map_err(|_| bad("expected a share 0..1"))?;
                (0.0..=1.0)
                    .contains(&v)
                    .then_some(v)
                    .ok_or_else(|| bad("expected a share 0..1"))
            };
            match key {
                "transient" => plan.transient = share()?,
                "torn" => plan.torn = share()?,
                "latency" => {
                    let ms = value
                        .strip_suffix("ms")
                        .ok_or_else(|| bad("use e.g. 5ms"))?;
                    plan.latency =
                        Duration::from_millis(ms.parse().map_err(|_| bad("use e.g. 5ms"))?);
                }
                "full-after" => {
                    plan.full_after_puts = Some(
                        value
                            .parse()
                            .map_err(|_| bad("expected a number of puts"))?,
                    );
                }
                "deny-delete" => plan.deny_delete = true,
                "crash-after" => {
                    plan.crash_after = Some(
                        value
                            .parse()
                            .map_err(|_| bad("expected a number of puts and deletes"))?,
                    );
                }
                "seed" => plan.seed = value.parse().map_err(|_| bad("expected a number"))?,
                _ => return Err(bad("unknown fault")),
            }
        }
        Ok(plan)
    }
}

/// Wraps a backend and fails some of its calls according to a
/// [`FaultPlan`]. Faults are drawn from a seeded sequence, so a run with
/// one plan and one order of calls is repeatable.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    plan: FaultPlan,
    rng: Mutex<u64>,
    puts: AtomicU64,
    /// Puts and deletes still allowed before the crash (`u64::MAX`: none
    /// is armed).
    mutations_left: AtomicU64,
    /// A mutation past the armed crash point was attempted.
    dead: std::sync::atomic::AtomicBool,
}

enum Fault {
    None,
    Before,
    After,
}

impl FaultyBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>, plan: FaultPlan) -> Self {
        let seed = plan.seed ^ 0x9e37_79b9_7f4a_7c15;
        FaultyBackend {
            inner,
            rng: Mutex::new(seed),
            puts: AtomicU64::new(0),
            mutations_left: AtomicU64::new(plan.crash_after.unwrap_or(u64::MAX)),
            dead: std::sync::atomic::AtomicBool::new(false),
            plan,
        }
    }

    /// Arms a crash: `mutations` more puts and deletes land; the next one
    /// and every call after it fail as it would for a process that was killed
    /// (nothing after the crash point reaches the store). For crash
    /// tests: drop the repository handle and open a new one on the inner
    /// backend to see what a restarted process finds.
    pub fn crash_after(&self, mutations: u64) {
        self.mutations_left.store(mutations, Ordering::SeqCst);
    }

    /// Whether an armed crash has happened.
    pub fn crashed(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    fn killed(kind: ObjectKind, name: &str) -> StorageError {
        StorageError::other(
            kind.object_name(name),
            std::io::Error::other("injected crash: the process is gone"),
        )
    }

    /// Counts one put or delete against an armed crash: false when it is
    /// past the crash point (the process is dead from then on).
    fn mutation_allowed(&self) -> bool {
        let allowed = !self.crashed()
            && self
                .mutations_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                    0 => None,
                    u64::MAX => Some(u64::MAX),
                    n => Some(n - 1),
                })
                .is_ok();
        if !allowed {
            self.dead.store(true, Ordering::SeqCst);
        }
        allowed
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn draw(&self) -> f64 {
        let mut state = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn fault(&self) -> Fault {
        if !self.plan.latency.is_zero() {
            tokio::time::sleep(self.plan.latency).await;
        }
        let d = self.draw();
        if d < self.plan.transient {
            Fault::Before
        } else if d < self.plan.transient + self.plan.torn {
            Fault::After
        } else {
            Fault::None
        }
    }

    fn transient(kind: ObjectKind, name: &str, what: &str) -> StorageError {
        StorageError::Transient {
            object: kind.object_name(name),
            source: format!("injected fault: {what}").into(),
        }
    }

    /// Runs a call under the plan.
    async fn call<T>(
        &self,
        kind: ObjectKind,
        name: &str,
        op: impl Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        if self.crashed() {
            return Err(Self::killed(kind, name));
        }
        match self.fault().await {
            Fault::Before => Err(Self::transient(kind, name, "connection reset")),
            Fault::After => {
                op.await?;
                Err(Self::transient(
                    kind,
                    name,
                    "connection torn before the reply",
                ))
            }
            Fault::None => op.await,
        }
    }

    /// Runs a put under the plan, counting it toward a full disk.
    async fn put_call(
        &self,
        kind: ObjectKind,
        name: &str,
        op: impl Future<Output = Result<(), StorageError>>,
    ) -> Result<(), StorageError> {
        if let Some(limit) = self.plan.full_after_puts
            && self.puts.load(Ordering::SeqCst) >= limit
        {
            return Err(StorageError::other(
                kind.object_name(name),
                std::io::Error::from(std::io::ErrorKind::StorageFull),
            ));
        }
        if !self.mutation_allowed() {
            return Err(Self::killed(kind, name));
        }
        self.call(kind, name, async {
            op.await?;
            self.puts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl Backend for FaultyBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    async fn put(&self, kind: ObjectKind, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_call(kind, name, self.inner.put(kind, name, data))
            .await
    }

    async fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes, StorageError> {
        self.call(kind, name, self.inner.get(kind, name)).await
    }

    async fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.call(kind, name, self.inner.get_range(kind, name, range))
            .await
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.call(kind, "", self.inner.list(kind)).await
    }

    async fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        if self.plan.deny_delete {
            return Err(StorageError::other(
                kind.object_name(name),
                std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            ));
        }
        if !self.mutation_allowed() {
            return Err(Self::killed(kind, name));
        }
        self.call(kind, name, self.inner.delete(kind, name)).await
    }

    async fn put_pack(&self, name: &str, data: Bytes, class: BlobType) -> Result<(), StorageError> {
        self.put_call(
            ObjectKind::Pack,
            name,
            self.inner.put_pack(name, data, class),
        )
        .await
    }

    async fn get_pack_range(
        &self,
        name: &str,
        range: Range<u64>,
        class: BlobType,
    ) -> Result<Bytes, StorageError> {
        self.call(
            ObjectKind::Pack,
            name,
            self.inner.get_pack_range(name, range, class),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse() {
        let p: FaultPlan =
            "transient=0.1, torn=0.05,latency=3ms,full-after=7,deny-delete,crash-after=4,seed=9"
                .parse()
                .unwrap();
        assert_eq!(
            p,
            FaultPlan {
                transient: 0.1,
                torn: 0.05,
                latency: Duration::from_millis(3),
                full_after_puts: Some(7),
                deny_delete: true,
                crash_after: Some(4),
                seed: 9,
            }
        );
        assert!("transient=2".parse::<FaultPlan>().is_err());
        assert!("bogus".parse::<FaultPlan>().is_err());
        assert!("latency=5".parse::<FaultPlan>().is_err());
    }

    #[tokio::test]
    async fn a_crash_lets_the_armed_mutations_land_and_nothing_after() {
        let inner = Arc::new(super::super::ObjectStoreBackend::memory());
        let b = FaultyBackend::new(inner.clone(), FaultPlan::default());
        let put = |n: &'static str| b.put(ObjectKind::Snapshot, n, Bytes::from_static(b"x"));
        put("a").await.unwrap();
        b.crash_after(2);
        put("b").await.unwrap();
        b.delete(ObjectKind::Snapshot, "a").await.unwrap();
        assert!(!b.crashed());
        assert!(put("c").await.is_err());
        assert!(b.crashed());
        assert!(b.list(ObjectKind::Snapshot).await.is_err());
        assert!(b.delete(ObjectKind::Snapshot, "b").await.is_err());
        let names: Vec<String> = inner
            .list(ObjectKind::Snapshot)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(names, ["b"]);
    }

    #[test]
    fn draws_are_uniform_enough() {
        let b = FaultyBackend::new(
            Arc::new(super::super::ObjectStoreBackend::memory()),
            FaultPlan::default(),
        );
        let hits = (0..10_000).filter(|_| b.draw() < 0.1).count();
        assert!((800..1200).contains(&hits), "{hits}");
    }
}
