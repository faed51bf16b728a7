//! Run-time updates of the kernel's watch filter (`ZDT_WATCH_V4`/`ZDT_WATCH_V6` LPM tries): in
//! cluster mode the agent adds each pod's address when the pod appears on its node and removes
//! it when the pod's tombstone expires. With filtering enabled an empty trie reports nothing.
//! The same goes for each pod's network namespace (`ZDT_WATCH_NETNS`), which is what reports
//! its listeners on wildcard addresses and its processes' signals, execs and exits.

use std::collections::BTreeSet;

use aya::maps::{HashMap as BpfHashMap, LpmTrie, MapData, lpm_trie::Key};
use ipnet::IpNet;
use thiserror::Error;

/// A filter update the kernel refused.
#[derive(Debug, Error)]
pub enum FilterError {
    #[error(
        "failed to {action} {net} in the kernel watch filter: {source} (the filter holds at most {} prefixes per family)",
        zdt_common::maps::WATCH_MAX
    )]
    Map {
        action: &'static str,
        net: IpNet,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "failed to {action} network namespace {inum} in the kernel watch filter: {source} (the filter holds at most {} namespaces)",
        zdt_common::maps::WATCH_MAX
    )]
    Netns {
        action: &'static str,
        inum: u32,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Anything that decides which addresses the kernel reports: the real tries, or a recording
/// set in tests.
pub trait AddressFilter: Send {
    fn add(&mut self, net: IpNet) -> Result<(), FilterError>;
    fn remove(&mut self, net: IpNet) -> Result<(), FilterError>;
    /// Prefixes currently reported.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reports the listeners and processes of network namespace `inum`.
    fn add_netns(&mut self, inum: u32) -> Result<(), FilterError>;
    fn remove_netns(&mut self, inum: u32) -> Result<(), FilterError>;
    /// Network namespaces currently reported.
    fn netns_len(&self) -> usize;
}

/// The kernel's watch tries, taken out of the loaded object by the loader.
pub struct WatchFilter {
    v4: LpmTrie<MapData, [u8; 4], u8>,
    v6: LpmTrie<MapData, [u8; 16], u8>,
    netns: BpfHashMap<MapData, u32, u8>,
    present: BTreeSet<IpNet>,
    present_netns: BTreeSet<u32>,
}

impl WatchFilter {
    /// Wraps the maps; `initial` and `initial_netns` are what the loader already inserted.
    pub fn new(
        v4: LpmTrie<MapData, [u8; 4], u8>,
        v6: LpmTrie<MapData, [u8; 16], u8>,
        netns: BpfHashMap<MapData, u32, u8>,
        initial: &[IpNet],
        initial_netns: &[u32],
    ) -> Self {
        Self {
            v4,
            v6,
            netns,
            present: initial.iter().copied().collect(),
            present_netns: initial_netns.iter().copied().collect(),
        }
    }
}

impl AddressFilter for WatchFilter {
    fn add(&mut self, net: IpNet) -> Result<(), FilterError> {
        let result = match net {
            IpNet::V4(n) => self.v4.insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                &1,
                0,
            ),
            IpNet::V6(n) => self.v6.insert(
                &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                &1,
                0,
            ),
        };
        result.map_err(|source| FilterError::Map {
            action: "add",
            net,
            source,
        })?;
        self.present.insert(net);
        Ok(())
    }

    fn remove(&mut self, net: IpNet) -> Result<(), FilterError> {
        if !self.present.remove(&net) {
            return Ok(());
        }
        let result = match net {
            IpNet::V4(n) => self
                .v4
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
            IpNet::V6(n) => self
                .v6
                .remove(&Key::new(u32::from(n.prefix_len()), n.network().octets())),
        };
        match result {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(FilterError::Map {
                action: "remove",
                net,
                source,
            }),
        }
    }

    fn len(&self) -> usize {
        self.present.len()
    }

    fn add_netns(&mut self, inum: u32) -> Result<(), FilterError> {
        self.netns
            .insert(&inum, &1, 0)
            .map_err(|source| FilterError::Netns {
                action: "add",
                inum,
                source,
            })?;
        self.present_netns.insert(inum);
        Ok(())
    }

    fn remove_netns(&mut self, inum: u32) -> Result<(), FilterError> {
        if !self.present_netns.remove(&inum) {
            return Ok(());
        }
        match self.netns.remove(&inum) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(FilterError::Netns {
                action: "remove",
                inum,
                source,
            }),
        }
    }

    fn netns_len(&self) -> usize {
        self.present_netns.len()
    }
}

/// A recording filter (tests, and dry runs without eBPF): the addresses and the namespaces.
#[derive(Debug, Default)]
pub struct Recorded {
    pub addresses: BTreeSet<IpNet>,
    pub netns: BTreeSet<u32>,
}

impl AddressFilter for Recorded {
    fn add(&mut self, net: IpNet) -> Result<(), FilterError> {
        self.addresses.insert(net);
        Ok(())
    }

    fn remove(&mut self, net: IpNet) -> Result<(), FilterError> {
        self.addresses.remove(&net);
        Ok(())
    }

    fn len(&self) -> usize {
        self.addresses.len()
    }

    fn add_netns(&mut self, inum: u32) -> Result<(), FilterError> {
        self.netns.insert(inum);
        Ok(())
    }

    fn remove_netns(&mut self, inum: u32) -> Result<(), FilterError> {
        self.netns.remove(&inum);
        Ok(())
    }

    fn netns_len(&self) -> usize {
        self.netns.len()
    }
}

/// A filter shared with whoever reads it (the status page, tests).
impl<F: AddressFilter> AddressFilter for std::sync::Arc<std::sync::Mutex<F>> {
    fn add(&mut self, net: IpNet) -> Result<(), FilterError> {
        self.lock().unwrap_or_else(|p| p.into_inner()).add(net)
    }

    fn remove(&mut self, net: IpNet) -> Result<(), FilterError> {
        self.lock().unwrap_or_else(|p| p.into_inner()).remove(net)
    }

    fn len(&self) -> usize {
        self.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn add_netns(&mut self, inum: u32) -> Result<(), FilterError> {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_netns(inum)
    }

    fn remove_netns(&mut self, inum: u32) -> Result<(), FilterError> {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_netns(inum)
    }

    fn netns_len(&self) -> usize {
        self.lock().unwrap_or_else(|p| p.into_inner()).netns_len()
    }
}
