//! Retention: which snapshots a policy keeps, and why.
//!
//! Snapshots are grouped (by host, paths and tags, as asked), then each
//! group is walked from the newest snapshot to the oldest. A calendar rule
//! (`hourly`, `daily`, `weekly`, `monthly`, `yearly`) keeps the newest
//! snapshot of each of its last N periods that hold a snapshot; `last`
//! keeps the N newest. Each rule counts on its own, so one snapshot can be
//! the daily, the weekly and the monthly one at once. `within` keeps every
//! snapshot younger than a duration before the group's newest snapshot
//! (not before now: a host that stopped backing up keeps its last state),
//! and `tags` keeps every snapshot carrying all the tags of one of its
//! lists. A snapshot no rule keeps goes. These are restic's rules.
//!
//! Periods are calendar periods in a time zone (the system's by default),
//! and weeks are ISO 8601 weeks (Monday to Sunday).

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::snapshot::SnapshotEntry;

/// What to keep. An empty policy keeps everything and is refused by
/// [`plan`]: a policy must say what to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The N newest snapshots.
    pub last: u32,
    /// The newest snapshot of each of the last N hours with one.
    pub hourly: u32,
    /// ... days.
    pub daily: u32,
    /// ... ISO weeks.
    pub weekly: u32,
    /// ... months.
    pub monthly: u32,
    /// ... years.
    pub yearly: u32,
    /// Every snapshot younger than this before the group's newest one.
    pub within: Option<KeepWithin>,
    /// Every snapshot carrying all the tags of one of these lists.
    pub tags: Vec<Vec<String>>,
}

impl Policy {
    /// True when the policy keeps nothing by itself (no rule given).
    pub fn is_empty(&self) -> bool {
        self.last == 0
            && self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
            && self.within.is_none()
            && self.tags.is_empty()
    }
}

/// A duration for `within`, in restic's notation: numbers with units `y`
/// (years), `m` (months), `d` (days) and `h` (hours), as in `1y6m` or
/// `14d12h`. Calendar units count in the time zone of the plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepWithin {
    /// Years.
    pub years: i64,
    /// Months.
    pub months: i64,
    /// Days.
    pub days: i64,
    /// Hours.
    pub hours: i64,
}

impl std::str::FromStr for KeepWithin {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "duration {s:?}: give numbers with units y, m, d, h, as in 1y6m or 14d12h"
            ))
        };
        let mut within = KeepWithin::default();
        let mut digits = String::new();
        for c in s.trim().chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let n: i64 = digits.parse().map_err(|_| bad())?;
            digits.clear();
            let slot = match c {
                'y' => &mut within.years,
                'm' => &mut within.months,
                'd' => &mut within.days,
                'h' => &mut within.hours,
                _ => return Err(bad()),
            };
            *slot = slot.checked_add(n).ok_or_else(bad)?;
        }
        if !digits.is_empty() || within == KeepWithin::default() {
            return Err(bad());
        }
        Ok(within)
    }
}

impl std::fmt::Display for KeepWithin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// Which snapshot fields split snapshots into groups that retention treats
/// separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBy {
    /// By host name.
    pub host: bool,
    /// By the set of backed-up paths.
    pub paths: bool,
    /// By the set of tags.
    pub tags: bool,
}

impl Default for GroupBy {
    /// By host and paths, as restic does.
    fn default() -> Self {
        GroupBy {
            host: true,
            paths: true,
            tags: false,
        }
    }
}

impl std::str::FromStr for GroupBy {
    type Err = Error;

    /// A comma-separated list of `host`, `paths`, `tags`; empty for one
    /// group of everything.
    fn from_str(s: &str) -> Result<Self> {
        let mut g = GroupBy {
            host: false,
            paths: false,
            tags: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "host" => g.host = true,
                "paths" | "path" => g.paths = true,
                "tags" | "tag" => g.tags = true,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "group by {part:?}: give host, paths and/or tags, comma-separated"
                    )));
                }
            }
        }
        Ok(g)
    }
}

