//! Live backups of a running QEMU through QMP: in one `transaction` for
//! every disk of the VM, a new persistent dirty bitmap (named after the
//! snapshot being made), the previous one disabled, and a copy-before-write
//! fleecing job into a temporary overlay; then a read-only NBD export of
//! each frozen view with the previous bitmap, so only what changed since
//! that snapshot is read, while the guest keeps writing. With a guest
//! agent, the guest's filesystems are frozen around the transaction.
//!
//! After a commit the previous bitmap is removed; after a failure it is
//! enabled again with the new one merged into it (one transaction), so it
//! still counts every write since its snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_core::{Repository, SnapshotId};

use crate::backup::{
    BackupOptions, DiskSpec, Live, VmBackup, allocation_plan, check_names, nbd_source, read_config,
    store_sources,
};
use crate::bitmap::{self, Base};
use crate::image::{BitmapInfo, ImageInfo};
use crate::nbd::{CONTEXT_ALLOCATION, NbdClient};
use crate::plan::reuse_clean;
use crate::qmp::Qmp;
use crate::{Error, Result};

/// One disk of a running VM: its name in the snapshot and QEMU's node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveDisk {
    /// Name (the node under `disks/`).
    pub name: String,
    /// The block node QEMU names it by (`query-named-block-nodes`).
    pub node: String,
}

impl std::str::FromStr for LiveDisk {
    type Err = Error;
    /// `NAME=NODE`.
    fn from_str(s: &str) -> Result<Self> {
        let d: DiskSpec = s.parse()?;
        Ok(LiveDisk {
            name: d.name,
            node: d.path.to_string_lossy().into_owned(),
        })
    }
}

