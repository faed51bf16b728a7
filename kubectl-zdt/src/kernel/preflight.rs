//! Start-up checks: each missing privilege or kernel feature becomes one line naming the problem
//! and the fix, before anything is loaded.

use std::{collections::BTreeMap, fs, path::Path};

use thiserror::Error;
use zdt_common::{
    KernelOffsets,
    tracepoint::{
        LAYOUTS, Layout, OPTIONAL_LAYOUTS, module_refcnt, percpu, sched_process_exit,
        tcp_retransmit_skb, tcp_send_reset,
    },
};

use super::btf::Btf;

/// Where tracefs is normally mounted, and the legacy debugfs location.
pub const TRACEFS: &str = "/sys/kernel/tracing";
const TRACEFS_LEGACY: &str = "/sys/kernel/debug/tracing";
const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Capability bits (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error(
        "missing capabilities {missing}: the agent loads eBPF programs; run it as root (sudo) or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
    )]
    Privileges { missing: String },
    #[error(
        "this kernel has no BTF ({BTF_VMLINUX} is missing): kubectl-zdt needs Linux >= 5.8 built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf,
    #[error(
        "cannot read this kernel's BTF ({0}): the probes need struct offsets from /sys/kernel/btf/vmlinux"
    )]
    Btf(String),
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}): run `mount -t tracefs nodev {TRACEFS}` (in a pod, mount the host's {TRACEFS})"
    )]
    NoTracefs(String),
    #[error(
        "tracepoint {category}:{name} does not exist on this kernel ({path}): kubectl-zdt needs Linux >= 6.10 for tcp_send_reset with a reset reason"
    )]
    MissingTracepoint {
        category: &'static str,
        name: &'static str,
        path: String,
    },
    #[error(
        "tracepoint {category}:{name} has an unexpected layout (field {field}: {found}, expected offset {offset} size {size}): kubectl-zdt needs Linux >= 6.10 (tcp_send_reset with a reset reason); on a newer kernel, please report it with the contents of {path}"
    )]
    Layout {
        category: &'static str,
        name: &'static str,
        field: &'static str,
        found: String,
        offset: usize,
        size: usize,
        path: String,
    },
}

/// What the checks learnt about this kernel.
#[derive(Debug, Default, Clone)]
pub struct KernelInfo {
    pub tracefs: String,
    pub kernel_release: String,
    /// `enum sk_rst_reason` names as this kernel prints them, read from the format file.
    pub rst_reasons: BTreeMap<u32, String>,
    /// Struct offsets the programs follow, from this kernel's BTF.
    pub offsets: KernelOffsets,
    /// Whether the syscall tracepoints the iptables-legacy and IPVS triggers fall back to exist
    /// with the layout the programs read (`OPTIONAL_LAYOUTS`).
    pub syscall_tracepoints: bool,
}

/// Runs every check, mounting tracefs when it is missing and mounting is allowed. bpffs is not
/// needed: nothing is pinned (the programs detach when the agent exits), so it is not checked.
pub fn check() -> Result<KernelInfo, PreflightError> {
    check_privileges()?;
    if !Path::new(BTF_VMLINUX).exists() {
        return Err(PreflightError::NoBtf);
    }
    let mut offsets = kernel_offsets()?;
    let tracefs = tracefs()?;
    let tracepoints = check_tracepoints(&tracefs)?;
    offsets.retransmit_err = u32::from(tracepoints.retransmit_err);
    offsets.exit_group_dead = u32::from(tracepoints.exit_group_dead);
    offsets.percpu_alloc_ptr = tracepoints.percpu_alloc_ptr;
    offsets.percpu_free_ptr = tracepoints.percpu_free_ptr;
    offsets.module_name_loc = tracepoints.module_name_loc;
    if !tracepoints.retransmit_err {
        tracing::info!(
            "tcp:tcp_retransmit_skb has no `err` field on this kernel: SYN retransmits that failed to leave the node are counted too"
        );
    }
    if !tracepoints.exit_group_dead {
        tracing::info!(
            "sched:sched_process_exit has no `group_dead` field on this kernel: a process's exit is its main thread's"
        );
    }
    raise_memlock();
    Ok(KernelInfo {
        syscall_tracepoints: tracepoints.syscall_tracepoints,
        rst_reasons: tracepoints.rst_reasons,
        tracefs,
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        offsets,
    })
}

