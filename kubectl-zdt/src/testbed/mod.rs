//! The node testbed: a faithful single-node model built from network namespaces, used by the
//! demo, the privileged integration tests and the benchmarks.
//!
//! The product binary holds only what `kubectl-zdt demo` and `kubectl-zdt testbed-app` run; the
//! rest (the other kube-proxy modes, the in-process agent, the probing clients) is built with
//! the `test-support` feature, which the tests, benchmarks and examples turn on.
//!
//! A "node" namespace holds a bridge; "pods" are namespaces joined to it by veth pairs with their
//! own addresses; a Service ClusterIP is implemented with kube-proxy's rule shapes. All traffic
//! stays on addresses of namespaces the testbed created (198.18.0.0/15, the benchmarking range,
//! and fd00:7a64::/64).

#[cfg(feature = "test-support")]
pub mod agent;
#[cfg(feature = "test-support")]
pub mod api;
pub mod app;
#[cfg(feature = "test-support")]
pub mod balancer;
pub mod kube_proxy;
#[cfg(feature = "test-support")]
pub mod kube_proxy_nft;
#[cfg(feature = "test-support")]
pub mod kube_proxy_nl;
#[cfg(feature = "test-support")]
pub mod kubelet;
pub mod netns;
pub mod node;
pub mod pod;
pub mod tcp;

#[cfg(feature = "test-support")]
pub use netns::veth_pair;
pub use netns::{Netns, run};
pub use node::{ClientHandle, Node, PodHandle};
