//! A blocking wrapper around [`crate::Repository`].
//!
//! Each wrapper owns a private Tokio runtime (two worker threads), never a
//! process-global one. Calls made from inside another runtime (an async
//! program using the blocking API by mistake, or on purpose from
//! `spawn_blocking`) do not panic: the work is handed to the wrapper's own
//! runtime from a scoped helper thread, and the caller's thread waits.

use std::future::Future;
use std::io::Write;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::{
    Backend, BackupOptions, BackupSummary, CheckReport, Credential, InitOptions, RepoStats,
    Snapshot, SnapshotEntry, StreamSource,
};

/// A repository handle with blocking methods.
pub struct Repository {
    repo: crate::Repository,
    runtime: Option<tokio::runtime::Runtime>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tessera-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the I/O runtime", e))
}

fn run<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        // Blocking on a runtime from inside another panics in Tokio; run it
        // from a helper thread that is outside any runtime instead.
        std::thread::scope(|s| {
            #[allow(clippy::expect_used)]
            s.spawn(|| rt.block_on(fut))
                .join()
                .expect("tessera I/O thread panicked")
        })
    } else {
        rt.block_on(fut)
    }
}

impl Repository {
    /// See [`crate::Repository::init`].
    ///
    /// # Errors
    /// As the async version.
    pub fn init(
        backend: Arc<dyn Backend>,
        credential: &Credential,
        options: InitOptions,
    ) -> Result<Self> {
        let rt = runtime()?;
        let repo = run(&rt, crate::Repository::init(backend, credential, options))?;
        Ok(Repository {
            repo,
            runtime: Some(rt),
        })
    }

    /// See [`crate::Repository::open`].
    ///
    /// # Errors
    /// As the async version.
    pub fn open(backend: Arc<dyn Backend>, credential: &Credential) -> Result<Self> {
        let rt = runtime()?;
        let repo = run(&rt, crate::Repository::open(backend, credential))?;
        Ok(Repository {
            repo,
            runtime: Some(rt),
        })
    }

    fn block<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        #[allow(clippy::expect_used)]
        let rt = self.runtime.as_ref().expect("runtime present until drop");
        run(rt, fut)
    }

    /// The async handle, for mixing both styles.
    pub fn as_async(&self) -> &crate::Repository {
        &self.repo
    }

    /// See [`crate::Repository::backup`].
    ///
    /// # Errors
    /// As the async version.
    pub fn backup(
        &self,
        streams: Vec<StreamSource>,
        options: BackupOptions,
    ) -> Result<BackupSummary> {
        self.block(self.repo.backup(streams, options))
    }

    /// See [`crate::Repository::snapshots`].
    ///
    /// # Errors
    /// As the async version.
    pub fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        self.block(self.repo.snapshots())
    }

    /// See [`crate::Repository::find_snapshot`].
    ///
    /// # Errors
    /// As the async version.
    pub fn find_snapshot(&self, reference: &str) -> Result<SnapshotEntry> {
        self.block(self.repo.find_snapshot(reference))
    }

    /// See [`crate::Repository::restore_stream`].
    ///
    /// # Errors
    /// As the async version.
    pub fn restore_stream<W: Write + Send>(
        &self,
        snapshot: &Snapshot,
        name: &str,
        out: &mut W,
    ) -> Result<u64> {
        self.block(self.repo.restore_stream(snapshot, name, out))
    }

    /// See [`crate::Repository::check`].
    ///
    /// # Errors
    /// As the async version.
    pub fn check(&self, read_data: bool) -> Result<CheckReport> {
        self.block(self.repo.check(read_data))
    }

    /// See [`crate::Repository::stats`].
    ///
    /// # Errors
    /// As the async version.
    pub fn stats(&self) -> Result<RepoStats> {
        self.block(self.repo.stats())
    }

    /// See [`crate::Repository::prune`].
    ///
    /// # Errors
    /// As the async version.
    pub fn prune(&self, options: &crate::PruneOptions) -> Result<crate::PruneReport> {
        self.block(self.repo.prune(options))
    }

    /// Runs any async operation of the handle on the private runtime.
    pub fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        self.block(fut)
    }
}

impl Drop for Repository {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime;
        // shutting down in the background never blocks.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
