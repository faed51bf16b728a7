//! Owns the `aya::Ebpf` object: loads the embedded programs, fills the watch tries, attaches
//! the tracepoints and hands out typed map handles. Nothing else in the crate touches aya's
//! loader API.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, MapData, PerCpuArray, PerCpuHashMap, RingBuf, lpm_trie::Key},
    programs::TracePoint,
};
use ipnet::IpNet;
use zdt_common::{CounterKey, maps};

use super::filter::WatchFilter;

/// The eBPF object built by build.rs from the `zdt-ebpf` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/zdt"));

/// Every program in the object: (function name, tracepoint category, tracepoint name).
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[("tcp_send_reset", "tcp", "tcp_send_reset")];

/// The loaded, attached probes and the maps userspace reads.
pub struct Probes {
    /// Keeps programs and links alive; dropping it detaches everything.
    pub attached: Attached,
    pub events: RingBuf<MapData>,
    pub maps: KernelMaps,
    /// The watch tries, for run-time updates (cluster mode).
    pub filter: WatchFilter,
}

/// The programs, attached for as long as this lives.
pub struct Attached(Ebpf);

/// The counter maps userspace reads.
pub struct KernelMaps {
    /// Exact per-(address, port, kind, reason) counts of every event.
    pub counters: PerCpuHashMap<MapData, CounterKey, u64>,
    /// The same, for the events the ring buffer had no room for.
    pub lost: PerCpuHashMap<MapData, CounterKey, u64>,
    pub stats: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Loads and attaches every program; `filter` turns on kernel-side filtering (only the
    /// addresses in `watch`, and those added later through [`WatchFilter`], are reported).
    pub fn load(watch: &[IpNet], filter: bool, wakeup_every: u64) -> anyhow::Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this binary was built without its eBPF programs (ZDT_SKIP_EBPF=1); rebuild it with `cargo build --release`"
            );
        }
        let filter_enabled: u32 = u32::from(filter);
        let mut ebpf = EbpfLoader::new()
            .override_global(maps::GLOBAL_FILTER_ENABLED, &filter_enabled, true)
            .override_global(maps::GLOBAL_WAKEUP_EVERY, &wakeup_every, true)
            .load(OBJECT)
            .context("failed to load the eBPF programs into the kernel")?;

        fill_watch(&mut ebpf, watch)?;

        for (prog, category, name) in TRACEPOINTS {
            let program: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("program {prog} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {prog} is not a tracepoint program"))?;
            program
                .load()
                .with_context(|| format!("the kernel verifier rejected program {prog}"))?;
            program
                .attach(category, name)
                .with_context(|| format!("failed to attach to tracepoint {category}:{name}"))?;
        }

        let events = RingBuf::try_from(take(&mut ebpf, maps::EVENTS)?)?;
        let maps = KernelMaps {
            counters: PerCpuHashMap::try_from(take(&mut ebpf, maps::COUNTERS)?)?,
            lost: PerCpuHashMap::try_from(take(&mut ebpf, maps::LOST)?)?,
            stats: PerCpuArray::try_from(take(&mut ebpf, maps::STATS)?)?,
        };
        let filter = WatchFilter::new(
            LpmTrie::try_from(take(&mut ebpf, maps::WATCH_V4)?)?,
            LpmTrie::try_from(take(&mut ebpf, maps::WATCH_V6)?)?,
            watch,
        );
        Ok(Self {
            attached: Attached(ebpf),
            events,
            maps,
            filter,
        })
    }
}

impl Attached {
    /// Names of the attached programs with their kernel program ids.
    pub fn programs(&self) -> Vec<(String, u32)> {
        self.0
            .programs()
            .filter_map(|(name, p)| p.info().ok().map(|i| (name.to_owned(), i.id())))
            .collect()
    }
}

impl KernelMaps {
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
