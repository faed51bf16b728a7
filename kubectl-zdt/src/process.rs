//! What every long-running command shares: the async runtime and the signal that stops it.

/// The async runtime of a command: two worker threads are plenty for watches and port-forwards.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// Installs SIGINT and SIGTERM handlers now and returns what resolves on either (the kubelet
/// stopping the pod, ^C). Installed when called, not when first awaited: a signal between the
/// two would otherwise take the default action and kill the process without its drain.
pub fn termination() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut i), Ok(mut t)) => {
                tokio::select! {
                    _ = i.recv() => {},
                    _ = t.recv() => {},
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

/// For a command that reads a long stream a window at a time (`analyze`): keeps the memory it
/// frees for its next window instead of handing it back to the kernel. A window's vectors are
/// larger than glibc's largest mmap threshold (32 MiB), so glibc mapped each afresh and unmapped
/// it when freed, and every window paid its page faults again (15 % of a run, perf). With large
/// blocks taken from the heap and the heap never trimmed, a 1 GB stream was analysed 11–37 %
/// faster for a peak 4.5 % higher (BENCHMARKS.md). musl's allocator, the image's, has no such
/// parameters.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
