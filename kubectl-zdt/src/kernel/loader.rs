//! Owns the `aya::Ebpf` object: loads the embedded programs, fills the watch tries, attaches
//! the tracepoints and hands out typed map handles. Nothing else in the crate touches aya's
//! loader API.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
    programs::{BtfTracePoint, TracePoint},
};
use ipnet::IpNet;
use zdt_common::{
    CounterKey, KernelOffsets, maps,
    programs::{self, Group, Hook, Program},
};

use super::filter::WatchFilter;
use crate::dataplane::watcher::{Arm, Armed, TriggerHook};

/// The eBPF object built by build.rs from the `zdt-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zdt"));

/// What to load: the watch filter and the kernel facts preflight found.
pub struct LoadSpec<'a> {
    pub watch: &'a [IpNet],
    /// Network namespace inode numbers.
    pub watch_netns: &'a [u32],
    pub wakeup_every: u64,
    pub ringbuf_bytes: u32,
    pub offsets: KernelOffsets,
    /// Filter even with empty watch lists (nothing is reported until addresses are added).
    pub filter: bool,
    /// The syscalls' tracepoints the iptables-legacy and IPVS triggers fall back to are as
    /// their programs read them (preflight). Without them the triggers hook only kernel
    /// functions, where the kernel allows that (not with [`TriggerHooks::Tracepoint`]).
    pub syscall_tracepoints: bool,
    /// Where the dataplane triggers hook their syscalls.
    pub trigger_hooks: TriggerHooks,
}

impl LoadSpec<'static> {
    /// Nothing watched (kernel-side filtering on), every event woken at once, the default ring
    /// buffer, the triggers as `trigger_hooks` asks: for checks of what loads.
    pub fn nothing_watched(
        offsets: KernelOffsets,
        syscall_tracepoints: bool,
        trigger_hooks: TriggerHooks,
    ) -> Self {
        Self {
            watch: &[],
            watch_netns: &[],
            wakeup_every: 1,
            ringbuf_bytes: maps::EVENTS_BYTES,
            offsets,
            filter: true,
            syscall_tracepoints,
            trigger_hooks,
        }
    }
}

/// Where the dataplane triggers hook the syscalls that change x_tables (`setsockopt`) and IPVS
/// (`sendto`, `sendmsg`, `setsockopt`): `kubectl-zdt agent --trigger-hooks`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TriggerHooks {
    /// The kernel functions the syscalls call (`__sys_setsockopt`, `__sys_sendto`,
    /// `__sys_sendmsg`), at entry and return (fentry/fexit); the syscalls' tracepoints where
    /// the kernel refuses function tracing, said once as a warning.
    #[default]
    Auto,
    /// The kernel functions only: the agent fails to start where the kernel refuses them.
    Fentry,
    /// The syscalls' tracepoints (`syscalls:sys_enter/exit_setsockopt`, …). A program on any
    /// syscall tracepoint makes every syscall of every process on the node take the kernel's
    /// traced slow path (tens of ns each).
    Tracepoint,
}

/// The loaded, attached probes and the maps userspace reads.
pub struct Probes {
    /// Keeps programs and links alive; dropping it detaches everything.
    pub attached: Attached,
    pub events: RingBuf<MapData>,
    pub maps: KernelMaps,
    /// The watch tries, for run-time updates (cluster mode).
    pub filter: WatchFilter,
    /// Where x_tables replaces and IPVS changes are reported from; `None` when the triggers
    /// are not attached.
    pub dataplane_netns: Option<DataplaneNetns>,
}

/// The network namespaces whose x_tables (iptables-legacy) replaces and IPVS changes the kernel
/// reports, and the IPVS family id the IPVS trigger looks for.
pub struct DataplaneNetns {
    netns: BpfHashMap<MapData, u32, u8>,
    ipvs_family: Array<MapData, u32>,
    /// Where the dataplane triggers are hooked.
    pub trigger_hook: TriggerHook,
}

impl DataplaneNetns {
    fn take(ebpf: &mut Ebpf, trigger_hook: TriggerHook) -> anyhow::Result<Self> {
        Ok(Self {
            netns: BpfHashMap::try_from(take(ebpf, maps::DATAPLANE_NETNS)?)?,
            ipvs_family: Array::try_from(take(ebpf, maps::IPVS_FAMILY)?)?,
            trigger_hook,
        })
    }

