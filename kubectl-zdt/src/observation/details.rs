//! The kind-specific fields of a line, typed: one struct per family of kinds, each field named
//! once (its Rust name is its JSON key), so a reader cannot ask for a key no producer writes.
//!
//! A field is read from any line, whatever its kind, as readers did when these were a JSON map.
//! A value that does not read as its type, or would not write back to the same JSON, stays
//! verbatim among the line's unknown fields (and reads as absent), so every line writes back
//! as it was read.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::refs::{PodRef, PodUid, WorkloadRef};

/// Declares a family's struct: optional fields whose names are their JSON keys, read from and
/// written to a line's map of kind-specific fields.
macro_rules! family {
    (
        $(#[$meta:meta])*
        $name:ident, $empty:ident {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty>, )*
        }

        static $empty: $name = $name { $( $field: None, )* };

        impl $name {
            /// The JSON keys of the family.
            pub const KEYS: &'static [&'static str] = &[$( stringify!($field) ),*];

            /// The family's fields in `map`, `None` when it has none. A value that does not
            /// read back exactly is left out (it stays in the map).
            fn read(map: &Map<String, Value>) -> Option<Box<Self>> {
                let mut any = false;
                let f = Self { $( $field: exact(map, stringify!($field), &mut any), )* };
                any.then(|| Box::new(f))
            }

            fn write(&self, map: &mut Map<String, Value>) {
                $( put(map, stringify!($field), &self.$field); )*
            }

            /// Removes from `map` the keys read into `self`.
            fn remove_read(&self, map: &mut Map<String, Value>) {
                $( if self.$field.is_some() { map.remove(stringify!($field)); } )*
            }
        }
    };
}

/// `map[key]` as a `T` when it writes back to the same JSON value.
fn exact<T: Serialize + for<'de> Deserialize<'de>>(
    map: &Map<String, Value>,
    key: &str,
    any: &mut bool,
) -> Option<T> {
    let raw = map.get(key)?;
    let v = T::deserialize(raw).ok()?;
    let same = serde_json::to_value(&v).is_ok_and(|back| back == *raw);
    *any |= same;
    same.then_some(v)
}

fn put<T: Serialize>(map: &mut Map<String, Value>, key: &str, v: &Option<T>) {
    if let Some(v) = v
        && let Ok(v) = serde_json::to_value(v)
    {
        map.insert(key.to_owned(), v);
    }
}

/// A time carried as text in a kind-specific field: RFC 3339 UTC with nine fractional digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub Timestamp);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(self.0))
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map(Time).map_err(serde::de::Error::custom)
    }
}

family! {
    /// Process and socket lines from the kernel probes: `signal`, `exec`, `exit`,
    /// `listener_open`, `listener_closed`.
    ProcessFields, EMPTY_PROCESS {
        /// The process (`signal`: its target).
        pid: u64,
        /// The program's name (`exec`, `exit`).
        comm: String,
        /// Who sent a `signal`, and its pid.
        sender: String,
        sender_pid: u64,
        /// The address a listener is bound to (`0.0.0.0`, `::` or the pod's).
        bind: String,
    }
}

family! {
    /// What the agent knows of a kernel line beyond the event: its network namespace, the
    /// client's pod, how it was aggregated (`refused`, `reset`, `conn_error`,
    /// `syn_retransmit`, and `netns` on every kernel line).
    KernelFields, EMPTY_KERNEL {
        /// The network namespace's inode.
        netns: u64,
        /// `netns_gone`: the node-side interface removed.
        ifname: String,
        /// `"client"`: the client gave up connecting (`conn_error`).
        gave_up: String,
        /// `"kubelet"`: the node's kubelet probing the pod.
        probe: String,
        /// The client, when it is a pod of the agent's node.
        peer_pod: PodRef,
        peer_pod_uid: PodUid,
        /// `"traffic"`: a line of kubectl-zdt's own traffic loop.
        source: String,
        /// An aggregated line after ring-buffer loss: its events happened since then.
        lost_since: Time,
        /// A line the journal folded: the time of its last event.
        last_time: Time,
    }
}

family! {
    /// `loss`: which probe lost events, and since when.
    LossFields, EMPTY_LOSS {
        since: Time,
        program: String,
    }
}

family! {
    /// The agent's own lines: `agent_start` and `clock_sync`.
    AgentFields, EMPTY_AGENT {
        /// `zdt.observation/v1`.
        schema: String,
        version: String,
        kernel: String,
        /// The probes attached.
        probes: Vec<String>,
        /// The namespaces watched.
        watch: Vec<String>,
        clock: String,
        /// `clock_sync`: how far the monotonic → wall offset moved.
        offset_change_ns: i64,
    }
}

