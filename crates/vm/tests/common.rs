use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tessera_core::{Backend, Credential, InitOptions, KdfParams, ObjectStoreBackend, Repository};
use tessera_vm::{BackupOptions, DiskSpec, VmBackup};

/// Whether `tool` runs here; in CI its absence fails the test.
pub fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing: scripts/test.sh installs qemu-utils, qemu-system-common, nbdkit and libnbd-bin"
        );
        eprintln!(
            "skipped: {tool} is not installed (apt-get install qemu-utils qemu-system-common nbdkit)"
        );
    }
    found
}

pub fn have_qemu() -> bool {
    have("qemu-img") && have("qemu-io") && have("qemu-nbd")
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn create(path: &Path, format: &str, size: &str) {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg(size));
}

/// Runs qemu-io commands (`write -P 0xab 0 1M`, ...) on an image.
pub fn qemu_io(path: &Path, format: &str, commands: &[&str]) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", format]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    run(cmd.arg(path));
}

/// `qemu-img compare`: the two images read the same.
pub fn assert_same(a: &Path, fa: &str, b: &Path, fb: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes a file has allocated on disk.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub struct Repo {
    pub repo: Repository,
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub async fn new() -> Self {
        Self::on(Arc::new(ObjectStoreBackend::memory())).await
    }

    pub async fn on(backend: Arc<dyn Backend>) -> Self {
        let options = InitOptions {
            kdf: KdfParams::insecure_fast(),
            ..Default::default()
        };
        let repo = Repository::init(backend, &Credential::password("pw"), options)
            .await
            .unwrap();
        Repo {
            repo,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn backup(
        &self,
        disks: &[(&str, &Path)],
        tweak: impl FnOnce(&mut BackupOptions),
    ) -> tessera_vm::Result<VmBackup> {
        let disks = disks
            .iter()
            .map(|(n, p)| DiskSpec {
                name: n.to_string(),
                path: p.to_path_buf(),
            })
            .collect();
        let mut options = BackupOptions {
            vm: "vm1".into(),
            ..Default::default()
        };
        tweak(&mut options);
        tessera_vm::backup(&self.repo, disks, options).await
    }

    /// Restores `disk` of `backup` to a raw file and checks it against
    /// `image`.
    pub async fn restore_equals(
        &self,
        backup: &VmBackup,
        disk: &str,
        image: &Path,
        format: &str,
    ) -> PathBuf {
        let map = tessera_vm::restore::disk_map(&self.repo, &backup.summary.snapshot, disk)
            .await
            .unwrap();
        let target = self.path(&format!(
            "restored-{}-{disk}.raw",
            backup.summary.id.short()
        ));
        tessera_vm::restore_raw(&self.repo, &map, &target)
            .await
            .unwrap();
        assert_same(image, format, &target, "raw");
        target
    }

    pub fn bitmaps(&self, image: &Path) -> Vec<tessera_vm::image::BitmapInfo> {
        tessera_vm::image::info(image).unwrap().bitmaps
    }
}

pub const K256: u64 = 256 << 10;