    /// Arms the triggers the watcher asks for: its namespace, and IPVS where the kernel has it.
    pub fn arm(&mut self, arm: &Arm) -> anyhow::Result<Armed> {
        self.watch(arm.netns)?;
        if let Some(id) = arm.ipvs_family {
            self.arm_ipvs(id)?;
        }
        Ok(Armed {
            legacy: Some(self.trigger_hook),
            ipvs: arm.ipvs_family.is_some(),
        })
    }

    /// Reports table replaces and IPVS changes in the namespace with inode `inum` from now on.
    pub fn watch(&mut self, inum: u32) -> anyhow::Result<()> {
        self.netns.insert(&inum, &1u8, 0).with_context(|| {
            format!("failed to watch dataplane changes in network namespace {inum}")
        })
    }

    /// Arms the IPVS trigger: generic-netlink requests of family `id` (IPVS's, which the kernel
    /// assigned when the module registered it) are looked at from now on.
    pub fn arm_ipvs(&mut self, id: u16) -> anyhow::Result<()> {
        self.ipvs_family
            .set(0, &u32::from(id), 0)
            .context("failed to arm the IPVS trigger")
    }
}

/// The programs, attached for as long as this lives.
pub struct Attached {
    ebpf: Ebpf,
    /// Where the dataplane triggers are hooked; `None` when they are not loaded.
    trigger_hook: Option<TriggerHook>,
    /// The x_tables trigger's pair is attached (on kernel functions from the start; on the
    /// syscalls' tracepoints once asked, see [`Attached::attach_table_replace`]).
    table_replace: bool,
    /// The IPVS trigger's programs are attached (they are loaded from the start).
    ipvs: bool,
}

/// The counter maps userspace reads.
pub struct KernelMaps {
    /// Per-(address, port, kind, reason) counts of the events the ring buffer had no room for
    /// (with the delivered ones, exact).
    pub lost: PerCpuHashMap<MapData, CounterKey, u64>,
    pub stats: PerCpuArray<MapData, u64>,
    /// Per program ([`maps::FALLIBLE_PROGRAMS`]), the events its handler failed on.
    pub handler_errors: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Loads and attaches every program. Kernel-side filtering is on when a watch list is
    /// non-empty or `spec.filter` asks for it (cluster mode: addresses are added later through
    /// [`WatchFilter`]).
    pub fn load(spec: &LoadSpec<'_>) -> anyhow::Result<Self> {
        let watch = spec.watch;
        if OBJECT.is_empty() {
            bail!(
                "this binary was built without its eBPF programs (ZDT_SKIP_EBPF=1); rebuild it with `cargo build --release`"
            );
        }
        let filter_enabled: u32 =
            u32::from(spec.filter || !watch.is_empty() || !spec.watch_netns.is_empty());
        let mut ebpf = object(
            filter_enabled,
            spec.wakeup_every,
            &spec.offsets,
            spec.ringbuf_bytes,
        )?;

        fill_watch(&mut ebpf, watch)?;
        {
            let mut netns: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
                ebpf.map_mut(maps::WATCH_NETNS)
                    .ok_or_else(|| anyhow!("map {} missing", maps::WATCH_NETNS))?,
            )?;
            for inum in spec.watch_netns {
                netns
                    .insert(inum, &1, 0)
                    .with_context(|| format!("failed to watch network namespace {inum}"))?;
            }
        }

        let btf = Btf::from_sys_fs().context("failed to read the kernel's BTF")?;
        attach(&mut ebpf, programs::group(Group::Core))?;
        let trigger_hook = load_triggers(
            &mut ebpf,
            &btf,
            spec.trigger_hooks,
            spec.syscall_tracepoints,
        )?;
        if trigger_hook.is_some() {
            attach_swap_bounds(&mut ebpf, &spec.offsets)?;
        }

