//! The agent's run loop: drain the ring buffer (on a batched wake-up or a short poll), decode,
//! send; every second, turn per-key losses into aggregated observations so totals stay exact.

use std::{
    collections::HashMap,
    future::Future,
    os::fd::AsFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use jiff::Timestamp;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc::Sender,
};
use zdt_common::{CounterKey, maps};

use super::{
    AgentConfig,
    clock::Clock,
    decode::{self, Decoder},
    filter::WatchFilter,
    loader::{Attached, DataplaneNetns, KernelMaps, LoadSpec, Probes},
    netns_gone::{NetnsGone, NetnsGoneWatcher},
    preflight::{self, KernelInfo},
};
use crate::{
    dataplane::watcher::{Arm, Armed, Trigger},
    observation::{Kind, Observation, SCHEMA_VERSION, Time},
};

/// How long a client error toward a Service waits for the conntrack event naming its backend.
const BACKEND_WAIT: Duration = Duration::from_millis(250);

/// A started agent: probes attached, ready to stream.
pub struct Agent {
    attached: Option<Attached>,
    events: RingBuf<MapData>,
    maps: KernelMaps,
    decoder: Decoder,
    kernel: KernelInfo,
    config: AgentConfig,
    /// Per key, lost events already reported as aggregated observations.
    lost_reported: HashMap<CounterKey, u64>,
    lost_total_reported: u64,
    last_loss_check: Timestamp,
    /// Per program, the kernel's skips (`recursion_misses`) already reported, and the last
    /// count read (kept for the final report, which comes after the programs are detached).
    skips: super::program_loss::ProgramLoss,
    skips_read: Vec<(String, u64)>,
    /// Per program, the events its handler failed on (`HANDLER_ERROR`) already reported.
    handler_errors: super::program_loss::ProgramLoss,
    decode_errors: u64,
    /// Service frontends this node routes (from the dataplane watcher), if it runs.
    frontends: Option<crate::dataplane::watcher::Frontends>,
    /// Where recent DNAT'ed connections went, from conntrack NEW events.
    dnat: Option<crate::dataplane::flows::Dnat>,
    /// Asks conntrack about older (assured) connections the cache no longer holds.
    conntrack: Option<super::conntrack::Conntrack>,
    /// Client errors toward a Service whose backend is not known yet: the conntrack event that
    /// names it and the kernel event race each other, so they wait up to `BACKEND_WAIT`.
    pending: Vec<(Observation, std::time::Instant)>,
    announced: bool,
    filter: Option<WatchFilter>,
    /// Created early when namespaces are registered at run time (cluster mode); then it runs
    /// until shutdown even while nothing is watched.
    netns_gone: Option<NetnsGoneWatcher>,
    /// Where x_tables replaces are reported from (the iptables-legacy trigger), if attached.
    dataplane_netns: Option<DataplaneNetns>,
    /// The dataplane watcher's triggers: x_tables replaces go there, not into the stream.
    triggers: Option<std::sync::mpsc::Sender<Trigger>>,
}

impl Agent {
    /// Runs the start-up checks, loads and attaches the probes.
    pub fn start(config: &AgentConfig) -> anyhow::Result<Self> {
        let mut kernel = preflight::check()?;
        if config.without_newer_tracepoint_fields {
            kernel.offsets.retransmit_err = 0;
            kernel.offsets.exit_group_dead = 0;
        }
        let Probes {
            attached,
            events,
            maps,
            filter,
            dataplane_netns,
        } = Probes::load(&LoadSpec {
            watch: &config.watch,
            watch_netns: &config
                .watch_netns
                .iter()
                .map(|n| n.inum)
                .collect::<Vec<_>>(),
            wakeup_every: config.wakeup_every,
            ringbuf_bytes: config.ringbuf_bytes,
            offsets: kernel.offsets,
            filter: config.filter,
            table_replace: kernel.table_replace,
        })?;
        let decoder = Decoder {
            node: config.node.clone(),
            clock: Clock::measure(),
            rst_reasons: kernel.rst_reasons.clone(),
        };
        Ok(Self {
            attached: Some(attached),
            events,
            maps,
            decoder,
            kernel,
            config: config.clone(),
            lost_reported: HashMap::new(),
            lost_total_reported: 0,
            last_loss_check: Timestamp::now(),
            skips: super::program_loss::ProgramLoss::new(crate::observation::KERNEL_SKIPPED),
            skips_read: Vec::new(),
            handler_errors: super::program_loss::ProgramLoss::new(
                crate::observation::HANDLER_ERROR,
            ),
            decode_errors: 0,
            frontends: None,
            dnat: None,
            conntrack: None,
            pending: Vec::new(),
            announced: false,
            filter: Some(filter),
            netns_gone: None,
            dataplane_netns,
            triggers: None,
        })
    }

