//! The docs against what they describe, so they cannot drift unseen (no database needed):
//!
//! * the README and `docs/*.md` name no commit of this repository — they say what is true
//!   now, history is git's;
//! * every flag and environment variable of every `toygres-actors` command (read from the
//!   clap definition the binary parses with) is in `docs/configuration.md`;
//! * every Rust file under `src/` (the binaries' included) is in the module map of
//!   `docs/architecture.md`, and every file the map names exists;
//! * every relative link of the README and `docs/` reaches a file and, with `#…`, an anchor;
//! * every table of `docs/benchmarks.md` is a bench run's, spliced in whole (`bench splice`):
//!   inside a `<!-- bench:NAME -->` block that opens with the run's command and machine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The README and every Markdown file of `docs/`, as (path, text).
fn doc_files() -> Vec<(String, String)> {
    let mut files = vec![("README.md".to_string(), read("README.md"))];
    let mut names: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("a docs/ folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    names.sort();
    for p in names {
        let rel = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
        files.push((rel.clone(), read(&rel)));
    }
    files
}

/// Every run of 7 to 40 lower-case hex digits that stands alone (no letter, digit or `_`
/// either side), with its line number.
fn hex_tokens(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            if !chars[i].is_alphanumeric() && chars[i] != '_' {
                i += 1;
                continue;
            }
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let hex = word
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
            if hex && (7..=40).contains(&word.len()) {
                out.push((n + 1, word));
            }
        }
    }
    out
}

