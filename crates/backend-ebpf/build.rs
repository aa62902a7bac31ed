//! Puts the kernel-side object at `$OUT_DIR/flowtrack.bpf.o`.
//!
//! With nightly + rust-src + bpf-linker present, aya-build compiles `ebpf/`
//! from source. Otherwise (or with `FLOWTRACK_EBPF_PREBUILT=1`) the object
//! committed in `prebuilt/` is used, so a library user needs neither nightly
//! nor LLVM. `scripts/ebpf-object.sh` regenerates that object and CI checks
//! it is not stale.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const EBPF_PACKAGE: &str = "flowtrack-ebpf";
const EBPF_BINARY: &str = "flowtrack";
const OBJECT: &str = "flowtrack.bpf.o";

fn main() -> aya_build::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let prebuilt = manifest_dir.join("prebuilt").join(OBJECT);
    let ebpf_dir = manifest_dir.join("../../ebpf").canonicalize()?;
    let common_dir = manifest_dir.join("../ebpf-common").canonicalize()?;
    println!("cargo:rerun-if-env-changed=FLOWTRACK_EBPF_PREBUILT");
    println!("cargo:rerun-if-changed={}", prebuilt.display());
    println!(
        "cargo:rerun-if-changed={}",
        common_dir.join("src").display()
    );

    let wants_prebuilt = env::var_os("FLOWTRACK_EBPF_PREBUILT").is_some_and(|v| v == "1");
    if wants_prebuilt || !toolchain_present() {
        if !wants_prebuilt {
            println!(
                "cargo:warning=nightly with rust-src and bpf-linker not found: using the prebuilt eBPF object"
            );
        }
        fs::copy(&prebuilt, out_dir.join(OBJECT))?;
        return Ok(());
    }

    // aya-build runs `cargo build --package flowtrack-ebpf` in the current
    // directory; ebpf/ is a workspace of its own, so build from there.
    env::set_current_dir(&ebpf_dir)?;
    let root_dir = ebpf_dir.to_string_lossy().into_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;
    let built = out_dir.join(EBPF_BINARY);
    if built.exists() {
        fs::copy(&built, out_dir.join(OBJECT))?;
    } else {
        // AYA_BUILD_SKIP=1 (e.g. for editors): aya-build built nothing.
        fs::copy(&prebuilt, out_dir.join(OBJECT))?;
    }
    Ok(())
}

/// Whether `rustup run nightly` has rust-src and `bpf-linker` is on PATH.
fn toolchain_present() -> bool {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output();
    let Ok(sysroot) = sysroot else { return false };
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let rust_src = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    let linker = Command::new("bpf-linker").arg("--version").output();
    rust_src.is_dir() && linker.is_ok_and(|output| output.status.success())
}
