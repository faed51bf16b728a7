//! Decoding what a netlink socket hands us without letting the decoder crates take the agent
//! down.
//!
//! netlink-packet-core's `NlaBuffer::value` slices by the attribute's length field without
//! checking it, and netlink-packet-netfilter wraps some nested attributes with
//! `NlaBuffer::new` (unchecked): a damaged length there panics instead of returning an error
//! (a set message whose expression data is damaged; a conntrack event whose protocol tuple
//! is). The kernel does not send such bytes, but one panic would end the watcher that owns the
//! socket. [`decode`] runs the crate's parser and answers its panic as an error; the panic hook
//! stays quiet for exactly those panics, every other panic reports as before.

use netlink_packet_core::DecodeError;
use std::cell::Cell;
use std::sync::Once;

thread_local! {
    /// Set while a crate decodes on this thread.
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

/// `parse()`, with a panic answered as an invalid-message error.
pub fn decode<T>(parse: impl FnOnce() -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let before = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !DECODING.with(Cell::get) {
                before(info)
            }
        }));
    });
    let outer = DECODING.with(|d| d.replace(true));
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse));
    DECODING.with(|d| d.set(outer));
    decoded.unwrap_or_else(|_| {
        Err("invalid netlink message: a nested attribute's length is out of bounds".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_an_error_and_other_panics_still_panic() {
        let ok: Result<u8, DecodeError> = decode(|| Ok(1));
        assert_eq!(ok.unwrap(), 1);
        let err: Result<u8, DecodeError> = decode(|| {
            let v: &[u8] = &[];
            Ok(v[usize::from(v.is_empty()) * 3])
        });
        assert!(err.unwrap_err().to_string().contains("out of bounds"));
        assert!(std::panic::catch_unwind(|| panic!("elsewhere")).is_err());
        assert!(!DECODING.with(Cell::get));
    }
}
