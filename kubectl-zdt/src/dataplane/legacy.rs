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

/// The lists of x_tables tables of one network namespace (IPv4 and IPv6), opened there and
/// read again on demand from any thread: a `/proc/<tid>/net` file keeps the namespace it was
/// opened in. iptables-nft never creates an x_tables table; iptables-legacy's first write does.
pub struct NatTables {
    lists: Vec<std::fs::File>,
}

impl NatTables {
    /// Opens the calling thread's namespace's lists. Fails when the kernel has no x_tables
    /// (`ip_tables` not built in and its module not loaded): no list to wait on.
    pub fn open() -> io::Result<Self> {
        let lists = [Family::V4, Family::V6]
            .into_iter()
            .filter_map(|f| std::fs::File::open(names_path(f)).ok())
            .collect::<Vec<_>>();
        if lists.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the kernel lists no x_tables tables (no ip_tables, ip6_tables)",
            ));
        }
        Ok(Self { lists })
    }

    /// Whether a `nat` table exists now in either family.
    pub fn exist(&self) -> bool {
        use std::io::{Read as _, Seek as _};
        self.lists.iter().any(|mut list| {
            let mut text = String::new();
            list.rewind().is_ok()
                && list.read_to_string(&mut text).is_ok()
                && text.lines().any(|l| l == NAT)
        })
    }
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

/// `struct ipt_replace` / `ip6t_replace` before the entries: name[32], valid_hooks,
/// num_entries, size, hook_entry[5], underflow[5], num_counters, counters (a pointer).
pub const REPLACE_HEADER: usize = 96;
/// How much of a writer's buffer is copied at a time: the parser reads each piece while it is
/// still in the cache, and the agent never holds the table (~100 MB at 10 000 Services).
pub const WRITER_CHUNK: usize = 1 << 20;
// An entry is at most 64 KiB (next_offset is a u16): a chunk always holds a whole one.
const _: () = assert!(WRITER_CHUNK >= 2 * (u16::MAX as usize + 1));

/// A replace the agent's eBPF program saw begin (`zdt_common::kind::TABLE_REPLACE_BEGIN`): the
/// writer is inside `setsockopt(IPT_SO_SET_REPLACE)` with its new table at `buffer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplaceBegin {
    /// `CLOCK_MONOTONIC` at the syscall's entry; with `pid`, names the replace (its
    /// `TableReplace::entered_ns`).
    pub entered_ns: u64,
    pub family: Family,
    pub table: String,
    pub netns: u32,
    pub pid: u32,
    /// The writer's `optval`: its `struct ipt_replace`.
    pub buffer: u64,
    /// The writer's `optlen`.
    pub len: u32,
}

impl ReplaceBegin {
    pub fn concerns_nat(&self) -> bool {
        self.table == NAT
    }
}

/// The `struct ipt_replace` of a nat table with these entries, as libiptc hands it to the kernel
/// (no counters asked back): what `read_writer` reads. For tests and benchmarks.
pub fn replace_buffer(info: &Info, entries: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; REPLACE_HEADER];
    buf[..NAT.len()].copy_from_slice(NAT.as_bytes());
    buf[32..36].copy_from_slice(&info.valid_hooks.to_ne_bytes());
    buf[36..40].copy_from_slice(&info.num_entries.to_ne_bytes());
    buf[40..44].copy_from_slice(&info.size.to_ne_bytes());
    for (i, h) in info.hook_entry.iter().enumerate() {
        buf[44 + 4 * i..48 + 4 * i].copy_from_slice(&h.to_ne_bytes());
    }
    buf.extend_from_slice(entries);
    buf
}

