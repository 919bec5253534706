//! The metric catalogue, the code and the operator's table agree: every metric name the services'
//! code emits is in the catalogue (so it has a `# HELP` line), every catalogue entry is emitted
//! somewhere, and `docs/operations.md` lists exactly the catalogue with the same type, labels and
//! service.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use twinbridge_telemetry::catalogue::{self, METRICS};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under a `src` directory of `dir` (tests and benches are not the services').
fn sources(dir: &Path, in_src: bool, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if name != "target" && name != "tests" && !name.starts_with('.') {
                sources(&path, in_src || name == "src", out);
            }
        } else if in_src && name.ends_with(".rs") && name != "catalogue.rs" {
            out.push(path);
        }
    }
}

/// The string literals of `text` that look like metric names (`"twinbridge_…"`).
fn metric_literals(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("\"twinbridge_") {
        let after = &rest[at + 1..];
        let len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        if after[len..].starts_with('"') {
            names.insert(after[..len].to_string());
        }
        rest = &after[len..];
    }
    names
}

#[test]
fn the_code_emits_exactly_the_catalogue() {
    let mut files = Vec::new();
    for dir in ["services", "shared"] {
        sources(&workspace().join(dir), false, &mut files);
    }
    assert!(files.len() > 20, "found only {files:?}");
    let mut used = BTreeSet::new();
    for f in &files {
        used.extend(metric_literals(&std::fs::read_to_string(f).unwrap()));
    }
    let listed: BTreeSet<String> = METRICS.iter().map(|m| m.name.to_string()).collect();
    let missing: Vec<_> = used.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "emitted but not in shared/telemetry/src/catalogue.rs: {missing:?}"
    );
    let unused: Vec<_> = listed.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "in the catalogue but emitted nowhere: {unused:?}"
    );
}

/// The rows of the metrics table: `| `name` | type | labels | service | meaning |`.
fn documented() -> Vec<(String, String, String, String)> {
    let doc = std::fs::read_to_string(workspace().join("docs/operations.md")).unwrap();
    doc.lines()
        .filter(|l| l.starts_with("| `twinbridge_"))
        .map(|l| {
            let cells: Vec<String> = l
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            assert!(cells.len() >= 5, "a metrics row needs 5 cells: {l}");
            (
                cells[0].clone(),
                cells[1].clone(),
                cells[2].clone(),
                cells[3].clone(),
            )
        })
        .collect()
}

#[test]
fn the_operations_guide_documents_the_catalogue() {
    let rows = documented();
    let mut seen = BTreeSet::new();
    for (name, kind, labels, service) in &rows {
        assert!(seen.insert(name.clone()), "{name} documented twice");
        let Some(m) = catalogue::find(name) else {
            panic!("docs/operations.md documents {name}, which no service emits");
        };
        assert_eq!(kind, m.kind.as_str(), "type of {name}");
        let want = if m.labels.is_empty() {
            "—".to_string()
        } else {
            m.labels.join("`, `")
        };
        assert_eq!(labels, &want, "labels of {name}");
        assert_eq!(service, m.service, "service of {name}");
    }
    let undocumented: Vec<_> = METRICS
        .iter()
        .filter(|m| !seen.contains(m.name))
        .map(|m| m.name)
        .collect();
    assert!(
        undocumented.is_empty(),
        "missing from the metrics table of docs/operations.md: {undocumented:?}"
    );
}
