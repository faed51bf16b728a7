//! Wire `Event` → `Observation`. Pure: the clock, the node name and the kernel's reason names
//! are passed in.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use thiserror::Error;
use zdt_common::{Event, kind, rst_reason};

use super::clock::Clock;
use crate::{
    dataplane::{
        Family,
        ipvs::{self, IpvsChange},
        legacy::{ReplaceBegin, TableReplace},
    },
    observation::{Kind, NodeName, Observation},
};

use zdt_common::family::{AF_INET, AF_INET6};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {len} bytes, expected {expected}")]
    Size { len: usize, expected: usize },
    #[error("unknown event kind {0}")]
    Kind(u16),
    #[error("unknown address family {0}")]
    Family(u16),
    #[error("{0} is not an IPVS command that changes IPVS")]
    IpvsCommand(u32),
}

/// Everything decoding needs besides the event.
pub struct Decoder {
    pub node: NodeName,
    pub clock: Clock,
    /// `enum sk_rst_reason` names read from this kernel's tracepoint format.
    pub rst_reasons: BTreeMap<u32, String>,
}

/// Reads an `Event` from ring-buffer bytes without assuming alignment.
pub fn parse(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = size_of::<Event>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: Event is repr(C) POD (every bit pattern valid) and the length was checked.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// The request bytes of an IPVS change record (empty if the record has none: the kernel
/// program could not copy them, or an older record layout).
pub fn ipvs_request(record: &[u8]) -> &[u8] {
    let head = size_of::<Event>();
    let Some(len) = record
        .get(head..head + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_ne_bytes)
    else {
        return &[];
    };
    let start = head + 8;
    let len = usize::try_from(len)
        .unwrap_or(0)
        .min(zdt_common::genl::REQUEST_MAX);
    record.get(start..start + len).unwrap_or(&[])
}

/// An IPv4-mapped IPv6 address (`::ffff:198.18.0.15`, the peer of a dual-stack socket, e.g. a
/// server listening on `::`) is the IPv4 address it maps: pods and clients are known by that.
pub fn ip_of(family: u16, addr: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(*addr)).to_canonical()),
        f => Err(DecodeError::Family(f)),
    }
}

/// The family of an x_tables replace event of kind `expected`.
fn replace_family(ev: &Event, expected: u16) -> Result<Family, DecodeError> {
    if ev.kind != expected {
        return Err(DecodeError::Kind(ev.kind));
    }
    match ev.family {
        AF_INET => Ok(Family::V4),
        AF_INET6 => Ok(Family::V6),
        f => Err(DecodeError::Family(f)),
    }
}

/// Per-kind views of the wire [`Event`]. The kernel side reuses fields with another meaning
/// per kind (`sk` holds a time or an address in the writer, `state` a length, a pid or where a
/// replace was reported, `comm` a table name, `addr`/`peer_addr` swap times); each view names
/// what its kind carries, so the decoder never reads a reused field by its wire name. The layout
/// shared with the kernel (`zdt_common::Event`) is unchanged.
pub mod view {
    use zdt_common::{Event, swap_bounds};

