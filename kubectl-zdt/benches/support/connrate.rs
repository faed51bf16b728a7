//! The connection rate a node keeps while the agent watches all of its traffic: a generator of
//! short connections between two namespaces (client threads connect, read the server's EOF
//! and close; server threads accept and close at once), pinned to the CPUs, running
//! throughout; measurement windows alternate agent off / agent on in pairs (off-on, then
//! on-off, so that a drift of the machine weighs on both sides alike), and each pair gives one
//! ratio. The result is the median ratio with a distribution-free 95 % confidence interval
//! (order statistics of the pairs), robust to the other work of a shared machine, which moves
//! both windows of a pair alike.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kubectl_zdt::testbed::{Netns, netns::NsThread};

/// Client and server threads, all pinned to CPU 0 (a segment sent on a veth is received in the
/// sender's softirq, so the softirqs stay there too). With the servers on another CPU every
/// connection woke a thread across CPUs, an inter-processor interrupt, which on a VM exits to
/// the hypervisor: on the 2-vCPU build VM a connection then cost more on two CPUs (~16 000/s)
/// than on one (~21 000/s), and the rate swung ±15 % from one window to the next.
/// `ZDT_CONNRATE_CLIENTS` / `ZDT_CONNRATE_SERVERS` change the counts.
pub fn clients() -> usize {
    env_count("ZDT_CONNRATE_CLIENTS", 2)
}
pub fn servers() -> usize {
    env_count("ZDT_CONNRATE_SERVERS", 2)
}

/// A positive count from the environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// What one window measured: connections per second, and per second of CPU the machine was
/// busy (user, system, interrupts: not idle, not stolen by the hypervisor).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub per_s: f64,
    pub per_busy_s: f64,
}

/// The machine's busy CPU time so far, in clock ticks (`/proc/stat`).
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum()
}

/// The generator: counts completed connections until dropped.
pub struct Generator {
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<NsThread<()>>,
    to: SocketAddr,
    client: Netns,
}

/// Pins the calling thread to CPU `cpu` (modulo the CPUs there are).
pub fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu % (last_cpu() + 1)).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) - 1
}

impl Generator {
    /// Starts the server in `server` (listening on `to`) and the clients in `client`.
    pub fn start(client: Netns, server: &Netns, to: SocketAddr) -> anyhow::Result<Self> {
        let done = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        // A steady state: the server closes first and keeps at most this many TIME_WAIT
        // sockets (beyond it the kernel closes them at once), so the runs do not slow down as
        // the table fills.
        server.run_in(|| std::fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "4096"))??;
        let listener = server.run_in(move || TcpListener::bind(to))??;
        let mut threads = Vec::new();
        for _ in 0..servers() {
            let l = listener.try_clone()?;
            let stop = stop.clone();
            threads.push(server.spawn(move || {
                pin(0);
                for c in l.incoming() {
                    drop(c);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            })?);
        }
        for _ in 0..clients() {
            let (done, errors, stop) = (done.clone(), errors.clone(), stop.clone());
            threads.push(client.spawn(move || {
                pin(0);
                let mut byte = [0u8; 1];
                while !stop.load(Ordering::Relaxed) {
                    match TcpStream::connect(to) {
                        Ok(mut c) => {
                            // EOF: the server has closed its end.
                            let _ = c.read(&mut byte);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })?);
        }
        Ok(Self {
            done,
            errors,
            stop,
            threads,
            to,
            client,
        })
    }

    /// Connections completed during `secs` from now, per second.
    pub fn rate(&self, secs: f64) -> f64 {
        self.window(secs).per_s
    }

    /// Connections completed during `secs` from now, per second and per busy CPU second.
    pub fn window(&self, secs: f64) -> Window {
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        let (c0, b0, t0) = (
            self.done.load(Ordering::Relaxed),
            busy_ticks(),
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (c1, b1, t1) = (
            self.done.load(Ordering::Relaxed),
            busy_ticks(),
            Instant::now(),
        );
        let n = (c1 - c0) as f64;
        Window {
            per_s: n / (t1 - t0).as_secs_f64(),
            per_busy_s: n / ((b1.saturating_sub(b0)) as f64 / ticks).max(1e-9),
        }
    }

    /// Connects that failed so far (none expected).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Stops every thread (one connection per server thread wakes its accept).
    pub fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let to = self.to;
        self.client.run_in(move || {
            for _ in 0..servers() {
                let _ = TcpStream::connect(to);
            }
        })?;
        for t in self.threads {
            t.join()?;
        }
        Ok(())
    }
}

/// Median of `v` and a distribution-free 95 % confidence interval for it: the order
/// statistics k and n + 1 − k, k the largest with P(Binomial(n, ½) < k) ≤ 2.5 % (30 pairs:
/// the 10th and the 21st).
pub fn median_ci(v: &mut [f64]) -> anyhow::Result<(f64, f64, f64)> {
    let n = v.len();
    anyhow::ensure!(
        n >= 6,
        "{n} pairs: a 95 % interval of the median needs at least 6"
    );
    v.sort_by(f64::total_cmp);
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // P(X = i) for X ~ Binomial(n, 1/2), summed until it passes 2.5 %.
    let mut p = 0.5f64.powi(n as i32);
    let mut below = 0.0;
    let mut k = 0;
    while below + p <= 0.025 {
        below += p;
        k += 1;
        p *= (n - k + 1) as f64 / k as f64;
    }
    let k = k.max(1);
    Ok((median, v[k - 1], v[n - k]))
}

/// Two namespaces `<name>-client` and `<name>-server` joined by a veth pair, at .1 and .2 of
/// `subnet` (a /24 as "a.b.c"), and those addresses.
pub fn namespaces(name: &str, subnet: &str) -> anyhow::Result<(Netns, Netns, Ipv4Addr, Ipv4Addr)> {
    let client = Netns::create(&format!("{name}-client"))?;
    let server = Netns::create(&format!("{name}-server"))?;
    let (c, s) = (format!("{subnet}.1"), format!("{subnet}.2"));
    kubectl_zdt::testbed::veth_pair(
        &client,
        &server,
        &[&format!("{c}/24")],
        &[&format!("{s}/24")],
    )?;
    Ok((
        client,
        server,
        c.parse().context("client address")?,
        s.parse().context("server address")?,
    ))
}
