//! `cargo xtask e2e --kubeconfig FILE`: the whole product on a real cluster (kind, k3s, a cloud
//! cluster). Builds the image, loads it, installs the agents, deploys two sample workloads
//! behind Services — `fast-exit` (no preStop, exits at once on SIGTERM) and `graceful` (preStop
//! sleep of 5 s, in the form the server's version accepts; then drains) — runs `trace --restart --traffic` on each and checks the verdicts:
//! `fast-exit` shows a positive gap and refused connections the kernel and the traffic loop
//! both counted, the same number; `graceful` shows gap ≤ 0 and no failure. Cleans up after
//! itself (namespace zdt-e2e, then `kubectl zdt uninstall`) unless `--keep`.
//!
//! Needs `kubectl` on PATH (to deploy the samples), and per `--load`: `kind`, `ctr` (run on
//! the node itself, e.g. a single-node k3s) or `skopeo` (push to a registry).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{cmd, image, kube_proxy_view};

const NS: &str = "zdt-e2e";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    /// `kind load image-archive` into the kind cluster `--kind-name`.
    Kind,
    /// `ctr -n k8s.io images import` on this machine (it must be the node, e.g. k3s).
    Ctr,
    /// `skopeo copy` to `--registry-ref`, which the cluster pulls from.
    Registry,
}

#[derive(clap::Args)]
pub struct E2eArgs {
    /// The cluster's kubeconfig.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: PathBuf,

    /// The kubeconfig context [default: its current context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// How the image gets to the nodes.
    #[arg(long, value_enum, default_value_t = Load::Kind)]
    pub load: Load,

    /// The kind cluster's name (with --load kind).
    #[arg(long, default_value = "kind", value_name = "NAME")]
    pub kind_name: String,

    /// Image reference to push to and run (with --load registry), with a version tag.
    #[arg(long, value_name = "REF")]
    pub registry_ref: Option<String>,

    /// Requests per second of the traffic loop.
    #[arg(long, default_value_t = 50)]
    pub rps: u32,

    /// Use this static kubectl-zdt binary instead of building one.
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,

    /// Leave the samples and the agents installed.
    #[arg(long)]
    pub keep: bool,

    /// kube-proxy's metrics (its `--metrics-bind-address`, e.g. http://127.0.0.1:10249/metrics
    /// on the node): print its network-programming histogram for the fast-exit rollout beside
    /// the agents' stamps of the same changes.
    #[arg(long, value_name = "URL")]
    pub kube_proxy_metrics: Option<String>,
}

fn require(tool: &str, why: &str) -> anyhow::Result<()> {
    if cmd::output(Command::new(tool).arg("--help")).is_none()
        && cmd::output(Command::new(tool).arg("version")).is_none()
    {
        bail!("`{tool}` is not on PATH: it is needed {why}");
    }
    Ok(())
}

/// `major.minor` of the API server, from `kubectl version -o json` (`gitVersion` such as
/// `v1.23.17-eks-abc`; managed clusters report `minor` as `"28+"`).
fn server_version(version_json: &str) -> Option<(u32, u32)> {
    let v: Value = serde_json::from_str(version_json).ok()?;
    let server = &v["serverVersion"];
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let from_git = server["gitVersion"].as_str().and_then(|g| {
        let mut parts = g.trim_start_matches('v').split('.');
        Some((number(parts.next()?)?, number(parts.next()?)?))
    });
    from_git.or_else(|| {
        Some((
            number(server["major"].as_str()?)?,
            number(server["minor"].as_str()?)?,
        ))
    })
}

/// graceful's preStop of 5 s: the `sleep` action from Kubernetes 1.30 (older servers reject
/// it), else an exec of the image's own binary, which has a `--sleep` mode (the image has no
/// `sleep`).
fn graceful_prestop(server: (u32, u32)) -> &'static str {
    if server >= (1, 30) {
        "          lifecycle: {preStop: {sleep: {seconds: 5}}}\n"
    } else {
        "          lifecycle: {preStop: {exec: {command: [\"/kubectl-zdt\", \"sample-app\", \"--sleep\", \"5\"]}}}\n"
    }
}

