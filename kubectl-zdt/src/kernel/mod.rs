//! The kernel side: everything between the eBPF programs (`zdt-ebpf`) and an observation.
//!
//! - `preflight`: the checks that turn a missing privilege or kernel feature into one clear line;
//! - `btf`: struct member offsets from the kernel's own BTF;
//! - `loader`: owns the `aya::Ebpf` object, attaches the programs, hands out typed map handles;
//! - `filter`: run-time updates of the kernel watch filter;
//! - `decode`: wire `Event` → `Observation` (pure), with a typed view per event kind;
//! - `clock`: monotonic → wall-clock conversion with a stated uncertainty;
//! - `program_loss`: per-program counts of events the kernel skipped or a handler failed on.

pub mod btf;
pub mod clock;
pub mod decode;
pub mod filter;
pub mod loader;
pub mod preflight;
pub mod program_loss;
