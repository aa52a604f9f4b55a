//! Links the firmware with its own script: no C runtime, fixed addresses. The x86-64 images
//! are built for the host's Linux target and linked by its C compiler driver; the ARM images
//! for bare-metal targets, linked by LLVM's linker directly (`link.ld` for the arm64 KVM
//! remote, which shares the x86 remote's memory map; `link-r5.ld` for a Cortex-R5).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let os = std::env::var("CARGO_CFG_TARGET_OS").expect("cargo sets CARGO_CFG_TARGET_OS");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=link-r5.ld");
    let script = if arch == "arm" {
        "link-r5.ld"
    } else {
        "link.ld"
    };
    if os == "none" {
        for arg in ["--build-id=none", "--no-undefined"] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
        println!("cargo:rustc-link-arg-bins=-T{dir}/{script}");
    } else {
        for arg in [
            "-nostartfiles",
            "-nostdlib",
            "-static",
            "-Wl,--build-id=none",
        ] {
            println!("cargo:rustc-link-arg-bins={arg}");
        }
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/{script}");
    }
}