        for Program {
            name: prog, hook, ..
        } in programs::group(Group::Btf)
        {
            let Hook::BtfTracePoint { function } = hook else {
                bail!("program {prog} is listed with the BTF tracepoints but is not one");
            };
            let program: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {prog} is not a BTF tracepoint program"))?;
            program
                .load(function, &btf)
                .with_context(|| format!("the kernel verifier rejected program {prog}"))?;
            program
                .attach()
                .with_context(|| format!("failed to attach to BTF tracepoint {function}"))?;
        }

        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let maps = KernelMaps {
            lost: PerCpuHashMap::try_from(take(&mut ebpf, maps::LOST)?)?,
            stats: PerCpuArray::try_from(take(&mut ebpf, maps::STATS)?)?,
            handler_errors: PerCpuArray::try_from(take(&mut ebpf, maps::HANDLER_ERRORS)?)?,
        };
        let filter = WatchFilter::new(
            LpmTrie::try_from(take(&mut ebpf, maps::WATCH_V4)?)?,
            LpmTrie::try_from(take(&mut ebpf, maps::WATCH_V6)?)?,
            BpfHashMap::try_from(take(&mut ebpf, maps::WATCH_NETNS)?)?,
            watch,
            spec.watch_netns,
        );
        let dataplane_netns = match trigger_hook {
            Some(hook) => Some(DataplaneNetns::take(&mut ebpf, hook)?),
            None => None,
        };
        Ok(Self {
            attached: Attached {
                ebpf,
                trigger_hook,
                table_replace: trigger_hook == Some(TriggerHook::Function),
                ipvs: false,
            },
            events,
            maps,
            filter,
            dataplane_netns,
        })
    }
}

/// The object with its load-time globals set and its maps created; no program loaded yet.
fn object(
    filter_enabled: u32,
    wakeup_every: u64,
    offsets: &KernelOffsets,
    ringbuf_bytes: u32,
) -> anyhow::Result<Ebpf> {
    EbpfLoader::new()
        .override_global(maps::GLOBAL_FILTER_ENABLED, &filter_enabled, true)
        .override_global(
            maps::GLOBAL_WAKEUP_BYTES,
            &maps::wakeup_bytes(wakeup_every, ringbuf_bytes),
            true,
        )
        .override_global(maps::GLOBAL_OFFSETS, offsets, true)
        .map_max_entries(maps::EVENTS, ringbuf_bytes)
        .load(OBJECT)
        .context("failed to load the eBPF programs into the kernel")
}

/// Loads the dataplane triggers' programs where `hooks` asks and says where they went; `None`
/// when neither hook is usable (kernel functions refused, and the syscalls' tracepoints not as
/// the programs read them: `tracepoints` false), said as a warning. On kernel functions the
/// x_tables pair is attached now; on the syscalls' tracepoints it waits for
/// [`Attached::attach_table_replace`] (a program there taxes every syscall of the node, so
/// only a namespace with an x_tables table pays it). The IPVS programs wait for
/// [`Attached::attach_ipvs`].
fn load_triggers(
    ebpf: &mut Ebpf,
    btf: &Btf,
    hooks: TriggerHooks,
    tracepoints: bool,
) -> anyhow::Result<Option<TriggerHook>> {
    if hooks != TriggerHooks::Tracepoint {
        let loaded = load_functions(ebpf, btf, function_programs())
            .and_then(|()| attach_loaded(ebpf, programs::group(Group::TableReplaceFunction)))
            .and_then(|()| functions_run(ebpf));
        match loaded {
            Ok(()) => return Ok(Some(TriggerHook::Function)),
            Err(e) if hooks == TriggerHooks::Fentry => {
                return Err(e.context(
                    "the dataplane triggers cannot hook __sys_setsockopt, __sys_sendto and \
                     __sys_sendmsg on this kernel (--trigger-hooks fentry); \
                     --trigger-hooks tracepoint puts them on the syscalls' tracepoints",
                ));
            }
            Err(e) => {
                // None may stay: a lone entry would keep calls no return reports, and the
                // tracepoints below would report each call a second time.
                for Program { name, .. } in function_programs() {
                    if let Some(program) = ebpf.program_mut(name) {
                        let _ = unload(program);
                    }
                }
                if !tracepoints {
                    tracing::warn!(
                        "iptables-legacy and IPVS changes will not be watched: this kernel \
                         refuses the kernel function hooks ({e:#}) and its syscalls' \
                         tracepoints are not as the programs read them"
                    );
                    return Ok(None);
                }
                tracing::warn!(
                    "iptables-legacy and IPVS changes are watched on the syscalls' \
                     tracepoints, which make every syscall on this node take the kernel's \
                     traced slow path once attached (where an iptables-legacy nat table or \
                     IPVS is in use): {e:#}"
                );
            }
        }
    }
    if !tracepoints {
        tracing::warn!(
            "iptables-legacy and IPVS changes will not be watched: the syscalls' tracepoints \
             are not as the programs read them (--trigger-hooks tracepoint)"
        );
        return Ok(None);
    }
    load(
        ebpf,
        programs::group(Group::TableReplace).chain(programs::group(Group::Ipvs)),
    )?;
    Ok(Some(TriggerHook::SyscallTracepoints))
}

