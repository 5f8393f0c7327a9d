//! `tessera vm …` arguments.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Back up the disks of a stopped VM (raw or qcow2 images, detected)
    #[command(
        after_help = "Examples:\n  tessera vm backup --name web --disk sda=/var/lib/libvirt/images/web.qcow2\n  tessera vm backup --name db --disk root=/dev/vg0/db --direct --chunk-size 1M\n\nA qcow2 image gets a persistent dirty bitmap per repository; the next backup reads only the chunks written since. Exit status: 0 done, 1 failed (nothing committed), 2 usage."
    )]
    Backup(VmBackupArgs),
    /// Restore one disk of a VM snapshot to a file or block device
    Restore(VmRestoreArgs),
    /// List VM snapshots and their disks
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Serve a disk of a snapshot as a read-only NBD export on a Unix socket
    Serve(VmServeArgs),
    /// Instant restore: a qcow2 overlay backed by the snapshot, served until the VM has streamed it in
    Instant(VmInstantArgs),
}

#[derive(Args, Debug)]
pub struct VmBackupArgs {
    /// The VM's name (snapshots of one VM are grouped by it)
    #[arg(long)]
    pub name: String,
    /// A disk: NAME=IMAGE (repeatable; image file of a stopped VM, or a device with --direct)
    #[arg(long = "disk", required = true)]
    pub disks: Vec<String>,
    /// Chunk size, a power of two from 64K to 4M (fixed per disk)
    #[arg(long, default_value = "256K")]
    pub chunk_size: String,
    /// A configuration file to keep in the snapshot (libvirt XML, qemu-server conf)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read the files or devices directly, without QEMU (raw data; no dirty bitmaps)
    #[arg(long)]
    pub direct: bool,
    /// Read every allocated chunk even where a dirty bitmap could tell
    #[arg(long)]
    pub full: bool,
    /// zstd level of the disks' new chunks, 0 (off) to 22, or `repo` for the repository's
    #[arg(long, default_value = "1")]
    pub compression: String,
    /// With a dirty bitmap: read the chunks it calls clean too, and report any that changed (exit 3)
    #[arg(long)]
    pub audit: bool,
    /// A running VM: QEMU's QMP socket (then each --disk is NAME=NODE, a block node name)
    #[arg(long)]
    pub qmp: Option<PathBuf>,
    /// With --qmp: the guest agent's socket, to freeze the guest's filesystems around the snapshot
    #[arg(long, requires = "qmp")]
    pub guest_agent: Option<PathBuf>,
    /// With --qmp: the socket of an NBD server QEMU already runs (default: one is started for the backup)
    #[arg(long, requires = "qmp")]
    pub nbd_socket: Option<PathBuf>,
    /// With --qmp: where QEMU creates the temporary fleecing overlays (default: the temporary directory)
    #[arg(long, requires = "qmp")]
    pub fleece_dir: Option<PathBuf>,
    /// How long the NBD server may stay silent before a read fails
    #[arg(long, default_value = "60s")]
    pub timeout: jiff::SignedDuration,
    /// Tag the snapshot (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name to record
    #[arg(long)]
    pub host: Option<String>,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VmRestoreArgs {
    /// Snapshot id, prefix or `latest` (the newest VM snapshot)
    pub snapshot: String,
    /// The disk to restore
    #[arg(long)]
    pub disk: String,
    /// Where: a file (created sparse) or a block device
    #[arg(long)]
    pub target: PathBuf,
    /// Image format to write: raw (in place, sparse) or any qemu-img format (qcow2, vmdk, ...)
    #[arg(long, default_value = "raw")]
    pub format: String,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VmServeArgs {
    /// Snapshot id, prefix or `latest`
    pub snapshot: String,
    /// The disk to serve
    #[arg(long)]
    pub disk: String,
    /// The Unix socket to listen on (created; NBD URL nbd+unix:///DISK?socket=S)
    #[arg(long)]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct VmInstantArgs {
    /// Snapshot id, prefix or `latest`
    pub snapshot: String,
    /// The disk to restore
    #[arg(long)]
    pub disk: String,
    /// The qcow2 overlay to create (start the VM from it, then QMP block-stream)
    #[arg(long)]
    pub overlay: PathBuf,
    /// The Unix socket to serve the snapshot on (default: beside the overlay)
    #[arg(long)]
    pub socket: Option<PathBuf>,
}