    /// Where to register pod network namespaces at run time for `netns_gone` (cluster mode).
    pub fn netns_gone(&mut self) -> anyhow::Result<NetnsGone> {
        if let Some(w) = &self.netns_gone {
            return Ok(w.registry());
        }
        let w = NetnsGoneWatcher::new()?;
        let registry = w.registry();
        self.netns_gone = Some(w);
        Ok(registry)
    }

    /// Arms the dataplane watcher's eBPF triggers for its network namespace: x_tables replaces
    /// there, and IPVS change requests of `arm.ipvs_family` (where the kernel has IPVS), are
    /// reported to the watcher from now on. Nothing is armed when the kernel has no syscall
    /// tracepoints (preflight said so).
    pub fn arm_dataplane(&mut self, arm: &Arm) -> anyhow::Result<Armed> {
        let Some(map) = &mut self.dataplane_netns else {
            return Ok(Armed::default());
        };
        if arm.ipvs_family.is_some()
            && let Some(attached) = &mut self.attached
        {
            attached.attach_ipvs()?;
        }
        map.arm(arm)
    }

    /// Names of this agent's programs loaded into the kernel (verified).
    pub fn loaded_programs(&self) -> Vec<String> {
        self.attached
            .as_ref()
            .map(Attached::loaded)
            .unwrap_or_default()
    }

    /// Names of this agent's programs the kernel has attached (a link for), asked of the kernel.
    pub fn linked_programs(&self) -> Vec<String> {
        self.attached
            .as_ref()
            .map(Attached::linked)
            .unwrap_or_default()
    }

    /// The kernel watch filter, for run-time updates (cluster mode); `None` once taken.
    pub fn take_filter(&mut self) -> Option<WatchFilter> {
        self.filter.take()
    }

    /// Starts what `agent` runs unless `--no-dataplane`: the dataplane watcher and the conntrack
    /// listener of the calling thread's network namespace, armed with this agent's eBPF
    /// triggers (x_tables replaces, IPVS change requests), and tags client errors toward
    /// Services with what they find. Call it after [`Self::announce`]: it reports
    /// `dataplane_mode` into `tx`.
    pub fn start_dataplane(
        &mut self,
        node: &crate::observation::NodeName,
        tx: &Sender<Observation>,
    ) -> anyhow::Result<crate::dataplane::watcher::Watcher> {
        let watcher =
            crate::dataplane::watcher::start(node, tx, Some(&mut |arm| self.arm_dataplane(arm)))
                .context(
                    "failed to start the dataplane watcher (disable it with --no-dataplane)",
                )?;
        self.use_dataplane(&watcher);
        Ok(watcher)
    }

    /// Client errors toward one of these frontends are about a Service: the dialled address goes
    /// to `service` and `ip`/`port` (the backend) stay empty, as the contract defines them.
    /// Conntrack then tells which backend the connection really went to (`ip`/`port`).
    pub fn use_dataplane(&mut self, watcher: &crate::dataplane::watcher::Watcher) {
        self.frontends = Some(watcher.frontends.clone());
        self.dnat = Some(watcher.dnat.clone());
        self.triggers = Some(watcher.triggers.clone());
        match super::conntrack::Conntrack::open() {
            Ok(c) => self.conntrack = Some(c),
            Err(e) => tracing::warn!(
                "client errors toward Services will not name their backend pod: conntrack query socket: {e}"
            ),
        }
    }

