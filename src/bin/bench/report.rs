//! What a scenario reports: every line of its tables goes to standard output and is kept, so
//! that `bench --out DIR SCENARIO` also writes the run's tables (`DIR/SCENARIO.md`) and its
//! figures (`DIR/SCENARIO.json`), each with the command and the machine, as files that
//! `docs/benchmarks.md` is refreshed from instead of edited by hand.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;

/// The table lines printed so far in this process.
static TABLES: Mutex<String> = Mutex::new(String::new());

/// Print one line of a table (or its title) and keep it for [`write`].
pub fn line(text: &str) {
    println!("{text}");
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    tables.push_str(text);
    tables.push('\n');
}

/// The machine the bench runs on, in one line: cores, memory, kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or("?".to_string(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {mem_gib} GiB, Linux {}", kernel.trim())
}

/// The words of a bench command line less its `--out DIR`: where a run kept its files is no
/// part of the command a reader runs.
pub fn without_out(words: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut words = words.into_iter();
    let mut kept = Vec::new();
    while let Some(word) = words.next() {
        match word.as_str() {
            "--out" => {
                words.next();
            }
            w if w.starts_with("--out=") => {}
            _ => kept.push(word),
        }
    }
    kept
}

/// Write the tables printed so far to `dir/name.md` and `figures` to `dir/name.json`.
pub fn write(dir: &Path, name: &str, figures: serde_json::Value) -> Result<()> {
    let command = std::iter::once("bench".to_string())
        .chain(without_out(std::env::args().skip(1)))
        .collect::<Vec<_>>()
        .join(" ");
    let machine = machine();
    let tables = TABLES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    std::fs::create_dir_all(dir)?;
    let md = dir.join(format!("{name}.md"));
    std::fs::write(
        &md,
        format!("Command: `{command}`. Machine: {machine}.\n{tables}"),
    )?;
    let json = dir.join(format!("{name}.json"));
    let doc = serde_json::json!({ "command": command, "machine": machine, "figures": figures });
    std::fs::write(&json, serde_json::to_string_pretty(&doc)? + "\n")?;
    println!("\nwrote {} and {}", md.display(), json.display());
    Ok(())
}
