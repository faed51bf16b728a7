//! The dataplane watcher's eBPF triggers: x_tables replaces and IPVS change requests the probes
//! see go to the watcher (they are when the dataplane changed, not observations).

use jiff::Timestamp;

use crate::dataplane::{
    legacy::NatTables,
    watcher::{Arm, Armed, Trigger, TriggerHook},
};
use crate::kernel::{
    decode::{self, Decoder},
    loader::{Attached, DataplaneNetns},
};

/// Where triggers are armed (the watcher's network namespace) and where they go.
pub(super) struct DataplaneTriggers {
    /// Where x_tables replaces are reported from (the iptables-legacy trigger), if attached.
    netns: Option<DataplaneNetns>,
    /// The dataplane watcher's triggers: x_tables replaces go there, not into the stream.
    tx: Option<std::sync::mpsc::Sender<Trigger>>,
    /// The x_tables pair on the syscalls' tracepoints waits for a `nat` table in the watcher's
    /// namespace: these lists, looked at each second since the time held.
    waiting: Option<(NatTables, Timestamp)>,
}

impl DataplaneTriggers {
    pub fn new(netns: Option<DataplaneNetns>) -> Self {
        Self {
            netns,
            tx: None,
            waiting: None,
        }
    }

    /// Arms the triggers for the watcher's network namespace (the calling thread's): x_tables
    /// replaces there, and IPVS change requests of `arm.ipvs_family` (where the kernel has
    /// IPVS). Nothing is armed when the kernel has no syscall tracepoints (preflight said so).
    /// On the syscalls' tracepoints, which tax every syscall of the node, the x_tables pair is
    /// attached at once only where IPVS (its `setsockopt` interface) or a `nat` table is
    /// there; else when a `nat` table appears ([`Self::attach_when_tables_appear`]).
    pub fn arm(&mut self, arm: &Arm, attached: Option<&mut Attached>) -> anyhow::Result<Armed> {
        let Some(map) = &mut self.netns else {
            return Ok(Armed::default());
        };
        if let Some(attached) = attached {
            if arm.ipvs_family.is_some() {
                attached.attach_ipvs()?;
            }
            if attached.trigger_hook() == Some(TriggerHook::SyscallTracepoints) {
                match NatTables::open() {
                    Ok(tables) if arm.ipvs_family.is_none() && !tables.exist() => {
                        tracing::info!(
                            "no iptables-legacy nat table here: the x_tables trigger will be \
                             attached to the syscalls' tracepoints when one appears"
                        );
                        self.waiting = Some((tables, Timestamp::now()));
                    }
                    _ => {
                        attached.attach_table_replace()?;
                    }
                }
            }
        }
        map.arm(arm)
    }

    /// Where the x_tables pair waits for a `nat` table: attaches it once one exists, and has
    /// the watcher read the tables again for what was replaced since the last look (changes
    /// there went unreported, as if lost). Called each second.
    pub fn attach_when_tables_appear(&mut self, attached: Option<&mut Attached>) {
        let (Some((tables, since)), Some(attached)) = (&mut self.waiting, attached) else {
            return;
        };
        let now = Timestamp::now();
        if !tables.exist() {
            *since = now;
            return;
        }
        let since = *since;
        self.waiting = None;
        match attached.attach_table_replace() {
            Ok(_) => {
                tracing::info!(
                    "an iptables-legacy nat table appeared: the x_tables trigger is attached"
                );
                if let Some(t) = &self.tx {
                    let _ = t.send(Trigger::Lost { since, now });
                }
            }
            Err(e) => tracing::warn!(
                "an iptables-legacy nat table appeared, but the x_tables trigger could not be \
                 attached: changes there are not reported: {e:#}"
            ),
        }
    }

    /// Sends triggers to the watcher from now on.
    pub fn connect(&mut self, tx: std::sync::mpsc::Sender<Trigger>) {
        self.tx = Some(tx);
    }

    /// Where lost triggers are told (the ring buffer's loss report).
    pub fn sender(&self) -> Option<&std::sync::mpsc::Sender<Trigger>> {
        self.tx.as_ref()
    }

    /// Hands a decoded trigger to the watcher; false when it could not be decoded.
    pub fn send(&self, trigger: Result<Trigger, decode::DecodeError>) -> bool {
        match trigger {
            Ok(trigger) => {
                if let Some(t) = &self.tx {
                    let _ = t.send(trigger);
                }
                true
            }
            Err(e) => {
                tracing::debug!("undecodable dataplane trigger: {e}");
                false
            }
        }
    }
}

/// An x_tables replace or IPVS change request as the dataplane watcher's trigger; `record` is
/// the whole ring-buffer record (an IPVS change carries the request after the event).
pub(super) fn decode(
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
