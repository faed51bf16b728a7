//! The one rule of the module tree, checked: every module uses only the modules listed before it
//! in [`LAYERS`], and only those its row names. The analysis core ([`PURE`]) additionally touches
//! no kernel, cluster, runtime, file system, network, process or clock. docs/architecture.md
//! draws the same table.

/// Every top-level module of the library, in dependency order, with the modules it may use.
/// A row may only name modules of earlier rows, so no cycle can be written down.
pub const LAYERS: &[(&str, &[&str])] = &[
    // The contract every layer speaks, and helpers with no dependencies.
    ("observation", &[]),
    ("kube_version", &[]),
    ("logging", &[]),
    ("complete", &[]),
    ("process", &[]),
    ("netns", &[]),
    // Analysis: pure functions from raw captures to observations, and from observations to a
    // report and advice. Any layer above may call them (the agent does, for its metrics).
    ("convert", &["observation"]),
    ("correlate", &["observation", "kube_version"]),
    ("report", &["observation", "correlate"]),
    // Sources with I/O: the on-disk journal, kube-proxy's dataplane.
    ("journal", &["observation"]),
    ("dataplane", &["observation", "netns"]),
    // The kernel side: the eBPF programs loaded, their events read and decoded.
    ("kernel", &["observation", "dataplane"]),
    // The node agent: kernel probes → observations, enriched, journaled, served.
    (
        "agent",
        &[
            "observation",
            "kube_version",
            "process",
            "netns",
            "convert",
            "correlate",
            "journal",
            "dataplane",
            "kernel",
        ],
    ),
    // Commands: each reads its input, calls the analysis, prints.
    ("traffic", &["process"]),
    ("sample", &["process"]),
    (
        "analyze",
        &[
            "observation",
            "kube_version",
            "convert",
            "correlate",
            "report",
        ],
    ),
    (
        "history",
        &["observation", "journal", "correlate", "report"],
    ),
    (
        "cluster",
        &[
            "observation",
            "kube_version",
            "convert",
            "journal",
            "agent",
            "correlate",
            "report",
            "process",
            "analyze",
            "traffic",
            "history",
        ],
    ),
    (
        "recommend",
        &[
            "observation",
            "kube_version",
            "correlate",
            "report",
            "journal",
            "process",
            "analyze",
            "cluster",
        ],
    ),
    ("testbed", &["observation", "dataplane", "kernel", "agent"]),
    (
        "demo",
        &[
            "observation",
            "dataplane",
            "kernel",
            "agent",
            "correlate",
            "report",
            "testbed",
        ],
    ),
    (
        "cli",
        &[
            "observation",
            "logging",
            "complete",
            "journal",
            "agent",
            "analyze",
            "cluster",
            "traffic",
            "sample",
            "recommend",
            "history",
            "testbed",
            "demo",
        ],
    ),
];

/// The analysis core: files that must stay pure (folders and single files under `src/`).
pub const PURE: &[&str] = &[
    "correlate/",
    "report/",
    "recommend/advise.rs",
    "recommend/settings.rs",
    "recommend/render.rs",
    "convert/",
];

