//! Back up a stream into a local repository and restore it.
//! `cargo run --release --example quickstart -- /tmp/quickstart-repo`

use std::sync::Arc;

use tessera::{BackupOptions, Credential, InitOptions, ObjectStoreBackend, StreamSource, blocking};

fn main() -> Result<(), tessera::Error> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "quickstart-repo".into());
    let backend = Arc::new(ObjectStoreBackend::local(dir.as_ref(), true)?);
    let password = Credential::password("correct horse battery staple");
    let repo = blocking::Repository::init(backend, &password, InitOptions::default())?;

    let data: Vec<u8> = (0..10_000_000u32)
        .flat_map(|i| (i % 1000).to_le_bytes())
        .collect();
    let summary = repo.backup(
        vec![StreamSource::new(
            "numbers.bin",
            std::io::Cursor::new(data.clone()),
        )],
        BackupOptions::default(),
    )?;

    let mut restored = Vec::new();
    repo.restore_stream(&summary.snapshot, "numbers.bin", &mut restored)?;
    assert!(restored == data, "restored bytes differ");
    println!(
        "snapshot {} restored {} bytes bit for bit into {dir}",
        summary.id.short(),
        restored.len()
    );
    Ok(())
}
