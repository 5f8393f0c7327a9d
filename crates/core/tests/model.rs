//! A seeded model-based test of the engine's promises across backup,
//! forget, prune, crashes and restarts.
//!
//! Random steps run against a repository in memory, reached through the
//! fault-injecting backend; a crash step arms it so the process "dies"
//! after a random number of puts and deletes in the middle of a backup,
//! forget or prune, and the test then opens the repository anew as a
//! restarted process would. After every step the repository is compared
//! with a model that is only a map from snapshot id to the streams it
//! holds: the same snapshots must be listed, and one of them (every one,
//! now and then, and a full `check --read-data`) must restore byte for
//! byte. A step that crashed may or may not have taken effect: the model
//! accepts either, once, and from then on holds the repository to it.
//!
//! `TESSERA_MODEL_STEPS` (default 10,000) and `TESSERA_MODEL_SEED` (default
//! fixed; `random` draws one) choose the run; a failure prints the seed and
//! step to replay it.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use tessera_core::{
    Backend, BackupOptions, ChunkerParams, Credential, FaultPlan, FaultyBackend, InitOptions,
    KdfParams, ObjectStoreBackend, PruneOptions, Repository, SnapshotId, StreamSource,
};

/// splitmix64: enough randomness for choosing steps, and reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&self.next().to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }
}

type Streams = Vec<(String, Vec<u8>)>;

/// What a step that may have crashed might have done.
enum Maybe {
    Nothing,
    Backup(Streams),
    Forget(SnapshotId),
}

struct World {
    rng: Rng,
    store: Arc<dyn Backend>,
    faults: Arc<FaultyBackend>,
    repo: Repository,
    password: Credential,
    /// The model: every snapshot that must exist, and what it holds.
    model: BTreeMap<SnapshotId, Streams>,
    /// Files that change a little between backups, so that most data
    /// dedups and forgetting a snapshot frees only part of a pack.
    pool: Vec<Vec<u8>>,
    step: usize,
    trace: bool,
}

fn options() -> InitOptions {
    InitOptions {
        kdf: KdfParams::insecure_fast(),
        chunker: ChunkerParams::FastCdc {
            min: 256,
            avg: 1024,
            max: 4096,
        },
        data_pack_size: 16 * 1024,
        tree_pack_size: 4096,
        ..Default::default()
    }
}

fn prune_options(rng: &mut Rng) -> PruneOptions {
    PruneOptions {
        repack_threshold: [0.05, 0.3, 0.6, 1.0][rng.below(4)],
        // Sessions left by a crashed process expire at once (nothing else
        // writes while a step runs).
        lease: jiff::SignedDuration::ZERO,
        ..Default::default()
    }
}

impl World {
    async fn new(seed: u64) -> World {
        let store: Arc<dyn Backend> = Arc::new(ObjectStoreBackend::memory());
        let faults = Arc::new(FaultyBackend::new(store.clone(), FaultPlan::default()));
        let password = Credential::password("model");
        let repo = Repository::init(faults.clone(), &password, options())
            .await
            .unwrap();
        let mut rng = Rng(seed);
        let pool = (0..6)
            .map(|_| {
                let len = rng.below(48 * 1024);
                rng.bytes(len)
            })
            .collect();
        World {
            rng,
            store,
            faults,
            repo,
            password,
            model: BTreeMap::new(),
            pool,
            step: 0,
            trace: std::env::var_os("TESSERA_MODEL_TRACE").is_some(),
        }
    }

    /// A restarted process: a new handle on what the store holds.
    async fn reopen(&mut self) {
        self.faults = Arc::new(FaultyBackend::new(self.store.clone(), FaultPlan::default()));
        self.repo = Repository::open(self.faults.clone(), &self.password)
            .await
            .unwrap_or_else(|e| panic!("reopening after step {}: {e}", self.step));
    }

