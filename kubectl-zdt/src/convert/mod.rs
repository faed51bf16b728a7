//! Raw captures → the observation stream: what real components recorded, turned into the same
//! observations the node agents write. Pure functions over text and parsed events; the agent feeds
//! `kube_events` from its API watches, the tests and `trace` feed recorded captures.
//!
//! - `kube_events`: pod and EndpointSlice watch events → `pod_ready`, `pod_deleting`,
//!   `container_terminated`, `endpoint_ready`, `endpoint_terminating`, `endpoint_removed`;
//! - `nft_monitor`: kube-proxy's nftables `nft monitor` lines → `dataplane_added`/`_removed`;
//! - `iptables_samples`: timed `iptables-save` snapshots → dataplane marks (± half the interval);
//! - `client_log`: an independent client's failures → `conn_error` lines.

pub mod client_log;
pub mod iptables_samples;
pub mod kube_events;
pub mod nft_monitor;
