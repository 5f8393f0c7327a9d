//! The first-read documents stay true: every test HAZARDS.md names as a
//! guard exists, and DESIGN.md's crate table and module list match the
//! tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file of the workspace (not `target/`).
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                sources(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

struct Tree {
    /// Every `fn` name defined anywhere.
    fns: BTreeSet<String>,
    /// Every module name (file stem or directory holding `mod.rs`).
    modules: BTreeSet<String>,
}

fn tree() -> Tree {
    let mut files = Vec::new();
    sources(&root(), &mut files);
    let mut fns = BTreeSet::new();
    let mut modules = BTreeSet::new();
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        if stem == "mod" {
            let dir = f.parent().unwrap().file_name().unwrap();
            modules.insert(dir.to_string_lossy().into_owned());
        } else {
            modules.insert(stem);
        }
        let text = std::fs::read_to_string(f).unwrap();
        for piece in text.split("fn ").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            fns.insert(name);
        }
    }
    Tree { fns, modules }
}

/// The cells of a Markdown table row (`\|` inside a cell is not a bar).
fn cells(row: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out.into_iter().map(|c| c.trim().to_string()).collect()
}

/// The `code` spans of a text.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn every_guard_hazards_md_names_exists() {
    let tree = tree();
    let text = std::fs::read_to_string(root().join("docs/HAZARDS.md")).unwrap();
    let mut rows = 0;
    let mut missing = Vec::new();
    // One table: a line that is not a row between the header and the last
    // row ends it there, and the rows after it do not render.
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| l.starts_with("| #"))
        .expect("HAZARDS.md has its table");
    let last = lines
        .iter()
        .rposition(|l| l.starts_with("| H"))
        .expect("HAZARDS.md has rows");
    if let Some(gap) = (first..=last).find(|&i| !lines[i].starts_with('|')) {
        panic!(
            "HAZARDS.md's table is broken at line {}: {:?}",
            gap + 1,
            lines[gap]
        );
    }
    for line in text.lines().filter(|l| l.starts_with("| H")) {
        let cells = cells(line);
        // | id | hazard | control | guarded by |
        assert!(
            cells.len() >= 5,
            "a HAZARDS row without its four columns: {line}"
        );
        rows += 1;
        let id = &cells[1];
        let guards = &cells[4];
        let mut named = 0;
        for span in code_spans(guards) {
            let parts: Vec<&str> = span.split("::").collect();
            if span.contains('/') && !span.contains(' ') {
                // A file (a benchmark script).
                named += 1;
                if !root().join(span).exists() {
                    missing.push(format!("{id}: file {span}"));
                }
            } else if parts.len() >= 2
                && parts
                    .iter()
                    .all(|p| is_ident(p) || *p == "*" || p.is_empty())
            {
                named += 1;
                let last = parts[parts.len() - 1];
                let module = parts[parts.len() - 2];
                let ok = match last {
                    "*" | "" | "tests" => tree.modules.contains(module),
                    name => tree.fns.contains(name),
                };
                if !ok {
                    missing.push(format!("{id}: {span}"));
                }
            } else if is_ident(span) && span.contains('_') {
                // A test named after its module's earlier mention, or a
                // fuzz target (a file of `fuzz/fuzz_targets`).
                named += 1;
                if !tree.fns.contains(span) && !tree.modules.contains(span) {
                    missing.push(format!("{id}: {span}"));
                }
            }
        }
        assert!(named > 0, "{id} names no test that guards it");
    }
    assert!(
        rows >= 40,
        "only {rows} HAZARDS rows parsed: is the table broken?"
    );
    assert!(
        missing.is_empty(),
        "HAZARDS.md names guards that do not exist: {missing:#?}"
    );
}

#[test]
fn design_md_lists_every_crate_and_engine_module() {
    let text = std::fs::read_to_string(root().join("docs/DESIGN.md")).unwrap();
    let crates_dir = root().join("crates");
    for e in std::fs::read_dir(&crates_dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            text.contains(&format!("| `crates/{name}` | `tessera-{name}` |")),
            "DESIGN.md's crate table lacks crates/{name}"
        );
    }
    for span in code_spans(&text) {
        if let Some(name) = span.strip_prefix("crates/").filter(|n| !n.contains('/')) {
            assert!(
                crates_dir.join(name).is_dir(),
                "DESIGN.md names crates/{name}, which does not exist"
            );
        }
    }
    // The engine's module list: one paragraph, each module in backticks.
    let list = text
        .split("## Modules of the engine")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").nth(1))
        .expect("DESIGN.md has a module list under \"Modules of the engine\"");
    // Module names are the spans that are plain identifiers (`Backend`,
    // `backup/reader.rs` and the like explain them).
    let listed: BTreeSet<&str> = code_spans(list)
        .into_iter()
        .filter(|s| is_ident(s))
        .collect();
    let src = crates_dir.join("core/src");
    let mut actual = BTreeSet::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        if stem != "lib" {
            actual.insert(stem);
        }
    }
    let actual: BTreeSet<&str> = actual.iter().map(String::as_str).collect();
    let unlisted: Vec<_> = actual.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&actual).collect();
    assert!(
        unlisted.is_empty() && gone.is_empty(),
        "DESIGN.md's module list is out of date: not listed {unlisted:?}, listed but absent {gone:?}"
    );
}