    /// One to three streams: pool files after a small edit, now and then
    /// a new file, sometimes an empty one.
    fn streams(&mut self) -> Streams {
        let n = 1 + self.rng.below(3);
        (0..n)
            .map(|i| {
                let slot = self.rng.below(self.pool.len());
                match self.rng.below(10) {
                    0 => {
                        let len = self.rng.below(64 * 1024);
                        self.pool[slot] = self.rng.bytes(len);
                    }
                    1 => self.pool[slot].clear(),
                    _ => {
                        let file = &mut self.pool[slot];
                        let at = self.rng.below(file.len() + 1);
                        let len = 1 + self.rng.below(3000);
                        let new = self.rng.bytes(len);
                        let end = (at + len).min(file.len());
                        file.splice(at..end, new);
                    }
                }
                (format!("s{i}"), self.pool[slot].clone())
            })
            .collect()
    }

    fn say(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            println!("step {}: {what}", self.step);
        }
    }

    async fn backup(&self, streams: &Streams) -> tessera_core::Result<SnapshotId> {
        let sources = streams
            .iter()
            .map(|(name, data)| StreamSource::new(name.clone(), Cursor::new(data.clone())))
            .collect();
        let summary = self.repo.backup(sources, BackupOptions::default()).await?;
        Ok(summary.id)
    }

    fn pick(&mut self) -> Option<SnapshotId> {
        let ids: Vec<SnapshotId> = self.model.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.below(ids.len())])
    }

    /// One random operation; with `crash` set it may fail part-way, and
    /// what it may have done is returned for the check after the restart.
    async fn operate(&mut self, crash: bool) -> Maybe {
        let forget_weight = if self.model.len() > 12 { 6 } else { 2 };
        let roll = self.rng.below(6 + forget_weight);
        if roll < 4 {
            let streams = self.streams();
            let result = self.backup(&streams).await;
            self.say(format_args!(
                "backup (crash {crash}): {:?}",
                result.as_ref().map(|i| i.short())
            ));
            match result {
                Ok(id) => {
                    self.model.insert(id, streams);
                    Maybe::Nothing
                }
                Err(e) if crash => {
                    let _ = e;
                    Maybe::Backup(streams)
                }
                Err(e) => panic!("step {}: backup failed: {e}", self.step),
            }
        } else if roll < 6 {
            let options = prune_options(&mut self.rng);
            let result = self.repo.prune(&options).await;
            self.say(format_args!("prune (crash {crash}): {result:?}"));
            match result {
                Ok(_) => Maybe::Nothing,
                Err(_) if crash => Maybe::Nothing,
                Err(e) => panic!("step {}: prune failed: {e}", self.step),
            }
        } else {
            let Some(id) = self.pick() else {
                return Maybe::Nothing;
            };
            let result = self.repo.forget_snapshot(id).await;
            self.say(format_args!(
                "forget {} (crash {crash}): {result:?}",
                id.short()
            ));
            match result {
                Ok(()) => {
                    self.model.remove(&id);
                    Maybe::Nothing
                }
                Err(_) if crash => Maybe::Forget(id),
                Err(e) => panic!("step {}: forget {id} failed: {e}", self.step),
            }
        }
    }

    async fn restores(&self, id: SnapshotId, streams: &Streams) {
        let snapshot = self
            .repo
            .read_snapshot(id)
            .await
            .unwrap_or_else(|e| panic!("step {}: snapshot {id}: {e}", self.step));
        for (name, data) in streams {
            let mut out = Vec::new();
            if let Err(e) = self.repo.restore_stream(&snapshot, name, &mut out).await {
                let fresh = Repository::open(self.store.clone(), &self.password)
                    .await
                    .unwrap();
                let mut again = Vec::new();
                let second = fresh.restore_stream(&snapshot, name, &mut again).await;
                panic!(
                    "step {}: restoring {id}:{name}: {e}; with a new handle: {:?}",
                    self.step,
                    second.map(|_| again == *data)
                );
            }
            assert!(
                out == *data,
                "step {}: {id}:{name} restored {} bytes, backed up {}",
                self.step,
                out.len(),
                data.len()
            );
        }
    }

    /// The repository against the model; settles what a crash may have
    /// done first.
    async fn compare(&mut self, maybe: Maybe) {
        let listed: Vec<SnapshotId> = self
            .repo
            .snapshots()
            .await
            .unwrap_or_else(|e| panic!("step {}: listing: {e}", self.step))
            .into_iter()
            .map(|e| e.id)
            .collect();
        let extra: Vec<SnapshotId> = listed
            .iter()
            .filter(|id| !self.model.contains_key(id))
            .copied()
            .collect();
        match (maybe, extra.as_slice()) {
            (Maybe::Backup(streams), [id]) => {
                self.restores(*id, &streams).await;
                self.model.insert(*id, streams);
            }
            (Maybe::Forget(id), []) if !listed.contains(&id) => {
                self.model.remove(&id);
            }
            (_, []) => {}
            (_, extra) => panic!("step {}: snapshots nobody made: {extra:?}", self.step),
        }
        let expected: Vec<SnapshotId> = self.model.keys().copied().collect();
        let mut listed = listed;
        listed.sort();
        assert_eq!(listed, expected, "step {}: listed snapshots", self.step);
        if let Some(id) = self.pick() {
            let streams = self.model[&id].clone();
            self.restores(id, &streams).await;
        }
    }

    /// How many objects of each kind the store holds.
    async fn objects(&self) -> String {
        let mut out = Vec::new();
        for kind in &tessera_core::ObjectKind::ALL {
            let n = self.store.list(*kind).await.map_or(0, |l| l.len());
            out.push(format!("{kind:?} {n}"));
        }
        out.join(", ")
    }

    async fn everything_restores(&self) {
        for (id, streams) in &self.model {
            self.restores(*id, streams).await;
        }
        let report = self.repo.check(true).await.unwrap();
        assert!(
            report.errors.is_empty(),
            "step {}: check found {:?}",
            self.step,
            report.errors
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_forget_prune_crash_reopen_against_a_model() {
    let steps: usize = std::env::var("TESSERA_MODEL_STEPS")
        .ok()
        .map_or(10_000, |s| {
            s.parse().expect("TESSERA_MODEL_STEPS: a number")
        });
    let seed: u64 = match std::env::var("TESSERA_MODEL_SEED").ok().as_deref() {
        None => 0x7e55_e7a0,
        Some("random") => getrandom_seed(),
        Some(s) => s.parse().expect("TESSERA_MODEL_SEED: a number or `random`"),
    };
    println!("model test: seed {seed}, {steps} steps (TESSERA_MODEL_SEED={seed} replays it)");
    let started = std::time::Instant::now();
    let mut world = World::new(seed).await;
    let (mut crashes, mut crashed) = (0, 0);
    for step in 1..=steps {
        world.step = step;
        let maybe = match world.rng.below(20) {
            0..=13 => world.operate(false).await,
            14..=17 => {
                // Killed after a few puts and deletes: most operations make
                // a handful, a prune a few dozen.
                let budget = world.rng.below(12) as u64;
                world.faults.crash_after(budget);
                let maybe = world.operate(true).await;
                crashes += 1;
                crashed += usize::from(world.faults.crashed());
                world.reopen().await;
                maybe
            }
            18 => {
                world.reopen().await;
                Maybe::Nothing
            }
            _ => {
                world.everything_restores().await;
                Maybe::Nothing
            }
        };
        world.compare(maybe).await;
        if step % 1000 == 0 {
            println!(
                "model test: step {step}, {:?} in, objects {}",
                started.elapsed(),
                world.objects().await
            );
        }
    }
    world.everything_restores().await;
    // Garbage from the crashes is collected once nothing is left open.
    world
        .repo
        .prune(&prune_options(&mut world.rng))
        .await
        .unwrap();
    world.everything_restores().await;
    println!(
        "model test: {} snapshots at the end, {crashes} crash steps ({crashed} died mid-way)",
        world.model.len()
    );
    assert!(
        crashed > steps / 100,
        "too few crashes landed mid-operation"
    );
}

fn getrandom_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id())
}