/// `process_vm_readv` of `buf.len()` bytes at `addr` in process `pid`; an error unless all of
/// them were read (the writer's buffer is gone or was never there).
fn read_remote(pid: u32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: `local` describes `buf`, valid for writes of its length; `remote` is only read by
    // the kernel, in the other process, which checks it.
    let n = unsafe { libc::process_vm_readv(pid, &raw const local, 1, &raw const remote, 1, 0) };
    match usize::try_from(n) {
        Err(_) => Err(io::Error::last_os_error()),
        Ok(n) if n == buf.len() => Ok(()),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{n} of {} bytes", buf.len()),
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error(
        "failed to read the iptables-legacy writer's new table from process {pid} (process_vm_readv needs CAP_SYS_PTRACE and the host PID namespace): {source}"
    )]
    Io { pid: u32, source: io::Error },
    #[error("the iptables-legacy writer's buffer is not a {0:?} nat table replace")]
    NotNat(Family),
    #[error("the iptables-legacy writer's new table could not be parsed: {0}")]
    Parse(#[from] xtables::ParseError),
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the eBPF programs' `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Tables up to this size are copied out of the writer whole, then parsed: the copy is over in
/// milliseconds, long before the kernel is done with a replace of that size. Larger ones are
/// parsed a chunk at a time as they are copied, so the agent never holds them.
pub const WHOLE_COPY_MAX: usize = 32 << 20;

/// The new table of a replace, read from its writer.
#[derive(Debug, PartialEq, Eq)]
pub struct WriterRead {
    pub nat: xtables::Nat,
    /// `CLOCK_MONOTONIC` when the last byte was copied: if that is before the syscall's exit,
    /// the copy is of the table the kernel installed.
    pub copied_ns: u64,
}

/// Reads the new table out of the writer's own `IPT_SO_SET_REPLACE` buffer while the kernel
/// still works on the replace (the buffer is the writer's until the syscall returns) and parses
/// it: the kernel's copy of a large table takes as long again to read back with GET_ENTRIES.
/// Whether the copy was over before the syscall returned — and so is what the kernel installed —
/// is for the caller to check (`copied_ns` against `TableReplace::time_ns`).
pub fn read_writer(begin: &ReplaceBegin, chunk: &mut Vec<u8>) -> Result<WriterRead, WriterError> {
    let pid = begin.pid;
    let io = |source| WriterError::Io { pid, source };
    let mut header = [0u8; REPLACE_HEADER];
    read_remote(pid, begin.buffer, &mut header).map_err(io)?;
    let u32_at = |at: usize| {
        u32::from_ne_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let name_end = header[..32].iter().position(|&b| b == 0).unwrap_or(32);
    let size = u32_at(40);
    if &header[..name_end] != NAT.as_bytes()
        || u64::from(begin.len) != REPLACE_HEADER as u64 + u64::from(size)
    {
        return Err(WriterError::NotNat(begin.family));
    }
    let mut hook_entry = [0u32; 5];
    for (i, h) in hook_entry.iter_mut().enumerate() {
        *h = u32_at(44 + 4 * i);
    }
    let info = Info {
        valid_hooks: u32_at(32),
        hook_entry,
        num_entries: u32_at(36),
        size,
    };
    if size as usize <= WHOLE_COPY_MAX {
        let mut whole = vec![0u8; size as usize];
        read_remote(pid, begin.buffer + REPLACE_HEADER as u64, &mut whole).map_err(io)?;
        let copied_ns = monotonic_ns();
        let nat = xtables::parse(begin.family, &info, &whole)?;
        return Ok(WriterRead { nat, copied_ns });
    }
    read_entries(begin, &info, chunk, WRITER_CHUNK)
}

/// The entries of a writer's buffer, `capacity` bytes at a time.
fn read_entries(
    begin: &ReplaceBegin,
    info: &Info,
    chunk: &mut Vec<u8>,
    capacity: usize,
) -> Result<WriterRead, WriterError> {
    let pid = begin.pid;
    let io = |source| WriterError::Io { pid, source };
    let mut parser = xtables::Parser::new(begin.family, info);
    chunk.resize(capacity, 0);
    let size = info.size as usize;
    let (mut done, mut carry) = (0usize, 0usize);
    while done < size {
        let n = (capacity - carry).min(size - done);
        if n == 0 {
            // An entry larger than a chunk: the blob is not a table (next_offset is a u16).
            return Err(xtables::ParseError::Entry {
                offset: done - carry,
                what: "entry larger than a read",
            }
            .into());
        }
        let at = begin.buffer + (REPLACE_HEADER + done) as u64;
        read_remote(pid, at, &mut chunk[carry..carry + n]).map_err(io)?;
        done += n;
        let filled = carry + n;
        let used = parser.feed(&chunk[..filled], done == size)?;
        chunk.copy_within(used..filled, 0);
        carry = filled - used;
    }
    let copied_ns = monotonic_ns();
    Ok(WriterRead {
        nat: parser.finish(),
        copied_ns,
    })
}

/// An x_tables table replace, as the agent's eBPF trigger reported it
/// (`zdt_common::kind::TABLE_REPLACE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableReplace {
    /// The syscall's exit, or the writer's free of the old table's first counter block when
    /// `at_old_table_free`: either way the new table was in effect.
    pub time: jiff::Timestamp,
    /// Reported when the writer freed the old table's first per-CPU counter block (the swap
    /// was over; the kernel frees the rest and returns later), not at the syscall's exit.
    pub at_old_table_free: bool,
    /// The syscall's entry: the old table was still in effect before it.
    pub entered: jiff::Timestamp,
    pub family: Family,
    /// `nat`, `filter`, …
    pub table: String,
    /// The writer's network namespace (inode).
    pub netns: u32,
    /// The writer (kube-proxy's `iptables-legacy-restore`).
    pub pid: u32,
    /// `time` and `entered` as the kernel's `CLOCK_MONOTONIC`, to match a `ReplaceBegin` and to
    /// compare with the end of a read of the writer's buffer.
    pub time_ns: u64,
    pub entered_ns: u64,
    /// The writer's last per-CPU allocation inside the syscall (the new table's counters,
    /// allocated before the swap), if the probes saw one.
    pub last_alloc: Option<jiff::Timestamp>,
    /// The writer's first per-CPU free inside the syscall (the old table's counters, freed
    /// after the swap), if the probes saw one.
    pub first_free: Option<jiff::Timestamp>,
    /// The writer's last reference taken on the table's module (`iptable_nat`), right before
    /// the swap, if the kernel has the table as a module and the probes saw it.
    pub table_get: Option<jiff::Timestamp>,
    /// The writer's first drop of that reference after it, right after the swap.
    pub table_put: Option<jiff::Timestamp>,
}

/// What bounds the swap of a [`TableReplace`], tightest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapBounds {
    /// The writer's reference on the table's module (µs apart).
    TableModule,
    /// The writer's last per-CPU allocation and first free (the kernel's read of the old
    /// counters lies between: tens of ms at 10 000 Services).
    Counters,
    /// The syscall's entry and exit (or one counter bound and one of these).
    Syscall,
}

impl SwapBounds {
    /// As the dataplane lines' `swap_bounds` say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TableModule => "table_module",
            Self::Counters => "counters",
            Self::Syscall => "syscall",
        }
    }
}

