#!/usr/bin/env python3
"""Prints each crate's import graph at file level and fails on a cycle.

An edge A -> B means file A names something of module B (`use crate::b`,
`crate::b::x`, `super::b`, `self::b`). A submodule naming its own
ancestors (`super::x`, `crate::Error`) is part of them and is not an edge:
the rule is that siblings depend one way. Module declarations are not
edges. `--sizes` also lists files over 800 lines and functions over 120
(outside tests), which the house style asks to split.

Usage: scripts/layers.py [--quiet] [--sizes] [crates/NAME ...]
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(src: Path):
    """Module path (tuple) -> file, for one crate's src directory."""
    out = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("lib", "main") and len(parts) == 1:
            parts = []
        elif parts[-1] == "mod":
            parts = parts[:-1]
        out[tuple(parts)] = f
    return out


def strip(text: str) -> str:
    """The code without comments, string literals and `#[cfg(test)]` modules."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'b?"(?:\\.|[^"\\])*"', '""', text)
    # Drop `#[cfg(test)] mod x { ... }` blocks by brace matching.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def paths_named(code: str):
    """Every path the code names that starts with crate, super or self,
    `use` trees expanded (one level of braces is enough here)."""
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        tree = re.sub(r"\s+", "", m.group(1))
        found.extend(expand(tree))
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", code):
        found.append(m.group(1).split("::"))
    return [p for p in found if p and p[0] in ("crate", "super", "self")]


def expand(tree: str):
    m = re.match(r"^(.*?)::\{(.*)\}$", tree)
    if not m:
        return [tree.split(" as ")[0].split("::")]
    head = m.group(1).split("::")
    out, depth, cur = [], 0, ""
    for ch in m.group(2) + ",":
        if ch == "," and depth == 0:
            if cur:
                out.extend(head + p for p in expand(cur))
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    return out


def resolve(me, path, mods):
    """The module a path names, as the longest module prefix."""
    if path[0] == "crate":
        base, rest = (), path[1:]
    else:
        base, rest = list(me), list(path)
        while rest and rest[0] in ("super", "self"):
            if rest.pop(0) == "super":
                base = base[:-1]
        base = tuple(base)
    full = tuple(base) + tuple(rest)
    for n in range(len(full), -1, -1):
        if full[:n] in mods:
            return full[:n]
    return ()


def graph(src: Path):
    mods = modules(src)
    edges = {m: set() for m in mods}
    for me, f in mods.items():
        for p in paths_named(strip(f.read_text())):
            target = resolve(me, p, mods)
            # Itself, or an ancestor it is part of: not an edge.
            if target == me or me[: len(target)] == target:
                continue
            edges[me].add(target)
    return mods, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "(root)"


def sizes(src: Path):
    """Files over 800 lines and functions over 120, outside tests."""
    found = []
    for f in sorted(src.rglob("*.rs")):
        code = strip(f.read_text())
        lines = code.count("\n")
        if lines > 800:
            found.append(f"{f.relative_to(ROOT)}: {lines} lines")
        for m in re.finditer(r"\bfn\s+(\w+)[^{;]*\{", code):
            depth, j = 1, m.end()
            while j < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[j], 0)
                j += 1
            body = code[m.start():j].count("\n")
            if body > 120:
                found.append(f"{f.relative_to(ROOT)}: fn {m.group(1)}: {body} lines")
    return found


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quiet, want_sizes = "--quiet" in sys.argv, "--sizes" in sys.argv
    crates = [ROOT / a for a in args] or sorted((ROOT / "crates").iterdir()) + [ROOT]
    failed = False
    for c in crates:
        src = c / "src"
        if not src.is_dir():
            continue
        mods, edges = graph(src)
        label = c.relative_to(ROOT).as_posix() if c != ROOT else "(workspace root)"
        if not quiet:
            print(f"## {label}")
            for m in sorted(edges):
                if edges[m]:
                    print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")
        for comp in cycles(edges):
            failed = True
            print(f"{label}: cycle: {' <-> '.join(name(m) for m in comp)}")
        if want_sizes:
            for s in sizes(src):
                print(f"too big: {s}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
