//! What PostgreSQL hands tessera as text: WAL file names, LSNs, the
//! `backup_label` and backup history files, WAL batch metadata.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_postgres::base::{parse_backup_label, parse_stop_lsn};
use tessera_postgres::wal::{Lsn, WalName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(name) = WalName::parse(text) {
        assert_eq!(name.name, text);
        assert!(name.position.as_ref().is_none_or(|p| p.len() == 16));
    }
    if let Ok(lsn) = text.parse::<Lsn>() {
        assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
    }
    let _ = parse_backup_label(text);
    let _ = parse_stop_lsn(text, "fuzz");
    let _ = serde_json::from_str::<tessera_postgres::wal_archive::WalBatchMeta>(text);
    let _ = serde_json::from_str::<tessera_postgres::base::BaseBackupMeta>(text);
});
