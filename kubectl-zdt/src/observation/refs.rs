//! The names an observation refers to Kubernetes objects by: a pod (`namespace/name`) and its
//! UID, a workload (`deployment/web`), a Service (`ClusterIP:port` or `namespace/name`).
//!
//! Each is written as the string the stream has always carried and read back from any string:
//! a line written before these types existed, or by hand, reads as it did, and writes back the
//! same text. The `/` is split in one place, here.

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements `Display`, `Serialize`, `Deserialize` and conversions for a newtype over the
/// `String` the stream carries.
macro_rules! text_ref {
    ($name:ident) => {
        impl $name {
            /// The text as the stream carries it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(r: $name) -> String {
                r.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self)
            }
        }
    };
}

/// `(namespace, name)` of a `namespace/name` (or `(kind, name)` of a `kind/name`), or `None`
/// when the text has no `/`. The one place names are split, also for readers of raw text (the
/// journal's filters, command-line arguments).
pub fn split_name(s: &str) -> Option<(&str, &str)> {
    s.split_once('/')
}

/// A pod: `namespace/name` (`pod`, `peer_pod`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef(String);
text_ref!(PodRef);

impl PodRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}"))
    }

    /// The namespace, when the text names one (`default` of `default/web-1`).
    pub fn namespace(&self) -> Option<&str> {
        split_name(&self.0).map(|(ns, _)| ns)
    }

    /// The pod's name (`web-1` of `default/web-1`; all of a text without `/`).
    pub fn name(&self) -> &str {
        split_name(&self.0).map_or(&self.0, |(_, n)| n)
    }
}

/// A pod's UID (`pod_uid`, `peer_pod_uid`): it tells a pod from a later one of the same name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);
text_ref!(PodUid);

/// A workload: `kind/name` in kubectl's lower-case form, e.g. `deployment/web`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef(String);
text_ref!(WorkloadRef);

impl WorkloadRef {
    pub fn new(kind: &str, name: &str) -> Self {
        Self(format!("{kind}/{name}"))
    }

    /// `(kind, name)`, when the text has both.
    pub fn kind_and_name(&self) -> Option<(&str, &str)> {
        split_name(&self.0)
    }
}

/// A Service named by the API: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);
text_ref!(ServiceName);

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}/{name}"))
    }

    /// `(namespace, name)`, when the text has both.
    pub fn namespace_and_name(&self) -> Option<(&str, &str)> {
        split_name(&self.0)
    }
}

/// The `service` of a line: the frontend as a client dials it (kernel and dataplane lines:
/// `ClusterIP:port`, an external IP or a node port) or the Service's API name (endpoint lines).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceRef {
    Frontend(SocketAddr),
    /// `namespace/name`; also any text that is not an address written the way Rust writes it.
    Named(ServiceName),
}

impl ServiceRef {
    /// The frontend address, on lines that carry one.
    pub fn frontend(&self) -> Option<SocketAddr> {
        match self {
            ServiceRef::Frontend(a) => Some(*a),
            ServiceRef::Named(_) => None,
        }
    }

    /// The API name, on lines that carry one.
    pub fn name(&self) -> Option<&ServiceName> {
        match self {
            ServiceRef::Frontend(_) => None,
            ServiceRef::Named(n) => Some(n),
        }
    }

    /// Reads any text: an address only when it writes back to the same text, so every line
    /// reads and writes back unchanged.
    pub fn parse(s: &str) -> Self {
        match s.parse::<SocketAddr>() {
            Ok(a) if a.to_string() == s => ServiceRef::Frontend(a),
            _ => ServiceRef::Named(ServiceName(s.to_owned())),
        }
    }
}

impl From<&str> for ServiceRef {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<SocketAddr> for ServiceRef {
    fn from(a: SocketAddr) -> Self {
        ServiceRef::Frontend(a)
    }
}

impl From<ServiceName> for ServiceRef {
    fn from(n: ServiceName) -> Self {
        ServiceRef::Named(n)
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceRef::Frontend(a) => a.fmt(f),
            ServiceRef::Named(n) => n.fmt(f),
        }
    }
}

impl Serialize for ServiceRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ServiceRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_reads_back_as_the_text_it_was() {
        for s in [
            "10.96.0.10:80",
            "[fd00::a]:80",
            "0.0.0.0:30080",
            "default/web",
            "[fd00:0::a]:80",
            "web",
        ] {
            let r = ServiceRef::parse(s);
            assert_eq!(r.to_string(), s);
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ServiceRef>(&json).unwrap(), r);
        }
        assert!(ServiceRef::parse("[fd00::a]:80").frontend().is_some());
        // Written differently from how Rust writes it: kept as text, not rewritten.
        assert!(ServiceRef::parse("[fd00:0::a]:80").frontend().is_none());
        assert_eq!(
            ServiceRef::parse("default/web")
                .name()
                .and_then(ServiceName::namespace_and_name),
            Some(("default", "web"))
        );
    }

    #[test]
    fn a_pod_splits_once() {
        let p = PodRef::from("shop/web-1");
        assert_eq!((p.namespace(), p.name()), (Some("shop"), "web-1"));
        let bare = PodRef::from("web-1");
        assert_eq!((bare.namespace(), bare.name()), (None, "web-1"));
        assert_eq!(PodRef::new("shop", "web-1"), p);
    }
}
