//! Backing a VM's disks up: plan which chunks to read (allocation, dirty
//! bitmap, the previous snapshot), read them over NBD with several
//! requests in flight (or from a plain file), and store each disk as one
//! sparse node of fixed-size chunks.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_core::{BackupSummary, Content, Entry, KnownBlobs, Meta, Repository};

use crate::bitmap::{self, Base};
pub use crate::blocks::DiskReport;
use crate::blocks::{DiskBlocks, Reader, Source};
use crate::image::{self, QemuNbd};
use crate::meta::{DiskInfo, VM_META_VERSION, VmMeta, dir_meta, file_meta};
use crate::nbd::client::Duplex;
use crate::nbd::{CONTEXT_ALLOCATION, NbdClient, ReadPipeline, STATE_ZERO};
use crate::plan::{Plan, ReadRanges, data_ranges, plan_from_allocation, reuse_clean};
use crate::restore::DiskMap;
use crate::{Error, KIND, Result};

/// One disk to back up: its name in the snapshot and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Name (a file name: the node under `disks/`).
    pub name: String,
    /// An image file (raw or qcow2) or a block device.
    pub path: PathBuf,
}

impl std::str::FromStr for DiskSpec {
    type Err = Error;
    /// `NAME=PATH`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, path) = s
            .split_once('=')
            .filter(|(n, p)| !n.is_empty() && !p.is_empty())
            .ok_or_else(|| Error::InvalidArgument(format!("--disk {s:?}: expected NAME=IMAGE")))?;
        Ok(DiskSpec {
            name: name.into(),
            path: path.into(),
        })
    }
}

/// Options of a VM backup.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The VM's name.
    pub vm: String,
    /// Chunk size (a power of two, 64 KiB to 4 MiB).
    pub chunk_size: u32,
    /// A configuration file to store beside the disks (libvirt XML, a
    /// Proxmox `qemu-server` conf, ...).
    pub config: Option<PathBuf>,
    /// Read the files or devices themselves, without QEMU (raw only; no
    /// dirty bitmaps).
    pub direct: bool,
    /// Read every allocated chunk even where a dirty bitmap could tell.
    pub full: bool,
    /// With a dirty bitmap: read the chunks it calls clean too, and report
    /// each whose content changed (stored as read).
    pub audit: bool,
    /// zstd level of the disks' new chunks (`None`: the repository's).
    /// Default 1, as PBS: disk chunks are mostly binary, where level 3
    /// saves about 5 % more space at almost twice the CPU.
    pub compression: Option<i32>,
    /// Read requests in flight per disk.
    pub window: usize,
    /// How long an NBD server may stay silent.
    pub timeout: Duration,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Host name (default: this machine's).
    pub hostname: Option<String>,
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions {
            vm: String::new(),
            chunk_size: 256 << 10,
            config: None,
            direct: false,
            full: false,
            audit: false,
            compression: Some(1),
            window: 8,
            timeout: Duration::from_secs(60),
            tags: Vec::new(),
            hostname: None,
        }
    }
}

/// The outcome of a VM backup.
#[derive(Clone, Debug)]
pub struct VmBackup {
    /// The snapshot.
    pub summary: BackupSummary,
    /// Per disk, in order.
    pub disks: Vec<DiskReport>,
    /// Things that went wrong after the snapshot was committed (a bitmap
    /// that could not be added: the next backup reads in full).
    pub warnings: Vec<String>,
}

/// Backs up the disks of one VM (stopped: its image files) into one
/// snapshot of kind [`KIND`].
///
/// # Errors
/// A disk that cannot be opened or read (naming disk and offset), bad
/// options, storage errors. Nothing is committed then, and every dirty
/// bitmap is left as it was.
pub async fn backup(
    repo: &Repository,
    disks: Vec<DiskSpec>,
    options: BackupOptions,
) -> Result<VmBackup> {
    check_names(&options.vm, &disks)?;
    let repo_id = repo.config().id.clone();
    let known = repo.known_blobs().await?;
    let result = async {
        let mut sources = Vec::new();
        for d in &disks {
            sources.push(open_disk(repo, d, &options, &repo_id, &known).await?);
        }
        let config = match &options.config {
            Some(p) => Some(read_config(p)?),
            None => None,
        };
        Ok::<_, Error>((sources, config))
    }
    .await;
    let (sources, config) = match result {
        Ok(r) => r,
        Err(e) => {
            repo.abandon_session().await;
            return Err(e);
        }
    };
    let images: Vec<(PathBuf, String, Vec<String>)> = sources
        .iter()
        .map(|s| {
            (
                s.path.clone(),
                s.report.format.clone(),
                s.bitmaps_to_drop.clone(),
            )
        })
        .collect();
    let (summary, mut disks) = store_sources(repo, sources, config, &options, Live::No).await?;
    let warnings = if options.direct {
        Vec::new()
    } else {
        advance_bitmaps(&mut disks, images, &repo_id, summary.id)
    };
    Ok(VmBackup {
        summary,
        disks,
        warnings,
    })
}

