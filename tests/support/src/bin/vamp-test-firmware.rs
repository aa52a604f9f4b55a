//! `vamp-test-firmware OUTPUT`: writes the firmware image the test remote core boots
//! ([`vamp_test_support::remote_core`]), for the QEMU smokes under tests/provision.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [output] = args.as_slice() else {
        eprintln!("usage: vamp-test-firmware OUTPUT");
        return ExitCode::FAILURE;
    };
    match std::fs::write(output, vamp_test_support::remote_core::firmware()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vamp-test-firmware: {output}: {e}");
            ExitCode::FAILURE
        }
    }
}
