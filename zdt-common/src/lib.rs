//! Wire types shared by the eBPF programs (`zdt-ebpf`) and the node agent (`kubectl-zdt`).
//!
//! Everything here crosses the kernel boundary, so it is plain old data: `#[repr(C)]`, `Copy`,
//! integers and byte arrays only (no `bool`, `Option` or enums), every padding byte explicit, and
//! every layout asserted at compile time. Event kinds and reasons are `u16`/`u32` constants.
#![no_std]

pub mod event;
pub mod maps;
pub mod programs;
pub mod tracepoint;

pub use event::{
    CounterKey, Event, IpvsRecord, KernelOffsets, PendingIpvs, PendingReplace, TableKey, family,
    genl, ipvs_sockopt, kind, replace_reported, rst_reason, swap_bounds, tcp_flags, tcp_state, xt,
};