/// The dataplane triggers' fentry/fexit programs, x_tables' then IPVS's.
fn function_programs() -> impl Iterator<Item = &'static Program> + Clone {
    programs::group(Group::TableReplaceFunction).chain(programs::group(Group::IpvsFunction))
}

/// Whether the function programs run when their syscalls are made: a kernel may have inlined
/// a function into its syscall, and a trampoline on the out-of-line copy loads and attaches but
/// never runs, so every replace and IPVS change would go unreported. One `setsockopt`,
/// `send` and `sendmsg` of this thread (on its own sockets, changing nothing), with the
/// programs' run counts read before and after (statistics on for the test only); the IPVS
/// programs are attached for it and detached after (they wait for an IPVS family). Turning the
/// statistics on needs CAP_SYS_ADMIN, which the DaemonSet does not grant (docs/security.md):
/// without it the hooks are kept as attached, untested, said once.
fn functions_run(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(stats) => stats,
        Err(e) => {
            tracing::info!(
                "the dataplane triggers are on __sys_setsockopt, __sys_sendto and \
                 __sys_sendmsg, not tested to run on their syscalls (program statistics: \
                 {e}; they need CAP_SYS_ADMIN)"
            );
            return Ok(());
        }
    };
    let mut links = Vec::new();
    for_each(
        ebpf,
        programs::group(Group::IpvsFunction),
        |prog, _, program| {
            links.push(match program {
                aya::programs::Program::FEntry(p) => IpvsLink::Entry(p.attach()?),
                aya::programs::Program::FExit(p) => IpvsLink::Exit(p.attach()?),
                _ => bail!("program {prog} is listed as fentry/fexit but is not one"),
            });
            Ok(())
        },
    )?;
    let silent = silent_during(ebpf, function_programs(), syscalls_of_the_triggers);
    drop(stats);
    let mut detached = Ok(());
    for (link, Program { name, .. }) in links.into_iter().zip(programs::group(Group::IpvsFunction))
    {
        let result = match (link, ebpf.program_mut(name)) {
            (IpvsLink::Entry(id), Some(aya::programs::Program::FEntry(p))) => p.detach(id),
            (IpvsLink::Exit(id), Some(aya::programs::Program::FExit(p))) => p.detach(id),
            _ => Ok(()),
        };
        detached = detached.and(result);
    }
    detached.context("failed to detach the IPVS trigger after its test")?;
    let silent = silent?;
    if !silent.is_empty() {
        bail!(
            "{} attached but did not run on their syscalls (this kernel's build calls no \
             out-of-line copy of those functions)",
            silent.join(", ")
        );
    }
    Ok(())
}

/// A link of the IPVS trigger's function programs.
enum IpvsLink {
    Entry(aya::programs::fentry::FEntryLinkId),
    Exit(aya::programs::fexit::FExitLinkId),
}

/// One call of each syscall the dataplane triggers hook, on sockets of this thread.
fn syscalls_of_the_triggers() {
    use std::os::fd::AsRawFd as _;
    let Ok((a, _b)) = std::os::unix::net::UnixDatagram::pair() else {
        return;
    };
    let fd = a.as_raw_fd();
    let one: libc::c_int = 1;
    let byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_ptr().cast_mut().cast(),
        iov_len: 1,
    };
    // SAFETY: plain calls on a socket this function owns, with buffers valid for their lengths
    // (`msg` points at `iov`, which points at `byte`, all alive for the calls).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
        libc::send(fd, byte.as_ptr().cast(), 1, libc::MSG_DONTWAIT);
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        libc::sendmsg(fd, &raw const msg, libc::MSG_DONTWAIT);
    }
}