/// Every commit of the repository (full hashes, all refs). Fails loudly without git: the
/// check must not pass by not running.
fn commits() -> Vec<String> {
    let out = Command::new("git")
        .args(["log", "--all", "--format=%H"])
        .current_dir(root())
        .output()
        .expect("git must be installed to check the docs for commit hashes");
    assert!(
        out.status.success(),
        "git log failed (is this a git checkout?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hashes: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!hashes.is_empty(), "git log listed no commit");
    hashes
}

#[test]
fn the_docs_name_no_commit() {
    let commits = commits();
    let mut found = Vec::new();
    for (path, text) in doc_files() {
        for (line, token) in hex_tokens(&text) {
            if commits.iter().any(|c| c.starts_with(&token)) {
                found.push(format!("{path}:{line}: {token}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the docs say what is true now; git holds the history. Commits named:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_hex_scanner_sees_hashes_and_nothing_else() {
    let tokens: Vec<String> =
        hex_tokens("on f4693cd, (abcdef0123) actor-4c4ba247-e733 x1234567 deadbeefz")
            .into_iter()
            .map(|(_, t)| t)
            .collect();
    assert_eq!(tokens, ["f4693cd", "abcdef0123", "4c4ba247"]);
}

/// Does `text` hold `word` with no name character right after it (so `--log` is not found
/// in `--log-format`, nor `TOYGRES_ACTORS_LOG` in `TOYGRES_ACTORS_LOG_FORMAT`)?
fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().last();
        let after = text[i + word.len()..].chars().next();
        let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            && after.is_none_or(|c| !name_char(c))
    })
}

/// `(command path, --flag or env var)` for every argument of `cmd` and its subcommands.
fn flags_and_envs(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long()
            && long != "help"
            && long != "version"
        {
            out.push((path.to_string(), format!("--{long}")));
        }
        if let Some(env) = arg.get_env() {
            out.push((path.to_string(), env.to_string_lossy().into_owned()));
        }
    }
    for sub in cmd.get_subcommands() {
        flags_and_envs(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

#[test]
fn every_flag_and_env_var_is_in_the_configuration_reference() {
    let reference = read("docs/configuration.md");
    let mut all = Vec::new();
    flags_and_envs(
        &toygres_actors::cli::Cli::command(),
        "toygres-actors",
        &mut all,
    );
    assert!(
        all.iter().any(|(_, f)| f == "--check-interval")
            && all.iter().any(|(_, f)| f == "DATABASE_URL"),
        "the walk over the CLI found too little: {all:?}"
    );
    let missing: BTreeSet<String> = all
        .iter()
        .filter(|(_, flag)| !names(&reference, flag))
        .map(|(cmd, flag)| format!("{cmd}: {flag}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_flag_matcher_keeps_prefixes_apart() {
    let text = "`--log-format` and TOYGRES_ACTORS_LOG_FORMAT, `--http`";
    assert!(!names(text, "--log"));
    assert!(names(text, "--log-format"));
    assert!(!names(text, "TOYGRES_ACTORS_LOG"));
    assert!(names(text, "--http"));
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source folder") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The "Module map" section of docs/architecture.md (up to the next `## ` heading).
fn module_map() -> String {
    let doc = read("docs/architecture.md");
    let start = doc
        .find("\n## Module map")
        .expect("docs/architecture.md has a `## Module map` section");
    let rest = &doc[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_string()
}

#[test]
fn every_source_file_is_in_the_module_map_and_the_map_names_no_other() {
    let map = module_map();
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let rel: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    assert!(rel.iter().any(|f| f == "src/bin/bench/main.rs"));
    let missing: Vec<&String> = rel
        .iter()
        .filter(|f| !map.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md's module map lacks (write each as `src/…`): {missing:?}"
    );

    // And the map names no file that is gone.
    let named: BTreeSet<&str> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("src/") && s.ends_with(".rs"))
        .collect();
    let gone: Vec<&&str> = named.iter().filter(|f| !root().join(f).is_file()).collect();
    assert!(
        gone.is_empty(),
        "docs/architecture.md's module map names files that do not exist: {gone:?}"
    );
}

/// The anchors a Markdown file offers: GitHub's slug of every heading, and every
/// `<a id="…">`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if let Some(heading) = line.trim_start_matches('#').strip_prefix(' ')
            && line.starts_with('#')
        {
            let slug: String = heading
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            out.insert(slug);
        }
        for (i, _) in line.match_indices("<a id=\"") {
            let rest = &line[i + "<a id=\"".len()..];
            if let Some(end) = rest.find('"') {
                out.insert(rest[..end].to_string());
            }
        }
    }
    out
}

#[test]
fn every_link_between_the_docs_resolves() {
    let mut broken = Vec::new();
    for (path, text) in doc_files() {
        let dir = Path::new(&path).parent().unwrap_or(Path::new(""));
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let link = &rest[..end];
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                PathBuf::from(&path)
            } else {
                dir.join(file)
            };
            let Ok(target_text) = std::fs::read_to_string(root().join(&target)) else {
                broken.push(format!("{path}: {link} (no such file)"));
                continue;
            };
            if !anchor.is_empty() && !anchors(&target_text).contains(anchor) {
                broken.push(format!("{path}: {link} (no such anchor)"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_benchmark_table_is_a_runs_with_its_command() {
    let doc = read("docs/benchmarks.md");
    let mut block: Option<(String, bool)> = None; // (name, opened with its command)
    let mut blocks = 0;
    for (n, line) in doc.lines().enumerate() {
        let at = n + 1;
        if let Some(name) = line
            .strip_prefix("<!-- bench:")
            .and_then(|r| r.strip_suffix(" -->"))
        {
            assert!(block.is_none(), "line {at}: a block opens inside another");
            block = Some((name.to_string(), false));
            blocks += 1;
            continue;
        }
        if let Some(name) = line
            .strip_prefix("<!-- /bench:")
            .and_then(|r| r.strip_suffix(" -->"))
        {
            let (open, commanded) = block.take().unwrap_or_else(|| {
                panic!("line {at}: `{line}` closes no block");
            });
            assert_eq!(
                open, name,
                "line {at}: the block `{open}` closes as `{name}`"
            );
            assert!(
                commanded,
                "line {at}: the block `{name}` holds no run (no `Command:` line)"
            );
            continue;
        }
        match &mut block {
            Some((name, commanded)) => {
                if !*commanded && !line.trim().is_empty() {
                    assert!(
                        line.starts_with("Command: `bench ") && line.contains("Machine: "),
                        "line {at}: the block `{name}` must open with the run's command and machine, as `bench --out` writes it"
                    );
                    assert!(
                        !line.contains("--out"),
                        "line {at}: the command names where a run kept its files"
                    );
                    *commanded = true;
                }
            }
            None => assert!(
                !line.starts_with('|'),
                "line {at}: a table outside a `<!-- bench:NAME -->` block (tables come from `bench splice`, never by hand): {line}"
            ),
        }
    }
    assert!(block.is_none(), "a block is never closed");
    assert!(blocks > 0, "docs/benchmarks.md has no bench block");
}