/// The samples, all from the kubectl-zdt image (`sample-app`), so the cluster needs no other.
fn samples(image: &str, server: (u32, u32)) -> String {
    let deployment = |name: &str, args: &str, lifecycle: &str, grace: u32| {
        format!(
            r#"---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: {grace}
      containers:
        - name: app
          image: {image}
          imagePullPolicy: IfNotPresent
          args: {args}
          ports: [{{containerPort: 8080}}]
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
          securityContext: {{runAsNonRoot: true, runAsUser: 65532, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}
{lifecycle}---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
        )
    };
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n{}{}",
        deployment(
            "fast-exit",
            r#"["sample-app", "--on-sigterm", "exit"]"#,
            "",
            10
        ),
        deployment(
            "graceful",
            r#"["sample-app", "--on-sigterm", "drain", "--drain-ms", "2000"]"#,
            graceful_prestop(server),
            30
        ),
    )
}

struct Cluster {
    kubeconfig: PathBuf,
    context: Option<String>,
    binary: PathBuf,
    keep: bool,
}

impl Cluster {
    fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(ctx) = &self.context {
            c.args(["--context", ctx]);
        }
        c
    }

    fn zdt(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(ctx) = &self.context {
            c.args(["--context", ctx]);
        }
        c
    }
}

/// Removes the samples and the agents, whatever happened.
impl Drop for Cluster {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("--keep: leaving namespace {NS} and the agents installed");
            return;
        }
        let _ = cmd::run(self.kubectl().args([
            "delete",
            "namespace",
            NS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ]));
        let _ = cmd::run(self.zdt().arg("uninstall"));
    }
}

/// What one traced rollout showed.
#[derive(Debug, Default)]
struct Seen {
    max_gap_ms: Option<f64>,
    pods: usize,
    client_failed: u64,
    client_refused: u64,
    client_reset: u64,
    kernel_refused: u64,
    kernel_reset: u64,
    verdict: String,
    /// Marks the report says are missing, per pod (why a gap could not be computed).
    missing: Vec<String>,
}