    /// `kind::TABLE_REPLACE`: an x_tables replace returned.
    #[derive(Clone, Copy)]
    pub struct TableReplace<'a>(pub &'a Event);

    impl TableReplace<'_> {
        /// The syscall's exit, `CLOCK_MONOTONIC` (`ts_ns`).
        pub fn exit_ns(&self) -> u64 {
            self.0.ts_ns
        }
        /// The syscall's entry, `CLOCK_MONOTONIC` (`sk`).
        pub fn entered_ns(&self) -> u64 {
            self.0.sk
        }
        /// Where it was reported: `zdt_common::replace_reported` (`state`).
        pub fn reported_at(&self) -> u32 {
            self.0.state
        }
        /// The table replaced, NUL-padded (`comm`).
        pub fn table(&self) -> &[u8; 16] {
            &self.0.comm
        }
        /// The writer's process id (`tgid`).
        pub fn pid(&self) -> u32 {
            self.0.tgid
        }
        /// One bound of the swap (`zdt_common::swap_bounds`, in `addr` / `peer_addr`), 0 = not
        /// seen.
        pub fn swap_bound_ns(&self, bound: SwapBound) -> u64 {
            let (field, at) = match bound {
                SwapBound::LastAlloc => (&self.0.addr, swap_bounds::LAST_ALLOC),
                SwapBound::FirstFree => (&self.0.addr, swap_bounds::FIRST_FREE),
                SwapBound::TableGet => (&self.0.peer_addr, swap_bounds::TABLE_GET),
                SwapBound::TablePut => (&self.0.peer_addr, swap_bounds::TABLE_PUT),
            };
            field[at].try_into().map_or(0, u64::from_ne_bytes)
        }
    }

    /// The bounds of a replace's swap a [`TableReplace`] carries.
    #[derive(Clone, Copy, Debug)]
    pub enum SwapBound {
        LastAlloc,
        FirstFree,
        TableGet,
        TablePut,
    }

    /// `kind::TABLE_REPLACE_BEGIN`: an x_tables replace entered the kernel.
    #[derive(Clone, Copy)]
    pub struct ReplaceBegin<'a>(pub &'a Event);

    impl ReplaceBegin<'_> {
        /// The syscall's entry, `CLOCK_MONOTONIC` (`ts_ns`).
        pub fn entered_ns(&self) -> u64 {
            self.0.ts_ns
        }
        /// The address of the new table in the writer's memory (`sk`).
        pub fn buffer(&self) -> u64 {
            self.0.sk
        }
        /// The length of that buffer, the setsockopt's optlen (`state`).
        pub fn optlen(&self) -> u32 {
            self.0.state
        }
        /// The table being replaced, NUL-padded (`comm`).
        pub fn table(&self) -> &[u8; 16] {
            &self.0.comm
        }
        /// The writer's process id (`tgid`).
        pub fn pid(&self) -> u32 {
            self.0.tgid
        }
    }

    /// `kind::IPVS_CHANGE`: an IPVS change request returned.
    #[derive(Clone, Copy)]
    pub struct IpvsChange<'a>(pub &'a Event);

    impl IpvsChange<'_> {
        /// The send's exit, `CLOCK_MONOTONIC` (`ts_ns`).
        pub fn exit_ns(&self) -> u64 {
            self.0.ts_ns
        }
        /// The send's entry, `CLOCK_MONOTONIC` (`sk`).
        pub fn entered_ns(&self) -> u64 {
            self.0.sk
        }
        /// `IPVS_CMD_*` (`reason`).
        pub fn cmd(&self) -> u32 {
            self.0.reason
        }
        /// The writer's process id (`tgid`).
        pub fn pid(&self) -> u32 {
            self.0.tgid
        }
    }

    /// `kind::SIGNAL`: a signal was generated.
    #[derive(Clone, Copy)]
    pub struct Signal<'a>(pub &'a Event);

    impl Signal<'_> {
        /// The target's process id (`tgid`).
        pub fn target_pid(&self) -> u32 {
            self.0.tgid
        }
        /// The sender's name, NUL-padded (`comm`).
        pub fn sender(&self) -> &[u8; 16] {
            &self.0.comm
        }
        /// The sender's process id (`state`).
        pub fn sender_pid(&self) -> u32 {
            self.0.state
        }
    }

    /// `kind::EXEC`, `kind::EXIT`: a process started a program, or exited.
    #[derive(Clone, Copy)]
    pub struct Process<'a>(pub &'a Event);

    impl Process<'_> {
        /// Its process id (`tgid`).
        pub fn pid(&self) -> u32 {
            self.0.tgid
        }
        /// Its name, NUL-padded (`comm`).
        pub fn comm(&self) -> &[u8; 16] {
            &self.0.comm
        }
    }
}

