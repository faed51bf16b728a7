//! Every file a comment or a document names exists in the repository, and nothing points outside
//! it: a reader (or a newcomer) following a reference must find what it names.

use std::path::{Path, PathBuf};

const ROOTS: [&str; 10] = [
    "tests/",
    "docs/",
    "src/",
    "deploy/",
    "benches/",
    "examples/",
    "kubectl-zdt/",
    "zdt-ebpf/",
    "zdt-common/",
    "xtask/",
];
const EXTENSIONS: [&str; 10] = [
    ".rs", ".md", ".yaml", ".yml", ".json", ".jsonl", ".save", ".txt", ".toml", ".sh",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" || name == "fixtures" {
            continue;
        }
        if p.is_dir() {
            sources(&p, out);
        } else if [".rs", ".md", ".toml", ".yaml", ".yml"]
            .iter()
            .any(|x| name.ends_with(x))
        {
            out.push(p);
        }
    }
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
        .map(|w| w.trim_end_matches('.'))
}

/// The path-like words of `text` that name a file of the repository.
fn references(text: &str) -> Vec<String> {
    words(text)
        .map(|w| w.trim_start_matches("./"))
        .filter(|w| ROOTS.iter().any(|r| w.starts_with(r)))
        .filter(|w| EXTENSIONS.iter().any(|x| w.ends_with(x)))
        .filter(|w| !w.contains('*') && !w.contains("..") && !w.contains("//"))
        .map(str::to_owned)
        .collect()
}

/// The top folder of the repository `file` is in (its crate, for sources).
fn crate_of(root: &Path, file: &Path) -> Option<PathBuf> {
    file.strip_prefix(root)
        .ok()
        .and_then(|p| p.components().next())
        .map(|c| root.join(c.as_os_str()))
}

/// Where a reference made in `file` may be relative to: the repository, the crate the file is
/// in, and the main crate.
fn resolves(root: &Path, file: &Path, reference: &str) -> bool {
    let krate = crate_of(root, file);
    [
        Some(root.to_path_buf()),
        krate,
        Some(root.join("kubectl-zdt")),
    ]
    .into_iter()
    .flatten()
    .any(|base| base.join(reference).exists())
}

/// A relative path (`../…`) that, from `base`, leaves the repository or names nothing there.
fn leaves(root: &Path, base: &Path, word: &str) -> bool {
    let mut at = base.to_path_buf();
    for part in Path::new(word).components() {
        match part {
            std::path::Component::ParentDir => {
                if !at.pop() || !at.starts_with(root) {
                    return true;
                }
            }
            other => at.push(other.as_os_str()),
        }
    }
    !at.exists()
}

/// A `../…` path written in `file` that neither from the file's directory (`include_bytes!`)
/// nor from its crate (`CARGO_MANIFEST_DIR`) names something in the repository.
fn climbs_out(root: &Path, file: &Path, word: &str) -> bool {
    let krate = crate_of(root, file);
    [file.parent().map(Path::to_path_buf), krate]
        .into_iter()
        .flatten()
        .all(|base| leaves(root, &base, word))
}

/// Every file name in the tree, for bare names such as `README.md`.
fn names(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if e.path().is_dir() {
            names(&e.path(), out);
        } else {
            out.insert(name);
        }
    }
}

#[test]
fn every_file_a_comment_or_document_names_exists_and_none_is_outside_the_repository() {
    let root = repo();
    let mut files = Vec::new();
    for top in [
        "kubectl-zdt",
        "zdt-ebpf",
        "zdt-common",
        "xtask",
        "docs",
        "deploy",
    ] {
        sources(&root.join(top), &mut files);
    }
    files.extend(
        ["README.md", "BENCHMARKS.md", "Cargo.toml"]
            .iter()
            .map(|f| root.join(f)),
    );
    files.push(root.join("kubectl-zdt/tests/fixtures/real-cluster/README.md"));
    let mut known = std::collections::BTreeSet::new();
    names(&root, &mut known);
    // This file's examples are made up on purpose.
    let this = Path::new(file!()).file_name().unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        if file.file_name() == Some(this) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        let shown = file.strip_prefix(&root).unwrap_or(file).display();
        for (n, line) in text.lines().enumerate() {
            for w in words(line) {
                if w.starts_with("../") && climbs_out(&root, file, w) {
                    broken.push(format!("{shown}:{}: {w} is outside the repository", n + 1));
                } else if !w.contains('/')
                    && w.len() > 3
                    && w.ends_with(".md")
                    && !known.contains(w)
                {
                    broken.push(format!("{shown}:{}: no {w} in the repository", n + 1));
                }
            }
            for r in references(line) {
                checked += 1;
                if !resolves(&root, file, &r) {
                    broken.push(format!("{shown}:{}: {r} does not exist", n + 1));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} references found: is the scan broken?"
    );
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn a_reference_is_found_in_prose_and_code_alike() {
    assert_eq!(
        references("see docs/journal.md, and (tests/offline/journal.rs)."),
        ["docs/journal.md", "tests/offline/journal.rs"]
    );
    assert_eq!(references("`./src/agent/mod.rs`:12"), ["src/agent/mod.rs"]);
    assert!(references("https://example.com/docs/x.md.html src/agent").is_empty());
}

#[test]
fn a_path_out_of_the_repository_is_told_from_one_into_a_sibling_folder() {
    let root = repo();
    let file = root.join("kubectl-zdt/src/dataplane/xtables.rs");
    assert!(!climbs_out(
        &root,
        &file,
        "../../tests/fixtures/xtables/v1.36-nat.info"
    ));
    assert!(climbs_out(&root, &file, "../../tests/fixtures/none.jsonl"));
    assert!(climbs_out(
        &root,
        &root.join("README.md"),
        "../elsewhere/fixtures"
    ));
}