fn seen(report: &Value, saved: &str, workload: &str) -> anyhow::Result<Seen> {
    let rollout = report["rollouts"]
        .as_array()
        .and_then(|rs| {
            rs.iter()
                .find(|r| r["workload"] == format!("deployment/{workload}"))
        })
        .with_context(|| {
            format!(
                "{workload}: the report has no rollout of deployment/{workload} (rollouts: {})",
                report["rollouts"]
            )
        })?;
    let mut s = Seen {
        max_gap_ms: rollout["max_gap_ms"].as_f64(),
        pods: rollout["pods"].as_array().map_or(0, Vec::len),
        verdict: rollout["verdict"].as_str().unwrap_or_default().to_owned(),
        missing: rollout["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["missing"].as_array().is_some_and(|m| !m.is_empty()))
            .map(|p| {
                format!(
                    "{}: missing {}",
                    p["pod"].as_str().unwrap_or("?"),
                    p["missing"]
                )
            })
            .collect(),
        ..Seen::default()
    };
    // The kernels' lines of this rollout's pods only (the agents see every pod of their node),
    // and never the kubelet's probes of them (tagged `probe`, or the other end of a tagged
    // connection): the traffic loop is the only client.
    let pods: std::collections::BTreeSet<&str> = rollout["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["pod"].as_str())
        .collect();
    let lines: Vec<Value> = saved
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect();
    let ends = |o: &Value| {
        (
            o["peer_ip"].to_string(),
            o["peer_port"].to_string(),
            o["ip"].to_string(),
            o["port"].to_string(),
        )
    };
    let probes: std::collections::BTreeSet<_> = lines
        .iter()
        .filter(|o| o["probe"] == "kubelet")
        .map(ends)
        .collect();
    for o in &lines {
        let n = o["count"].as_u64().unwrap_or(1);
        let traffic = o["source"] == "traffic";
        let of_rollout = o["pod"].as_str().is_some_and(|p| pods.contains(p))
            && o["probe"] != "kubelet"
            && !probes.contains(&ends(o));
        match (o["kind"].as_str(), o["reason"].as_str(), traffic) {
            (Some("conn_error"), Some("ECONNREFUSED"), true) => s.client_refused += n,
            (Some("conn_error"), Some("ECONNRESET"), true) => s.client_reset += n,
            (Some("refused"), _, false) if of_rollout => s.kernel_refused += n,
            (Some("reset"), _, false) if of_rollout => s.kernel_reset += n,
            _ => {}
        }
        if traffic && o["kind"] == "conn_error" {
            s.client_failed += n;
        }
    }
    Ok(s)
}

fn trace(cluster: &Cluster, workload: &str, rps: u32, out: &Path) -> anyhow::Result<Seen> {
    Ok(trace_report(cluster, workload, rps, out)?.0)
}

/// The fast-exit rollout with kube-proxy's histogram read before and after it: what each says
/// of the same changes (kube_proxy_view.rs).
fn trace_beside_kube_proxy(
    cluster: &Cluster,
    rps: u32,
    out: &Path,
    url: &str,
) -> anyhow::Result<Seen> {
    let before = kube_proxy_view::scrape(url)?;
    let (seen, report) = trace_report(cluster, "fast-exit", rps, out)?;
    let added = before.added_since(&kube_proxy_view::scrape(url)?);
    eprintln!("fast-exit rollout, how long the node's dataplane took to follow the API:");
    eprintln!(
        "  kube-proxy (network_programming_duration_seconds): {}",
        kube_proxy_view::kube_proxy_view(&added)
    );
    for line in kube_proxy_view::agents_view(&report, "fast-exit") {
        eprintln!("  kubectl-zdt: {line}");
    }
    Ok(seen)
}

fn trace_report(
    cluster: &Cluster,
    workload: &str,
    rps: u32,
    out: &Path,
) -> anyhow::Result<(Seen, Value)> {
    let saved = out.join(format!("{workload}.jsonl"));
    let report_path = out.join(format!("{workload}.json"));
    let mut c = cluster.zdt();
    c.args([
        "trace",
        &format!("deployment/{workload}"),
        "-n",
        NS,
        "--restart",
        "--traffic",
        &rps.to_string(),
        "--timeout",
        "5m",
        "-o",
        "json",
    ])
    .arg("--save")
    .arg(&saved)
    .arg("--html")
    .arg(out.join(format!("{workload}.html")));
    eprintln!(
        "+ kubectl-zdt trace deployment/{workload} -n {NS} --restart --traffic {rps} -o json"
    );
    let output = c
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("failed to run kubectl-zdt trace")?;
    std::fs::write(&report_path, &output.stdout)?;
    if !output.status.success() {
        bail!(
            "{workload}: `kubectl-zdt trace` failed ({}); see its message above",
            output.status
        );
    }
    let report: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "{workload}: the trace output is not the JSON report ({})",
            report_path.display()
        )
    })?;
    let text = std::fs::read_to_string(&saved)
        .with_context(|| format!("failed to read {}", saved.display()))?;
    let s = seen(&report, &text, workload)?;
    eprintln!("{workload}: {s:?}");
    Ok((s, report))
}

fn missing(s: &Seen) -> String {
    if s.missing.is_empty() {
        String::new()
    } else {
        format!("; {}", s.missing.join("; "))
    }
}

/// Both old replicas of a sample must be in the report, else nothing below is meaningful.
fn check_pods(workload: &str, s: &Seen, files: &str) -> anyhow::Result<()> {
    if s.pods < 2 {
        bail!(
            "{workload}: the report holds {} of the 2 replaced pods: the agents missed a pod's termination {files}",
            s.pods
        );
    }
    Ok(())
}

fn check_fast_exit(s: &Seen, out: &Path) -> anyhow::Result<()> {
    let files = format!(
        "(report {0}/fast-exit.json, observations {0}/fast-exit.jsonl)",
        out.display()
    );
    check_pods("fast-exit", s, &files)?;
    match s.max_gap_ms {
        Some(g) if g > 0.0 => {}
        other => bail!(
            "fast-exit: expected a positive gap (the app exits at SIGTERM while kube-proxy still routes to it), the report says max_gap_ms={other:?}, verdict {:?}{} {files}",
            s.verdict,
            missing(s)
        ),
    }
    if s.client_failed == 0 {
        bail!(
            "fast-exit: the traffic loop saw no failed request during a rollout with a positive gap {files}"
        );
    }
    if s.kernel_refused + s.kernel_reset == 0 {
        bail!(
            "fast-exit: the agents saw no refused or reset connection while the traffic loop saw {} failures: are the agents' kernel probes attached? (`kubectl zdt status`) {files}",
            s.client_failed
        );
    }
    if s.client_refused != s.kernel_refused {
        bail!(
            "fast-exit: the traffic loop saw {} refused connections, the agents' kernels {} refused SYNs: they must match {files}",
            s.client_refused,
            s.kernel_refused
        );
    }
    Ok(())
}