/// The names of these loaded programs that did not run during `calls`, by the kernel's run
/// counts, which it keeps only while statistics are on (`BPF_ENABLE_STATS`, Linux 5.8: the
/// caller holds them on).
fn silent_during(
    ebpf: &Ebpf,
    programs: impl Iterator<Item = &'static Program> + Clone,
    calls: impl FnOnce(),
) -> anyhow::Result<Vec<&'static str>> {
    let counts = || -> anyhow::Result<Vec<u64>> {
        programs
            .clone()
            .map(|p| {
                let program = ebpf
                    .program(p.name)
                    .ok_or_else(|| anyhow!("program {} missing from the eBPF object", p.name))?;
                Ok(program
                    .info()
                    .with_context(|| format!("no kernel information on program {}", p.name))?
                    .run_count())
            })
            .collect()
    };
    let before = counts()?;
    calls();
    let after = counts()?;
    Ok(programs
        .zip(before.into_iter().zip(after))
        .filter(|(_, (b, a))| a == b)
        .map(|(p, _)| p.name)
        .collect())
}

/// The IPVS trigger's programs for the triggers' `hook`.
fn ipvs_group(hook: TriggerHook) -> Group {
    match hook {
        TriggerHook::Function => Group::IpvsFunction,
        TriggerHook::SyscallTracepoints => Group::Ipvs,
    }
}

/// Unloads an fentry or fexit program (detaching it).
fn unload(program: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    match program {
        aya::programs::Program::FEntry(p) => p.unload(),
        aya::programs::Program::FExit(p) => p.unload(),
        _ => Ok(()),
    }
}

/// Loads these fentry/fexit programs against the kernel's BTF (the verifier checks them now)
/// without attaching them.
fn load_functions(
    ebpf: &mut Ebpf,
    btf: &Btf,
    programs: impl Iterator<Item = &'static Program>,
) -> anyhow::Result<()> {
    for_each(ebpf, programs, |prog, hook, program| {
        let loaded = match (hook, program) {
            (Hook::FEntry { function }, aya::programs::Program::FEntry(p)) => p.load(function, btf),
            (Hook::FExit { function }, aya::programs::Program::FExit(p)) => p.load(function, btf),
            _ => bail!("program {prog} is listed as fentry/fexit but is not one"),
        };
        loaded.with_context(|| format!("the kernel refused program {prog}"))
    })
}

/// `f` on each of these programs of the object (its name, hook and program).
fn for_each(
    ebpf: &mut Ebpf,
    programs: impl Iterator<Item = &'static Program>,
    mut f: impl FnMut(&str, Hook, &mut aya::programs::Program) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for Program { name, hook, .. } in programs {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
        f(name, *hook, program)?;
    }
    Ok(())
}

/// Loads and attaches these tracepoint programs.
fn attach(
    ebpf: &mut Ebpf,
    programs: impl Iterator<Item = &'static Program> + Clone,
) -> anyhow::Result<()> {
    load(ebpf, programs.clone())?;
    attach_loaded(ebpf, programs)
}

/// Loads these tracepoint programs (the verifier checks them now) without attaching them.
fn load(ebpf: &mut Ebpf, programs: impl Iterator<Item = &'static Program>) -> anyhow::Result<()> {
    for Program { name: prog, .. } in programs {
        tracepoint(ebpf, prog)?
            .load()
            .with_context(|| format!("the kernel verifier rejected program {prog}"))?;
    }
    Ok(())
}

/// Attaches these loaded tracepoint, fentry and fexit programs.
fn attach_loaded(
    ebpf: &mut Ebpf,
    programs: impl Iterator<Item = &'static Program>,
) -> anyhow::Result<()> {
    for_each(ebpf, programs, |prog, hook, program| {
        match (hook, program) {
            (Hook::TracePoint { category, name }, aya::programs::Program::TracePoint(p)) => p
                .attach(category, name)
                .map(drop)
                .with_context(|| format!("failed to attach to tracepoint {category}:{name}")),
            (Hook::FEntry { function }, aya::programs::Program::FEntry(p)) => p
                .attach()
                .map(drop)
                .with_context(|| format!("failed to attach to the entry of {function}")),
            (Hook::FExit { function }, aya::programs::Program::FExit(p)) => p
                .attach()
                .map(drop)
                .with_context(|| format!("failed to attach to the return of {function}")),
            _ => bail!("program {prog} is not of its hook's kind"),
        }
    })
}

fn tracepoint<'e>(ebpf: &'e mut Ebpf, prog: &str) -> anyhow::Result<&'e mut TracePoint> {
    ebpf.program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {prog} is not a tracepoint program"))
}

