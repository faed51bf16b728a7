//! Following kernel pointers (sock → net, sk_buff → net_device → net, task → nsproxy → net) at
//! offsets the agent resolved from this kernel's BTF and set in `ZDT_OFFSETS`.

use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};
use zdt_common::KernelOffsets;

#[unsafe(no_mangle)]
static ZDT_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    sock_net: 0,
    net_inum: 0,
    skb_dev: 0,
    netdev_net: 0,
    task_nsproxy: 0,
    nsproxy_net: 0,
    task_tgid: 0,
    task_real_parent: 0,
    valid: 0,
    retransmit_err: 0,
    exit_group_dead: 0,
    percpu_alloc_ptr: 0,
    percpu_free_ptr: 0,
    module_name_loc: 0,
    skc_family: 0,
    skc_state: 0,
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    skb_head: 0,
    skb_data: 0,
    skb_network_header: 0,
    sk_err: 0,
    inet_sport: 0,
    sk_protocol: 0,
});

/// Where the loader's offsets are (`Global` is a transparent wrapper of its value).
#[inline(always)]
pub fn offsets_ptr() -> *const KernelOffsets {
    core::ptr::from_ref(&ZDT_OFFSETS).cast()
}

/// One of the offsets the loader set (`valid` is 0 before it did), read alone: `load()` of the
/// global copies all of them (a volatile load of the whole struct, ~35 instructions) where a
/// handler needs a few.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: a field of the initialized, read-only offsets.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*$crate::kernel::offsets_ptr()).$field))
        }
    };
}
pub(crate) use offset;

/// The `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read<T: Copy>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The `T` at `base + offset`, loaded directly: `base` must be a pointer the verifier types
/// from BTF (a `tp_btf` argument, or a pointer loaded this way), and `offset` one of
/// `ZDT_OFFSETS` (read-only: the verifier knows its value and checks the field against this
/// kernel's BTF). A fault reads 0. No helper call: ~25 ns less than [`read`] per field.
#[inline(always)]
pub fn load_btf<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: the verifier turns the load into a fault-handled kernel read (BPF_PROBE_MEM).
    unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const T) }
}

/// Where `percpu:percpu_alloc_percpu` records keep `ptr` (0: unknown on this kernel).
#[inline(always)]
pub fn percpu_alloc_ptr() -> u32 {
    ZDT_OFFSETS.load().percpu_alloc_ptr
}

/// Where `percpu:percpu_free_percpu` records keep `ptr` (0: unknown on this kernel).
#[inline(always)]
pub fn percpu_free_ptr() -> u32 {
    ZDT_OFFSETS.load().percpu_free_ptr
}

/// Where `module:module_get` / `module_put` records keep `name`'s `__data_loc` (0: unknown or
/// no modules on this kernel).
#[inline(always)]
pub fn module_name_loc() -> u32 {
    ZDT_OFFSETS.load().module_name_loc
}

/// Whether `tcp:tcp_retransmit_skb` records carry `err` on this kernel.
#[inline(always)]
pub fn retransmit_has_err() -> bool {
    ZDT_OFFSETS.load().retransmit_err != 0
}

/// Whether `sched:sched_process_exit` records carry `group_dead` on this kernel.
#[inline(always)]
pub fn exit_has_group_dead() -> bool {
    ZDT_OFFSETS.load().exit_group_dead != 0
}

/// A non-null pointer at `base + offset`.
#[inline(always)]
fn read_ptr(base: u64, offset: u32) -> Option<u64> {
    read::<u64>(base, offset).filter(|p| *p != 0)
}

#[inline(always)]
fn net_inum(net: u64, o: &KernelOffsets) -> u32 {
    read(net, o.net_inum).unwrap_or(0)
}

/// Network namespace inode of a BTF-typed `struct sock *` argument (direct loads; the caller
/// checked `sk` non-null and the offsets valid).
#[inline(always)]
pub fn netns_of_btf_sock(sk: u64) -> u32 {
    let net: u64 = load_btf(sk, offset!(sock_net));
    load_btf(net, offset!(net_inum))
}

/// Network namespace inode of a `struct sock *` (0 when unknown).
#[inline(always)]
pub fn netns_of_sock(sk: u64) -> u32 {
    let o = ZDT_OFFSETS.load();
    if o.valid == 0 {
        return 0;
    }
    read_ptr(sk, o.sock_net).map_or(0, |net| net_inum(net, &o))
}

/// Network namespace inode of a `struct task_struct *` (0 when exiting or unknown).
#[inline(always)]
pub fn netns_of_task(task: u64) -> u32 {
    let o = ZDT_OFFSETS.load();
    if o.valid == 0 {
        return 0;
    }
    read_ptr(task, o.task_nsproxy)
        .and_then(|ns| read_ptr(ns, o.nsproxy_net))
        .map_or(0, |net| net_inum(net, &o))
}

/// Process id (`tgid`) of a `struct task_struct *`.
#[inline(always)]
pub fn tgid_of_task(task: u64) -> u32 {
    let o = ZDT_OFFSETS.load();
    if o.valid == 0 || task == 0 {
        return 0;
    }
    read(task, o.task_tgid).unwrap_or(0)
}

/// Network namespace inode of the parent (`real_parent`) of a `struct task_struct *` (0 when the
/// parent is exiting past its namespaces, or unknown).
#[inline(always)]
pub fn parent_netns_of_task(task: u64) -> u32 {
    let o = ZDT_OFFSETS.load();
    if o.valid == 0 {
        return 0;
    }
    read_ptr(task, o.task_real_parent).map_or(0, netns_of_task)
}