impl TableReplace {
    /// Whether it can change Service routes: only the `nat` table holds kube-proxy's DNAT.
    pub fn concerns_nat(&self) -> bool {
        self.table == NAT
    }

    /// When the kernel swapped the old table for the new one: between the writer's reference
    /// on the table's module and its drop where seen; else after the writer's last per-CPU
    /// allocation (else the entry) and before its first per-CPU free (else the exit). The
    /// checks before the swap and the cleanup after it are most of a big table's replace, and
    /// the writer may be scheduled out in either, so the exit alone can be far from the swap.
    pub fn swapped(&self) -> (jiff::Timestamp, jiff::Timestamp) {
        if let Some(bounds) = self.module_bounds() {
            return bounds;
        }
        let (alloc, free) = self.counter_bounds();
        (alloc.unwrap_or(self.entered), free.unwrap_or(self.time))
    }

    /// What bounds [`Self::swapped`].
    pub fn swap_bounds(&self) -> SwapBounds {
        if self.module_bounds().is_some() {
            SwapBounds::TableModule
        } else if matches!(self.counter_bounds(), (Some(_), Some(_))) {
            SwapBounds::Counters
        } else {
            SwapBounds::Syscall
        }
    }

    /// The table module's reference taken and dropped around the swap, if both were seen in
    /// order inside the syscall and inside the counters' bounds (the kernel takes it after the
    /// rule checks' last allocation and drops it before the old table's first free): anything
    /// else is not this replace's swap.
    fn module_bounds(&self) -> Option<(jiff::Timestamp, jiff::Timestamp)> {
        let (get, put) = (self.table_get?, self.table_put?);
        let (alloc, free) = self.counter_bounds();
        let ordered = self.entered <= get
            && get <= put
            && put <= self.time
            && alloc.is_none_or(|a| a <= get)
            && free.is_none_or(|f| put <= f);
        ordered.then_some((get, put))
    }

