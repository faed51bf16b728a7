//! The build script keeps the eBPF build's progress lines back (they reached every `cargo
//! build` as ~46 warnings) and passes its real warnings and directives on.

#[path = "../../build_support/quiet.rs"]
mod quiet;

#[test]
fn only_cargos_progress_lines_are_kept_back() {
    for progress in [
        "cargo::warning=   Compiling core v0.0.0 (/root/.rustup/toolchains/x/lib/rustlib/src/rust/library/core)",
        "cargo::warning=   Compiling zdt-ebpf v0.1.0 (/work/zdt-ebpf)",
        "cargo::warning=    Finished `release` profile [optimized] target(s) in 1.31s",
        "cargo:warning=    Blocking waiting for file lock on build directory",
    ] {
        assert!(quiet::is_progress(progress), "{progress}");
    }
    for kept in [
        "cargo::rerun-if-changed=/work/zdt-ebpf",
        "cargo::warning=warning: unused variable: `ctx`",
        "cargo::warning=   --> zdt-ebpf/src/main.rs:12:5",
        "cargo::warning=error: could not compile `zdt-ebpf` (bin \"zdt\")",
        "Compiling is not a directive",
    ] {
        assert!(!quiet::is_progress(kept), "{kept}");
    }
}