family! {
    /// The node's dataplane: `dataplane_mode`, `dataplane_added`, `dataplane_removed`,
    /// `flow_new` (docs/dataplane.md).
    DataplaneFields, EMPTY_DATAPLANE {
        /// `iptables-nft`, `iptables-legacy`, `nftables`, `ipvs` or `none`.
        mode: String,
        modes: Vec<String>,
        routes: u64,
        triggers: Vec<String>,
        protocol: String,
        /// Trigger → line.
        detect_ns: u64,
        commits: u64,
        /// `"nodeport"` on a node port's route.
        frontend: String,
        /// The Service's `namespace/name`, when the route names it.
        service_name: String,
        read_from: String,
        swap_bounds: String,
        syscall_ns: u64,
        reported_at: String,
        /// `flow_new`: the first connection of the line.
        first_time: Time,
    }
}

family! {
    /// Kubernetes objects as the API watches saw them: `pod_ready`, `pod_deleting`, the
    /// endpoint kinds, `rollout_start`.
    ApiFields, EMPTY_API {
        /// `deployment/web`.
        workload: WorkloadRef,
        /// The container serving the Service.
        container: String,
        readiness_probe: ReadinessProbe,
        grace_period_s: u64,
        /// The pod's `pod-template-hash` or `controller-revision-hash`.
        template_hash: String,
        /// One of kubectl-zdt's own pods.
        instrument: bool,
        /// The node the pod ran on.
        pod_node: String,
        /// Endpoint kinds: the Service's ClusterIP.
        cluster_ip: String,
        /// `"relist"` (found after a watch gap), or on `listener_open` `"already_listening"`.
        seen: String,
        /// `rollout_start`: the workload's namespace, `spec.replicas`, strategy type and the
        /// rolling update's bounds as the object has them (a number or a percentage).
        namespace: String,
        replicas: u64,
        strategy: String,
        max_unavailable: Value,
        max_surge: Value,
    }
}

/// A container's readiness probe, as the stream carries it (`readiness_probe` on `pod_ready`,
/// docs/observations.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadinessProbe {
    /// `none`, `tcp_socket`, `http_get`, `grpc`, `exec` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The probed port: a number, or the container port's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_s: Option<u64>,
}

/// The kind-specific fields of a line, by family. A line without any takes one pointer; the
/// families it has, a box each. Two are equal when they write the same fields.
#[derive(Clone, Debug, Default)]
pub struct Details(Option<Box<Families>>);

/// Read and write access to one family.
macro_rules! access {
    ($($field:ident, $field_mut:ident, $ty:ident, $empty:ident;)*) => {
        #[derive(Clone, Debug, Default)]
        struct Families {
            $( $field: Option<Box<$ty>>, )*
        }

        impl Details {
            $(
                /// The family's fields (all absent when the line has none).
                pub fn $field(&self) -> &$ty {
                    self.0
                        .as_ref()
                        .and_then(|f| f.$field.as_deref())
                        .unwrap_or(&$empty)
                }

                /// The family's fields, to set them.
                pub fn $field_mut(&mut self) -> &mut $ty {
                    self.0.get_or_insert_default().$field.get_or_insert_default()
                }
            )*

            /// Takes the typed fields out of the line's kind-specific `map`: what is left
            /// is unknown, kept verbatim.
            pub(super) fn take(map: &mut Map<String, Value>) -> Self {
                // Most lines carry no kind-specific field: nothing to look up.
                if map.is_empty() {
                    return Self(None);
                }
                let f = Families { $( $field: $ty::read(map), )* };
                $( if let Some(g) = &f.$field { g.remove_read(map); } )*
                let any = false $( || f.$field.is_some() )*;
                Self(any.then(|| Box::new(f)))
            }

            /// Writes the typed fields into `map`.
            pub(super) fn write(&self, map: &mut Map<String, Value>) {
                let Some(f) = &self.0 else { return };
                $( if let Some(g) = &f.$field { g.write(map); } )*
            }

            /// Every key some family types.
            pub const KEYS: &'static [&'static [&'static str]] = &[$( $ty::KEYS ),*];
        }

        impl PartialEq for Details {
            fn eq(&self, other: &Self) -> bool {
                $( self.$field() == other.$field() )&&*
            }
        }
    };
}

access! {
    process, process_mut, ProcessFields, EMPTY_PROCESS;
    kernel, kernel_mut, KernelFields, EMPTY_KERNEL;
    loss, loss_mut, LossFields, EMPTY_LOSS;
    agent, agent_mut, AgentFields, EMPTY_AGENT;
    dataplane, dataplane_mut, DataplaneFields, EMPTY_DATAPLANE;
    api, api_mut, ApiFields, EMPTY_API;
}