impl Decoder {
    pub fn rst_reason_name(&self, reason: u32) -> String {
        self.rst_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| reason.to_string())
    }

    /// The observation kind and reason an event (or counter key) stands for; `None` reason for
    /// kinds that have none.
    pub fn classify(&self, kind: u16, reason: u32) -> Result<(Kind, Option<String>), DecodeError> {
        Ok(match kind {
            kind::RESET_SENT if reason == rst_reason::NO_SOCKET => {
                (Kind::Refused, Some(self.rst_reason_name(reason)))
            }
            kind::RESET_SENT => (Kind::Reset, Some(self.rst_reason_name(reason))),
            // No socket for a segment of a connection: the local end is gone (a reset the peer
            // sees), not a listener missing.
            kind::RESET_STRAY => (Kind::Reset, Some(self.rst_reason_name(reason))),
            kind::LISTEN_OPEN => (Kind::ListenerOpen, None),
            kind::LISTEN_CLOSE => (Kind::ListenerClosed, None),
            kind::SOCK_ERROR => (Kind::ConnError, Some(errno_name(reason))),
            // The client closed a connect nobody answered: to it, a connect timeout.
            kind::CONNECT_ABANDONED => (Kind::ConnError, Some("ETIMEDOUT".to_owned())),
            kind::SYN_RETRANSMIT => (Kind::SynRetransmit, None),
            kind::SIGNAL => (Kind::Signal, Some(signal_name(reason))),
            kind::EXEC => (Kind::Exec, None),
            kind::EXIT => (Kind::Exit, None),
            k => return Err(DecodeError::Kind(k)),
        })
    }

    /// An x_tables replace (`kind::TABLE_REPLACE`): a trigger for the dataplane watcher, not an
    /// observation. Times are converted like every kernel time.
    pub fn table_replace(&self, ev: &Event) -> Result<TableReplace, DecodeError> {
        use view::SwapBound;
        let family = replace_family(ev, kind::TABLE_REPLACE)?;
        let r = view::TableReplace(ev);
        // 0 = not seen.
        let bound = |b| {
            Some(r.swap_bound_ns(b))
                .filter(|&ns| ns != 0)
                .map(|ns| self.clock.to_wall(ns))
        };
        Ok(TableReplace {
            time: self.clock.to_wall(r.exit_ns()),
            at_old_table_free: r.reported_at() == zdt_common::replace_reported::AT_OLD_TABLE_FREE,
            entered: self.clock.to_wall(r.entered_ns()),
            family,
            table: comm(r.table()),
            netns: ev.netns,
            pid: r.pid(),
            time_ns: r.exit_ns(),
            entered_ns: r.entered_ns(),
            last_alloc: bound(SwapBound::LastAlloc),
            first_free: bound(SwapBound::FirstFree),
            table_get: bound(SwapBound::TableGet),
            table_put: bound(SwapBound::TablePut),
        })
    }

    /// The start of an x_tables replace (`kind::TABLE_REPLACE_BEGIN`): where the writer's new
    /// table is, for the dataplane watcher.
    pub fn replace_begin(&self, ev: &Event) -> Result<ReplaceBegin, DecodeError> {
        let family = replace_family(ev, kind::TABLE_REPLACE_BEGIN)?;
        let b = view::ReplaceBegin(ev);
        Ok(ReplaceBegin {
            entered_ns: b.entered_ns(),
            family,
            table: comm(b.table()),
            netns: ev.netns,
            pid: b.pid(),
            buffer: b.buffer(),
            len: b.optlen(),
        })
    }

    /// An IPVS change request (`kind::IPVS_CHANGE`): a trigger for the dataplane watcher.
    /// `record` is the whole ring-buffer record ([`zdt_common::IpvsRecord`]: the event, then
    /// the request's first bytes, which name the virtual server to read again).
    pub fn ipvs_change(&self, ev: &Event, record: &[u8]) -> Result<IpvsChange, DecodeError> {
        if ev.kind != kind::IPVS_CHANGE {
            return Err(DecodeError::Kind(ev.kind));
        }
        let c = view::IpvsChange(ev);
        let cmd = u8::try_from(c.cmd())
            .ok()
            .filter(|c| zdt_common::genl::is_ipvs_change(*c))
            .ok_or(DecodeError::IpvsCommand(c.cmd()))?;
        Ok(IpvsChange {
            time: self.clock.to_wall(c.exit_ns()),
            entered: self.clock.to_wall(c.entered_ns()),
            cmd,
            netns: ev.netns,
            pid: c.pid(),
            server: ipvs::requested_server(ipvs_request(record)),
        })
    }

    pub fn decode(&self, ev: &Event) -> Result<Observation, DecodeError> {
        let (kind, reason) = self.classify(ev.kind, ev.reason)?;
        let mut o = Observation::new(kind, self.clock.to_wall(ev.ts_ns), self.node.clone());
        o.reason = reason;
        o.uncertainty_ns = Some(self.clock.uncertainty_ns);
        match kind {
            Kind::Exec | Kind::Exit => {
                let v = view::Process(ev);
                let p = o.details.process_mut();
                p.pid = Some(v.pid().into());
                p.comm = Some(comm(v.comm()));
            }
            Kind::Signal => {
                let v = view::Signal(ev);
                let p = o.details.process_mut();
                p.pid = Some(v.target_pid().into());
                p.sender = Some(comm(v.sender()));
                p.sender_pid = Some(v.sender_pid().into());
            }
            Kind::ListenerOpen | Kind::ListenerClosed => {
                // A listener on 0.0.0.0 / :: is not an address of the pod: it is in `bind`,
                // and the pod is known by the `netns` of the socket.
                let bind = ip_of(ev.family, &ev.addr)?;
                if !bind.is_unspecified() {
                    o.ip = Some(bind);
                }
                o.port = Some(ev.port);
                let p = o.details.process_mut();
                p.bind = Some(bind.to_string());
                p.pid = Some(ev.tgid.into());
            }
            _ => {
                o.ip = Some(ip_of(ev.family, &ev.addr)?);
                o.port = Some(ev.port);
                o.peer_ip = Some(ip_of(ev.family, &ev.peer_addr)?);
                o.peer_port = Some(ev.peer_port);
            }
        }
        if ev.kind == kind::CONNECT_ABANDONED {
            o.details.kernel_mut().gave_up = Some("client".to_owned());
        }
        if ev.netns != 0 {
            o.details.kernel_mut().netns = Some(ev.netns.into());
        }
        Ok(o)
    }
}

