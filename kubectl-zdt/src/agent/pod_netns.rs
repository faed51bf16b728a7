//! Which network namespace each pod on this node lives in, found the way the kubelet laid it
//! out: every container of a pod runs in a cgroup whose path carries the pod's UID
//! (`…/kubepods-besteffort-pod<uid with _>.slice/…` with the systemd driver,
//! `…/kubepods/besteffort/pod<uid>/…` with cgroupfs), and all of them share the sandbox's
//! network namespace. So the agent (hostPID) reads `/proc/<pid>/cgroup` of the node's
//! processes, and for a process of a wanted pod the inode of `/proc/<pid>/ns/net`: the number
//! the kernel probes report as `netns`.
//!
//! Reading `/proc/<pid>/cgroup` needs no privilege; following `/proc/<pid>/ns/net` passes the
//! kernel's ptrace access check, hence CAP_SYS_PTRACE (docs/security.md). A pod whose
//! namespace is the agent's own (hostNetwork) is never watched: that would report every
//! process of the node.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use jiff::{SignedDuration, Timestamp};

/// A pod's namespace as found in `/proc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// `/proc/<pid>/ns/net` of one of its processes (valid while that process lives).
    pub path: PathBuf,
    pub inum: u32,
    /// When the earliest of the pod's processes in it started (none of the pod's lines can be
    /// older): a namespace number held before by another pod names this one only from then.
    pub started: Option<Timestamp>,
}

/// `starttime` of a `/proc/<pid>/stat` line: clock ticks after boot (field 22; the command
/// name in field 2 may hold spaces and parentheses, so fields are counted after its last `)`).
fn starttime(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The wall time of a process start `ticks` after boot (`hz` ticks a second), `boottime_ns`
/// being CLOCK_BOOTTIME at `now`.
fn wall_of_start(ticks: u64, hz: u64, boottime_ns: u64, now: Timestamp) -> Option<Timestamp> {
    let since_boot = u128::from(ticks) * 1_000_000_000 / u128::from(hz.max(1));
    let ago = u128::from(boottime_ns).checked_sub(since_boot)?;
    now.checked_sub(SignedDuration::from_nanos(i64::try_from(ago).ok()?))
        .ok()
}

/// When process `pid` of `proc` started, as wall time.
fn process_started(proc: &Path, pid: &str) -> Option<Timestamp> {
    let ticks = starttime(&std::fs::read_to_string(proc.join(pid).join("stat")).ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return None;
    }
    let boottime_ns =
        u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?;
    wall_of_start(ticks, hz, boottime_ns, Timestamp::now())
}

/// Scans a `/proc` (the host's, with hostPID) for the namespaces of pods.
#[derive(Clone, Debug)]
pub struct PodNetns {
    proc: PathBuf,
    /// The agent's own namespace (the node's): never a pod's.
    own: Option<u32>,
    /// Pods whose namespace could not be opened, reported once each.
    warned: HashSet<String>,
}

/// The forms a pod UID takes in cgroup paths: as is (cgroupfs driver) and with `_` for `-`
/// (systemd driver, which reserves `-` as the slice separator).
fn needles(uid: &str) -> [String; 2] {
    [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))]
}

/// The UID among `wanted` whose pod cgroup `cgroup` (a `/proc/<pid>/cgroup` file) names.
fn pod_of<'a>(cgroup: &str, wanted: &'a [(String, [String; 2])]) -> Option<&'a str> {
    wanted.iter().find_map(|(uid, forms)| {
        forms
            .iter()
            .any(|n| {
                cgroup.match_indices(n.as_str()).any(|(i, _)| {
                    // The UID must end the path component (`.slice`, `/` or end of line), so
                    // one UID never matches another that it prefixes.
                    let rest = &cgroup[i + n.len()..];
                    rest.is_empty()
                        || rest.starts_with('/')
                        || rest.starts_with(".slice")
                        || rest.starts_with('\n')
                })
            })
            .then_some(uid.as_str())
    })
}