fn check_graceful(s: &Seen, out: &Path) -> anyhow::Result<()> {
    let files = format!(
        "(report {0}/graceful.json, observations {0}/graceful.jsonl)",
        out.display()
    );
    check_pods("graceful", s, &files)?;
    match s.max_gap_ms {
        Some(g) if g <= 0.0 => {}
        other => bail!(
            "graceful: expected gap <= 0 (preStop sleep 5 s, then drain), the report says max_gap_ms={other:?}, verdict {:?}{} {files}",
            s.verdict,
            missing(s)
        ),
    }
    if s.client_failed != 0 || s.kernel_refused != 0 {
        bail!(
            "graceful: expected zero failures, the traffic loop saw {} ({} refused, {} reset) and the kernels {} refused {files}",
            s.client_failed,
            s.client_refused,
            s.client_reset,
            s.kernel_refused
        );
    }
    Ok(())
}

pub fn run(args: &E2eArgs) -> anyhow::Result<()> {
    require("kubectl", "to deploy the sample workloads")?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let reference = match (args.load, &args.registry_ref) {
        (Load::Registry, Some(r)) => r.clone(),
        (Load::Registry, None) => bail!("--load registry needs --registry-ref REGISTRY/REPO:TAG"),
        _ => format!("ghcr.io/kubectl-zdt/kubectl-zdt:e2e-{stamp}"),
    };
    match args.load {
        Load::Kind => require("kind", "for --load kind")?,
        Load::Ctr => require("ctr", "for --load ctr")?,
        Load::Registry => require("skopeo", "for --load registry")?,
    }
    let (archive, reference) = image::build(&image::ImageArgs {
        tag: Some(reference),
        output: None,
        binary: args.binary.clone(),
    })?;
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => image::build_binary()?,
    };
    match args.load {
        Load::Kind => cmd::run(
            Command::new("kind")
                .args(["load", "image-archive"])
                .arg(&archive)
                .args(["--name", &args.kind_name]),
        )?,
        Load::Ctr => cmd::run(
            Command::new("ctr")
                .args(["-n", "k8s.io", "images", "import", "--all-platforms"])
                .arg(&archive),
        )?,
        Load::Registry => cmd::run(
            Command::new("skopeo")
                .arg("copy")
                .arg(format!("oci-archive:{}", archive.display()))
                .arg(format!("docker://{reference}")),
        )?,
    }
    let cluster = Cluster {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        binary,
        keep: args.keep,
    };
    cmd::run(
        cluster
            .zdt()
            .args(["install", "--image", &reference, "--timeout", "5m"]),
    )?;
    cmd::run(cluster.zdt().arg("status"))?;
    let manifests = cmd::root().join("target/e2e/samples.yaml");
    std::fs::create_dir_all(cmd::root().join("target/e2e"))?;
    let version = cmd::output(cluster.kubectl().args(["version", "-o", "json"]))
        .and_then(|out| server_version(&out))
        .context("failed to read the API server's version (`kubectl version -o json`)")?;
    std::fs::write(&manifests, samples(&reference, version))?;
    cmd::run(cluster.kubectl().arg("apply").arg("-f").arg(&manifests))?;
    for w in ["fast-exit", "graceful"] {
        cmd::run(cluster.kubectl().args([
            "rollout",
            "status",
            &format!("deployment/{w}"),
            "-n",
            NS,
            "--timeout=180s",
        ]))?;
    }
    let out = cmd::root().join("target/e2e");
    let fast = match &args.kube_proxy_metrics {
        Some(url) => trace_beside_kube_proxy(&cluster, args.rps, &out, url)?,
        None => trace(&cluster, "fast-exit", args.rps, &out)?,
    };
    let graceful = trace(&cluster, "graceful", args.rps, &out)?;
    let checks = [
        check_fast_exit(&fast, &out),
        check_graceful(&graceful, &out),
    ];
    drop(cluster);
    let failures: Vec<String> = checks
        .into_iter()
        .filter_map(Result::err)
        .map(|e| format!("{e:#}"))
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    eprintln!(
        "e2e passed: fast-exit gap {:?} ms with {} refused seen by clients and kernels alike; graceful gap {:?} ms, no failure",
        fast.max_gap_ms, fast.client_refused, graceful.max_gap_ms
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_samples_are_two_deployments_with_services_from_the_one_image() {
        let text = samples("registry.local/zdt:e2e-1", (1, 30));
        assert_eq!(text.matches("kind: Deployment").count(), 2);
        assert_eq!(text.matches("kind: Service").count(), 2);
        assert_eq!(text.matches("image: registry.local/zdt:e2e-1").count(), 2);
        assert_eq!(
            text.matches("preStop").count(),
            1,
            "only graceful has a preStop"
        );
    }

    #[test]
    fn before_1_30_graceful_sleeps_in_an_exec_of_the_sample_binary() {
        let old = samples("registry.local/zdt:e2e-1", (1, 28));
        assert!(
            old.contains(
                r#"preStop: {exec: {command: ["/kubectl-zdt", "sample-app", "--sleep", "5"]}}"#
            ),
            "{old}"
        );
        assert!(!old.contains("sleep: {seconds"), "{old}");
        let new = samples("registry.local/zdt:e2e-1", (1, 30));
        assert!(new.contains("preStop: {sleep: {seconds: 5}}"), "{new}");
    }

    #[test]
    fn the_server_version_reads_as_vendors_report_it() {
        let json = |git: &str, minor: &str| {
            format!(
                r#"{{"clientVersion": {{"gitVersion": "v1.34.1"}}, "serverVersion": {{"major": "1", "minor": "{minor}", "gitVersion": "{git}"}}}}"#
            )
        };
        assert_eq!(
            server_version(&json("v1.23.17-eks-abc", "23+")),
            Some((1, 23))
        );
        assert_eq!(server_version(&json("v1.31.2", "31")), Some((1, 31)));
        assert_eq!(server_version(&json("", "28+")), Some((1, 28)));
        assert_eq!(server_version(r#"{"clientVersion": {}}"#), None);
    }

    #[test]
    fn a_report_and_the_saved_observations_give_what_the_checks_compare() {
        let report = serde_json::json!({"rollouts": [{"workload": "deployment/fast-exit", "max_gap_ms": 420.0,
            "verdict": "unsafe", "pods": [{"pod": "zdt-e2e/fast-exit-a"}, {"pod": "zdt-e2e/fast-exit-b"}]}]});
        let saved = [
            r#"{"kind":"conn_error","reason":"ECONNREFUSED","source":"traffic"}"#,
            r#"{"kind":"conn_error","reason":"ECONNREFUSED","source":"traffic"}"#,
            r#"{"kind":"conn_error","reason":"ETIMEDOUT","source":"traffic"}"#,
            r#"{"kind":"refused","count":2,"pod":"zdt-e2e/fast-exit-a"}"#,
            // Not the traffic loop's: another pod's, and the kubelet's probe (the pod's end
            // untagged, the kubelet's own error tagged) seen on the real cluster.
            r#"{"kind":"refused","pod":"zdt-e2e/graceful-x"}"#,
            r#"{"kind":"refused","pod":"zdt-e2e/fast-exit-b","ip":"198.18.0.30","port":8080,"peer_ip":"198.18.0.1","peer_port":53176}"#,
            r#"{"kind":"conn_error","reason":"ECONNREFUSED","pod":"zdt-e2e/fast-exit-b","ip":"198.18.0.30","port":8080,"peer_ip":"198.18.0.1","peer_port":53176,"probe":"kubelet"}"#,
        ]
        .join("\n");
        let s = seen(&report, &saved, "fast-exit").unwrap();
        assert_eq!(
            (s.client_failed, s.client_refused, s.kernel_refused, s.pods),
            (3, 2, 2, 2)
        );
        let out = Path::new("target/e2e");
        check_fast_exit(&s, out).unwrap();
        let err = check_graceful(&s, out).unwrap_err().to_string();
        assert!(
            err.contains("expected gap <= 0") && err.contains("420"),
            "{err}"
        );
        assert!(
            seen(&report, &saved, "graceful")
                .unwrap_err()
                .to_string()
                .contains("no rollout of deployment/graceful")
        );
    }
}
