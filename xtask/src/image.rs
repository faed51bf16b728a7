//! `cargo xtask image`: the agent image (also the CLI and the traffic loop: one static binary)
//! as an OCI image layout archive, built without a container engine: a static musl build of
//! kubectl-zdt, one uncompressed layer holding `/kubectl-zdt`, the config, the manifest, the
//! index, all in one deterministic tar. `ctr images import`, `kind load image-archive`,
//! `skopeo copy oci-archive:…` and `docker load` read it (the archive also carries Docker's
//! `manifest.json`).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::cmd;

/// The static target the image's binary is built for.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

#[derive(clap::Args)]
pub struct ImageArgs {
    /// The image reference to record in the archive [default:
    /// ghcr.io/kubectl-zdt/kubectl-zdt:v<version>, what `kubectl zdt install` uses].
    #[arg(long, value_name = "REF")]
    pub tag: Option<String>,

    /// Where to write the archive [default: target/image/kubectl-zdt.oci.tar].
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Package this already built static binary instead of building one.
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
}

pub fn default_tag() -> String {
    format!(
        "ghcr.io/kubectl-zdt/kubectl-zdt:v{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Installs what a static musl build needs: the Rust target and musl's gcc wrapper.
pub fn musl_prerequisites() -> anyhow::Result<()> {
    if cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_none_or(|t| !t.lines().any(|l| l.trim() == TARGET))
    {
        cmd::run(Command::new("rustup").args(["target", "add", TARGET]))?;
    }
    if cmd::output(Command::new("musl-gcc").arg("--version")).is_none() {
        // ring (TLS to the API server) compiles C code: the musl target needs musl's gcc
        // wrapper.
        if nix_is_root() && cmd::output(Command::new("apt-get").arg("--version")).is_some() {
            cmd::run(Command::new("apt-get").args(["install", "-y", "musl-tools"]))?;
        } else {
            bail!("musl-gcc is missing: install musl-tools (`sudo apt-get install musl-tools`)");
        }
    }
    Ok(())
}

/// Builds the static binary (the eBPF programs embedded) and returns its path.
pub fn build_binary() -> anyhow::Result<PathBuf> {
    musl_prerequisites()?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--locked",
        "-p",
        "kubectl-zdt",
        "--target",
        TARGET,
    ]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| cmd::root().join("target"), PathBuf::from);
    Ok(target_dir.join(format!("{TARGET}/release/kubectl-zdt")))
}

fn nix_is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0")
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A tar entry with fixed owner and time, so the same binary always gives the same digests.
fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
        .with_context(|| format!("failed to add {path} to the image archive"))
}

/// The OCI image layout archive for `binary`, recorded as `reference`.
pub fn archive(binary: &[u8], reference: &str) -> anyhow::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    append(&mut layer, "kubectl-zdt", 0o755, binary)?;
    let layer = layer.into_inner().context("failed to finish the layer")?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/kubectl-zdt"],
            "Cmd": ["agent"],
            "Labels": {
                "org.opencontainers.image.title": "kubectl-zdt",
                "org.opencontainers.image.version": env!("CARGO_PKG_VERSION"),
                "org.opencontainers.image.source": "https://github.com/kubectl-zdt/kubectl-zdt"
            }
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "cargo xtask image"}]
    }))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer.len()}]
    }))?;
    let manifest_digest = sha256(&manifest);
    let tag = reference
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": reference,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    }))?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let docker = serde_json::to_vec(&json!([{
        "Config": blob(&config_digest),
        "RepoTags": [reference],
        "Layers": [blob(&layer_digest)]
    }]))?;
    let mut out = tar::Builder::new(Vec::new());
    append(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    append(&mut out, "index.json", 0o644, &index)?;
    append(&mut out, "manifest.json", 0o644, &docker)?;
    append(&mut out, &blob(&manifest_digest), 0o644, &manifest)?;
    append(&mut out, &blob(&config_digest), 0o644, &config)?;
    append(&mut out, &blob(&layer_digest), 0o644, &layer)?;
    out.into_inner()
        .context("failed to finish the image archive")
}

/// Builds (or takes) the binary and writes the archive; returns its path and the reference.
pub fn build(args: &ImageArgs) -> anyhow::Result<(PathBuf, String)> {
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => build_binary()?,
    };
    let bytes = std::fs::read(&binary)
        .with_context(|| format!("failed to read the binary {}", binary.display()))?;
    let reference = args.tag.clone().unwrap_or_else(default_tag);
    if reference.ends_with(":latest") || !reference.rsplit('/').next().unwrap_or("").contains(':') {
        bail!(
            "{reference}: name the image with a version tag (not latest): the DaemonSet uses imagePullPolicy IfNotPresent"
        );
    }
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| cmd::root().join("target/image/kubectl-zdt.oci.tar"));
    write(&output, &archive(&bytes, &reference)?)?;
    eprintln!("image {reference} written to {}", output.display());
    Ok((output, reference))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("failed to write {}", path.display()))
}

pub fn run(args: &ImageArgs) -> anyhow::Result<()> {
    build(args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut a = tar::Archive::new(archive);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().display().to_string();
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (path, data)
            })
            .collect()
    }

    #[test]
    fn the_archive_is_a_valid_oci_layout_whose_digests_match_and_which_is_reproducible() {
        let binary = b"\x7fELF not really";
        let reference = "registry.local/zdt/kubectl-zdt:e2e-1";
        let a = archive(binary, reference).unwrap();
        assert_eq!(a, archive(binary, reference).unwrap(), "reproducible");
        let files = entries(&a);
        // Every blob is stored under its own digest.
        for (path, data) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256(data), format!("sha256:{hex}"), "{path}");
            }
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["io.containerd.image.name"], reference);
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "e2e-1"
        );
        let blob = |d: &serde_json::Value| {
            &files[&format!(
                "blobs/sha256/{}",
                d.as_str().unwrap().trim_start_matches("sha256:")
            )]
        };
        let manifest: serde_json::Value = serde_json::from_slice(blob(&m["digest"])).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(blob(&manifest["config"]["digest"])).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/kubectl-zdt"]));
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );
        // The layer holds the binary, executable, at the root.
        let layer = entries(blob(&manifest["layers"][0]["digest"]));
        assert_eq!(layer["kubectl-zdt"], binary);
        let docker: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(docker[0]["RepoTags"][0], reference);
    }
}
