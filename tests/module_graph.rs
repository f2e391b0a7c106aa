//! The house rules of `src/`, enforced: dependencies between the modules of every crate —
//! the library and each binary under `src/bin/` — point one way (no import cycle), and no
//! file is a room too big to live in (600 lines, unit tests not counted), and no function
//! one too long to read (120 lines).
//!
//! A module is a top-level file `x.rs` or folder `x/` of a crate's root folder (`src/` for
//! the library, `src/bin/NAME/` for a binary); it depends on `y` when its code (comments,
//! strings and `#[cfg(test)]` blocks aside) names `crate::y` — in a `use` line, a
//! `use crate::{y, …}` group, or an inline path such as `crate::y::f()`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;

/// Module name → the files it is made of, for the crate whose root folder is `root` (its
/// `lib.rs` or `main.rs` is the crate root, not a module; `src/bin/` holds other crates).
fn modules(root: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(root).expect("read a crate's root folder") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            if name == "bin" && root == src_dir() {
                continue; // the binaries: crates of their own, see `crate_roots`
            }
            out.entry(name).or_default().extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            out.entry(name).or_default().push(path);
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read module folder") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The code with comments and the contents of string and char literals blanked out (line
/// structure kept).
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident_before(&b, i) {
            // raw string r"…" / r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            out.push_str("\"\"");
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if b.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            i += 3; // 'x'
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The code without `#[cfg(test)]` items (a `mod tests { … }` block or a single item); the
/// removed lines are kept as empty lines (line numbers stay) unless `drop_lines`.
fn without_test_blocks(code: &str) -> String {
    strip_test_blocks(code, false)
}

fn strip_test_blocks(code: &str, drop_lines: bool) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // Skip to the end of the item: its braces balanced, or its `;`.
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        if !drop_lines {
            out.extend(after[..end].chars().filter(|c| *c == '\n'));
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every module named as `crate::x` (also inside `crate::{x, y::z}` groups).
fn dependencies(code: &str) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before_ok = rest[..at]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + "crate::".len()..];
        if !before_ok {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            // Top-level names of the group: at brace depth 0, after `{` or `,`.
            let mut depth = 0;
            let mut expect_name = true;
            let mut name = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        if !name.is_empty() {
                            deps.insert(std::mem::take(&mut name));
                        }
                        expect_name = true;
                    }
                    c if expect_name && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                        name.push(c)
                    }
                    _ => {
                        if expect_name && !name.is_empty() {
                            deps.insert(std::mem::take(&mut name));
                            expect_name = false;
                        }
                    }
                }
            }
            if !name.is_empty() {
                deps.insert(name);
            }
        } else {
            let name: String = trimmed
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                deps.insert(name);
            }
        }
    }
    deps
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .map(|(name, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(f).expect("read source");
                deps.extend(dependencies(&without_test_blocks(&code_only(&text))));
            }
            deps.retain(|d| d != name && names.contains(d));
            (name.clone(), deps)
        })
        .collect()
}

/// One cycle, if any, as the path of modules that closes it.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match marks.get(d).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = path.iter().position(|p| p == d).unwrap_or(0);
                    let mut cycle = path[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(d, g, marks, path) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks: BTreeMap<String, Mark> = g.keys().map(|k| (k.clone(), Mark::New)).collect();
    for n in g.keys() {
        if marks[n] == Mark::New
            && let Some(c) = visit(n, g, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The root folder of every crate in `src/`: the library's, and each binary's folder under
/// `src/bin/` (a binary that is one file `src/bin/x.rs` has no modules to order).
fn crate_roots() -> Vec<PathBuf> {
    let mut roots = vec![src_dir()];
    if let Ok(entries) = std::fs::read_dir(src_dir().join("bin")) {
        let mut bins: Vec<PathBuf> = entries
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.join("main.rs").is_file())
            .collect();
        bins.sort();
        roots.extend(bins);
    }
    roots
}

#[test]
fn no_module_cycle_in_src() {
    let roots = crate_roots();
    assert!(
        roots.iter().any(|r| r.ends_with("bin/bench")),
        "the bench binary's folder is among the crates checked: {roots:?}"
    );
    for root in roots {
        let g = graph(&root);
        if root == src_dir() {
            assert!(g.len() > 10, "found too few modules: {g:?}");
        }
        if let Some(cycle) = find_cycle(&g) {
            let mut map = String::new();
            for (m, deps) in &g {
                map.push_str(&format!("  {m} -> {deps:?}\n"));
            }
            panic!(
                "module cycle in {}: {}\nthe graph:\n{map}",
                root.display(),
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn no_source_file_over_600_lines() {
    let mut files = rust_files(&src_dir());
    files.sort();
    let mut big = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        let lines = strip_test_blocks(&text, true).lines().count();
        if lines > MAX_LINES {
            big.push(format!("{} ({lines} lines)", f.display()));
        }
    }
    assert!(
        big.is_empty(),
        "files over {MAX_LINES} lines (unit tests not counted): {big:?}"
    );
}

/// Every function of `text` longer than `max` lines (from its `fn` line to the brace that
/// closes it at the same indentation): `(name, lines)`.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let after_qualifiers = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        let Some(rest) = after_qualifiers.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // The body opens on the signature's last line; a declaration without one has none.
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue;
        }
        let close = (open + 1..lines.len()).find(|&j| {
            let l = lines[j];
            l.len() - l.trim_start().len() == indent && l.trim_start().starts_with('}')
        });
        if let Some(close) = close
            && close - i + 1 > max
        {
            out.push((name, close - i + 1));
        }
    }
    out
}

#[test]
fn no_function_over_120_lines() {
    let mut files = rust_files(&src_dir());
    files.sort();
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read source");
        for (name, n) in long_functions(&strip_test_blocks(&text, true), MAX_FN_LINES) {
            long.push(format!("{}::{name} ({n} lines)", f.display()));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: {long:?}"
    );
    let sample = format!("fn big() {{\n{}}}\n", "    x();\n".repeat(MAX_FN_LINES));
    assert_eq!(
        long_functions(&sample, MAX_FN_LINES),
        vec![("big".to_string(), MAX_FN_LINES + 2)],
        "the length check sees a long function"
    );
}

#[test]
fn the_parser_sees_every_kind_of_reference() {
    let text = r##"
        use crate::a;
        use crate::{b, c::{x, y}, d as e};
        fn f() { crate::g::h(); let s = "crate::not_me"; } // crate::nor_me
        /* crate::nor_this */
        let r = r#"crate::raw_not"#;
        #[cfg(test)]
        mod tests { use crate::test_only; }
    "##;
    let deps = dependencies(&without_test_blocks(&code_only(text)));
    let want: BTreeSet<String> = ["a", "b", "c", "d", "g"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(deps, want);
    let mut g = BTreeMap::new();
    g.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    g.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    assert!(find_cycle(&g).is_some());
}