    /// Tags a client error toward a Service; false when its backend is not known (yet).
    fn tag_service(&mut self, o: &mut Observation) -> bool {
        if !matches!(o.kind, Kind::ConnError | Kind::SynRetransmit) {
            return true;
        }
        let dialled = match (&o.service, o.ip, o.port) {
            // Already tagged, waiting for its backend.
            (Some(s), None, None) => match s.frontend() {
                Some(d) => d,
                None => return true,
            },
            (None, Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port),
            _ => return true,
        };
        let Some(f) = &self.frontends else {
            return true;
        };
        if !f.read().is_ok_and(|set| set.contains(&dialled)) {
            return true;
        }
        o.service = Some(dialled.into());
        let client = o
            .peer_ip
            .zip(o.peer_port)
            .map(|(i, p)| std::net::SocketAddr::new(i, p));
        let cached = |c| {
            self.dnat
                .as_ref()
                .and_then(|d| d.lock().ok()?.backend_of(c, dialled))
        };
        let backend = client
            .and_then(|c| cached(c).or_else(|| self.conntrack.as_mut()?.backend_of(c, dialled)));
        o.ip = backend.map(|b| b.ip());
        o.port = backend.map(|b| b.port());
        backend.is_some()
    }

    /// The `agent_start` line: schema, kernel, probes, filter and clock.
    pub fn hello(&self) -> Observation {
        let programs: Vec<String> = self
            .attached
            .as_ref()
            .map(|a| a.programs().into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        let mut o = Observation::new(Kind::AgentStart, Timestamp::now(), self.config.node.clone());
        *o.details.agent_mut() = crate::observation::Agent {
            schema: Some(SCHEMA_VERSION.to_owned()),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            kernel: Some(self.kernel.kernel_release.clone()),
            probes: Some(programs),
            watch: Some(self.config.watch.iter().map(ToString::to_string).collect()),
            clock: Some("CLOCK_MONOTONIC+offset".to_owned()),
            offset_change_ns: None,
        };
        o.uncertainty_ns = Some(self.decoder.clock.uncertainty_ns);
        o
    }

    /// Sends the `agent_start` line, which must come first in the stream: call it before
    /// starting anything else that writes to `tx`. False when the receiver is gone.
    pub async fn announce(&mut self, tx: &Sender<Observation>) -> bool {
        if self.announced {
            return true;
        }
        self.announced = true;
        tx.send(self.hello()).await.is_ok()
    }

    /// Streams observations into `tx` until `shutdown` completes (or the receiver is gone), then
    /// detaches the probes, drains what is left and reports any loss.
    pub async fn run(
        mut self,
        tx: Sender<Observation>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        if !self.announce(&tx).await {
            return Ok(());
        }
        let gone_stop = Arc::new(AtomicBool::new(false));
        let gone = self.start_netns_gone(&tx, gone_stop.clone());
        let owned = self
            .events
            .as_fd()
            .try_clone_to_owned()
            .context("failed to duplicate the ring buffer fd")?;
        // SAFETY: `owned` is a valid fd owned by the AsyncFd for its whole life; an OwnedFd
        // always returns the same raw fd.
        let fd =
            unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.map_err(|e| {
                anyhow::anyhow!("failed to register the ring buffer with the runtime: {e}")
            })?;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let open = tokio::select! {
                guard = fd.readable() => {
                    let mut guard = guard.context("ring buffer poll failed")?;
                    guard.clear_ready();
                    self.drain(&tx).await
                }
                _ = poll.tick() => self.drain(&tx).await,
                _ = housekeeping.tick() => self.housekeeping(&tx).await,
                () = &mut shutdown => break,
            };
            if !open {
                return Ok(());
            }
        }
        gone_stop.store(true, Ordering::Relaxed);
        if let Some(t) = gone {
            let _ = t.await;
        }
        // Detach first: after this no event can be counted without also being in the ring
        // buffer or the loss map, so the final drain and loss report are exact. The kernel's
        // skips are read just before (they go with the programs).
        self.read_kernel_skips();
        drop(self.attached.take());
        if self.drain(&tx).await {
            tokio::time::sleep(BACKEND_WAIT).await;
            let open = self.drain(&tx).await;
            for (o, _) in std::mem::take(&mut self.pending) {
                if !open || tx.send(o).await.is_err() {
                    break;
                }
            }
            self.report_loss(&tx).await;
        }
        if self.decode_errors > 0 {
            tracing::warn!("{} kernel events could not be decoded", self.decode_errors);
        }
        Ok(())
    }

