//! Builds the remote firmware under images/ (its own workspace: no_std, panic = "abort",
//! its own linker script) so that `cargo build` always has the images to embed, for the
//! architecture the binary is built for: a KVM remote runs on the host's own architecture.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware's target for a host architecture: the x86 images are built for the host's
/// Linux target (whose precompiled `core` every Rust install has), the arm64 ones for bare
/// metal.
fn firmware_target(arch: &str) -> &'static str {
    match arch {
        "x86_64" => "x86_64-unknown-linux-gnu",
        "aarch64" => "aarch64-unknown-none",
        other => panic!(
            "vamp's KVM remotes run on x86_64 and aarch64 hosts; there is no firmware platform for {other}"
        ),
    }
}

/// Whether the toolchain has a precompiled `core` for `target` (rustup's `rustup target add`);
/// without it, `core` and `alloc` are built from the toolchain's sources (`-Zbuild-std`, as
/// Debian's rustc with its rust-src package has to).
fn has_precompiled_core(target: &str) -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .join("lib")
        .is_dir()
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let images = manifest.join("../images");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    let target_dir = out.join("images-target");
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "link.ld",
        "link-r5.ld",
        "build.rs",
        ".cargo",
    ] {
        println!("cargo:rerun-if-changed={}", images.join(path).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../guest-lib/src").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest.join("../guest-lib/Cargo.toml").display()
    );
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("set by cargo");
    let target = firmware_target(&arch);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&images)
        .args([
            "build",
            "--release",
            "--bins",
            "--target",
            target,
            "--target-dir",
        ])
        .arg(&target_dir);
    if !has_precompiled_core(target) {
        cmd.args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        // Build-std is an unstable cargo feature.
        .env("RUSTC_BOOTSTRAP", "1");
    }
    // The outer build's settings are for the host programs, not for the firmware.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_PANIC",
        "CARGO_PROFILE_DEV_PANIC",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the firmware images");
    assert!(
        status.success(),
        "building the firmware under images/ for {target} failed (for an arm64 host: \
         `rustup target add aarch64-unknown-none`, or a toolchain with rust-src; see the README)"
    );
    println!(
        "cargo:rustc-env=VAMP_IMAGE_DIR={}",
        target_dir.join(target).join("release").display()
    );
}
