//! The dataplane watcher: when did this node start and stop routing new connections of each
//! Service to each backend? (See docs/dataplane.md.)
//!
//! Data flows: a trigger (`nf_monitor`: nf_tables commits) → one read of the touched
//! dataplane (`source`: dump + the mode's parser, `iptables` / `nft`) → the pure model's diff
//! (`model`) → observations (`emit`), orchestrated by `watcher`.

pub mod chains;
pub mod emit;
pub mod flows;
pub mod guarded;
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