/// What the analysis core may not name: the kernel, the cluster, the async runtime, the file
/// system, the network, processes, the environment, the clock and the terminal.
pub const IMPURE: &[&str] = &[
    r"\baya(_log)?::",
    r"\bkube::",
    r"\bk8s_openapi::",
    r"\btokio::",
    r"\bhyper(_util)?::",
    r"\bnix::",
    r"\blibc::",
    r"\bnetlink_[a-z_]+::",
    r"\bstd::fs\b",
    r"\bstd::net::(Tcp|Udp)",
    r"\bstd::process\b",
    r"\bstd::thread\b",
    r"\bstd::env\b",
    r"\bFile::",
    r"::now\(",
    r"\be?print(ln)?!",
];

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::{Path, PathBuf},
    };

    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code of a file without comments and without its `#[cfg(test)]` module (tests may
    /// read fixtures from disk).
    fn code(text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let line = line.find("//").map_or(line, |i| &line[..i]);
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The top-level modules a piece of code names through `crate::`, also inside
    /// `use crate::{a::…, b, …}` groups.
    fn crate_modules(code: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let ident = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let (mut depth, mut start) = (0usize, true);
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if c.is_whitespace() => {}
                        _ if start && depth == 0 => {
                            found.insert(ident(&group[i..]));
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                found.insert(ident(rest));
            }
        }
        found.retain(|m| !m.is_empty() && m != "self");
        found
    }

    fn top_module(rel: &Path) -> Option<String> {
        let first = rel.components().next()?.as_os_str().to_str()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main" | "architecture")).then(|| name.to_owned())
    }

    #[test]
    fn every_module_uses_only_the_modules_its_layer_allows() {
        let mut files = Vec::new();
        rust_files(&src(), &mut files);
        let rows: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
        let mut violations = Vec::new();
        let mut seen = BTreeSet::new();
        for file in &files {
            let rel = file.strip_prefix(src()).unwrap();
            let Some(module) = top_module(rel) else {
                continue;
            };
            seen.insert(module.clone());
            let Some(allowed) = rows.get(module.as_str()) else {
                violations.push(format!(
                    "{}: module `{module}` has no row in LAYERS",
                    rel.display()
                ));
                continue;
            };
            let text = std::fs::read_to_string(file).unwrap();
            for used in crate_modules(&code(&text)) {
                if used != module && !allowed.contains(&used.as_str()) {
                    violations.push(format!(
                        "{}: `{module}` uses `crate::{used}`",
                        rel.display()
                    ));
                }
            }
        }
        assert!(
            violations.is_empty(),
            "layer violations:\n{}",
            violations.join("\n")
        );
        let listed: BTreeSet<String> = rows.keys().map(|k| (*k).to_owned()).collect();
        assert_eq!(
            listed, seen,
            "LAYERS must list exactly the modules under src/"
        );
    }

    #[test]
    fn a_row_names_only_modules_of_earlier_rows() {
        for (i, (module, uses)) in LAYERS.iter().enumerate() {
            for used in *uses {
                let earlier = LAYERS[..i].iter().any(|(m, _)| m == used);
                // `cli` and the commands it dispatches form the top; one command may call another
                // listed after it only through `cli`, never directly.
                assert!(
                    earlier,
                    "`{module}` may use `{used}`, which is not listed before it"
                );
            }
        }
    }

    #[test]
    fn the_analysis_core_is_pure() {
        let patterns: Vec<regex::Regex> = IMPURE
            .iter()
            .map(|p| regex::Regex::new(p).unwrap())
            .collect();
        let mut violations = Vec::new();
        let mut checked = 0;
        for entry in PURE {
            let path = src().join(entry);
            let mut files = Vec::new();
            if path.is_dir() {
                rust_files(&path, &mut files);
            } else {
                files.push(path);
            }
            for file in files {
                checked += 1;
                let text = std::fs::read_to_string(&file).unwrap();
                let code = code(&text);
                for p in &patterns {
                    if let Some(m) = p.find(&code) {
                        violations.push(format!(
                            "{}: `{}`",
                            file.strip_prefix(src()).unwrap().display(),
                            m.as_str()
                        ));
                    }
                }
            }
        }
        assert!(
            checked > 20,
            "only {checked} files checked: is PURE out of date?"
        );
        assert!(
            violations.is_empty(),
            "impure analysis code:\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn the_checks_see_what_they_are_meant_to_see() {
        let text = "use crate::{\n    agent::{Agent, x},\n    observation::Kind,\n};\n\
                    // crate::report in a comment\nlet c = crate::correlate::run();\n\
                    #[cfg(test)]\nmod tests { use crate::cluster; }\n";
        let got = crate_modules(&code(text));
        let want: BTreeSet<String> = ["agent", "observation", "correlate"]
            .map(str::to_owned)
            .into();
        assert_eq!(got, want);
        let re = regex::Regex::new(IMPURE[14]).unwrap();
        assert!(re.is_match("let t = Timestamp::now();"));
        assert!(
            regex::Regex::new(IMPURE[15])
                .unwrap()
                .is_match("eprintln!(\"x\")")
        );
    }
}
