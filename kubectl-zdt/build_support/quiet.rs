//! What of the eBPF build's output the build script passes on to cargo. aya-build turns every
//! line the inner `cargo build` prints into a `cargo::warning=`, so a build showed ~46
//! "warning: … Compiling core" lines. Cargo's progress lines are kept back unless the eBPF build
//! fails; the compiler's own warnings and every other directive pass.

/// Cargo's status verbs, right-aligned on its progress lines.
const PROGRESS: &[&str] = &[
    "Compiling ",
    "Checking ",
    "Finished ",
    "Fresh ",
    "Blocking ",
    "Updating ",
    "Locking ",
    "Adding ",
    "Downloading ",
    "Downloaded ",
    "Building ",
];

/// Whether `line` (of the build script's stdout) is one of cargo's progress lines relayed as a
/// warning.
pub fn is_progress(line: &str) -> bool {
    let Some(text) = line
        .strip_prefix("cargo::warning=")
        .or_else(|| line.strip_prefix("cargo:warning="))
    else {
        return false;
    };
    let text = text.trim_start();
    PROGRESS.iter().any(|verb| text.starts_with(verb))
}