    /// Watches the removal of the watched namespaces (`netns_gone`) on a blocking thread. A
    /// namespace with no veth peer in the agent's namespace cannot be observed: say so, go on.
    fn start_netns_gone(
        &mut self,
        tx: &Sender<Observation>,
        stop: Arc<AtomicBool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let keep_running = self.netns_gone.is_some();
        if self.config.watch_netns.is_empty() && !keep_running {
            return None;
        }
        let mut watcher = match self
            .netns_gone
            .take()
            .map_or_else(NetnsGoneWatcher::new, Ok)
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("netns_gone will not be reported: {e:#}");
                return None;
            }
        };
        for ns in &self.config.watch_netns {
            if let Err(e) = watcher.watch(&ns.path, ns.inum) {
                tracing::debug!(
                    "netns_gone will not be reported for {}: {e:#} (run the agent in the node's network namespace)",
                    ns.path.display()
                );
            }
        }
        let (node, tx) = (self.config.node.clone(), tx.clone());
        Some(tokio::task::spawn_blocking(move || {
            if let Err(e) = watcher.run(node, tx, stop, keep_running) {
                tracing::warn!("netns_gone watcher stopped: {e:#}");
            }
        }))
    }

    /// Sends everything in the ring buffer; false when the receiver is gone.
    async fn drain(&mut self, tx: &Sender<Observation>) -> bool {
        loop {
            let mut batch = Vec::new();
            while batch.len() < 1024 {
                let Some(item) = self.events.next() else {
                    break;
                };
                let event = decode::parse(&item);
                if let Ok(ev) = &event
                    && matches!(
                        ev.kind,
                        zdt_common::kind::TABLE_REPLACE
                            | zdt_common::kind::TABLE_REPLACE_BEGIN
                            | zdt_common::kind::IPVS_CHANGE
                    )
                {
                    let trigger = dataplane_trigger(&self.decoder, ev, &item);
                    drop(item);
                    self.dataplane_changed(trigger);
                    continue;
                }
                drop(item);
                match event.and_then(|ev| self.decoder.decode(&ev)) {
                    Ok(o) => batch.push(o),
                    Err(e) => {
                        self.decode_errors += 1;
                        tracing::debug!("undecodable kernel event: {e}");
                    }
                }
            }
            let more = batch.len() == 1024;
            let now = std::time::Instant::now();
            let mut ready = Vec::with_capacity(batch.len());
            // Earlier client errors first: their backend may have arrived since.
            let waiting = std::mem::take(&mut self.pending);
            for (mut o, since) in waiting {
                if self.tag_service(&mut o) || now - since >= BACKEND_WAIT {
                    ready.push(o);
                } else {
                    self.pending.push((o, since));
                }
            }
            for mut o in batch {
                if self.tag_service(&mut o) {
                    ready.push(o);
                } else {
                    self.pending.push((o, now));
                }
            }
            for o in ready {
                if tx.send(o).await.is_err() {
                    return false;
                }
            }
            if !more {
                return true;
            }
        }
    }

    /// Hands an x_tables replace or an IPVS change request to the dataplane watcher (it is a
    /// trigger, not an observation).
    fn dataplane_changed(&mut self, trigger: Result<Trigger, decode::DecodeError>) {
        match trigger {
            Ok(trigger) => {
                if let Some(t) = &self.triggers {
                    let _ = t.send(trigger);
                }
            }
            Err(e) => {
                self.decode_errors += 1;
                tracing::debug!("undecodable dataplane trigger: {e}");
            }
        }
    }

    async fn housekeeping(&mut self, tx: &Sender<Observation>) -> bool {
        let clock = Clock::measure();
        let moved = (clock.offset_ns - self.decoder.clock.offset_ns).unsigned_abs();
        if moved > 1_000_000 {
            let mut o =
                Observation::new(Kind::ClockSync, Timestamp::now(), self.config.node.clone());
            o.details.agent_mut().offset_change_ns = Some(
                i64::try_from(clock.offset_ns - self.decoder.clock.offset_ns).unwrap_or(i64::MAX),
            );
            o.uncertainty_ns = Some(clock.uncertainty_ns);
            if tx.send(o).await.is_err() {
                return false;
            }
        }
        self.decoder.clock = clock;
        self.report_loss(tx).await
    }

    fn read_kernel_skips(&mut self) {
        if let Some(a) = &self.attached {
            self.skips_read = a.kernel_skips();
        }
    }

    /// One `loss` line (`KERNEL_SKIPPED`) per program the kernel did not run for some of its
    /// tracepoint's events since the last check, and one (`HANDLER_ERROR`) per program whose
    /// handler failed on some. Which events those were is unknown, so no aggregated lines
    /// follow: totals of that program's kinds may be short by `count`.
    fn program_loss_lines(&mut self, now: Timestamp) -> Vec<Observation> {
        self.read_kernel_skips();
        let mut out = self.skips.lines(&self.skips_read, now, &self.config.node);
        let failed = self.maps.handler_errors();
        out.extend(self.handler_errors.lines(&failed, now, &self.config.node));
        out
    }

    /// When the ring buffer dropped events since the last check, sends one `loss` line and, per
    /// key, an aggregated line of the lost kind with `count`, so totals per pod stay exact.
    /// Events the kernel skipped and handlers failed on are reported too
    /// ([`Self::program_loss_lines`]).
    async fn report_loss(&mut self, tx: &Sender<Observation>) -> bool {
        let now = Timestamp::now();
        for o in self.program_loss_lines(now) {
            if tx.send(o).await.is_err() {
                return false;
            }
        }
        let lost_total = self.maps.stat(maps::STAT_RINGBUF_LOST);
        let counters_full = self.maps.stat(maps::STAT_COUNTERS_FULL);
        if counters_full > 0 {
            tracing::warn!(
                "{counters_full} lost events could not be counted per pod: the lost-counter map is full"
            );
        }
        if lost_total == self.lost_total_reported {
            return true;
        }
        let window_start = self.last_loss_check;
        self.last_loss_check = now;
        let mut out = Vec::new();
        let mut loss = Observation::new(Kind::Loss, now, self.config.node.clone());
        loss.count = Some(lost_total - self.lost_total_reported);
        loss.reason = Some("RINGBUF_FULL".to_owned());
        loss.details.loss_mut().since = Some(Time(window_start));
        out.push(loss);
        self.lost_total_reported = lost_total;
        for (key, total) in KernelMaps::totals(&self.maps.lost) {
            let reported = self.lost_reported.entry(key).or_insert(0);
            if total <= *reported {
                continue;
            }
            let delta = total - *reported;
            *reported = total;
            if matches!(
                key.kind,
                zdt_common::kind::TABLE_REPLACE | zdt_common::kind::IPVS_CHANGE
            ) {
                // A lost trigger: the watcher reads the legacy tables and IPVS again, stamping
                // what changed with the window the loss happened in.
                if let Some(t) = &self.triggers {
                    let _ = t.send(Trigger::Lost {
                        since: window_start,
                        now,
                    });
                }
                continue;
            }
            let Ok((kind, reason)) = self.decoder.classify(key.kind, key.reason) else {
                continue;
            };
            let mut o = Observation::new(kind, now, self.config.node.clone());
            o.ip = decode::ip_of(key.family, &key.addr).ok();
            o.port = Some(key.port);
            o.reason = reason;
            o.count = Some(delta);
            o.details.kernel_mut().lost_since = Some(Time(window_start));
            out.push(o);
        }
        for o in out {
            if tx.send(o).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// An x_tables replace or IPVS change request as the dataplane watcher's trigger; `record` is
/// the whole ring-buffer record (an IPVS change carries the request after the event).
fn dataplane_trigger(
    decoder: &Decoder,
    ev: &zdt_common::Event,
    record: &[u8],
) -> Result<Trigger, decode::DecodeError> {
    match ev.kind {
        zdt_common::kind::TABLE_REPLACE_BEGIN => {
            decoder.replace_begin(ev).map(Trigger::ReplaceBegin)
        }
        zdt_common::kind::IPVS_CHANGE => decoder.ipvs_change(ev, record).map(Trigger::IpvsChange),
        _ => decoder.table_replace(ev).map(Trigger::TableReplace),
    }
}
