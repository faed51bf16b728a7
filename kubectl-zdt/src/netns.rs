//! Network namespaces as the kernel names them: the inode number its events carry. Low level,
//! shared by the agent (`--watch-netns`) and the dataplane watcher (the namespace it reads).

use anyhow::Context as _;

/// The inode number identifying the network namespace at `path` (what the kernel reports).
/// Anything else at `path` (a regular file, a directory, another kind of namespace) is refused:
/// its inode would silently match nothing.
pub fn netns_inode(path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::{fd::AsRawFd as _, unix::fs::MetadataExt as _};
    const HINT: &str = "give /run/netns/NAME or /proc/PID/ns/net";
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        let why = if e.kind() == std::io::ErrorKind::NotFound {
            "no such network namespace".to_owned()
        } else {
            format!("cannot open it: {e}")
        };
        anyhow::anyhow!("{shown}: {why} ({HINT})")
    })?;
    let on = nix::sys::statfs::fstatfs(&file)
        .with_context(|| format!("{shown}: cannot tell what it is"))?;
    if on.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        let what = if file.metadata().is_ok_and(|m| m.is_dir()) {
            "a directory"
        } else {
            "a file"
        };
        anyhow::bail!("{shown} is {what}, not a network namespace ({HINT})");
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor's namespace type.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        anyhow::bail!(
            "{shown} is {}, not a network namespace ({HINT})",
            namespace_kind(kind)
        );
    }
    let meta = file
        .metadata()
        .with_context(|| format!("{shown}: cannot read its inode"))?;
    u32::try_from(meta.ino()).with_context(|| format!("{shown}: inode does not fit 32 bits"))
}

/// What NS_GET_NSTYPE answered, in words.
fn namespace_kind(kind: i32) -> &'static str {
    match kind {
        libc::CLONE_NEWNS => "a mount namespace",
        libc::CLONE_NEWPID => "a PID namespace",
        libc::CLONE_NEWUTS => "a UTS namespace",
        libc::CLONE_NEWIPC => "an IPC namespace",
        libc::CLONE_NEWUSER => "a user namespace",
        libc::CLONE_NEWCGROUP => "a cgroup namespace",
        libc::CLONE_NEWTIME => "a time namespace",
        _ => "a namespace of another kind",
    }
}

/// The inode of the calling thread's network namespace.
pub fn own_netns() -> anyhow::Result<u32> {
    netns_inode(std::path::Path::new("/proc/thread-self/ns/net"))
}
