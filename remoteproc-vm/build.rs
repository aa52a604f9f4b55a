//! Builds the remote firmware under images/ (its own workspace: no_std, panic = "abort",
//! its own linker script) so that `cargo build` always has the images to embed.
use std::path::PathBuf;
use std::process::Command;

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
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&images)
        .args(["build", "--release", "--bins", "--target-dir"])
        .arg(&target_dir);
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
        "building the firmware under images/ failed"
    );
    println!(
        "cargo:rustc-env=VAMP_IMAGE_DIR={}",
        target_dir.join("release").display()
    );
}