/// Attaches the swap-bound programs; a kernel without them (or that refuses them) keeps the
/// syscall's [entry, exit] as the bounds, said once. The module-reference programs are loaded
/// (verified) on every kernel and attached only where preflight found their records' `name`
/// (`offsets.module_name_loc`).
fn attach_swap_bounds(ebpf: &mut Ebpf, offsets: &KernelOffsets) -> anyhow::Result<()> {
    if let Err(e) = attach(ebpf, programs::group(Group::SwapBound)) {
        tracing::warn!(
            "iptables-legacy changes will be timed to the whole replace syscall, not to the \
             table swap inside it: {e:#}"
        );
    }
    load(ebpf, programs::group(Group::ModuleRef))?;
    if offsets.module_name_loc == 0 {
        tracing::debug!(
            "no module events (tables built into the kernel): iptables-legacy swaps are bounded by the rule counters"
        );
    } else if let Err(e) = attach_loaded(ebpf, programs::group(Group::ModuleRef)) {
        tracing::warn!(
            "iptables-legacy swaps will be bounded by the rule counters, not by the table \
             module's reference: {e:#}"
        );
    }
    Ok(())
}

/// Only the dataplane triggers' programs (x_tables replaces, IPVS change requests) and the
/// ring buffer they write to: for a kernel the whole agent refuses at preflight, such as the
/// 6.1 kernel of `cargo xtask ipvs-vm` (its `tcp:tcp_send_reset` has no reset reason). The
/// other programs are not loaded, so nothing but these triggers reaches the ring buffer.
pub struct DataplaneTriggers {
    /// Keeps the programs attached.
    pub attached: Attached,
    pub events: RingBuf<MapData>,
    pub dataplane_netns: DataplaneNetns,
    /// Events submitted and lost (`maps::STAT_*`).
    stats: PerCpuArray<MapData, u64>,
}

impl DataplaneTriggers {
    /// Sum over CPUs of a `maps::STATS` slot (events submitted, lost to a full ring buffer).
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    pub fn load(offsets: &KernelOffsets, trigger: TriggerHooks) -> anyhow::Result<Self> {
        // Every event woken at once: only rare triggers are produced.
        let mut ebpf = object(1, 1, offsets, maps::EVENTS_BYTES)?;
        let btf = Btf::from_sys_fs().context("failed to read the kernel's BTF")?;
        let hook = load_triggers(&mut ebpf, &btf, trigger, true)?
            .context("the dataplane triggers have no hook on this kernel")?;
        if hook == TriggerHook::SyscallTracepoints {
            attach_loaded(&mut ebpf, programs::group(Group::TableReplace))?;
        }
        attach_loaded(&mut ebpf, programs::group(ipvs_group(hook)))?;
        attach_swap_bounds(&mut ebpf, offsets)?;
        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let dataplane_netns = DataplaneNetns::take(&mut ebpf, hook)?;
        let stats = PerCpuArray::try_from(take(&mut ebpf, maps::STATS)?)?;
        Ok(Self {
            attached: Attached {
                ebpf,
                trigger_hook: Some(hook),
                table_replace: true,
                ipvs: true,
            },
            events,
            dataplane_netns,
            stats,
        })
    }
}

impl Attached {
    /// Names of the attached programs with their kernel program ids.
    pub fn programs(&self) -> Vec<(String, u32)> {
        self.ebpf
            .programs()
            .filter(|(name, _)| {
                let of = |groups: &[Group]| {
                    groups
                        .iter()
                        .flat_map(|g| programs::group(*g))
                        .any(|p| p.name == *name)
                };
                (self.ipvs || !of(&[Group::Ipvs, Group::IpvsFunction]))
                    && (self.table_replace || !of(&[Group::TableReplace]))
            })
            .filter_map(|(name, p)| p.info().ok().map(|i| (name.to_owned(), i.id())))
            .collect()
    }