/// Whether a backup read a running VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Live {
    /// Images of a stopped VM.
    No,
    /// A running QEMU's point-in-time view; whether the guest agent froze
    /// the filesystems (`None`: no agent).
    Yes(Option<bool>),
}

/// Stores the opened disks (and the configuration file) as one snapshot.
/// On error nothing is committed.
pub(crate) async fn store_sources(
    repo: &Repository,
    sources: Vec<Source>,
    config: Option<(String, Vec<u8>)>,
    options: &BackupOptions,
    live: Live,
) -> Result<(BackupSummary, Vec<DiskReport>)> {
    let now = jiff::Timestamp::now();
    let time = (now.as_second(), now.subsec_nanosecond() as u32);
    let failed: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let mut reports = Vec::new();
    let mut entries: Vec<Entry> = vec![Entry::Dir {
        name: b"disks".to_vec(),
        meta: dir_meta(time),
    }];
    let mut infos = Vec::new();
    for s in sources {
        let report = Arc::new(Mutex::new(s.report.clone()));
        infos.push((s.report.name.clone(), s.path.display().to_string()));
        reports.push(report.clone());
        entries.push(Entry::File {
            name: s.report.name.clone().into_bytes(),
            meta: Meta::null(),
            content: Content::Blocks(Box::new(DiskBlocks::new(s, time, report, failed.clone()))),
            on_stored: None,
        });
    }
    entries.push(Entry::EndDir);
    let config_name = config.as_ref().map(|(n, _)| n.clone());
    if let Some((name, bytes)) = config {
        entries.push(Entry::Dir {
            name: b"config".to_vec(),
            meta: dir_meta(time),
        });
        entries.push(Entry::File {
            name: name.into_bytes(),
            meta: file_meta(time, bytes.len() as u64),
            content: Content::Read(Box::new(std::io::Cursor::new(bytes))),
            on_stored: None,
        });
        entries.push(Entry::EndDir);
    }
    repo.set_data_compression(options.compression)?;
    let tree = repo.store_tree(entries.into_iter(), None).await;
    let _ = repo.set_data_compression(None);
    let tree = tree?;
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        repo.abandon_tree(tree).await;
        return Err(e);
    }
    let disks: Vec<DiskReport> = reports
        .iter()
        .map(|r| r.lock().map(|r| r.clone()).unwrap_or_default())
        .collect();
    let meta = vm_meta(options, &disks, &infos, config_name, live);
    let commit = tessera_core::BackupOptions {
        time: Some(now),
        hostname: options.hostname.clone(),
        tags: options.tags.clone(),
        paths: vec![options.vm.clone()],
        source_kind: Some(KIND.into()),
        source_meta: serde_json::to_value(&meta)
            .map_err(|e| Error::InvalidArgument(format!("VM metadata: {e}")))?,
        ..Default::default()
    };
    let summary = repo.commit_snapshot(tree, commit).await?;
    Ok((summary, disks))
}

fn vm_meta(
    options: &BackupOptions,
    disks: &[DiskReport],
    infos: &[(String, String)],
    config: Option<String>,
    live: Live,
) -> VmMeta {
    VmMeta {
        version: VM_META_VERSION,
        name: options.vm.clone(),
        disks: disks
            .iter()
            .zip(infos)
            .map(|(r, (_, source))| DiskInfo {
                name: r.name.clone(),
                source: source.clone(),
                format: r.format.clone(),
                size: r.size,
                chunk_size: r.chunk_size,
                mode: r.mode.clone(),
                bytes_read: r.bytes_read,
            })
            .collect(),
        config,
        live: live != Live::No,
        frozen: match live {
            Live::Yes(frozen) => frozen,
            Live::No => None,
        },
    }
}

/// After the commit: each qcow2 image gets the bitmap named after the new
/// snapshot, and loses this repository's older ones. A failure is a
/// warning (the next backup of that disk reads it in full).
fn advance_bitmaps(
    disks: &mut [DiskReport],
    images: Vec<(PathBuf, String, Vec<String>)>,
    repo_id: &str,
    sid: tessera_core::SnapshotId,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (report, (path, format, old)) in disks.iter_mut().zip(images) {
        if format != "qcow2" {
            continue;
        }
        match bitmap::advance(&path, repo_id, sid, &old) {
            Ok(name) => report.bitmap = Some(name),
            Err(e) => warnings.push(format!(
                "disk {}: no dirty bitmap for the next backup (it will read the whole disk): {e}",
                report.name
            )),
        }
    }
    warnings
}

