//! The listeners a pod already had when the agent found its network namespace. A new pod's app
//! often listens within milliseconds of its start, before the agent has found the pod's
//! namespace and told the probes to watch it, so the kernel's `listener_open` is never seen; its
//! namespace's `/proc/<pid>/net/tcp{,6}` still lists the listening sockets. Each becomes a
//! `listener_open` whose time is only known to lie between the pod's creation and now: it
//! is written as the middle of that span with half its width as the uncertainty, so a node
//! routing to the pod after the span is certainly after the open.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use jiff::Timestamp;

use super::pods::PodRef;
use crate::observation::{Kind, NodeName, Observation};

/// TCP_LISTEN in `/proc/net/tcp`'s `st` column.
const LISTEN: &str = "0A";

/// The listening sockets in a `/proc/<pid>/net/tcp` or `tcp6` table.
pub fn parse(table: &str) -> Vec<(IpAddr, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != LISTEN {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some((address(addr)?, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// The kernel prints the address as 32-bit words in host byte order.
fn address(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0)?).into()),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// The listeners of the namespace of process directory `proc_pid` (`/proc/<pid>`), as
/// `listener_open` observations of pod `pod`'s namespace `inum` known to have opened between
/// `since` and `now`. They name the pod themselves: their time lies before now, perhaps before
/// the number's previous holder went, where the namespace number alone would name that one.
pub fn already_open(
    proc_pid: &Path,
    inum: u32,
    pod: Option<&PodRef>,
    since: Timestamp,
    now: Timestamp,
    node: &NodeName,
) -> Vec<Observation> {
    let mut found: Vec<(IpAddr, u16)> = ["net/tcp", "net/tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(proc_pid.join(t)).ok())
        .flat_map(|t| parse(&t))
        .collect();
    found.sort();
    found.dedup();
    let since = since.min(now);
    let half = now.duration_since(since).as_nanos().max(0) / 2;
    let middle = since
        .checked_add(jiff::SignedDuration::from_nanos(
            i64::try_from(half).unwrap_or(i64::MAX),
        ))
        .unwrap_or(now);
    found
        .into_iter()
        .map(|(bind, port)| {
            let mut o = Observation::new(Kind::ListenerOpen, middle, node.clone());
            if !bind.is_unspecified() {
                o.ip = Some(bind);
            }
            o.port = Some(port);
            o.uncertainty_ns = Some(u64::try_from(half).unwrap_or(u64::MAX));
            o.details.process_mut().bind = Some(bind.to_string());
            o.details.kernel_mut().netns = Some(inum.into());
            o.details.api_mut().seen = Some("already_listening".to_owned());
            if let Some(p) = pod {
                o.pod = Some(p.pod.clone().into());
                o.pod_uid = Some(p.uid.clone().into());
            }
            o
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0B0012C6:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000B0012C6:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_with_their_address_and_port() {
        assert_eq!(
            parse(TCP),
            [
                ("0.0.0.0".parse().unwrap(), 8080),
                ("127.0.0.1".parse().unwrap(), 3306)
            ]
        );
        assert_eq!(
            parse(TCP6),
            [
                ("::".parse().unwrap(), 80),
                ("::ffff:198.18.0.11".parse().unwrap(), 443)
            ]
        );
        assert!(parse("garbage\n0: zz:zz 0 0A").is_empty());
    }

    #[test]
    fn an_open_listener_is_placed_between_the_pods_creation_and_now() {
        let dir = std::env::temp_dir().join(format!("zdt-listeners-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net")).unwrap();
        std::fs::write(dir.join("net/tcp"), TCP).unwrap();
        std::fs::write(dir.join("net/tcp6"), TCP6).unwrap();
        let since = Timestamp::from_second(1_800_000_000).unwrap();
        let now = since + jiff::SignedDuration::from_millis(1_200);
        let pod = PodRef {
            pod: "default/web-new".into(),
            uid: "uid-new".into(),
        };
        let obs = already_open(
            &dir,
            4026532000,
            Some(&pod),
            since,
            now,
            &NodeName("vm".into()),
        );
        assert_eq!(obs.len(), 4);
        let first = &obs[0];
        assert_eq!(first.kind, Kind::ListenerOpen);
        assert_eq!(first.time, since + jiff::SignedDuration::from_millis(600));
        assert_eq!(first.uncertainty_ns, Some(600_000_000));
        assert_eq!(first.port, Some(8080));
        assert_eq!(first.ip, None, "a wildcard bind names no address");
        assert_eq!(first.details.kernel().netns, Some(4026532000));
        assert_eq!(
            first.details.api().seen.as_deref(),
            Some("already_listening")
        );
        assert_eq!(obs[1].ip, Some("127.0.0.1".parse().unwrap()));
        assert!(
            obs.iter()
                .all(|o| o.pod.as_deref() == Some("default/web-new")
                    && o.pod_uid.as_deref() == Some("uid-new"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
