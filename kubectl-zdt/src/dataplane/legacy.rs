//! kube-proxy's iptables mode on the legacy x_tables backend, read from the kernel: the `nat`
//! table of the calling thread's network namespace through `getsockopt(IPT_SO_GET_INFO)` and
//! `getsockopt(IPT_SO_GET_ENTRIES)` (what `iptables-legacy-save` does, without the binary: the
//! agent image has no iptables), parsed by `xtables`. libiptc asks on a raw socket, which needs
//! CAP_NET_RAW; any IPv4/IPv6 socket reaches the same handler (`ip_getsockopt` →
//! `nf_getsockopt`), which checks CAP_NET_ADMIN only, so a UDP socket is used: the agent keeps
//! its capabilities (BPF, PERFMON, NET_ADMIN).
//!
//! x_tables sends no change notifications. The trigger is kube-proxy's own write: every
//! `iptables-legacy-restore` replaces a table with one `setsockopt(IPT_SO_SET_REPLACE)`, which
//! the agent's eBPF program sees on the `syscalls:sys_exit_setsockopt` tracepoint (see
//! `zdt_common::kind::TABLE_REPLACE`). After each such replace of `nat`, the table is read once.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::{
    source::Family,
    xtables::{self, GET_ENTRIES_HEADER, GET_INFO_LEN, Info},
};

/// IPT_SO_GET_INFO / IP6T_SO_GET_INFO and the GET_ENTRIES twins (include/uapi/linux/netfilter_ipv4/ip_tables.h).
const SO_GET_INFO: libc::c_int = 64;
const SO_GET_ENTRIES: libc::c_int = 65;
/// The table kube-proxy programs Services in.
const NAT: &str = "nat";
/// A replace between GET_INFO and GET_ENTRIES makes the sizes disagree (EAGAIN): read again.
const ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(
        "failed to read the iptables-legacy {family:?} nat table (getsockopt IPT_SO_GET_ENTRIES needs CAP_NET_ADMIN): {source}"
    )]
    Io { family: Family, source: io::Error },
    #[error("the iptables-legacy {family:?} nat table could not be parsed: {source}")]
    Parse {
        family: Family,
        source: xtables::ParseError,
    },
    #[error(
        "the iptables-legacy {family:?} nat table kept changing while it was read ({ATTEMPTS} attempts)"
    )]
    Unstable { family: Family },
}

/// `/proc/thread-self/net/ip_tables_names` (or `ip6_…`): the x_tables tables that exist in this
/// thread's network namespace. (`/proc/net` would show the main thread's namespace.)
fn names_path(family: Family) -> &'static str {
    match family {
        Family::V4 => "/proc/thread-self/net/ip_tables_names",
        Family::V6 => "/proc/thread-self/net/ip6_tables_names",
    }
}

/// Whether the legacy `nat` table exists in this thread's network namespace. Asking the kernel
/// for a table that does not exist would create it (x_tables instantiates its built-in tables
/// on first use), registering NAT hooks kube-proxy never asked for: the list of existing tables
/// is read instead.
pub fn nat_exists(family: Family) -> bool {
    std::fs::read_to_string(names_path(family)).is_ok_and(|s| s.lines().any(|l| l == NAT))
}

/// One read of a table: what GET_INFO said and the GET_ENTRIES reply.
#[derive(Debug)]
pub struct Table {
    pub info: Info,
    reply: Vec<u8>,
}

impl Table {
    /// The entries (the reply without its header).
    pub fn entries(&self) -> &[u8] {
        &self.reply[GET_ENTRIES_HEADER..]
    }
}

/// A UDP socket of the calling thread's network namespace (see the module comment).
fn socket(family: Family) -> io::Result<OwnedFd> {
    let domain = match family {
        Family::V4 => libc::AF_INET,
        Family::V6 => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn level(family: Family) -> libc::c_int {
    match family {
        Family::V4 => libc::IPPROTO_IP,
        Family::V6 => libc::IPPROTO_IPV6,
    }
}

/// getsockopt into `buf`, whose first 32 bytes name the table.
fn get(fd: &OwnedFd, family: Family, name: libc::c_int, buf: &mut [u8]) -> io::Result<()> {
    let mut len = libc::socklen_t::try_from(buf.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "table too large"))?;
    // SAFETY: `buf` is valid for `len` bytes, as the option expects.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level(family),
            name,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads the legacy `nat` table of this thread's network namespace; `None` when it does not
/// exist (it is never created).
pub fn read_nat(family: Family) -> Result<Option<Table>, ReadError> {
    if !nat_exists(family) {
        return Ok(None);
    }
    let io = |source| ReadError::Io { family, source };
    let fd = socket(family).map_err(io)?;
    for _ in 0..ATTEMPTS {
        let mut info = [0u8; GET_INFO_LEN];
        info[..NAT.len()].copy_from_slice(NAT.as_bytes());
        match get(&fd, family, SO_GET_INFO, &mut info) {
            Ok(()) => {}
            // Deleted since the names were read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io(e)),
        }
        let info =
            xtables::parse_info(&info).map_err(|source| ReadError::Parse { family, source })?;
        let mut buf = vec![0u8; GET_ENTRIES_HEADER + info.size as usize];
        buf[..NAT.len()].copy_from_slice(NAT.as_bytes());
        buf[32..36].copy_from_slice(&info.size.to_ne_bytes());
        match get(&fd, family, SO_GET_ENTRIES, &mut buf) {
            Ok(()) => return Ok(Some(Table { info, reply: buf })),
            // Replaced by a table of another size in between: read again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINVAL)) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(io(e)),
        }
    }
    Err(ReadError::Unstable { family })
}

/// The routes kube-proxy's chains in the legacy `nat` table program, and whether the table holds
/// kube-proxy's dispatch chain at all. An absent table routes nothing.
pub fn read_routes(family: Family) -> Result<xtables::Nat, ReadError> {
    let Some(table) = read_nat(family)? else {
        return Ok(xtables::Nat::default());
    };
    xtables::parse(family, &table.info, table.entries())
        .map_err(|source| ReadError::Parse { family, source })
}

/// An x_tables table replace, as the agent's eBPF trigger reported it
/// (`zdt_common::kind::TABLE_REPLACE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReplace {
    /// The syscall's exit: the new table was in effect.
    pub time: jiff::Timestamp,
    /// The syscall's entry: the old table was still in effect before it.
    pub entered: jiff::Timestamp,
    pub family: Family,
    /// `nat`, `filter`, …
    pub table: String,
    /// The writer's network namespace (inode).
    pub netns: u32,
    /// The writer (kube-proxy's `iptables-legacy-restore`).
    pub pid: u32,
}

impl TableReplace {
    /// Whether it can change Service routes: only the `nat` table holds kube-proxy's DNAT.
    pub fn concerns_nat(&self) -> bool {
        self.table == NAT
    }
}