pub(crate) fn check_names(vm: &str, disks: &[DiskSpec]) -> Result<()> {
    if vm.is_empty() {
        return Err(Error::InvalidArgument(
            "a VM backup needs a name (--name)".into(),
        ));
    }
    if disks.is_empty() {
        return Err(Error::InvalidArgument(
            "a VM backup needs at least one --disk NAME=IMAGE".into(),
        ));
    }
    for d in disks {
        tessera_core::validate_stream_name(&d.name)
            .map_err(|e| Error::InvalidArgument(format!("disk name {:?}: {e}", d.name)))?;
    }
    tessera_core::tree::ensure_unique_names(disks.iter().map(|d| d.name.as_bytes()))
        .map_err(|e| Error::InvalidArgument(format!("disk names: {e}")))?;
    Ok(())
}

pub(crate) fn read_config(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::InvalidArgument(format!("--config {}: not a file name", path.display()))
        })?;
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok((name, bytes))
}

async fn open_disk(
    repo: &Repository,
    disk: &DiskSpec,
    options: &BackupOptions,
    repo_id: &str,
    known: &KnownBlobs,
) -> Result<Source> {
    let report = DiskReport {
        name: disk.name.clone(),
        chunk_size: options.chunk_size,
        mode: "full".into(),
        ..Default::default()
    };
    let in_disk = |e: Error| {
        Error::InvalidArgument(format!("disk {} ({}): {e}", disk.name, disk.path.display()))
    };
    if options.direct {
        open_direct(disk, report)
    } else if let Some((export, socket)) = nbd_url(&disk.path) {
        open_nbd(disk, report, &export, &socket, options).map_err(in_disk)
    } else {
        open_image(repo, disk, report, options, repo_id, known).await
    }
}

/// A plain file or device, read without QEMU.
fn open_direct(disk: &DiskSpec, mut report: DiskReport) -> Result<Source> {
    let what = |doing: &str| format!("disk {}: {doing} {}", disk.name, disk.path.display());
    let file = File::open(&disk.path).map_err(|e| Error::io(what("opening"), e))?;
    let size = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0))
        .map_err(|e| Error::io(what("sizing"), e))?;
    let data = data_ranges(&file, size).map_err(|e| Error::io(what("mapping"), e))?;
    report.format = "raw".into();
    report.size = size;
    let plan = plan_from_allocation(
        size,
        report.chunk_size,
        data.iter().map(|&(o, l)| (o, l, 0)),
        0,
    );
    Ok(Source {
        path: disk.path.clone(),
        report,
        plan: Arc::new(plan),
        base: None,
        reader: Reader::File(file),
        bitmaps_to_drop: Vec::new(),
        id_of: None,
    })
}

/// An NBD export someone else serves (qemu-storage-daemon, nbdkit, a
/// running QEMU's NBD server), read as it presents itself.
fn open_nbd(
    disk: &DiskSpec,
    mut report: DiskReport,
    export: &str,
    socket: &Path,
    options: &BackupOptions,
) -> Result<Source> {
    let client = NbdClient::connect(socket, export, &[CONTEXT_ALLOCATION], options.timeout)?;
    report.format = "raw".into();
    report.reason = Some("an NBD export is read in full".into());
    let (client, plan) = allocation_plan(client, &mut report)?;
    Ok(nbd_source(
        disk,
        report,
        plan,
        None,
        client,
        None,
        Vec::new(),
        options,
    ))
}

