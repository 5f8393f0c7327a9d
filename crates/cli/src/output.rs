//! Human and JSON output. The JSON field names are stable and documented in
//! the README; they follow restic's where the concept is the same.

use serde::Serialize;
use tessera_core::retention::GroupPlan;
use tessera_core::{SnapshotEntry, SnapshotStats};

/// One snapshot as `snapshots --json` prints it.
#[derive(Serialize)]
pub struct SnapshotJson<'a> {
    pub id: String,
    pub short_id: String,
    pub time: String,
    pub tree: String,
    pub paths: &'a [String],
    pub hostname: &'a str,
    pub username: &'a str,
    pub tags: &'a [String],
    pub source_kind: &'a str,
    pub program_version: &'a str,
    pub summary: &'a SnapshotStats,
}

impl<'a> SnapshotJson<'a> {
    pub fn new(e: &'a SnapshotEntry) -> Self {
        let s = &e.snapshot;
        SnapshotJson {
            id: e.id.to_hex(),
            short_id: e.id.short(),
            time: s.time.to_string(),
            tree: s.tree.to_hex(),
            paths: &s.paths,
            hostname: &s.hostname,
            username: &s.username,
            tags: &s.tags,
            source_kind: &s.source_kind,
            program_version: &s.program_version,
            summary: &s.stats,
        }
    }
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// What a prune did, for people.
pub fn prune_report(r: &tessera_core::PruneReport, lease: jiff::SignedDuration) -> String {
    let mut out = String::new();
    let would = if r.dry_run { "would be " } else { "" };
    if r.dry_run
        && let Some(round) = r.round_waiting
    {
        out += &format!("GC round {round} is planned and not swept yet (run prune to sweep it)\n");
    }
    for round in r
        .rounds_swept
        .iter()
        .filter(|x| Some(**x) != r.round_planned)
    {
        out += &format!("swept GC round {round} (planned by an earlier prune)\n");
    }
    if r.blobs > 0 || r.snapshots > 0 {
        out += &format!(
            "{} snapshots use {} of {} blobs; {} packs hold {}\n",
            r.snapshots,
            r.blobs_used,
            r.blobs,
            r.packs,
            bytes(r.pack_bytes)
        );
        out += &format!(
            "condemned: {} unused packs, {} packs in no index segment, {} packs to repack ({} blobs, {} {}copied)\n",
            r.packs_unused,
            r.packs_unindexed,
            r.packs_repacked,
            r.blobs_repacked,
            bytes(r.bytes_repacked),
            would
        );
        if let Some(until) = r.locked_until {
            out += &format!(
                "left alone: {} unused packs ({}) that object lock retains until {} at the latest\n",
                r.packs_locked,
                bytes(r.bytes_locked),
                until.strftime("%Y-%m-%d %H:%M UTC")
            );
        }
        out += &format!(
            "{} {}\n",
            bytes(r.bytes_to_free),
            if r.dry_run {
                "would be freed"
            } else {
                "to be freed"
            }
        );
    }
    if let Some(round) = r.round_waiting.filter(|_| !r.dry_run) {
        out += &format!(
            "GC round {round} waits for {} write session(s) still open (sessions {}: backups or other writers that have not ended): run prune again once they end; a session open for {lease:#} (storage clock) is expired. If they are dead (killed, host gone), `tessera prune --session-lease 0s` expires them now (a backup that is in fact still running then fails to commit, safely)\n",
            r.waiting_for.len(),
            r.waiting_for.join(", ")
        );
    }
    if !r.sessions_expired.is_empty() {
        out += &format!(
            "expired {} session(s) open longer than {lease:#}: {}\n",
            r.sessions_expired.len(),
            r.sessions_expired.join(", ")
        );
    }
    if r.packs_revived > 0 {
        out += &format!(
            "kept {} condemned pack(s) that backups committed since need\n",
            r.packs_revived
        );
    }
    if r.delete_refused > 0 {
        out += &format!(
            "warning: the storage refused to delete {} pack(s) ({}); a later prune deletes them\n",
            r.delete_refused,
            r.delete_error.as_deref().unwrap_or("no reason given")
        );
    }
    if !r.dry_run {
        out += &format!(
            "deleted {} packs, freed {}; index segments {} -> {}\n",
            r.packs_deleted,
            bytes(r.bytes_freed),
            r.segments_before,
            r.segments_after
        );
    }
    out
}

/// A time as people read it here: local zone, to the second.
pub fn local_time(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Snapshot table, restic-like.
pub fn snapshot_table(list: &[SnapshotEntry]) -> String {
    let mut out = format!(
        "{:<10} {:<20} {:<16} {:<16} Paths
",
        "ID", "Time", "Host", "Tags"
    );
    out.push_str(&"-".repeat(80));
    out.push('\n');
    for e in list {
        let s = &e.snapshot;
        let time = local_time(s.time);
        out.push_str(&format!(
            "{:<10} {:<20} {:<16} {:<16} {}\n",
            e.id.short(),
            time,
            s.hostname,
            s.tags.join(","),
            s.paths.join(", ")
        ));
    }
    out.push_str(&format!("{} snapshots\n", list.len()));
    out
}

/// `forget`'s decisions as JSON: one object per group with its `keep`
/// and `remove` lists, each snapshot with the reasons.
pub fn forget_json(plans: &[GroupPlan]) -> serde_json::Value {
    let side = |p: &GroupPlan, keep: bool| {
        p.decisions
            .iter()
            .filter(|d| d.keep == keep)
            .map(|d| {
                serde_json::json!({
                    "id": d.id.to_hex(),
                    "short_id": d.id.short(),
                    "time": d.time.to_string(),
                    "reasons": d.reasons,
                })
            })
            .collect::<Vec<_>>()
    };
    plans
        .iter()
        .map(|p| {
            serde_json::json!({
                "group": p.group,
                "keep": side(p, true),
                "remove": side(p, false),
            })
        })
        .collect()
}

/// `forget`'s decisions for people: per group, every snapshot newest
/// first with what keeps it or why it goes.
pub fn forget_table(plans: &[GroupPlan], dry_run: bool) -> String {
    let gone = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for p in plans {
        out.push_str(&format!("{}:\n", p.group));
        for d in &p.decisions {
            let time = local_time(d.time);
            out.push_str(&format!(
                "  {:<12} {:<10} {:<20} {}\n",
                if d.keep { "keep" } else { gone },
                d.id.short(),
                time,
                d.reasons.join(", ")
            ));
        }
    }
    out
}

/// A progress bar on standard error, redrawn every 100 ms by `update`
/// until [`Bar::finish`].
pub struct Bar {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Bar {
    /// Starts a bar with an indicatif `template` when `show` is true.
    pub fn start(
        show: bool,
        template: &str,
        update: impl Fn(&indicatif::ProgressBar) + Send + 'static,
    ) -> Option<Bar> {
        use std::sync::atomic::Ordering;
        if !show {
            return None;
        }
        let style = indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let bar = indicatif::ProgressBar::new(0).with_style(style);
            while !flag.load(Ordering::Relaxed) {
                update(&bar);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            bar.finish_and_clear();
        });
        Some(Bar { stop, task })
    }

    /// Stops and clears the bar.
    pub async fn finish(bar: Option<Bar>) {
        if let Some(b) = bar {
            b.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = b.task.await;
        }
    }
}