impl PodNetns {
    /// `proc`: usually `/proc`; the agent's own namespace is read from `/proc/self/ns/net`.
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        let proc = proc.into();
        let own = std::fs::metadata(proc.join("self/ns/net"))
            .ok()
            .and_then(|m| u32::try_from(m.ino()).ok());
        Self {
            proc,
            own,
            warned: HashSet::new(),
        }
    }

    /// The namespaces of the pods in `uids` that have a process on this node now. A pod whose
    /// processes are not running yet is simply absent: ask again later.
    pub fn find(&mut self, uids: &[String]) -> HashMap<String, Found> {
        let mut found = HashMap::new();
        if uids.is_empty() {
            return found;
        }
        let wanted: Vec<(String, [String; 2])> =
            uids.iter().map(|u| (u.clone(), needles(u))).collect();
        let Ok(dir) = std::fs::read_dir(&self.proc) else {
            return found;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            // Processes come and go during the scan: a vanished one is skipped.
            let Ok(cgroup) = std::fs::read_to_string(self.proc.join(pid).join("cgroup")) else {
                continue;
            };
            let Some(uid) = pod_of(&cgroup, &wanted) else {
                continue;
            };
            let path = self.proc.join(pid).join("ns/net");
            match std::fs::metadata(&path).map(|m| u32::try_from(m.ino())) {
                Ok(Ok(inum)) if Some(inum) != self.own => {
                    let started = process_started(&self.proc, pid);
                    match found.get_mut(uid) {
                        Some(f) if f.inum == inum => {
                            f.started = match (f.started, started) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            };
                        }
                        Some(_) => {}
                        None => {
                            found.insert(
                                uid.to_owned(),
                                Found {
                                    path,
                                    inum,
                                    started,
                                },
                            );
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    // Without CAP_SYS_PTRACE every pod fails the same way: say it once per pod.
                    if self.warned.insert(uid.to_owned()) {
                        tracing::warn!(
                            "cannot read the network namespace of pod {uid} ({}): {e} (the agent needs hostPID and CAP_SYS_PTRACE, see docs/security.md)",
                            path.display()
                        );
                    }
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn wanted(uids: &[&str]) -> Vec<(String, [String; 2])> {
        uids.iter().map(|u| (u.to_string(), needles(u))).collect()
    }

    #[test]
    fn the_pod_uid_is_found_in_both_cgroup_drivers_layouts() {
        let uid = "5f1b2c3d-0000-4a4a-9b9b-0123456789ab";
        let w = wanted(&["11111111-2222-3333-4444-555555555555", uid]);
        let systemd = "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f1b2c3d_0000_4a4a_9b9b_0123456789ab.slice/cri-containerd-0a1b.scope\n";
        let cgroupfs =
            "0::/kubepods/burstable/pod5f1b2c3d-0000-4a4a-9b9b-0123456789ab/0a1b2c3d4e5f\n";
        // A private cgroup namespace shows the path relative to the agent's own cgroup.
        let relative = "0::/../../kubepods-pod5f1b2c3d_0000_4a4a_9b9b_0123456789ab.slice/cri-containerd-9.scope\n";
        for text in [systemd, cgroupfs, relative] {
            assert_eq!(pod_of(text, &w), Some(uid), "{text}");
        }
        assert_eq!(pod_of("0::/system.slice/containerd.service\n", &w), None);
        assert_eq!(
            pod_of("0::/user.slice/user-0.slice/session-1.scope\n", &w),
            None
        );
    }

    #[test]
    fn a_uid_does_not_match_a_longer_one_it_prefixes() {
        let w = wanted(&["abc"]);
        assert_eq!(pod_of("0::/kubepods/podabcdef/1\n", &w), None);
        assert_eq!(pod_of("0::/kubepods/podabc/1\n", &w), Some("abc"));
    }

    #[test]
    fn a_fake_proc_tree_yields_each_wanted_pod_once_and_never_the_agents_own_namespace() {
        let root = std::env::temp_dir().join(format!("zdt-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |pid: &str, cgroup: &str, ns: &Path| {
            let d = root.join(pid);
            std::fs::create_dir_all(d.join("ns")).unwrap();
            std::fs::write(d.join("cgroup"), cgroup).unwrap();
            // Started 1 and 2 ticks after boot: pid 10 first.
            let ticks = if pid == "10" { 1 } else { 2 };
            std::fs::write(
                d.join("stat"),
                format!("{pid} (sh) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {ticks} 0 0\n"),
            )
            .unwrap();
            std::os::unix::fs::symlink(ns, d.join("ns/net")).unwrap();
        };
        // Two distinct files stand in for two namespaces (their inodes differ).
        std::fs::create_dir_all(&root).unwrap();
        let (ns_a, ns_host) = (root.join("nsA"), root.join("nsHost"));
        std::fs::write(&ns_a, "").unwrap();
        std::fs::write(&ns_host, "").unwrap();
        write("self", "0::/\n", &ns_host);
        write("10", "0::/kubepods/besteffort/poduid-a/c1\n", &ns_a);
        write("11", "0::/kubepods/besteffort/poduid-a/c2\n", &ns_a);
        write("12", "0::/kubepods/besteffort/poduid-h/c1\n", &ns_host);
        write("13", "0::/system.slice/kubelet.service\n", &ns_a);
        let mut r = PodNetns::new(&root);
        let found = r.find(&["uid-a".into(), "uid-h".into(), "uid-missing".into()]);
        let ino = |p: &Path| u32::try_from(std::fs::metadata(p).unwrap().ino()).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found["uid-a"].inum, ino(&ns_a));
        assert!(found["uid-a"].path.starts_with(&root));
        let (a, b) = (
            process_started(&root, "10").unwrap(),
            process_started(&root, "11").unwrap(),
        );
        assert!(a < b);
        // The earliest process (one tick apart; each reading takes its own `now`).
        assert!(found["uid-a"].started.is_some_and(|t| t < b), "{found:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_process_start_is_read_after_its_command_and_placed_on_the_wall_clock() {
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 1 0 123456 1000 100 18446744073709551615";
        assert_eq!(starttime(stat), Some(123_456));
        assert_eq!(starttime("4242 (short"), None);
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        // 1234.56 s after boot, now 1300 s after boot: 65.44 s ago.
        assert_eq!(
            wall_of_start(123_456, 100, 1_300_000_000_000, now),
            Some(now - SignedDuration::from_millis(65_440))
        );
        assert_eq!(wall_of_start(123_456, 100, 1_000_000_000_000, now), None);
    }
}