/// Where the running QEMU is.
#[derive(Clone, Default)]
pub struct LiveOptions {
    /// Its QMP socket.
    pub qmp: PathBuf,
    /// Its guest agent's socket, to freeze the guest's filesystems.
    pub guest_agent: Option<PathBuf>,
    /// An NBD server QEMU already runs (its Unix socket); default: start
    /// one on a private socket for the backup.
    pub nbd_socket: Option<PathBuf>,
    /// Where the temporary fleecing overlays go (default: the temporary
    /// directory); QEMU must be able to create files there.
    pub fleece_dir: Option<PathBuf>,
    /// Called once the point-in-time view is taken, before any disk is
    /// read (e.g. to resume an application paused for the backup).
    pub on_frozen: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// What one disk holds on the QEMU side during the backup.
struct Fleece {
    disk: String,
    node: String,
    overlay_node: String,
    job: String,
    export: String,
    file: PathBuf,
    base: Option<String>,
    new_bitmap: String,
    ours: Vec<String>,
    /// Why the disk is read in full.
    reason: Option<String>,
}

/// The QEMU-side state of a run, undone by [`Run::teardown`].
struct Run {
    qmp: Qmp,
    fleeces: Vec<Fleece>,
    dir: PathBuf,
    socket: PathBuf,
    nbd_started: bool,
    transacted: bool,
}

/// Backs up the disks of a running VM into one snapshot (`live: true`).
///
/// # Errors
/// QMP failures (QEMU's message), NBD read errors naming disk and offset,
/// storage errors. Nothing is committed then, and each disk's previous
/// bitmap keeps counting.
pub async fn backup_live(
    repo: &Repository,
    disks: Vec<LiveDisk>,
    options: BackupOptions,
    live: LiveOptions,
) -> Result<VmBackup> {
    let specs: Vec<DiskSpec> = disks
        .iter()
        .map(|d| DiskSpec {
            name: d.name.clone(),
            path: PathBuf::from(&d.node),
        })
        .collect();
    check_names(&options.vm, &specs)?;
    let repo_id = repo.config().id.clone();
    let known = repo.known_blobs().await?;
    let sid = repo.session_id().await?;
    let config = match options.config.as_deref().map(read_config).transpose() {
        Ok(c) => c,
        Err(e) => {
            repo.abandon_session().await;
            return Err(e);
        }
    };
    let mut run = match prepare(repo, &disks, &options, &live, &repo_id, sid).await {
        Ok(r) => r,
        Err(e) => {
            repo.abandon_session().await;
            return Err(e);
        }
    };
    let result = async {
        let frozen = take_view(&mut run, &live, options.timeout)?;
        let mut sources = Vec::new();
        for (d, f) in specs.iter().zip(&run.fleeces) {
            sources.push(open_export(repo, d, f, &run.socket, &options, &repo_id, &known).await?);
        }
        store_sources(repo, sources, config, &options, Live::Yes(frozen)).await
    }
    .await;
    run.teardown();
    match result {
        Ok((summary, mut reports)) => {
            let mut warnings = Vec::new();
            for (f, r) in run.fleeces.iter().zip(reports.iter_mut()) {
                r.bitmap = Some(f.new_bitmap.clone());
                for old in f.ours.iter().filter(|b| **b != f.new_bitmap) {
                    let args = json!({ "node": f.node, "name": old });
                    if let Err(e) = run.qmp.execute("block-dirty-bitmap-remove", args) {
                        warnings.push(format!("disk {}: the old bitmap {old} stays: {e}", f.disk));
                    }
                }
            }
            Ok(VmBackup {
                summary,
                disks: reports,
                warnings,
            })
        }
        Err(e) => {
            if run.transacted {
                run.restore_bitmaps();
            }
            repo.abandon_session().await;
            Err(e)
        }
    }
}

async fn prepare(
    repo: &Repository,
    disks: &[LiveDisk],
    options: &BackupOptions,
    live: &LiveOptions,
    repo_id: &str,
    sid: SnapshotId,
) -> Result<Run> {
    let mut qmp = Qmp::connect(&live.qmp, options.timeout)?;
    clean_stale(&mut qmp);
    let nodes = qmp.execute("query-named-block-nodes", json!({ "flat": true }))?;
    let dir = match &live.fleece_dir {
        Some(d) => d.join(format!("tessera-fleece-{}", sid.short())),
        None => std::env::temp_dir().join(format!("tessera-fleece-{}", sid.short())),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut run = Run {
        qmp,
        fleeces: Vec::new(),
        socket: live
            .nbd_socket
            .clone()
            .unwrap_or_else(|| dir.join("nbd.sock")),
        dir,
        nbd_started: false,
        transacted: false,
    };
    let prepared = async {
        for (i, d) in disks.iter().enumerate() {
            let mut info = node_info(&nodes, &d.node).map_err(|e| in_disk(&d.name, e))?;
            if recover_dead_run(repo, &mut run.qmp, &d.node, &info, repo_id).await? {
                let nodes = run
                    .qmp
                    .execute("query-named-block-nodes", json!({ "flat": true }))?;
                info = node_info(&nodes, &d.node).map_err(|e| in_disk(&d.name, e))?;
            }
            let choice = bitmap::choose(
                repo,
                &info,
                repo_id,
                &options.vm,
                &d.name,
                options.chunk_size,
                options.full,
            )
            .await?;
            let (base, reason) = match choice.base {
                Base::Use { bitmap, .. } => (Some(bitmap), None),
                Base::None(why) => (None, Some(why)),
            };
            let file = run.dir.join(format!("{i}.qcow2"));
            crate::image::create_qcow2(&file, info.size).map_err(|e| in_disk(&d.name, e))?;
            let f = Fleece {
                disk: d.name.clone(),
                node: d.node.clone(),
                overlay_node: format!("tessera-f-{}-{i}", sid.short()),
                job: format!("tessera-j-{}-{i}", sid.short()),
                export: format!("tessera-e-{}-{i}", sid.short()),
                file,
                base,
                new_bitmap: bitmap::name(repo_id, sid),
                ours: choice.ours,
                reason,
            };
            let add = json!({
                "driver": "qcow2", "node-name": f.overlay_node,
                "file": { "driver": "file", "filename": f.file },
                "backing": f.node,
            });
            run.fleeces.push(f);
            run.qmp
                .execute("blockdev-add", add)
                .map_err(|e| in_disk(&d.name, e))?;
        }
        if live.nbd_socket.is_none() {
            let addr = json!({ "addr": { "type": "unix", "data": { "path": run.socket } } });
            run.qmp.execute("nbd-server-start", addr).map_err(|e| {
                Error::InvalidArgument(format!(
                    "{e} (QEMU already runs an NBD server: give its socket with --nbd-socket)"
                ))
            })?;
            run.nbd_started = true;
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = prepared {
        run.teardown();
        return Err(e);
    }
    Ok(run)
}

/// The point-in-time view: freeze (if an agent answers), one transaction
/// for every disk, thaw. Returns whether the guest was frozen.
fn take_view(run: &mut Run, live: &LiveOptions, timeout: Duration) -> Result<Option<bool>> {
    let mut agent = live
        .guest_agent
        .as_deref()
        .and_then(|s| Qmp::guest_agent(s, timeout.min(Duration::from_secs(10))).ok());
    let frozen = agent
        .as_mut()
        .map(|a| a.execute("guest-fsfreeze-freeze", json!({})).is_ok());
    let mut actions = Vec::new();
    for f in &run.fleeces {
        actions.push(json!({ "type": "block-dirty-bitmap-add",
            "data": { "node": f.node, "name": f.new_bitmap, "persistent": true } }));
        if let Some(b) = &f.base {
            actions.push(json!({ "type": "block-dirty-bitmap-disable", "data": { "node": f.node, "name": b } }));
        }
        actions.push(json!({ "type": "blockdev-backup",
            "data": { "job-id": f.job, "device": f.node, "target": f.overlay_node, "sync": "none" } }));
    }
    let done = run
        .qmp
        .execute("transaction", json!({ "actions": actions }));
    if let Some(a) = agent.as_mut() {
        let _ = a.execute("guest-fsfreeze-thaw", json!({}));
    }
    done?;
    run.transacted = true;
    if let Some(hook) = &live.on_frozen {
        hook();
    }
    for f in &run.fleeces {
        let mut export = json!({ "type": "nbd", "id": f.export, "node-name": f.overlay_node,
            "name": f.export, "writable": false });
        if let Some(b) = &f.base {
            export["bitmaps"] = json!([b]);
        }
        run.qmp
            .execute("block-export-add", export)
            .map_err(|e| in_disk(&f.disk, e))?;
    }
    Ok(frozen)
}

async fn open_export(
    repo: &Repository,
    spec: &DiskSpec,
    f: &Fleece,
    socket: &Path,
    options: &BackupOptions,
    repo_id: &str,
    known: &tessera_core::KnownBlobs,
) -> Result<crate::blocks::Source> {
    let dirty_context = f.base.as_ref().map(|b| format!("qemu:dirty-bitmap:{b}"));
    let mut contexts = vec![CONTEXT_ALLOCATION];
    contexts.extend(dirty_context.as_deref());
    let client = NbdClient::connect(socket, &f.export, &contexts, options.timeout)
        .map_err(|e| in_disk(&f.disk, e))?;
    let mut report = crate::DiskReport {
        name: f.disk.clone(),
        format: "qcow2".into(),
        chunk_size: options.chunk_size,
        mode: "full".into(),
        ..Default::default()
    };
    let (mut client, mut plan) =
        allocation_plan(client, &mut report).map_err(|e| in_disk(&f.disk, e))?;
    let mut base_map = None;
    match (&f.base, &dirty_context) {
        (Some(_), Some(context)) => {
            let snapshot = repo
                .read_snapshot(bitmap_sid(f.base.as_deref(), repo_id)?)
                .await?;
            let map = crate::restore::disk_map(repo, &snapshot, &f.disk).await?;
            let dirty = client
                .block_status(0, report.size, context)
                .map_err(|e| in_disk(&f.disk, e))?;
            reuse_clean(
                &mut plan,
                &dirty,
                &map,
                options.chunk_size,
                known,
                options.audit,
            );
            report.mode = "bitmap".into();
            base_map = Some(Arc::new(map));
        }
        _ => report.reason = f.reason.clone(),
    }
    let mut spec = spec.clone();
    spec.path = PathBuf::from(format!("qmp:{}", f.node));
    let mut source = nbd_source(
        &spec,
        report,
        plan,
        base_map,
        client,
        None,
        Vec::new(),
        options,
    );
    source.id_of = options.audit.then(|| crate::backup::id_of(repo));
    Ok(source)
}

fn bitmap_sid(base: Option<&str>, repo_id: &str) -> Result<SnapshotId> {
    base.and_then(|b| b.strip_prefix(&bitmap::prefix(repo_id)))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::InvalidArgument("the base bitmap names no snapshot".into()))
}

fn in_disk(disk: &str, e: Error) -> Error {
    Error::InvalidArgument(format!("disk {disk}: {e}"))
}

/// A backup killed between its transaction and its end leaves the
/// previous bitmap disabled and a recording one named after a snapshot
/// that never came: merge that one back into the previous one and let it
/// record again, as a failed backup would have. True if it changed
/// anything.
async fn recover_dead_run(
    repo: &Repository,
    qmp: &mut Qmp,
    node: &str,
    info: &ImageInfo,
    repo_id: &str,
) -> Result<bool> {
    let pre = bitmap::prefix(repo_id);
    let mut orphans = Vec::new();
    let mut stopped = Vec::new();
    for b in info.bitmaps.iter().filter(|b| b.name.starts_with(&pre)) {
        let Some(sid) = b
            .name
            .strip_prefix(&pre)
            .and_then(|s| s.parse::<SnapshotId>().ok())
        else {
            continue;
        };
        let exists = match repo.read_snapshot_object(sid).await {
            Ok(Some(_)) => true,
            Ok(None) | Err(tessera_core::Error::Missing { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        match (exists, b.recording()) {
            (false, true) => orphans.push(b.name.clone()),
            (true, false) if !b.inconsistent() => stopped.push(b.name.clone()),
            _ => {}
        }
    }
    if orphans.is_empty() {
        return Ok(false);
    }
    let mut actions = Vec::new();
    if let [previous] = stopped.as_slice() {
        actions.push(json!({ "type": "block-dirty-bitmap-enable", "data": { "node": node, "name": previous } }));
        actions.push(json!({ "type": "block-dirty-bitmap-merge",
            "data": { "node": node, "target": previous, "bitmaps": orphans } }));
    }
    for o in &orphans {
        actions.push(
            json!({ "type": "block-dirty-bitmap-remove", "data": { "node": node, "name": o } }),
        );
    }
    qmp.execute("transaction", json!({ "actions": actions }))?;
    Ok(true)
}

/// A node's size, format and bitmaps from `query-named-block-nodes`.
fn node_info(nodes: &Value, node: &str) -> Result<ImageInfo> {
    let list = nodes.as_array().map(Vec::as_slice).unwrap_or_default();
    let n = list
        .iter()
        .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
        .ok_or_else(|| {
            let names: Vec<&str> = list
                .iter()
                .filter_map(|n| n.get("node-name")?.as_str())
                .collect();
            Error::InvalidArgument(format!(
                "QEMU has no block node {node:?} (it has: {})",
                names.join(", ")
            ))
        })?;
    let format = n
        .get("drv")
        .and_then(Value::as_str)
        .unwrap_or("raw")
        .to_string();
    let size = n
        .pointer("/image/virtual-size")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            Error::InvalidArgument(format!("QEMU did not say the size of node {node:?}"))
        })?;
    let bitmaps = n
        .get("dirty-bitmaps")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|b| {
            let mut flags = Vec::new();
            if b.get("recording").and_then(Value::as_bool).unwrap_or(false) {
                flags.push("auto".to_string());
            }
            if b.get("inconsistent")
                .and_then(Value::as_bool)
                .unwrap_or(false)
            {
                flags.push("in-use".to_string());
            }
            Some(BitmapInfo {
                name: b.get("name")?.as_str()?.to_string(),
                granularity: b.get("granularity").and_then(Value::as_u64).unwrap_or(0),
                flags,
            })
        })
        .collect();
    Ok(ImageInfo {
        format,
        size,
        bitmaps,
    })
}

/// Removes what a backup that died left in QEMU: exports, jobs and
/// overlays named `tessera-…` (one backup per VM at a time).
fn clean_stale(qmp: &mut Qmp) {
    let named = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| e.get(key)?.as_str().map(str::to_string))
            .filter(|n| n.starts_with("tessera-"))
            .collect()
    };
    if let Ok(v) = qmp.execute("query-block-exports", json!({})) {
        for id in named(&v, "id") {
            let _ = qmp.execute("block-export-del", json!({ "id": id, "mode": "hard" }));
        }
    }
    if let Ok(v) = qmp.execute("query-block-jobs", json!({})) {
        for job in named(&v, "device") {
            let _ = qmp.execute("block-job-cancel", json!({ "device": job, "force": true }));
        }
    }
    if let Ok(v) = qmp.execute("query-named-block-nodes", json!({ "flat": true })) {
        for node in named(&v, "node-name") {
            let _ = delete_node(qmp, &node);
        }
    }
}

fn delete_node(qmp: &mut Qmp, node: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match qmp.execute("blockdev-del", json!({ "node-name": node })) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

impl Run {
    /// Exports, jobs, overlays and the NBD server of this run go.
    fn teardown(&mut self) {
        for f in &self.fleeces {
            let _ = self
                .qmp
                .execute("block-export-del", json!({ "id": f.export }));
        }
        for f in &self.fleeces {
            let _ = self.qmp.execute(
                "block-job-cancel",
                json!({ "device": f.job, "force": true }),
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let jobs = self
                .qmp
                .execute("query-block-jobs", json!({}))
                .unwrap_or_default();
            let ours = jobs.as_array().is_some_and(|j| {
                j.iter().any(|j| {
                    self.fleeces
                        .iter()
                        .any(|f| j.get("device").and_then(Value::as_str) == Some(&f.job))
                })
            });
            if !ours {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for f in &self.fleeces {
            if let Err(e) = delete_node(&mut self.qmp, &f.overlay_node) {
                eprintln!(
                    "tessera: warning: disk {}: fleecing node {} stays in QEMU: {e}",
                    f.disk, f.overlay_node
                );
            }
        }
        if self.nbd_started {
            let _ = self.qmp.execute("nbd-server-stop", json!({}));
        }
        for f in &self.fleeces {
            let _ = std::fs::remove_file(&f.file);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// After a failure: each previous bitmap records again, with what the
    /// new one counted merged in, and the new one goes; without a previous
    /// one, the new one goes (the next backup reads in full).
    fn restore_bitmaps(&mut self) {
        for f in &self.fleeces {
            let mut actions = Vec::new();
            if let Some(b) = &f.base {
                actions.push(json!({ "type": "block-dirty-bitmap-enable", "data": { "node": f.node, "name": b } }));
                actions.push(json!({ "type": "block-dirty-bitmap-merge",
                    "data": { "node": f.node, "target": b, "bitmaps": [f.new_bitmap] } }));
            }
            actions.push(json!({ "type": "block-dirty-bitmap-remove", "data": { "node": f.node, "name": f.new_bitmap } }));
            if let Err(e) = self
                .qmp
                .execute("transaction", json!({ "actions": actions }))
            {
                eprintln!(
                    "tessera: warning: disk {}: its bitmaps could not be put back (the next backup reads it in full): {e}",
                    f.disk
                );
            }
        }
    }
}
