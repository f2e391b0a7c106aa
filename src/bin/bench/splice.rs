//! `bench splice DIR DOC`: regenerate the tables of a document from a run's files. Each
//! block of DOC between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` is replaced by
//! `DIR/NAME.md` (written by `bench --out DIR …`), so `docs/benchmarks.md` is refreshed,
//! never edited by hand. A block whose file is not in DIR keeps what it has; a file no block
//! names is reported, not added.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::report::without_out;

/// What a splice did: the blocks replaced and the blocks kept.
#[derive(Debug, Default, PartialEq)]
pub struct Spliced {
    pub replaced: Vec<String>,
    pub kept: Vec<String>,
}

pub fn run(dir: &Path, doc: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let tables = |name: &str| -> Option<String> {
        std::fs::read_to_string(dir.join(format!("{name}.md"))).ok()
    };
    let (out, spliced) = splice(&text, tables)?;
    let mut unused = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            && !spliced.replaced.iter().any(|r| r == stem)
        {
            unused.push(stem.to_string());
        }
    }
    std::fs::write(doc, out).with_context(|| format!("writing {}", doc.display()))?;
    println!(
        "{}: replaced {:?}; kept {:?}; no block for {:?}",
        doc.display(),
        spliced.replaced,
        spliced.kept,
        unused
    );
    Ok(())
}

/// `text` with every block's content replaced by `tables(NAME)` where it has one. A marker is
/// a line of its own (a marker quoted inside a sentence is text).
pub fn splice(text: &str, tables: impl Fn(&str) -> Option<String>) -> Result<(String, Spliced)> {
    let mut out = String::with_capacity(text.len());
    let mut done = Spliced::default();
    // The open block: its name, and whether its old content is being replaced.
    let mut open: Option<(String, bool)> = None;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if let Some(name) = marker(bare, "<!-- bench:") {
            if let Some((outer, _)) = &open {
                bail!("`<!-- bench:{name} -->` opens inside the block `{outer}`");
            }
            out.push_str(line);
            let replaced = match tables(name) {
                Some(t) => {
                    out.push_str(&with_readers_command(t.trim()));
                    out.push('\n');
                    done.replaced.push(name.to_string());
                    true
                }
                None => {
                    done.kept.push(name.to_string());
                    false
                }
            };
            open = Some((name.to_string(), replaced));
            continue;
        }
        if let Some(name) = marker(bare, "<!-- /bench:") {
            match open.take() {
                Some((opened, _)) if opened == name => out.push_str(line),
                _ => bail!("`<!-- /bench:{name} -->` closes no block of that name"),
            }
            continue;
        }
        if !matches!(open, Some((_, true))) {
            out.push_str(line);
        }
    }
    if let Some((name, _)) = open {
        bail!("`<!-- bench:{name} -->` has no `<!-- /bench:{name} -->`");
    }
    Ok((out, done))
}

/// The name of a marker line `PREFIXNAME -->`.
fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.strip_prefix(prefix)?.strip_suffix(" -->")
}

/// The tables as written, their `Command:` line less its `--out DIR` ([`without_out`]; a file
/// written before `bench` left it out still names it).
fn with_readers_command(tables: &str) -> String {
    tables
        .lines()
        .map(|line| {
            match line
                .strip_prefix("Command: `")
                .and_then(|r| r.split_once('`'))
            {
                Some((command, rest)) => {
                    let words = without_out(command.split(' ').map(String::from));
                    format!("Command: `{}`{rest}", words.join(" "))
                }
                None => line.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_with_a_file_are_replaced_and_the_others_kept() {
        let doc = "# B\n\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\n\ntext\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\nend\n";
        let (out, done) = splice(doc, |n| {
            (n == "a").then(|| "Command: `bench --out /tmp/x a`.\n| new |\n".to_string())
        })
        .unwrap();
        assert_eq!(
            out,
            "# B\n\n<!-- bench:a -->\nCommand: `bench a`.\n| new |\n<!-- /bench:a -->\n\ntext\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\nend\n"
        );
        assert_eq!(done.replaced, ["a"]);
        assert_eq!(done.kept, ["b"]);
        // Idempotent: a second splice of the same files changes nothing.
        let (again, _) = splice(&out, |n| {
            (n == "a").then(|| "Command: `bench --out /tmp/x a`.\n| new |\n".to_string())
        })
        .unwrap();
        assert_eq!(again, out);
    }

    #[test]
    fn an_unclosed_block_is_an_error_and_a_quoted_marker_is_text() {
        assert!(splice("<!-- bench:a -->\nx\n", |_| None).is_err());
        assert!(splice("<!-- bench:a -->\n<!-- /bench:b -->\n", |_| None).is_err());
        let quoted = "a block (`<!-- bench:NAME -->`) is\n";
        assert_eq!(splice(quoted, |_| None).unwrap().0, quoted);
    }
}