    /// Names of the programs of this object loaded into the kernel (verified).
    pub fn loaded(&self) -> Vec<String> {
        self.ebpf
            .programs()
            .filter(|(_, p)| p.info().is_ok())
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// Names of the programs the kernel has a link for (attached), asked of the kernel.
    pub fn linked(&self) -> Vec<String> {
        let linked: std::collections::HashSet<u32> = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .map(|l| l.program_id())
            .collect();
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let id = p.info().ok()?.id();
                linked.contains(&id).then(|| name.to_owned())
            })
            .collect()
    }

    /// The x_tables trigger's two programs (on whichever hook) that did not run during `calls`,
    /// by the kernel's run counts: how the agent tests at start that the function hooks run.
    pub fn setsockopt_programs_silent_during(
        &self,
        calls: impl FnOnce(),
    ) -> anyhow::Result<Vec<&'static str>> {
        let group = match self.trigger_hook {
            Some(TriggerHook::Function) => Group::TableReplaceFunction,
            Some(TriggerHook::SyscallTracepoints) => Group::TableReplace,
            None => bail!("the dataplane triggers are not loaded"),
        };
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("failed to turn on the kernel's program statistics (BPF_ENABLE_STATS)")?;
        silent_during(&self.ebpf, programs::group(group), calls)
    }

    /// Where the dataplane triggers are hooked; `None` when they are not loaded.
    pub fn trigger_hook(&self) -> Option<TriggerHook> {
        self.trigger_hook
    }

    /// Attaches the x_tables trigger's pair where it waits (on the syscalls' tracepoints);
    /// true when it was attached by this call.
    pub fn attach_table_replace(&mut self) -> anyhow::Result<bool> {
        if self.table_replace || self.trigger_hook.is_none() {
            return Ok(false);
        }
        attach_loaded(&mut self.ebpf, programs::group(Group::TableReplace))?;
        self.table_replace = true;
        Ok(true)
    }

    /// Attaches the IPVS trigger's programs (once; they were loaded with the others).
    pub fn attach_ipvs(&mut self) -> anyhow::Result<()> {
        if !self.ipvs
            && let Some(hook) = self.trigger_hook
        {
            attach_loaded(&mut self.ebpf, programs::group(ipvs_group(hook)))?;
            self.ipvs = true;
        }
        Ok(())
    }

    /// Per program, how many times the kernel skipped it (`recursion_misses`): a tracepoint
    /// program is not run when its tracepoint fires while another tracing program runs on the
    /// same CPU (a softirq that interrupted one, say), so those events were never seen. A kernel
    /// older than 5.12 has no such count: nothing is listed.
    pub fn kernel_skips(&self) -> Vec<(String, u64)> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let fd = p.fd().ok()?;
                recursion_misses(fd.as_fd().as_raw_fd()).map(|n| (name.to_owned(), n))
            })
            .collect()
    }
}

/// `bpf_prog_info.recursion_misses` of the program behind `fd` (`BPF_OBJ_GET_INFO_BY_FD`, which
/// aya does not expose this field of); `None` when the kernel's info is too short to hold it.
fn recursion_misses(fd: std::os::fd::RawFd) -> Option<u64> {
    /// `offsetof(struct bpf_prog_info, recursion_misses)` (include/uapi/linux/bpf.h, a stable ABI).
    const OFFSET: usize = 208;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u8; 256];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd).ok()?,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD writes at most `info_len` bytes to `info`, which outlives
    // the call, and updates `attr.info_len`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc != 0 || (attr.info_len as usize) < OFFSET + 8 {
        return None;
    }
    Some(u64::from_ne_bytes(
        info[OFFSET..OFFSET + 8].try_into().ok()?,
    ))
}

impl KernelMaps {
    /// Per program, the events its handler failed on since it was loaded (sum over CPUs).
    pub fn handler_errors(&self) -> Vec<(String, u64)> {
        handler_error_totals(&self.handler_errors)
    }

    /// Sum over CPUs of a `STATS` slot.
    pub fn stat(&self, index: u32) -> u64 {
        self.stats
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Totals over CPUs of a per-CPU counter map.
    pub fn totals(
        map: &PerCpuHashMap<MapData, CounterKey, u64>,
    ) -> std::collections::HashMap<CounterKey, u64> {
        map.iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, v.iter().sum()))
            .collect()
    }
}

fn take(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
}

fn fill_watch(ebpf: &mut Ebpf, watch: &[IpNet]) -> anyhow::Result<()> {
    {
        let mut v4: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(
            ebpf.map_mut(maps::WATCH_V4)
                .ok_or_else(|| anyhow!("map {} missing", maps::WATCH_V4))?,
        )?;
        for net in watch.iter().filter_map(|n| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }) {
            let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
            v4.insert(&key, &1, 0)
                .with_context(|| format!("failed to watch {net}"))?;
        }
    }
    let mut v6: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.map_mut(maps::WATCH_V6)
            .ok_or_else(|| anyhow!("map {} missing", maps::WATCH_V6))?,
    )?;
    for net in watch.iter().filter_map(|n| match n {
        IpNet::V6(n) => Some(n),
        IpNet::V4(_) => None,
    }) {
        let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
        v6.insert(&key, &1, 0)
            .with_context(|| format!("failed to watch {net}"))?;
    }
    Ok(())
}