/// `ECONNREFUSED` for 111, …; unknown numbers as `E<n>`.
pub fn errno_name(errno: u32) -> String {
    let e = nix::errno::Errno::from_raw(i32::try_from(errno).unwrap_or(i32::MAX));
    match e {
        nix::errno::Errno::UnknownErrno => format!("E{errno}"),
        e => format!("{e:?}"),
    }
}

/// `SIGTERM` for 15, …; unknown numbers as `SIG<n>`.
pub fn signal_name(sig: u32) -> String {
    i32::try_from(sig)
        .ok()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        .map_or_else(|| format!("SIG{sig}"), |s| s.as_str().to_owned())
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::legacy::SwapBounds;

    fn decoder() -> Decoder {
        Decoder {
            node: NodeName("node-a".into()),
            clock: Clock {
                offset_ns: 1_795_310_205_000_000_000,
                uncertainty_ns: 250,
            },
            rst_reasons: [
                (1, "NO_SOCKET".to_owned()),
                (11, "TCP_ABORT_ON_CLOSE".to_owned()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn event(reason: u32) -> Event {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 1, 2]);
        let mut peer = [0u8; 16];
        peer[..4].copy_from_slice(&[198, 18, 0, 1]);
        Event {
            ts_ns: 660_197_146,
            sk: 0,
            cgroup_id: 0,
            kind: kind::RESET_SENT,
            family: AF_INET,
            reason,
            addr,
            peer_addr: peer,
            port: 8080,
            peer_port: 40312,
            state: 0,
            tgid: 0,
            netns: 0,
            comm: [0; 16],
        }
    }

    #[test]
    fn a_no_socket_reset_is_a_refused_connection_of_the_refusing_pod() {
        let o = decoder().decode(&event(1)).unwrap();
        assert_eq!(
            o.to_json_line(),
            r#"{"kind":"refused","time":"2026-11-22T01:16:45.660197146Z","node":"node-a","ip":"198.18.1.2","port":8080,"peer_ip":"198.18.0.1","peer_port":40312,"reason":"NO_SOCKET","uncertainty_ns":250}"#
        );
    }

    #[test]
    fn an_ipv4_mapped_address_of_a_dual_stack_socket_is_written_as_ipv4() {
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[198, 18, 0, 15]);
        assert_eq!(
            ip_of(AF_INET6, &mapped).unwrap(),
            "198.18.0.15".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ip_of(AF_INET6, &[0; 16]).unwrap(),
            "::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn a_no_socket_reset_to_a_segment_that_is_not_a_bare_syn_is_a_reset_not_a_refusal() {
        let mut ev = event(1);
        ev.kind = kind::RESET_STRAY;
        let o = decoder().decode(&ev).unwrap();
        assert_eq!(o.kind, Kind::Reset);
        assert_eq!(o.reason.as_deref(), Some("NO_SOCKET"));
    }

    #[test]
    fn an_abort_on_close_is_a_reset_and_unknown_reasons_stay_numeric() {
        let d = decoder();
        assert_eq!(d.decode(&event(11)).unwrap().kind, Kind::Reset);
        assert_eq!(d.decode(&event(99)).unwrap().reason.as_deref(), Some("99"));
    }

    #[test]
    fn client_errors_and_signals_get_their_kernel_names() {
        let d = decoder();
        let mut ev = event(111);
        ev.kind = kind::SOCK_ERROR;
        let o = d.decode(&ev).unwrap();
        assert_eq!(
            (o.kind, o.reason.as_deref()),
            (Kind::ConnError, Some("ECONNREFUSED"))
        );
        ev.kind = kind::SIGNAL;
        ev.reason = 15;
        ev.tgid = 4242;
        ev.netns = 4026532000;
        ev.comm[..7].copy_from_slice(b"kubelet");
        let o = d.decode(&ev).unwrap();
        assert_eq!(
            o.to_json_line(),
            r#"{"kind":"signal","time":"2026-11-22T01:16:45.660197146Z","node":"node-a","reason":"SIGTERM","uncertainty_ns":250,"netns":4026532000,"pid":4242,"sender":"kubelet","sender_pid":0}"#
        );
        assert_eq!(errno_name(4095), "E4095");
        assert_eq!(signal_name(99), "SIG99");
    }

    #[test]
    fn bytes_round_trip_and_short_or_odd_records_are_errors() {
        let ev = event(1);
        // SAFETY: Event is POD; viewing it as bytes is what the ring buffer does.
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<Event>()) };
        assert_eq!(parse(bytes).unwrap(), ev);
        assert!(matches!(parse(&bytes[..10]), Err(DecodeError::Size { .. })));
        let mut odd = ev;
        odd.family = 7;
        assert_eq!(decoder().decode(&odd), Err(DecodeError::Family(7)));
        odd = ev;
        odd.kind = 999;
        assert_eq!(decoder().decode(&odd), Err(DecodeError::Kind(999)));
    }

    #[test]
    fn a_table_replace_is_a_trigger_stamped_at_the_syscall_exit() {
        let mut ev = Event::new(kind::TABLE_REPLACE, 660_197_146);
        ev.sk = 659_000_000;
        ev.family = AF_INET;
        ev.reason = zdt_common::xt::SOL_IP;
        ev.comm[..3].copy_from_slice(b"nat");
        ev.netns = 4026531840;
        ev.tgid = 77;
        let d = decoder();
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.time.to_string(), "2026-11-22T01:16:45.660197146Z");
        assert_eq!(t.entered.to_string(), "2026-11-22T01:16:45.659Z");
        assert_eq!((t.family, t.table.as_str(), t.pid), (Family::V4, "nat", 77));
        assert!(t.concerns_nat());
        // Not an observation kind: it never reaches the stream by mistake.
        assert_eq!(d.decode(&ev), Err(DecodeError::Kind(kind::TABLE_REPLACE)));
        assert_eq!((t.time_ns, t.entered_ns), (660_197_146, 659_000_000));
        // No per-CPU allocation or free seen: the swap is known to [entry, exit].
        assert_eq!((t.last_alloc, t.first_free), (None, None));
        assert_eq!(t.swapped(), (t.entered, t.time));
        // Both seen: the swap lies between them.
        ev.addr[zdt_common::swap_bounds::LAST_ALLOC].copy_from_slice(&659_600_000u64.to_ne_bytes());
        ev.addr[zdt_common::swap_bounds::FIRST_FREE].copy_from_slice(&659_700_000u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        let (after, before) = t.swapped();
        assert_eq!(after.to_string(), "2026-11-22T01:16:45.6596Z");
        assert_eq!(before.to_string(), "2026-11-22T01:16:45.6597Z");
        // A free seen but no allocation: [entry, free].
        ev.addr[zdt_common::swap_bounds::LAST_ALLOC].fill(0);
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.swapped(), (t.entered, before));
        assert_eq!(t.swap_bounds(), SwapBounds::Syscall);
        // An allocation after the free cannot precede the swap that free followed: not used.
        ev.addr[zdt_common::swap_bounds::LAST_ALLOC].copy_from_slice(&659_800_000u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.swapped(), (t.entered, before));
        // A bound outside the syscall is another replace's: not used.
        ev.addr[zdt_common::swap_bounds::LAST_ALLOC].copy_from_slice(&658_000_000u64.to_ne_bytes());
        ev.addr[zdt_common::swap_bounds::FIRST_FREE].copy_from_slice(&661_000_000u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.swapped(), (t.entered, t.time));
        assert!(!t.at_old_table_free);
        // Reported when the writer freed the old table's first block: the event's time is
        // that free, which is also the swap's upper bound.
        ev.state = zdt_common::replace_reported::AT_OLD_TABLE_FREE;
        ev.addr[zdt_common::swap_bounds::LAST_ALLOC].copy_from_slice(&659_600_000u64.to_ne_bytes());
        ev.addr[zdt_common::swap_bounds::FIRST_FREE].copy_from_slice(&660_197_146u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        assert!(t.at_old_table_free);
        assert_eq!(t.swap_bounds(), SwapBounds::Counters);
        assert_eq!(t.swapped().1, t.time);
        // The table module's reference, taken and dropped around the swap (in `peer_addr`):
        // the tightest bounds.
        ev.peer_addr[zdt_common::swap_bounds::TABLE_GET]
            .copy_from_slice(&659_650_000u64.to_ne_bytes());
        ev.peer_addr[zdt_common::swap_bounds::TABLE_PUT]
            .copy_from_slice(&659_650_020u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.swap_bounds(), SwapBounds::TableModule);
        let (after, before) = t.swapped();
        assert_eq!(after.to_string(), "2026-11-22T01:16:45.65965Z");
        assert_eq!(before.to_string(), "2026-11-22T01:16:45.65965002Z");
        // Dropped before it was taken: not the swap's.
        ev.peer_addr[zdt_common::swap_bounds::TABLE_PUT]
            .copy_from_slice(&659_640_000u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.swap_bounds(), SwapBounds::Counters);
        // Taken before the rule checks' last allocation: not the swap's either.
        ev.peer_addr[zdt_common::swap_bounds::TABLE_GET]
            .copy_from_slice(&659_500_000u64.to_ne_bytes());
        ev.peer_addr[zdt_common::swap_bounds::TABLE_PUT]
            .copy_from_slice(&659_650_020u64.to_ne_bytes());
        let t = d.table_replace(&ev).unwrap();
        assert_eq!(t.swap_bounds(), SwapBounds::Counters);
        ev.family = 7;
        assert_eq!(d.table_replace(&ev), Err(DecodeError::Family(7)));
    }

    /// The ring-buffer record of an IPVS change: the event, then `request` cut to what the
    /// kernel program copies.
    fn ipvs_record(ev: &Event, request: &[u8]) -> Vec<u8> {
        let n = request.len().min(zdt_common::genl::REQUEST_MAX);
        let mut r = zdt_common::IpvsRecord {
            event: *ev,
            len: u32::try_from(n).unwrap(),
            _pad: 0,
            request: [0xAA; zdt_common::genl::REQUEST_MAX],
        };
        r.request[..n].copy_from_slice(&request[..n]);
        // SAFETY: IpvsRecord is repr(C) plain data with explicit padding.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&r).cast::<u8>(),
                size_of::<zdt_common::IpvsRecord>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn an_ipvs_change_request_is_a_trigger_stamped_at_the_send_exit() {
        use crate::dataplane::{
            ipvs::{Command, RealServer, VirtualServer},
            model::{Backend, Protocol, ServiceAddr},
        };
        let mut ev = Event::new(kind::IPVS_CHANGE, 660_197_146);
        ev.sk = 660_100_000;
        ev.reason = u32::from(zdt_common::genl::IPVS_CMD_SET_DEST);
        ev.netns = 4026531840;
        ev.tgid = 77;
        let web = VirtualServer {
            service: ServiceAddr("10.96.0.10:80".parse().unwrap()),
            protocol: Protocol::Tcp,
        };
        let gone = RealServer {
            backend: Backend("10.244.1.12:8080".parse().unwrap()),
            weight: 0,
        };
        // kube-proxy's SET_DEST as the kernel program copied it: it names the virtual server.
        let request = ipvs::encode_command(&Command::SetDest(web, gone), 0x24, 9);
        let d = decoder();
        let c = d.ipvs_change(&ev, &ipvs_record(&ev, &request)).unwrap();
        assert_eq!(c.time.to_string(), "2026-11-22T01:16:45.660197146Z");
        assert_eq!(c.entered.to_string(), "2026-11-22T01:16:45.6601Z");
        assert_eq!((c.cmd, c.netns, c.pid), (6, 4026531840, 77));
        assert_eq!(c.server, Some(web));
        // Not copied (or an event without the request): no server, IPVS is read whole.
        assert_eq!(
            d.ipvs_change(&ev, &ipvs_record(&ev, &[])).unwrap().server,
            None
        );
        let bare = ev;
        let bytes: Vec<u8> = ipvs_record(&bare, &request)[..size_of::<Event>()].to_vec();
        assert_eq!(d.ipvs_change(&ev, &bytes).unwrap().server, None);
        // Cut inside the service attribute: no server rather than a wrong one.
        assert_eq!(
            d.ipvs_change(&ev, &ipvs_record(&ev, &request[..40]))
                .unwrap()
                .server,
            None
        );
        // Not an observation kind: it never reaches the stream by mistake.
        assert_eq!(d.decode(&ev), Err(DecodeError::Kind(kind::IPVS_CHANGE)));
        // A dump request is no change: the kernel program never reports one, and a record
        // saying so is refused rather than read as a change.
        ev.reason = 4;
        assert_eq!(d.ipvs_change(&ev, &[]), Err(DecodeError::IpvsCommand(4)));
        ev.reason = 0x106;
        assert_eq!(
            d.ipvs_change(&ev, &[]),
            Err(DecodeError::IpvsCommand(0x106))
        );
        ev.kind = kind::TABLE_REPLACE;
        assert_eq!(
            d.ipvs_change(&ev, &[]),
            Err(DecodeError::Kind(kind::TABLE_REPLACE))
        );
    }

    #[test]
    fn a_replace_begin_says_where_the_writers_new_table_is() {
        let mut ev = Event::new(kind::TABLE_REPLACE_BEGIN, 659_000_000);
        ev.sk = 0x7f00_dead_b000;
        ev.state = 96 + 13_384;
        ev.family = AF_INET6;
        ev.reason = zdt_common::xt::SOL_IPV6;
        ev.comm[..3].copy_from_slice(b"nat");
        ev.netns = 4026531840;
        ev.tgid = 77;
        let d = decoder();
        let b = d.replace_begin(&ev).unwrap();
        assert_eq!(
            b,
            ReplaceBegin {
                entered_ns: 659_000_000,
                family: Family::V6,
                table: "nat".into(),
                netns: 4026531840,
                pid: 77,
                buffer: 0x7f00_dead_b000,
                len: 96 + 13_384,
            }
        );
        assert!(b.concerns_nat());
        assert_eq!(
            d.decode(&ev),
            Err(DecodeError::Kind(kind::TABLE_REPLACE_BEGIN))
        );
        assert_eq!(
            d.table_replace(&ev),
            Err(DecodeError::Kind(kind::TABLE_REPLACE_BEGIN))
        );
    }
}
