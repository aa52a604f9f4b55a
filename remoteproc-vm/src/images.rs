//! The firmware images built from images/ with the normal build, embedded in the binary.

/// Names and ELF bytes of the built-in images.
pub const BUILTIN: &[(&str, &[u8])] = &[
    (
        "echo",
        include_bytes!(concat!(env!("VAMP_IMAGE_DIR"), "/echo")),
    ),
    (
        "matrix",
        include_bytes!(concat!(env!("VAMP_IMAGE_DIR"), "/matrix")),
    ),
    (
        "fault",
        include_bytes!(concat!(env!("VAMP_IMAGE_DIR"), "/fault")),
    ),
    (
        "proxy",
        include_bytes!(concat!(env!("VAMP_IMAGE_DIR"), "/proxy")),
    ),
];

/// The built-in image called `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_image_is_an_elf() {
        for (name, bytes) in super::BUILTIN {
            assert_eq!(&bytes[..4], b"\x7fELF", "{name}");
        }
    }
}