/// The client's export planned by its `base:allocation`.
pub(crate) fn allocation_plan(
    mut client: NbdClient<Duplex>,
    report: &mut DiskReport,
) -> Result<(NbdClient<Duplex>, Vec<Plan>)> {
    let size = client.size();
    report.size = size;
    let allocation = if client.has_context(CONTEXT_ALLOCATION) {
        client.block_status(0, size, CONTEXT_ALLOCATION)?
    } else {
        Vec::new()
    };
    let extents = allocation.iter().map(|e| (e.offset, e.length, e.flags));
    let plan = plan_from_allocation(size, report.chunk_size, extents, STATE_ZERO);
    Ok((client, plan))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn nbd_source(
    disk: &DiskSpec,
    report: DiskReport,
    plan: Vec<Plan>,
    base: Option<Arc<DiskMap>>,
    client: NbdClient<Duplex>,
    server: Option<QemuNbd>,
    bitmaps_to_drop: Vec<String>,
    options: &BackupOptions,
) -> Source {
    let plan = Arc::new(plan);
    let ranges = ReadRanges {
        plan: plan.clone(),
        next: 0,
        chunk_size: report.chunk_size,
        size: report.size,
    };
    Source {
        path: disk.path.clone(),
        report,
        plan,
        base,
        reader: Reader::Nbd {
            pipeline: Box::new(ReadPipeline::new(client, ranges, options.window)),
            _server: server,
        },
        bitmaps_to_drop,
        id_of: None,
    }
}

/// The blob id function `--audit` compares with.
pub(crate) fn id_of(repo: &Repository) -> crate::blocks::IdOf {
    let repo = repo.clone();
    Arc::new(move |bytes: &[u8]| repo.blob_id_of(bytes))
}

/// An image file of a stopped VM through `qemu-nbd -r`, with its dirty
/// bitmap when one can be trusted.
async fn open_image(
    repo: &Repository,
    disk: &DiskSpec,
    mut report: DiskReport,
    options: &BackupOptions,
    repo_id: &str,
    known: &KnownBlobs,
) -> Result<Source> {
    let cs = options.chunk_size;
    let in_disk = |e: Error| {
        Error::InvalidArgument(format!("disk {} ({}): {e}", disk.name, disk.path.display()))
    };
    let info = image::info(&disk.path).map_err(in_disk)?;
    report.format = info.format.clone();
    let choice = bitmap::choose(
        repo,
        &info,
        repo_id,
        &options.vm,
        &disk.name,
        cs,
        options.full,
    )
    .await?;
    let base = match choice.base {
        Base::Use { bitmap, map } => Some((bitmap, map)),
        Base::None(why) => {
            report.reason = Some(why);
            None
        }
    };
    let bitmap = base.as_ref().map(|(b, _)| b.as_str());
    let server = QemuNbd::start(&disk.path, &info.format, bitmap).map_err(in_disk)?;
    let dirty_context = bitmap.map(|b| format!("qemu:dirty-bitmap:{b}"));
    let mut contexts = vec![CONTEXT_ALLOCATION];
    contexts.extend(dirty_context.as_deref());
    let client =
        NbdClient::connect(server.socket(), "", &contexts, options.timeout).map_err(in_disk)?;
    if client.size() != info.size {
        let why = format!(
            "qemu-nbd exports {} bytes, qemu-img said {}",
            client.size(),
            info.size
        );
        return Err(in_disk(Error::Nbd(why)));
    }
    let (mut client, mut plan) = allocation_plan(client, &mut report).map_err(in_disk)?;
    let mut base_map = None;
    if let (Some((_, map)), Some(context)) = (base, &dirty_context) {
        let dirty = client
            .block_status(0, info.size, context)
            .map_err(in_disk)?;
        reuse_clean(&mut plan, &dirty, &map, cs, known, options.audit);
        report.mode = "bitmap".into();
        base_map = Some(Arc::new(map));
    }
    let mut source = nbd_source(
        disk,
        report,
        plan,
        base_map,
        client,
        Some(server),
        choice.ours,
        options,
    );
    source.id_of = options.audit.then(|| id_of(repo));
    Ok(source)
}

/// The export and socket of an `nbd+unix:///EXPORT?socket=PATH` URL.
pub fn nbd_url(path: &Path) -> Option<(String, PathBuf)> {
    let rest = path.to_str()?.strip_prefix("nbd+unix://")?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let (export, query) = rest.split_once('?')?;
    let socket = query.split('&').find_map(|kv| kv.strip_prefix("socket="))?;
    Some((export.to_string(), PathBuf::from(socket)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse() {
        let d: DiskSpec = "sda=/var/lib/vm/a.qcow2".parse().unwrap();
        assert_eq!(d.name, "sda");
        assert!("sda".parse::<DiskSpec>().is_err());
        assert!("=x".parse::<DiskSpec>().is_err());
        let d: DiskSpec = "sdb=nbd+unix:///backup?socket=/run/q/nbd.sock"
            .parse()
            .unwrap();
        assert_eq!(
            nbd_url(&d.path),
            Some(("backup".into(), "/run/q/nbd.sock".into()))
        );
        assert_eq!(
            nbd_url(Path::new("nbd+unix:///?socket=/s")),
            Some(("".into(), "/s".into()))
        );
        assert_eq!(nbd_url(Path::new("/var/x.qcow2")), None);
    }
}