/// The 16-byte wire form of an address (IPv4 in the first 4 bytes).
pub fn wire_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The `maps::HANDLER_ERRORS` counts, per program name (sum over CPUs); a slot that cannot be
/// read counts 0.
pub fn handler_error_totals(map: &PerCpuArray<MapData, u64>) -> Vec<(String, u64)> {
    maps::FALLIBLE_PROGRAMS
        .iter()
        .zip(0u32..)
        .map(|(program, slot)| {
            let total = map.get(&slot, 0).map(|v| v.iter().sum()).unwrap_or(0);
            ((*program).to_owned(), total)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use aya_obj::ProgramSection;
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    use super::*;

    /// Fails naming what only one side has.
    fn assert_same(what: &str, in_object: &BTreeSet<String>, in_table: &BTreeSet<String>) {
        let only_object: Vec<_> = in_object.difference(in_table).collect();
        let only_table: Vec<_> = in_table.difference(in_object).collect();
        assert!(
            only_object.is_empty() && only_table.is_empty(),
            "the built eBPF object and zdt-common disagree on its {what}: only in the object \
             {only_object:?}, only in zdt-common {only_table:?}"
        );
    }

    /// The eBPF attribute macros need literals, so the names and hooks are written again in
    /// `zdt-ebpf`: the object built from it must have exactly the programs of
    /// `zdt_common::programs::PROGRAMS` (name, kind, section), the maps of `maps::ALL` and
    /// the globals of `maps::GLOBALS`. Parsed as aya parses it, without loading anything.
    #[test]
    fn the_built_object_has_exactly_the_programs_and_maps_of_zdt_common() {
        assert!(
            !OBJECT.is_empty(),
            "built with ZDT_SKIP_EBPF=1: this test reads the eBPF object; build without it"
        );
        let obj = aya_obj::Object::parse(OBJECT).expect("aya cannot parse the eBPF object");
        let elf = object::File::parse(OBJECT).expect("the eBPF object is not ELF");

        let programs: BTreeSet<String> = obj
            .programs
            .iter()
            .map(|(name, p)| {
                let section = elf
                    .section_by_index(object::SectionIndex(p.section_index))
                    .ok()
                    .and_then(|s| s.name().ok())
                    .unwrap_or("?");
                let kind = match p.section {
                    ProgramSection::TracePoint => "tracepoint".to_owned(),
                    ProgramSection::BtfTracePoint => "BTF tracepoint".to_owned(),
                    ProgramSection::FEntry { .. } => "fentry".to_owned(),
                    ProgramSection::FExit { .. } => "fexit".to_owned(),
                    ref other => format!("{other:?}"),
                };
                format!("{name}: {kind} in section {section}")
            })
            .collect();
        let table: BTreeSet<String> = programs::PROGRAMS
            .iter()
            .map(|p| match p.hook {
                Hook::TracePoint { category, name } => format!(
                    "{}: tracepoint in section tracepoint/{category}/{name}",
                    p.name
                ),
                Hook::BtfTracePoint { function } => {
                    format!("{}: BTF tracepoint in section tp_btf/{function}", p.name)
                }
                Hook::FEntry { function } => {
                    format!("{}: fentry in section fentry/{function}", p.name)
                }
                Hook::FExit { function } => {
                    format!("{}: fexit in section fexit/{function}", p.name)
                }
            })
            .collect();
        assert_same("programs", &programs, &table);

        // Besides the maps, aya makes one for each data section (`.rodata`, `.bss`, ...).
        let object_maps: BTreeSet<String> = obj
            .maps
            .keys()
            .filter(|name| !name.starts_with('.'))
            .cloned()
            .collect();
        let table_maps = maps::ALL.iter().map(|m| (*m).to_owned()).collect();
        assert_same("maps", &object_maps, &table_maps);

        let symbols: BTreeSet<String> = elf
            .symbols()
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect();
        let missing: Vec<_> = maps::GLOBALS
            .iter()
            .filter(|g| !symbols.contains(**g))
            .collect();
        assert!(
            missing.is_empty(),
            "globals in zdt_common::maps::GLOBALS missing from the built eBPF object: {missing:?}"
        );
    }
}