    /// The per-CPU allocation and free that can be this replace's: inside its syscall, the
    /// allocation before the free.
    fn counter_bounds(&self) -> (Option<jiff::Timestamp>, Option<jiff::Timestamp>) {
        let inside = |t: &jiff::Timestamp| *t >= self.entered && *t <= self.time;
        let free = self.first_free.filter(inside);
        let alloc = self
            .last_alloc
            .filter(inside)
            .filter(|t| free.is_none_or(|f| *t <= f));
        (alloc, free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = include_bytes!("../../tests/fixtures/xtables/v1.36-nat.info");
    const ENTRIES: &[u8] = include_bytes!("../../tests/fixtures/xtables/v1.36-nat.entries");

    /// A `struct ipt_replace` of the real v1.36 nat table, named `name`.
    fn replace_buffer(name: &str) -> Vec<u8> {
        let info = xtables::parse_info(INFO).unwrap();
        let mut buf = super::replace_buffer(&info, ENTRIES);
        buf[..32].fill(0);
        buf[..name.len()].copy_from_slice(name.as_bytes());
        buf
    }

    fn begin_of(buf: &[u8]) -> ReplaceBegin {
        ReplaceBegin {
            entered_ns: 1,
            family: Family::V4,
            table: NAT.into(),
            netns: 0,
            pid: std::process::id(),
            buffer: buf.as_ptr() as u64,
            len: u32::try_from(buf.len()).unwrap(),
        }
    }

    /// process_vm_readv of this very process (always allowed): the writer path reads, in
    /// pieces of any size, the routes the kernel's own GET_ENTRIES copy of the table gives.
    #[test]
    fn a_writers_buffer_read_in_pieces_gives_the_tables_routes() {
        let info = xtables::parse_info(INFO).unwrap();
        let expected = xtables::parse(Family::V4, &info, ENTRIES).unwrap();
        assert_eq!(expected.routes.len(), 3);
        let buf = replace_buffer(NAT);
        let mut chunk = Vec::new();
        let before = monotonic_ns();
        let whole = read_writer(&begin_of(&buf), &mut chunk).unwrap();
        assert_eq!(whole.nat, expected);
        assert!(whole.copied_ns >= before && whole.copied_ns <= monotonic_ns());
        // Pieces smaller than the table, cutting entries anywhere (how tables larger than
        // WHOLE_COPY_MAX are read).
        for capacity in [700, 1000, 4093] {
            let got = read_entries(&begin_of(&buf), &info, &mut chunk, capacity).unwrap();
            assert_eq!(got.nat, expected, "in pieces of {capacity}");
        }
        // Pieces smaller than an entry: an error, not a loop.
        let err = read_entries(&begin_of(&buf), &info, &mut chunk, 64).unwrap_err();
        assert!(
            err.to_string().contains("entry larger than a read"),
            "{err}"
        );
    }

    #[test]
    fn what_is_not_the_writers_nat_replace_is_refused() {
        let mut chunk = Vec::new();
        let filter = replace_buffer("filter");
        assert!(matches!(
            read_writer(&begin_of(&filter), &mut chunk),
            Err(WriterError::NotNat(Family::V4))
        ));
        // optlen disagrees with the header's size.
        let buf = replace_buffer(NAT);
        let mut begin = begin_of(&buf);
        begin.len -= 1;
        assert!(matches!(
            read_writer(&begin, &mut chunk),
            Err(WriterError::NotNat(_))
        ));
        // The writer's buffer is gone (unmapped address): an error naming the process.
        let mut begin = begin_of(&buf);
        begin.buffer = 8;
        let err = read_writer(&begin, &mut chunk).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("process {}", std::process::id())),
            "{err}"
        );
    }
}
