//! The agent's run loop: drain the ring buffer (on a batched wake-up or a short poll), decode,
//! send; every second, turn per-key losses into aggregated observations so totals stay exact.
//! The parts: [`loss`] (what the kernel side could not deliver), [`service_tag`] (client errors
//! toward Services, named by conntrack), [`triggers`] (the dataplane watcher's eBPF triggers).

mod loss;
mod service_tag;
mod triggers;

use std::{
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

use self::{
    loss::LossReport,
    service_tag::{BACKEND_WAIT, ServiceTagger},
    triggers::DataplaneTriggers,
};
use super::{
    AgentConfig,
    netns_gone::{NetnsGone, NetnsGoneWatcher},
};
use crate::{
    dataplane::watcher::{Arm, Armed},
    kernel::{
        clock::Clock,
        decode::{self, Decoder},
        filter::WatchFilter,
        loader::{Attached, KernelMaps, LoadSpec, Probes},
        preflight::{self, KernelInfo},
    },
    observation::{Kind, Observation, SCHEMA_VERSION},
};

/// A started agent: probes attached, ready to stream.
pub struct Agent {
    attached: Option<Attached>,
    events: RingBuf<MapData>,
    maps: KernelMaps,
    decoder: Decoder,
    kernel: KernelInfo,
    config: AgentConfig,
    loss: LossReport,
    decode_errors: u64,
    services: ServiceTagger,
    announced: bool,
    filter: Option<WatchFilter>,
    /// Created early when namespaces are registered at run time (cluster mode); then it runs
    /// until shutdown even while nothing is watched.
    netns_gone: Option<NetnsGoneWatcher>,
    triggers: DataplaneTriggers,
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
            syscall_tracepoints: kernel.syscall_tracepoints,
            trigger_hooks: config.trigger_hooks,
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
            loss: LossReport::new(),
            decode_errors: 0,
            services: ServiceTagger::default(),
            announced: false,
            filter: Some(filter),
            netns_gone: None,
            triggers: DataplaneTriggers::new(dataplane_netns),
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

    /// Arms the dataplane watcher's eBPF triggers for its network namespace (the calling
    /// thread's): x_tables replaces there, and IPVS change requests of `arm.ipvs_family` (where
    /// the kernel has IPVS), are reported to the watcher from now on. Nothing is armed when the
    /// kernel has no syscall tracepoints (preflight said so). On the syscalls' tracepoints the
    /// x_tables pair waits for an iptables-legacy `nat` table unless IPVS is armed
    /// ([`Self::attach_when_tables_appear`]).
    pub fn arm_dataplane(&mut self, arm: &Arm) -> anyhow::Result<Armed> {
        self.triggers.arm(arm, self.attached.as_mut())
    }

    /// Where the x_tables trigger waits for an iptables-legacy `nat` table (on the syscalls'
    /// tracepoints, see [`Self::arm_dataplane`]): attaches it once one exists and has the
    /// watcher read the tables again. The run loop calls it each second.
    pub fn attach_when_tables_appear(&mut self) {
        self.triggers
            .attach_when_tables_appear(self.attached.as_mut());
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
        const CONTEXT: &str =
            "failed to start the dataplane watcher (disable it with --no-dataplane)";
        let opened = crate::dataplane::watcher::open().context(CONTEXT)?;
        let armed = self.arm_dataplane(&opened.arm)?;
        let watcher = opened.start(node, tx, armed).context(CONTEXT)?;
        self.use_dataplane(&watcher);
        Ok(watcher)
    }

    /// Client errors toward one of these frontends are about a Service: the dialled address goes
    /// to `service` and `ip`/`port` (the backend) stay empty, as the contract defines them.
    /// Conntrack then tells which backend the connection really went to (`ip`/`port`).
    pub fn use_dataplane(&mut self, watcher: &crate::dataplane::watcher::Watcher) {
        self.triggers.connect(watcher.triggers.clone());
        self.services.use_dataplane(watcher);
    }

    /// The `agent_start` line: schema, kernel, probes, filter and clock.
    pub fn hello(&self) -> Observation {
        let programs: Vec<String> = self
            .attached
            .as_ref()
            .map(|a| a.programs().into_iter().map(|(n, _)| n).collect())
            .unwrap_or_default();
        let mut o = Observation::new(Kind::AgentStart, Timestamp::now(), self.config.node.clone());
        *o.details.agent_mut() = crate::observation::AgentFields {
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
        self.loss.read_kernel_skips(self.attached.as_ref());
        drop(self.attached.take());
        if self.drain(&tx).await {
            tokio::time::sleep(BACKEND_WAIT).await;
            let open = self.drain(&tx).await;
            for o in self.services.take_pending() {
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
                    let trigger = triggers::decode(&self.decoder, ev, &item);
                    drop(item);
                    if !self.triggers.send(trigger) {
                        self.decode_errors += 1;
                    }
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
            for o in self.services.ready(batch, std::time::Instant::now()) {
                if tx.send(o).await.is_err() {
                    return false;
                }
            }
            if !more {
                return true;
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
        self.attach_when_tables_appear();
        self.report_loss(tx).await
    }

    /// Sends the `loss` lines of the events the kernel skipped and handlers failed on, then of
    /// the ring buffer's drops since the last check ([`LossReport`]).
    async fn report_loss(&mut self, tx: &Sender<Observation>) -> bool {
        let now = Timestamp::now();
        let node = &self.config.node;
        for o in self
            .loss
            .program_lines(self.attached.as_ref(), &self.maps, node, now)
        {
            if tx.send(o).await.is_err() {
                return false;
            }
        }
        let lines = self.loss.ring_buffer_lines(
            &self.maps,
            &self.decoder,
            self.triggers.sender(),
            &self.config.node,
            now,
        );
        for o in lines {
            if tx.send(o).await.is_err() {
                return false;
            }
        }
        true
    }
}