/// Resolves the struct members the programs follow from this kernel's BTF.
pub fn kernel_offsets() -> Result<KernelOffsets, PreflightError> {
    let data = fs::read(BTF_VMLINUX).map_err(|e| PreflightError::Btf(e.to_string()))?;
    let btf = Btf::parse(&data).map_err(|e| PreflightError::Btf(e.to_string()))?;
    let off = |s: &str, path: &[&str]| {
        btf.offset(s, path)
            .map_err(|e| PreflightError::Btf(e.to_string()))
    };
    Ok(KernelOffsets {
        sock_net: off("sock", &["__sk_common", "skc_net", "net"])?,
        net_inum: off("net", &["ns", "inum"])?,
        skb_dev: off("sk_buff", &["dev"])?,
        netdev_net: off("net_device", &["nd_net", "net"])?,
        task_nsproxy: off("task_struct", &["nsproxy"])?,
        nsproxy_net: off("nsproxy", &["net_ns"])?,
        task_tgid: off("task_struct", &["tgid"])?,
        task_real_parent: off("task_struct", &["real_parent"])?,
        valid: 1,
        // Tracepoint facts, filled in by `check` from the format files.
        retransmit_err: 0,
        exit_group_dead: 0,
        percpu_alloc_ptr: 0,
        percpu_free_ptr: 0,
        module_name_loc: 0,
        skc_family: off("sock", &["__sk_common", "skc_family"])?,
        skc_state: off("sock", &["__sk_common", "skc_state"])?,
        skc_daddr: off("sock", &["__sk_common", "skc_daddr"])?,
        skc_rcv_saddr: off("sock", &["__sk_common", "skc_rcv_saddr"])?,
        skc_dport: off("sock", &["__sk_common", "skc_dport"])?,
        skc_v6_daddr: off("sock", &["__sk_common", "skc_v6_daddr"])?,
        skc_v6_rcv_saddr: off("sock", &["__sk_common", "skc_v6_rcv_saddr"])?,
        sk_err: off("sock", &["sk_err"])?,
        inet_sport: off("inet_sock", &["inet_sport"])?,
        sk_protocol: off("sock", &["sk_protocol"])?,
        skb_head: off("sk_buff", &["head"])?,
        skb_data: off("sk_buff", &["data"])?,
        skb_network_header: off("sk_buff", &["network_header"])?,
    })
}

fn check_privileges() -> Result<(), PreflightError> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| !has(*bit))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::Privileges {
            missing: missing.join(", "),
        })
    }
}

fn tracefs() -> Result<String, PreflightError> {
    for dir in [TRACEFS, TRACEFS_LEGACY] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(dir.to_owned());
        }
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| PreflightError::NoTracefs(e.desc().to_owned()))?;
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(TRACEFS.to_owned())
}

/// Kernels ≥5.11 account BPF memory to the memory cgroup; older ones need RLIMIT_MEMLOCK raised.
/// Without CAP_SYS_RESOURCE raising it fails, which only matters on those older kernels.
fn raise_memlock() {
    let r = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_MEMLOCK,
        nix::sys::resource::RLIM_INFINITY,
        nix::sys::resource::RLIM_INFINITY,
    );
    if let Err(e) = r {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK ({e}); fine on kernels >= 5.11 with memcg accounting"
        );
    }
}

/// What the tracepoint format files under a tracefs mount say about the records the programs
/// read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tracepoints {
    /// `enum sk_rst_reason` names, from `tcp_send_reset`'s print format.
    pub rst_reasons: BTreeMap<u32, String>,
    /// The syscall tracepoints of the iptables-legacy and IPVS triggers are there.
    pub syscall_tracepoints: bool,
    /// `tcp_retransmit_skb` has `err` (6.18 does, 6.12 does not).
    pub retransmit_err: bool,
    /// `sched_process_exit` has `group_dead` (6.18 does, 6.12 does not).
    pub exit_group_dead: bool,
    /// Where `percpu_alloc_percpu` / `percpu_free_percpu` records keep `ptr`, if at an offset
    /// the programs know (`zdt_common::tracepoint::percpu`); 0 otherwise.
    pub percpu_alloc_ptr: u32,
    pub percpu_free_ptr: u32,
    /// Where `module_get` / `module_put` records keep `name`'s `__data_loc`
    /// (`zdt_common::tracepoint::module_refcnt::NAME_LOC`), 0 if elsewhere or absent (a kernel
    /// built without modules has no `module` events).
    pub module_name_loc: u32,
}