/// What a group of snapshots has in common.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    /// Host name, when grouping by host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Sorted paths, when grouping by paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Sorted tags, when grouping by tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(p) = &self.paths {
            parts.push(format!("paths [{}]", p.join(", ")));
        }
        if let Some(t) = &self.tags {
            parts.push(format!("tags [{}]", t.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("all snapshots")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// The fate of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    pub time: Timestamp,
    /// Kept or removed.
    pub keep: bool,
    /// The rules that keep it (`daily`, `weekly`, `within 30d`, `tags
    /// [prod]`, ...), or why it goes.
    pub reasons: Vec<String>,
}

/// The decisions for one group, newest snapshot first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupPlan {
    /// What the group's snapshots share.
    pub group: GroupKey,
    /// One per snapshot, newest first.
    pub decisions: Vec<Decision>,
}

/// The period a time falls in, for one calendar rule.
type Period = (i32, i32, i32, i32);

/// The calendar rules: name, count in the policy, period of a time.
type Bucket = (&'static str, fn(&Policy) -> u32, fn(&Zoned) -> Period);

const BUCKETS: [Bucket; 5] = [
    (
        "hourly",
        |p| p.hourly,
        |z| {
            (
                z.year().into(),
                z.month().into(),
                z.day().into(),
                z.hour().into(),
            )
        },
    ),
    (
        "daily",
        |p| p.daily,
        |z| (z.year().into(), z.month().into(), z.day().into(), 0),
    ),
    (
        "weekly",
        |p| p.weekly,
        |z| {
            let w = z.date().iso_week_date();
            (w.year().into(), w.week().into(), 0, 0)
        },
    ),
    (
        "monthly",
        |p| p.monthly,
        |z| (z.year().into(), z.month().into(), 0, 0),
    ),
    ("yearly", |p| p.yearly, |z| (z.year().into(), 0, 0, 0)),
];

/// A calendar rule while a group is walked.
struct Counter {
    name: &'static str,
    /// Periods still to keep.
    left: u32,
    period: fn(&Zoned) -> Period,
    /// The period of the last snapshot kept.
    seen: Option<Period>,
}

/// Decides, group by group, which of `snapshots` the policy keeps.
/// Calendar periods are taken in `tz`. Groups come in key order.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty policy (it would keep nothing
/// by rule: say what to keep), or a `within` that leaves the calendar.
pub fn plan(
    snapshots: &[SnapshotEntry],
    policy: &Policy,
    group_by: GroupBy,
    tz: &TimeZone,
) -> Result<Vec<GroupPlan>> {
    if policy.is_empty() {
        return Err(Error::InvalidArgument(
            "no keep rule given (--keep-last, --keep-daily, ...): refusing to remove every snapshot"
                .into(),
        ));
    }
    let mut groups: BTreeMap<GroupKey, Vec<&SnapshotEntry>> = BTreeMap::new();
    for s in snapshots {
        groups.entry(key_of(s, group_by)).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(group, mut members)| {
            members.sort_by(|a, b| b.snapshot.time.cmp(&a.snapshot.time).then(b.id.cmp(&a.id)));
            Ok(GroupPlan {
                group,
                decisions: decide(&members, policy, tz)?,
            })
        })
        .collect()
}

fn key_of(s: &SnapshotEntry, by: GroupBy) -> GroupKey {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v.dedup();
        v
    };
    GroupKey {
        host: by.host.then(|| s.snapshot.hostname.clone()),
        paths: by.paths.then(|| sorted(&s.snapshot.paths)),
        tags: by.tags.then(|| sorted(&s.snapshot.tags)),
    }
}

/// The decisions for one group's snapshots, given newest first.
fn decide(
    newest_first: &[&SnapshotEntry],
    policy: &Policy,
    tz: &TimeZone,
) -> Result<Vec<Decision>> {
    let cutoff = match (policy.within, newest_first.first()) {
        (Some(w), Some(newest)) => {
            let span = w.years.years().months(w.months).days(w.days).hours(w.hours);
            let at = newest.snapshot.time.to_zoned(tz.clone());
            let cut = at
                .checked_sub(span)
                .map_err(|e| Error::InvalidArgument(format!("keep within {w}: {e}")))?;
            Some((w, cut.timestamp()))
        }
        _ => None,
    };
    let mut buckets: Vec<Counter> = BUCKETS
        .iter()
        .map(|(name, count, period)| Counter {
            name,
            left: count(policy),
            period: *period,
            seen: None,
        })
        .collect();
    let mut last = policy.last;
    Ok(newest_first
        .iter()
        .map(|s| {
            let snap = &s.snapshot;
            let mut reasons = Vec::new();
            if last > 0 {
                last -= 1;
                reasons.push("last".to_string());
            }
            let zoned = snap.time.to_zoned(tz.clone());
            for b in &mut buckets {
                let p = (b.period)(&zoned);
                if b.left > 0 && b.seen != Some(p) {
                    b.seen = Some(p);
                    b.left -= 1;
                    reasons.push(b.name.to_string());
                }
            }
            if let Some((w, cut)) = cutoff {
                if snap.time > cut {
                    reasons.push(format!("within {w}"));
                }
            }
            for list in &policy.tags {
                if list.iter().all(|t| snap.tags.contains(t)) {
                    reasons.push(format!("tags [{}]", list.join(", ")));
                }
            }
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push("no rule keeps it".to_string());
            }
            Decision {
                id: s.id,
                time: snap.time,
                keep,
                reasons,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;
    use crate::snapshot::{SNAPSHOT_VERSION, Snapshot, SnapshotStats};

    fn snap(n: u8, time: &str, host: &str, tags: &[&str]) -> SnapshotEntry {
        SnapshotEntry {
            id: SnapshotId([n; 32]),
            snapshot: Snapshot {
                version: SNAPSHOT_VERSION,
                time: time.parse().unwrap(),
                hostname: host.into(),
                username: "u".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                paths: vec!["/data".into()],
                source_kind: "fs".into(),
                source_meta: serde_json::Value::Null,
                tree: BlobId([0; 32]),
                stats: SnapshotStats::default(),
                program_version: "test".into(),
            },
        }
    }

    /// One snapshot a day at 12:00 UTC, from `first` to `last` inclusive.
    fn daily(first: &str, last: &str) -> Vec<SnapshotEntry> {
        let mut out = Vec::new();
        let mut d: jiff::civil::Date = first.parse().unwrap();
        let last: jiff::civil::Date = last.parse().unwrap();
        let mut n = 0u32;
        while d <= last {
            let mut e = snap(0, &format!("{d}T12:00:00Z"), "h", &[]);
            e.id = SnapshotId(*blake3::hash(&n.to_le_bytes()).as_bytes());
            out.push(e);
            n += 1;
            d = d.tomorrow().unwrap();
        }
        out
    }

    /// The days (YYYY-MM-DD, newest first) of the snapshots kept.
    fn kept_days(all: &[SnapshotEntry], policy: &Policy) -> Vec<String> {
        let plans = plan(all, policy, GroupBy::default(), &TimeZone::UTC).unwrap();
        assert_eq!(plans.len(), 1);
        plans[0]
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.time.to_string()[..10].to_string())
            .collect()
    }

    #[test]
    fn the_gfs_policy_keeps_14_daily_8_weekly_12_monthly_7_yearly() {
        // Daily backups from 2024-01-01 to Saturday 2026-11-21.
        let all = daily("2024-01-01", "2026-11-21");
        let policy = Policy {
            daily: 14,
            weekly: 8,
            monthly: 12,
            yearly: 7,
            ..Policy::default()
        };
        let mut want: Vec<&str> = vec![
            // 14 daily: 2026-11-08 .. 2026-11-21.
            "2026-11-21",
            "2026-11-20",
            "2026-11-19",
            "2026-11-18",
            "2026-11-17",
            "2026-11-16",
            "2026-11-15",
            "2026-11-14",
            "2026-11-13",
            "2026-11-12",
            "2026-11-11",
            "2026-11-10",
            "2026-11-09",
            "2026-11-08",
            // 8 weekly, the Sundays closing ISO weeks 40..46 (and 11-21, 11-15, 11-08 above).
            "2026-11-01",
            "2026-10-25",
            "2026-10-18",
            "2026-10-11",
            "2026-10-04",
            // 12 monthly: the last day of each month back to 2025-12 (and 11-21).
            "2026-10-31",
            "2026-09-30",
            "2026-08-31",
            "2026-07-31",
            "2026-06-30",
            "2026-05-31",
            "2026-04-30",
            "2026-03-31",
            "2026-02-28",
            "2026-01-31",
            "2025-12-31",
            // 7 yearly, but only three years exist: 2026-11-21, 2025-12-31 above, and:
            "2024-12-31",
        ];
        want.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(kept_days(&all, &policy), want);
    }

    #[test]
    fn every_rule_on_its_own() {
        let all = daily("2026-01-01", "2026-03-15");
        let only = |p: Policy| kept_days(&all, &p);
        assert_eq!(
            only(Policy {
                last: 3,
                ..Policy::default()
            }),
            ["2026-03-15", "2026-03-14", "2026-03-13"]
        );
        assert_eq!(
            only(Policy {
                daily: 2,
                ..Policy::default()
            }),
            ["2026-03-15", "2026-03-14"]
        );
        // 2026-03-15 is a Sunday: ISO weeks end on it and on 03-08, 03-01.
        assert_eq!(
            only(Policy {
                weekly: 3,
                ..Policy::default()
            }),
            ["2026-03-15", "2026-03-08", "2026-03-01"]
        );
        assert_eq!(
            only(Policy {
                monthly: 5,
                ..Policy::default()
            }),
            ["2026-03-15", "2026-02-28", "2026-01-31"],
            "fewer months than asked: every month's newest"
        );
        assert_eq!(
            only(Policy {
                yearly: 2,
                ..Policy::default()
            }),
            ["2026-03-15"]
        );
        // Within 3 days of the newest: 03-12 12:00 is exactly 3 days before, not younger.
        assert_eq!(
            only(Policy {
                within: Some("3d".parse().unwrap()),
                ..Policy::default()
            }),
            ["2026-03-15", "2026-03-14", "2026-03-13"]
        );
        assert_eq!(
            only(Policy {
                within: Some("1m".parse().unwrap()),
                ..Policy::default()
            })
            .len(),
            28,
            "one month before 03-15 is 02-15: 02-16 .. 03-15"
        );
    }

    #[test]
    fn hourly_keeps_the_newest_snapshot_of_each_hour() {
        let all = vec![
            snap(1, "2026-05-01T10:05:00Z", "h", &[]),
            snap(2, "2026-05-01T10:55:00Z", "h", &[]),
            snap(3, "2026-05-01T11:10:00Z", "h", &[]),
            snap(4, "2026-05-01T13:00:00Z", "h", &[]),
        ];
        let p = plan(
            &all,
            &Policy {
                hourly: 3,
                ..Policy::default()
            },
            GroupBy::default(),
            &TimeZone::UTC,
        )
        .unwrap();
        let kept: Vec<u8> = p[0]
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.id.0[0])
            .collect();
        assert_eq!(kept, [4, 3, 2]);
    }

    #[test]
    fn tags_within_and_reasons() {
        let all = vec![
            snap(1, "2025-01-01T00:00:00Z", "h", &["prod", "db"]),
            snap(2, "2025-06-01T00:00:00Z", "h", &["prod"]),
            snap(3, "2026-01-01T00:00:00Z", "h", &[]),
            snap(4, "2026-01-02T00:00:00Z", "h", &[]),
        ];
        let policy = Policy {
            last: 1,
            within: Some("2d".parse().unwrap()),
            tags: vec![vec!["prod".into(), "db".into()]],
            ..Policy::default()
        };
        let p = plan(&all, &policy, GroupBy::default(), &TimeZone::UTC).unwrap();
        let got: Vec<(u8, bool, Vec<String>)> = p[0]
            .decisions
            .iter()
            .map(|d| (d.id.0[0], d.keep, d.reasons.clone()))
            .collect();
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            got,
            vec![
                (4, true, r(&["last", "within 2d"])),
                (3, true, r(&["within 2d"])),
                (2, false, r(&["no rule keeps it"])),
                (1, true, r(&["tags [prod, db]"])),
            ]
        );
    }

    #[test]
    fn groups_are_separate_and_configurable() {
        let all = vec![
            snap(1, "2026-01-01T00:00:00Z", "a", &[]),
            snap(2, "2026-01-02T00:00:00Z", "a", &[]),
            snap(3, "2026-01-01T00:00:00Z", "b", &[]),
        ];
        let last1 = Policy {
            last: 1,
            ..Policy::default()
        };
        let by_host = plan(&all, &last1, GroupBy::default(), &TimeZone::UTC).unwrap();
        assert_eq!(by_host.len(), 2);
        assert_eq!(by_host[1].group.host.as_deref(), Some("b"));
        assert!(by_host[1].decisions[0].keep, "host b's only snapshot stays");
        let one: GroupBy = "".parse().unwrap();
        let together = plan(&all, &last1, one, &TimeZone::UTC).unwrap();
        assert_eq!(together.len(), 1);
        assert_eq!(together[0].decisions.iter().filter(|d| d.keep).count(), 1);
        assert!("host,colour".parse::<GroupBy>().is_err());
    }

    #[test]
    fn an_empty_policy_is_refused() {
        let all = daily("2026-01-01", "2026-01-03");
        assert!(matches!(
            plan(&all, &Policy::default(), GroupBy::default(), &TimeZone::UTC),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn durations_parse_like_restic() {
        let w: KeepWithin = "1y6m14d12h".parse().unwrap();
        assert_eq!((w.years, w.months, w.days, w.hours), (1, 6, 14, 12));
        assert_eq!(w.to_string(), "1y6m14d12h");
        for bad in ["", "12", "3w", "d", "1d2"] {
            assert!(bad.parse::<KeepWithin>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn periods_follow_the_time_zone() {
        // 14:00 and 15:30 UTC on Jan 1 are 23:00 on Jan 1 and 00:30 on
        // Jan 2 in Tokyo.
        let all = vec![
            snap(1, "2026-01-01T14:00:00Z", "h", &[]),
            snap(2, "2026-01-01T15:30:00Z", "h", &[]),
        ];
        let p = Policy {
            daily: 5,
            ..Policy::default()
        };
        let utc = plan(&all, &p, GroupBy::default(), &TimeZone::UTC).unwrap();
        assert_eq!(utc[0].decisions.iter().filter(|d| d.keep).count(), 1);
        // (A fixed offset: the test needs no time zone database.)
        let tokyo = TimeZone::fixed(jiff::tz::offset(9));
        let jp = plan(&all, &p, GroupBy::default(), &tokyo).unwrap();
        assert_eq!(jp[0].decisions.iter().filter(|d| d.keep).count(), 2);
    }
}
