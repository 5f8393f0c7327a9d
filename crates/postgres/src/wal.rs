//! WAL file names, log sequence numbers and the cluster identity.
//!
//! PostgreSQL names WAL files by timeline and segment number:
//! `TTTTTTTTXXXXXXXXYYYYYYYY` (24 hex digits) for a segment,
//! `TTTTTTTT.history` for a timeline history file,
//! `TTTTTTTTXXXXXXXXYYYYYYYY.OOOOOOOO.backup` for a backup history file and
//! `TTTTTTTTXXXXXXXXYYYYYYYY.partial` for the last, partial segment of a
//! timeline that was promoted away from.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// What kind of file a WAL archive name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalKind {
    /// A 16 MiB (by default) segment.
    Segment,
    /// A `.partial` segment.
    Partial,
    /// A timeline `.history` file: never overwritten.
    History,
    /// A backup history file (`.backup`).
    BackupHistory,
}

/// A parsed WAL archive file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalName {
    /// The name as PostgreSQL wrote it.
    pub name: String,
    /// Its kind.
    pub kind: WalKind,
    /// Timeline.
    pub timeline: u32,
    /// The 16 hex digits after the timeline (`XXXXXXXXYYYYYYYY`) for
    /// segment-like names: orders segments of any timeline by position.
    pub position: Option<String>,
}

impl WalName {
    /// Parses `name`, or `None` for anything PostgreSQL would not archive.
    pub fn parse(name: &str) -> Option<WalName> {
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        let timeline = |s: &str| u32::from_str_radix(s.get(..8)?, 16).ok();
        let (kind, position) = if hex(name, 24) {
            (WalKind::Segment, Some(&name[8..24]))
        } else if let Some(stem) = name.strip_suffix(".partial")
            && hex(stem, 24)
        {
            (WalKind::Partial, Some(&stem[8..24]))
        } else if let Some(stem) = name.strip_suffix(".history")
            && hex(stem, 8)
        {
            (WalKind::History, None)
        } else if let Some(stem) = name.strip_suffix(".backup")
            && stem.len() == 33
            && hex(&stem[..24], 24)
            && stem.as_bytes()[24] == b'.'
            && hex(&stem[25..], 8)
        {
            (WalKind::BackupHistory, Some(&stem[8..24]))
        } else {
            return None;
        };
        Some(WalName {
            name: name.to_string(),
            kind,
            timeline: timeline(name)?,
            position: position.map(|p| p.to_ascii_uppercase()),
        })
    }
}

/// A WAL location (log sequence number), written `X/Y` in hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidArgument(format!("{s:?} is not an LSN like 0/16B3740"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The name of the segment holding `lsn` on `timeline` (`segment_size`
/// bytes per segment, a power of two from 1 MiB to 1 GiB).
pub fn segment_name(timeline: u32, lsn: Lsn, segment_size: u64) -> String {
    let segno = lsn.0 / segment_size;
    let per_id = 0x1_0000_0000 / segment_size;
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The segment names from `start` to `end` inclusive, on `timeline`.
pub fn segments_between(timeline: u32, start: Lsn, end: Lsn, segment_size: u64) -> Vec<String> {
    let (first, last) = (start.0 / segment_size, end.0 / segment_size);
    (first..=last)
        .map(|segno| segment_name(timeline, Lsn(segno * segment_size), segment_size))
        .collect()
}

/// The database system identifier: the first 8 bytes of `global/pg_control`
/// (`ControlFileData.system_identifier`, native byte order). Every WAL file
/// of a cluster and of its physical copies carries it; the archive keeps
/// each system's files apart by it.
///
/// # Errors
/// [`Error::InvalidArgument`] for a file too short to be a control file.
pub fn system_identifier(pg_control: &[u8], what: &str) -> Result<u64, Error> {
    let bytes: [u8; 8] = pg_control
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::InvalidArgument(format!("{what} is not a PostgreSQL control file"))
        })?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_by_kind() {
        let seg = WalName::parse("000000010000000A000000FE").unwrap();
        assert_eq!((seg.kind, seg.timeline), (WalKind::Segment, 1));
        assert_eq!(seg.position.as_deref(), Some("0000000A000000FE"));
        assert_eq!(WalName::parse("0000000A.history").unwrap().timeline, 10);
        let b = WalName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(b.kind, WalKind::BackupHistory);
        assert_eq!(
            WalName::parse("000000020000000000000003.partial")
                .unwrap()
                .kind,
            WalKind::Partial
        );
        for bad in [
            "",
            "RECOVERYXLOG",
            "00000001000000000000000",
            "0000000G0000000000000001",
            "x.history",
            "../000000010000000000000001",
        ] {
            assert!(WalName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn lsns_map_to_segments() {
        let lsn: Lsn = "1/2000028".parse().unwrap();
        assert_eq!(lsn.to_string(), "1/2000028");
        let mib16 = 16 << 20;
        assert_eq!(segment_name(1, lsn, mib16), "000000010000000100000002");
        assert_eq!(
            segment_name(3, Lsn(0xFFFF_FFFF), mib16),
            "0000000300000000000000FF"
        );
        let names = segments_between(
            1,
            "0/FF000000".parse().unwrap(),
            "1/1000000".parse().unwrap(),
            mib16,
        );
        assert_eq!(
            names,
            [
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001"
            ]
        );
        assert!("12".parse::<Lsn>().is_err());
    }
}