/// `module_refcnt::NAME_LOC` if both `module:module_get` and `module:module_put` keep `name`
/// there, else 0 (the swap of an iptables-legacy replace is then bounded by its per-CPU
/// counters only).
fn module_name_loc(tracefs: &str) -> u32 {
    let loc = |name: &str| {
        fs::read_to_string(format!(
            "{tracefs}/events/{}/{name}/format",
            module_refcnt::CATEGORY
        ))
        .ok()
        .and_then(|f| parse_format_fields(&f).get("name").copied())
    };
    let want = Some((module_refcnt::NAME_LOC as usize, 4));
    match (loc(module_refcnt::GET), loc(module_refcnt::PUT)) {
        (get, put) if get == want && put == want => module_refcnt::NAME_LOC,
        (None, None) => 0,
        other => {
            tracing::debug!(
                "module:module_get/module_put keep `name` at {other:?}, not where the programs look: iptables-legacy swaps are bounded by the rule counters"
            );
            0
        }
    }
}

/// The offset of the 8-byte field `ptr` in the format file of `percpu:<name>` if it is one of
/// `known`, else 0 (and iptables-legacy replaces are then reported at their exit).
fn percpu_ptr(tracefs: &str, name: &str, known: &[u32]) -> u32 {
    let path = format!("{tracefs}/events/{}/{name}/format", percpu::CATEGORY);
    let found = fs::read_to_string(&path)
        .ok()
        .and_then(|f| parse_format_fields(&f).get("ptr").copied());
    match found {
        Some((offset, 8)) if known.iter().any(|&k| k as usize == offset) => offset as u32,
        other => {
            tracing::debug!(
                "percpu:{name} has `ptr` at {other:?}, not where the programs look: iptables-legacy replaces are reported at their exit"
            );
            0
        }
    }
}

/// Checks every layout the programs depend on against the format files under `tracefs`: the
/// required ones must match, the optional ones are noted.
pub fn check_tracepoints(tracefs: &str) -> Result<Tracepoints, PreflightError> {
    let mut out = Tracepoints::default();
    for layout in LAYOUTS {
        let format = check_layout(tracefs, layout)?;
        if layout.name == tcp_send_reset::LAYOUT.name {
            out.rst_reasons = symbolic_values(&format, "REC->reason");
        }
    }
    out.syscall_tracepoints =
        OPTIONAL_LAYOUTS
            .iter()
            .all(|layout| match check_layout(tracefs, layout) {
                Ok(_) => true,
                Err(e) => {
                    tracing::info!(
                        "the dataplane triggers cannot fall back to the syscalls' tracepoints: {e}"
                    );
                    false
                }
            });
    out.retransmit_err = check_layout(tracefs, &tcp_retransmit_skb::ERR_FIELD).is_ok();
    out.exit_group_dead = check_layout(tracefs, &sched_process_exit::GROUP_DEAD_FIELD).is_ok();
    out.percpu_alloc_ptr = percpu_ptr(
        tracefs,
        percpu::ALLOC,
        &[percpu::ALLOC_PTR_WITH_CALL_SITE, percpu::ALLOC_PTR],
    );
    out.percpu_free_ptr = percpu_ptr(tracefs, percpu::FREE, &[percpu::FREE_PTR]);
    out.module_name_loc = module_name_loc(tracefs);
    Ok(out)
}

/// Compares the fields a program reads with the kernel's format file; returns the file.
fn check_layout(tracefs: &str, layout: &Layout) -> Result<String, PreflightError> {
    let path = format!(
        "{tracefs}/events/{}/{}/format",
        layout.category, layout.name
    );
    let format = fs::read_to_string(&path).map_err(|_| PreflightError::MissingTracepoint {
        category: layout.category,
        name: layout.name,
        path: path.clone(),
    })?;
    let fields = parse_format_fields(&format);
    for &(field, offset, size) in layout.fields {
        let found = fields.get(field).copied();
        if found != Some((offset, size)) {
            return Err(PreflightError::Layout {
                category: layout.category,
                name: layout.name,
                field,
                found: match found {
                    Some((o, s)) => format!("offset {o} size {s}"),
                    None => "absent".to_owned(),
                },
                offset,
                size,
                path,
            });
        }
    }
    Ok(format)
}

