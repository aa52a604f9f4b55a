/// Byte order of a link's multi-byte fields.
///
/// remoteproc-managed rpmsg is legacy virtio and therefore native-endian; a device that
/// negotiated VIRTIO_F_VERSION_1 (vhost-user) is little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endian {
    /// Little-endian (VIRTIO_F_VERSION_1).
    #[default]
    Little,
    /// Big-endian (legacy virtio on a big-endian machine).
    Big,
}

impl Endian {
    /// The byte order of the machine this code runs on (legacy virtio).
    pub const NATIVE: Endian = if cfg!(target_endian = "big") {
        Endian::Big
    } else {
        Endian::Little
    };

    /// Picks the byte order from whether VIRTIO_F_VERSION_1 was negotiated.
    pub const fn for_virtio(version_1: bool) -> Endian {
        if version_1 {
            Endian::Little
        } else {
            Endian::NATIVE
        }
    }

    /// Reads a u16 from the first two bytes of `b`.
    #[inline]
    pub fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(b),
            Endian::Big => u16::from_be_bytes(b),
        }
    }

    /// Reads a u32.
    #[inline]
    pub fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        }
    }

    /// Reads a u64.
    #[inline]
    pub fn u64(self, b: [u8; 8]) -> u64 {
        match self {
            Endian::Little => u64::from_le_bytes(b),
            Endian::Big => u64::from_be_bytes(b),
        }
    }

    /// Encodes a u16.
    #[inline]
    pub fn u16_bytes(self, v: u16) -> [u8; 2] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// Encodes a u32.
    #[inline]
    pub fn u32_bytes(self, v: u32) -> [u8; 4] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// Encodes a u64.
    #[inline]
    pub fn u64_bytes(self, v: u64) -> [u8; 8] {
        match self {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        }
    }

    /// Converts a value as stored in memory (read with a native load) to this order's value.
    #[inline]
    pub fn from_raw_u16(self, raw: u16) -> u16 {
        self.u16(raw.to_ne_bytes())
    }

    /// Converts a value to its in-memory form for a native store.
    #[inline]
    pub fn to_raw_u16(self, v: u16) -> u16 {
        u16::from_ne_bytes(self.u16_bytes(v))
    }

    /// Converts a u32 as stored in memory to this order's value.
    #[inline]
    pub fn from_raw_u32(self, raw: u32) -> u32 {
        self.u32(raw.to_ne_bytes())
    }

    /// Converts a u32 to its in-memory form for a native store.
    #[inline]
    pub fn to_raw_u32(self, v: u32) -> u32 {
        u32::from_ne_bytes(self.u32_bytes(v))
    }

    /// Converts a u64 as stored in memory to this order's value.
    #[inline]
    pub fn from_raw_u64(self, raw: u64) -> u64 {
        self.u64(raw.to_ne_bytes())
    }

    /// Converts a u64 to its in-memory form for a native store.
    #[inline]
    pub fn to_raw_u64(self, v: u64) -> u64 {
        u64::from_ne_bytes(self.u64_bytes(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trips() {
        for e in [Endian::Little, Endian::Big] {
            assert_eq!(e.from_raw_u16(e.to_raw_u16(0x1234)), 0x1234);
            assert_eq!(e.from_raw_u32(e.to_raw_u32(0x1234_5678)), 0x1234_5678);
            assert_eq!(
                e.from_raw_u64(e.to_raw_u64(0x1122_3344_5566_7788)),
                0x1122_3344_5566_7788
            );
        }
        assert_eq!(Endian::Little.u32_bytes(1), [1, 0, 0, 0]);
        assert_eq!(Endian::Big.u32_bytes(1), [0, 0, 0, 1]);
        assert_eq!(Endian::for_virtio(true), Endian::Little);
    }
}
