//! The dataplane watcher's eBPF triggers: x_tables replaces and IPVS change requests the probes
//! see go to the watcher (they are when the dataplane changed, not observations).

use crate::dataplane::watcher::{Arm, Armed, Trigger};
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
}

impl DataplaneTriggers {
    pub fn new(netns: Option<DataplaneNetns>) -> Self {
        Self { netns, tx: None }
    }

    /// Arms the triggers for the watcher's network namespace: x_tables replaces there, and
    /// IPVS change requests of `arm.ipvs_family` (where the kernel has IPVS). Nothing is armed
    /// when the kernel has no syscall tracepoints (preflight said so).
    pub fn arm(&mut self, arm: &Arm, attached: Option<&mut Attached>) -> anyhow::Result<Armed> {
        let Some(map) = &mut self.netns else {
            return Ok(Armed::default());
        };
        if arm.ipvs_family.is_some()
            && let Some(attached) = attached
        {
            attached.attach_ipvs()?;
        }
        map.arm(arm)
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