/// Parses `field:<type> <name>[<n>];\toffset:<o>;\tsize:<s>;` lines into name → (offset, size).
pub fn parse_format_fields(format: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::new();
    for line in format.lines() {
        let mut name = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';') {
            let part = part.trim();
            if let Some(decl) = part.strip_prefix("field:") {
                let last = decl.split_whitespace().last().unwrap_or("");
                name = Some(last.split('[').next().unwrap_or(last).to_owned());
            } else if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
            out.insert(n, (o, s));
        }
    }
    out
}

/// Extracts `__print_symbolic(<expr>, { 0, "A" }, { 1, "B" }, …)` from a format file's print fmt.
pub fn symbolic_values(format: &str, expr: &str) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    let Some(start) = format.find(&format!("__print_symbolic({expr},")) else {
        return out;
    };
    let rest = &format[start..];
    let end = rest.find("})").map_or(rest.len(), |e| e + 1);
    for entry in rest[..end].split('{').skip(1) {
        let entry = entry.trim_end_matches(|c: char| c == '}' || c == ',' || c.is_whitespace());
        if let Some((num, name)) = entry.split_once(',')
            && let Ok(n) = num.trim().parse::<u32>()
        {
            out.insert(
                n,
                name.trim()
                    .trim_matches('}')
                    .trim()
                    .trim_matches('"')
                    .to_owned(),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = "name: tcp_send_reset\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n\nprint fmt: \"r=%s\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 1, \"NO_SOCKET\" }, { 11, \"TCP_ABORT_ON_CLOSE\" })\n";

    #[test]
    fn format_fields_are_parsed_with_array_names_stripped() {
        let f = parse_format_fields(SEND_RESET);
        assert_eq!(f.get("saddr"), Some(&(32, 28)));
        assert_eq!(f.get("reason"), Some(&(28, 4)));
        assert_eq!(f.get("skaddr"), Some(&(16, 8)));
    }

    #[test]
    fn reset_reasons_come_from_the_kernels_own_print_format() {
        let r = symbolic_values(SEND_RESET, "REC->reason");
        assert_eq!(r.get(&1).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(r.get(&11).map(String::as_str), Some("TCP_ABORT_ON_CLOSE"));
        assert_eq!(r.len(), 3);
    }

    /// Format files read off real kernels (Debian's 6.1 and 6.12 booted in QEMU, and the 6.18
    /// these machines run): tests/fixtures/tracefs/<release>/events/<category>/<name>/format.
    fn recorded(release: &str) -> String {
        format!(
            "{}/tests/fixtures/tracefs/{release}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn linux_6_12_is_supported_without_the_newer_optional_fields() {
        let t = check_tracepoints(&recorded("6.12.100+deb12-amd64")).unwrap();
        assert!(!t.retransmit_err, "6.12's tcp_retransmit_skb has no err");
        assert!(
            !t.exit_group_dead,
            "6.12's sched_process_exit has no group_dead"
        );
        assert!(t.syscall_tracepoints);
        assert_eq!(t.rst_reasons.get(&1).map(String::as_str), Some("NO_SOCKET"));
        // The recording has no percpu formats: replaces are then reported at their exit.
        assert_eq!((t.percpu_alloc_ptr, t.percpu_free_ptr), (0, 0));
    }

    #[test]
    fn linux_6_18_has_every_optional_field() {
        let t = check_tracepoints(&recorded("6.18.44-fc-v657")).unwrap();
        assert!(t.retransmit_err && t.exit_group_dead && t.syscall_tracepoints);
        // `call_site` first in the allocation record: `ptr` at 56.
        assert_eq!((t.percpu_alloc_ptr, t.percpu_free_ptr), (56, 24));
        assert_eq!(
            t.rst_reasons.get(&11).map(String::as_str),
            Some("TCP_ABORT_ON_CLOSE")
        );
    }

    #[test]
    fn linux_6_1_is_refused_with_the_version_needed() {
        let e = check_tracepoints(&recorded("6.1.0-56-amd64")).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                PreflightError::Layout {
                    name: "tcp_send_reset",
                    ..
                }
            ),
            "{text}"
        );
        assert!(text.contains("needs Linux >= 6.10"), "{text}");
    }

    #[test]
    fn every_layout_the_programs_read_matches_this_kernel() {
        // Needs tracefs (root); CI runs as root on the target kernel, so this fails loudly
        // rather than skipping if the kernel changes a record.
        let tracefs = tracefs().expect("tracefs");
        for layout in LAYOUTS {
            check_layout(&tracefs, layout).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_percpu_ptr_where_the_programs_do_not_look_turns_early_replace_reports_off() {
        let dir = std::env::temp_dir().join(format!("zdt-percpu-{}", std::process::id()));
        let events = dir.join("events/percpu/percpu_alloc_percpu");
        fs::create_dir_all(&events).unwrap();
        let recorded_format = fs::read_to_string(format!(
            "{}/events/percpu/percpu_alloc_percpu/format",
            recorded("6.18.44-fc-v657")
        ))
        .unwrap();
        let tracefs = dir.to_str().unwrap();
        let known = [percpu::ALLOC_PTR_WITH_CALL_SITE, percpu::ALLOC_PTR];
        fs::write(events.join("format"), &recorded_format).unwrap();
        let found = percpu_ptr(tracefs, "percpu_alloc_percpu", &known);
        fs::write(
            events.join("format"),
            recorded_format.replace("ptr;\toffset:56;", "ptr;\toffset:64;"),
        )
        .unwrap();
        let moved = percpu_ptr(tracefs, "percpu_alloc_percpu", &known);
        let absent = percpu_ptr(tracefs, "percpu_free_percpu", &[percpu::FREE_PTR]);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!((found, moved, absent), (56, 0, 0));
    }

    /// Debian's 6.12 (its tables are modules; recorded in the guest of `cargo xtask ipvs-vm`)
    /// has the module events with `name` where the programs read it; the 6.18 of these
    /// machines, built without modules, has none; a moved `name` turns them off.
    #[test]
    fn the_table_module_bounds_are_used_where_module_events_keep_name_at_20() {
        let debian = recorded("6.12.118+deb12-amd64");
        assert_eq!(module_name_loc(&debian), 20);
        assert_eq!(
            percpu_ptr(
                &debian,
                "percpu_alloc_percpu",
                &[percpu::ALLOC_PTR_WITH_CALL_SITE, percpu::ALLOC_PTR]
            ),
            56
        );
        assert_eq!(module_name_loc(&recorded("6.18.44-fc-v657")), 0);
        let dir = std::env::temp_dir().join(format!("zdt-module-{}", std::process::id()));
        for event in ["module_get", "module_put"] {
            let to = dir.join(format!("events/module/{event}"));
            fs::create_dir_all(&to).unwrap();
            let format =
                fs::read_to_string(format!("{debian}/events/module/{event}/format")).unwrap();
            let format = if event == "module_put" {
                format.replace("name;\toffset:20;", "name;\toffset:24;")
            } else {
                format
            };
            fs::write(to.join("format"), format).unwrap();
        }
        let moved = module_name_loc(dir.to_str().unwrap());
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(moved, 0);
    }

    #[test]
    fn a_moved_field_is_a_layout_error_not_garbage() {
        let dir = std::env::temp_dir().join(format!("zdt-preflight-{}", std::process::id()));
        let events = dir.join("events/tcp/tcp_send_reset");
        fs::create_dir_all(&events).unwrap();
        let layout = &zdt_common::tracepoint::tcp_send_reset::LAYOUT;
        fs::write(events.join("format"), SEND_RESET).unwrap();
        let ok = check_layout(dir.to_str().unwrap(), layout);
        fs::write(
            events.join("format"),
            SEND_RESET.replace("offset:28;", "offset:32;"),
        )
        .unwrap();
        let moved = check_layout(dir.to_str().unwrap(), layout);
        fs::remove_dir_all(&dir).unwrap();
        assert!(ok.is_ok(), "{ok:?}");
        let err = moved.unwrap_err();
        assert!(
            matches!(
                err,
                PreflightError::Layout {
                    field: "reason",
                    offset: 28,
                    ..
                }
            ),
            "{err}"
        );
    }
}
