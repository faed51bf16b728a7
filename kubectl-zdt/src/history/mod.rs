//! `kubectl zdt history`, the pure part: the time window of the flags (`window`), rollouts
//! nobody traced found in the journals (`rollouts`), and the listing (`listing`). Asking the
//! agents is `crate::cluster::history`.

pub mod listing;
pub mod rollouts;
pub mod window;
