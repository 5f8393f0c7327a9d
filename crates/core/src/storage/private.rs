//! Local files only their owner can read: repository objects, key slots
//! and caches (which hold every backed-up path in plaintext) are created
//! 0600 in directories 0700, whatever the umask, as restic (0700/0400)
//! and Borg (0700/0600) do. Changing a mode is best effort: a filesystem
//! without Unix permissions (some network mounts) refuses `chmod`, and
//! that is no reason to fail a backup.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of a private directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents 0700; an existing `dir` whose
/// mode lets others in is made 0700 too (its parents are left alone:
/// they may be the user's own `~/.cache` or a mount point).
///
/// # Errors
/// When the directory cannot be created.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    restrict(dir, DIR_MODE);
    Ok(())
}

/// Creates `file` empty and 0600 if missing, or makes an existing one
/// 0600: a SQLite database created this way keeps its journal and WAL
/// files private too (they take the database's mode).
///
/// # Errors
/// When the file cannot be created.
pub fn create_file(file: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(file)?;
    restrict(file, FILE_MODE);
    Ok(())
}

/// Opens a new file 0600 (`O_EXCL`: fails when `file` exists).
///
/// # Errors
/// When it cannot be created.
pub fn create_new(file: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(file)
}

/// Sets `path`'s permission bits to `mode` when it lets group or others
/// in (best effort: see the module's note).
pub(crate) fn restrict(path: &Path, mode: u32) {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_symlink() && m.permissions().mode() & 0o077 != 0 {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// Makes an object `root/object` a local backend just wrote private: the
/// file 0600, and every directory from it up to `root` 0700 (the object
/// store creates them with the umask's mode).
pub(crate) fn restrict_object(root: &Path, object: &Path) {
    let file = root.join(object);
    restrict(&file, FILE_MODE);
    let mut dir = file.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(root)) {
        restrict(d, DIR_MODE);
        if d == root {
            break;
        }
        dir = d.parent();
    }
}
