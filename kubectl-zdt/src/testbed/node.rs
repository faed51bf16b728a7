//! One node: a namespace with a bridge for its pods, routed links to client namespaces, and
//! kube-proxy's iptables rules for Services.
//!
//! Pods sit on the bridge (198.18.0.0/24, fd00:7a64::/64) like a CNI bridge plugin would put
//! them. Clients are routed through the node (198.19.<n>.0/24), so their traffic to a ClusterIP
//! is DNAT'ed in the node's PREROUTING and the replies come back through the node's conntrack,
//! exactly as for a client on another node (no br_netfilter needed).

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{
    kube_proxy::{self, ServicePort},
    netns::Netns,
};

pub const POD_CIDR_V4: &str = "198.18.0.0/24";
const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const BRIDGE_V6: &str = "fd00:7a64::1";
/// The bridge's own MAC address, set when it is created, as the CNI bridge plugin sets cni0's
/// (`0a:58` and the gateway's IPv4 address). A bridge without one takes the lowest MAC of its
/// ports and changes it when that port goes: every other pod's cached neighbour entry for the
/// gateway is then wrong until it is probed again, and their replies to clients routed through
/// the node are lost for a second or more — timeouts no real node makes.
pub const BRIDGE_MAC: &str = "0a:58:c6:12:00:01";

/// A pod: its own network namespace on the node's bridge.
#[derive(Debug)]
pub struct PodHandle {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

/// A client: a namespace routed through the node.
#[derive(Debug)]
pub struct ClientHandle {
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

/// The node namespace and what it owns. Namespaces are deleted when dropped.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    links: u8,
}

impl Node {
    pub fn create() -> anyhow::Result<Self> {
        let ns = Netns::create("node")?;
        // Links up before addresses (see netns::veth_pair).
        ns.ip(&format!("link add br0 address {BRIDGE_MAC} type bridge"))?;
        ns.ip("link set br0 up")?;
        ns.ip(&format!("addr add {BRIDGE_V4}/24 dev br0"))?;
        ns.ip(&format!("-6 addr add {BRIDGE_V6}/64 dev br0 nodad"))?;
        ns.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        let node = Self { ns, links: 0 };
        node.iptables_restore(kube_proxy::PORTALS)?;
        Ok(node)
    }

    /// Adds a pod with the next free address on the bridge.
    pub fn add_pod(&mut self, name: &str) -> anyhow::Result<PodHandle> {
        let host = self.links + 1;
        self.add_pod_at(name, host)
    }

    /// Adds a pod whose addresses end in `host` (198.18.0.<10+host>, fd00:7a64::<10+host>):
    /// passing the host of a removed pod reuses its IP, as a new pod on a node can.
    pub fn add_pod_at(&mut self, name: &str, host: u8) -> anyhow::Result<PodHandle> {
        self.links += 1;
        let i = self.links;
        if i > 200 || host > 200 {
            bail!("testbed node is full");
        }
        let ns = Netns::create(name)?;
        self.ns.ip(&format!(
            "link add hv{i} type veth peer name eth0 netns {}",
            ns.name()
        ))?;
        self.ns.ip(&format!("link set hv{i} master br0 up"))?;
        let ip = Ipv4Addr::new(198, 18, 0, 10 + host);
        let ip6: Ipv6Addr = format!("fd00:7a64::{:x}", 0x10 + u16::from(host)).parse()?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("addr add {ip}/24 dev eth0"))?;
        ns.ip(&format!("-6 addr add {ip6}/64 dev eth0 nodad"))?;
        ns.ip(&format!("route add default via {BRIDGE_V4}"))?;
        ns.ip(&format!("-6 route add default via {BRIDGE_V6}"))?;
        Ok(PodHandle {
            name: name.to_owned(),
            ns,
            ip,
            ip6,
        })
    }

    /// Adds a client namespace on its own routed link.
    pub fn add_client(&mut self, name: &str) -> anyhow::Result<ClientHandle> {
        self.links += 1;
        let i = self.links;
        let ns = Netns::create(name)?;
        let gw = Ipv4Addr::new(198, 19, i, 1);
        let ip = Ipv4Addr::new(198, 19, i, 2);
        self.ns.ip(&format!(
            "link add hc{i} type veth peer name eth0 netns {}",
            ns.name()
        ))?;
        self.ns.ip(&format!("link set hc{i} up"))?;
        self.ns.ip(&format!("addr add {gw}/24 dev hc{i}"))?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("addr add {ip}/24 dev eth0"))?;
        ns.ip(&format!("route add default via {gw}"))?;
        Ok(ClientHandle { ns, ip })
    }

    /// Removes a pod's sandbox: its network namespace (and with it the veth pair). Returns the
    /// CLOCK_MONOTONIC time the removal returned.
    pub fn remove_pod(&self, pod: PodHandle) -> u64 {
        drop(pod);
        crate::kernel::clock::Clock::monotonic_now_ns()
    }

    /// Programs `svc` → `endpoints` the way kube-proxy's iptables mode does, in one transaction;
    /// `stale` endpoints' chains are deleted.
    pub fn set_endpoints(
        &self,
        svc: &ServicePort,
        endpoints: &[SocketAddr],
        stale: &[SocketAddr],
    ) -> anyhow::Result<()> {
        self.iptables_restore(&kube_proxy::restore_input(
            svc,
            endpoints,
            stale,
            POD_CIDR_V4,
        ))
    }

    pub fn iptables_restore(&self, input: &str) -> anyhow::Result<()> {
        self.pipe_into("iptables-restore", &["-w", "--noflush"], input)
    }

    /// The same through the legacy x_tables backend (kube-proxy on a node whose iptables is
    /// `iptables-legacy`).
    #[cfg(feature = "test-support")]
    pub fn iptables_legacy_restore(&self, input: &str) -> anyhow::Result<()> {
        self.pipe_into("iptables-legacy-restore", &["-w", "--noflush"], input)
    }

    /// ip6tables through the legacy backend (kube-proxy's IPv6 rules on an iptables-legacy node).
    #[cfg(feature = "test-support")]
    pub fn ip6tables_legacy_restore(&self, input: &str) -> anyhow::Result<()> {
        self.pipe_into("ip6tables-legacy-restore", &["-w", "--noflush"], input)
    }

    /// Applies an nft script as one transaction, as kube-proxy's nftables mode does.
    #[cfg(feature = "test-support")]
    pub fn nft_apply(&self, input: &str) -> anyhow::Result<()> {
        self.pipe_into("nft", &["-f", "-"], input)
    }

    /// Runs `program` inside the node namespace with `input` on its stdin.
    fn pipe_into(&self, program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns.name(), program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to run {program} (`./x setup` installs it)"))?;
        child
            .stdin
            .take()
            .with_context(|| format!("{program} has no stdin"))?
            .write_all(input.as_bytes())
            .with_context(|| format!("failed to write to {program}"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("{program} failed"))?;
        if !out.status.success() {
            let head: String = input.lines().take(40).collect::<Vec<_>>().join("\n");
            bail!(
                "{program} failed: {}\ninput (first 40 lines):\n{head}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// A convenient ClusterIP for tests and the demo.
pub fn cluster_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 100, n))
}
