//! The example config in configs/ parses and says what it should.

use std::path::{Path, PathBuf};
use vamp_remoteproc::config::{BackendSpec, ImageRef, Recovery, RemotesConfig};
use vamp_remoteproc::image::ImageSource;
use vamp_rpmsg::transport::RingFormat;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/remotes.toml")
}

#[test]
fn example_config_loads() {
    let c = RemotesConfig::load(example()).unwrap();
    let names: Vec<_> = c.remotes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["echo", "matrix", "r5-0"]);
    let echo = c.remote("echo").unwrap();
    assert_eq!(echo.image, ImageRef::Builtin("echo".into()));
    assert_eq!(
        echo.backend,
        BackendSpec::Kvm {
            memory: 16 << 20,
            ring: RingFormat::Split
        }
    );
    assert_eq!(echo.recovery, Recovery::Restart { max_restarts: 3 });
    let matrix = c.remote("matrix").unwrap();
    assert_eq!(
        matrix.backend,
        BackendSpec::Kvm {
            memory: 32 << 20,
            ring: RingFormat::Split
        }
    );
    assert_eq!(matrix.recovery, Recovery::None);
    let r5 = c.remote("r5-0").unwrap();
    assert_eq!(
        r5.backend,
        BackendSpec::Sysfs {
            path: "/sys/class/remoteproc/remoteproc0".into()
        }
    );
    assert_eq!(
        r5.image,
        ImageRef::Path("/srv/firmware/r5_0_echo.elf".into())
    );
    // Built-in names resolve against the images built into the program.
    for r in &c.remotes {
        if let ImageRef::Builtin(_) = r.image {
            let src = r
                .image
                .source(&r.name, vamp_remoteproc::images::builtin)
                .unwrap();
            assert!(matches!(src, ImageSource::Static(b) if b.starts_with(b"\x7fELF")));
        }
    }
}

#[test]
fn missing_file_is_named() {
    let err = RemotesConfig::load("/nonexistent/remotes.toml").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/remotes.toml"),
        "{err}"
    );
}

#[test]
fn a_kvm_remote_may_ask_for_packed_rings() {
    let c = RemotesConfig::parse("[[remote]]\nname = \"a\"\nimage = \"echo\"\nring = \"packed\"\n")
        .unwrap();
    assert!(matches!(
        c.remotes[0].backend,
        BackendSpec::Kvm {
            ring: RingFormat::Packed,
            ..
        }
    ));
    let e = RemotesConfig::parse("[[remote]]\nname = \"a\"\nimage = \"echo\"\nring = \"round\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("ring") && e.contains("neither"), "{e}");
    let e = RemotesConfig::parse(
        "[[remote]]\nname = \"c\"\nimage = \"/x.elf\"\nbackend = \"sysfs\"\nsysfs_path = \"/s\"\nring = \"packed\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("only for backend = \"kvm\""), "{e}");
}
