//! Offsets of the tracepoint record fields the programs read.
//!
//! Rust has no CO-RE, so the programs read records at these constant offsets. The agent compares
//! them with `/sys/kernel/tracing/events/<category>/<name>/format` before attaching; a kernel
//! whose layout differs is refused with a clear error instead of yielding garbage.

/// One field the program reads: (name in the format file, offset, size).
pub type Field = (&'static str, usize, usize);

/// A tracepoint and the fields a program reads from its record.
pub struct Layout {
    pub category: &'static str,
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// `tcp:tcp_send_reset` (kernel ≥6.10 layout with `reason`).
pub mod tcp_send_reset {
    pub const SKADDR: usize = 16;
    pub const STATE: usize = 24;
    pub const REASON: usize = 28;
    /// `struct sockaddr_in`/`sockaddr_in6` in 28 bytes: family at 0 (host order), port at 2
    /// (network order), IPv4 address at 4, IPv6 address at 8.
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 60;
    pub const LAYOUT: super::Layout = super::Layout {
        category: "tcp",
        name: "tcp_send_reset",
        fields: &[
            ("skaddr", SKADDR, 8),
            ("state", STATE, 4),
            ("reason", REASON, 4),
            ("saddr", SADDR, 28),
            ("daddr", DADDR, 28),
        ],
    };
}

/// Offsets inside the 28-byte sockaddr copies of `tcp_send_reset`.
pub mod sockaddr {
    pub const FAMILY: usize = 0;
    pub const PORT: usize = 2;
    pub const V4: usize = 4;
    pub const V6: usize = 8;
}

/// Every tracepoint layout the programs depend on, checked at load time.
pub const LAYOUTS: &[Layout] = &[tcp_send_reset::LAYOUT];
