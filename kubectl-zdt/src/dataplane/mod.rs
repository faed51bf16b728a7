//! The dataplane watcher: when did this node start and stop routing new connections of each
//! Service to each backend? (See docs/dataplane.md.)
//!
//! Data flows: a trigger (`nf_monitor`: nf_tables commits) → one read of the touched
//! dataplane (`source`: dump + the mode's parser, `iptables` / `nft`) → the pure model's diff
//! (`model`) → observations (`emit`), orchestrated by `watcher`.

pub mod chains;
pub mod emit;
pub mod flows;
pub mod iptables;
pub mod ipvs;
pub mod legacy;
pub mod mirror;
pub mod model;
pub mod nf_monitor;
pub mod nfnetlink;
pub mod nft;
pub mod nft_decode;
pub mod nft_rule;
pub mod nl_dump;
pub mod source;
pub mod watcher;
pub mod xtables;

pub use model::{Backend, Backends, Change, Protocol, Route, ServiceAddr, Via};
pub use source::{Family, Mode, Source};

/// The dataplane sits below the agent: the agent starts it and arms its triggers, the dataplane
/// never names the agent (what both need, like a namespace's inode, lives lower: `crate::netns`).
#[cfg(test)]
mod layering {
    use std::path::Path;

    fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn the_dataplane_does_not_name_the_agent() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dataplane");
        let mut files = Vec::new();
        sources(&dir, &mut files);
        assert!(
            files.len() > 10,
            "read {} files in {}",
            files.len(),
            dir.display()
        );
        // Spelled in pieces, so this file does not name what it looks for.
        let needles = [["crate", "agent"].join("::"), ["super", "agent"].join("::")];
        let offenders: Vec<String> = files
            .iter()
            .filter(|f| {
                let text = std::fs::read_to_string(f).unwrap();
                text.lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .any(|l| needles.iter().any(|n| l.contains(n.as_str())))
            })
            .map(|f| f.display().to_string())
            .collect();
        assert!(
            offenders.is_empty(),
            "the dataplane names the agent in {offenders:?}"
        );
    }
}
