//! The node testbed: a faithful single-node model built from network namespaces, used by the
//! demo, the privileged integration tests and the benchmarks.
//!
//! A "node" namespace holds a bridge; "pods" are namespaces joined to it by veth pairs with their
//! own addresses; a Service ClusterIP is implemented with kube-proxy's rule shapes. All traffic
//! stays on addresses of namespaces the testbed created (198.18.0.0/15, the benchmarking range,
//! and fd00:7a64::/64).

pub mod agent;
pub mod api;
pub mod app;
pub mod balancer;
pub mod kube_proxy;
pub mod kube_proxy_nft;
pub mod kube_proxy_nl;
pub mod kubelet;
pub mod netns;
pub mod node;
pub mod pod;
pub mod tcp;

pub use netns::{Netns, run, veth_pair};
pub use node::{ClientHandle, Node, PodHandle};
