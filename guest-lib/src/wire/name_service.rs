//! The name-service message (at [`NS_ADDR`]): an endpoint announced or withdrawn by name.
//! [`NameServiceMsg`] is its parsed form, with `parse` and `encode` for the 40 wire bytes.

use super::view::{Field, until_nul};
use super::{Endian, WireError, check_len};

/// The fixed address of the name service on every rpmsg device.
pub const NS_ADDR: u32 = 53;
/// Bytes in a name-service message's name field (including its terminating NUL).
pub const NS_NAME_LEN: usize = 32;
/// Exact payload length of a name-service message. Linux drops any other length.
pub const NS_MSG_LEN: usize = 40;

mod field {
    use super::Field;

    pub const ADDR: Field<u32> = Field::at(32);
    pub const FLAGS: Field<u32> = Field::at(36);
}

/// What a name-service message announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsFlags {
    /// A new service at `addr` (flags 0).
    Create,
    /// The service at `addr` is gone (flags 1).
    Destroy,
}

impl NsFlags {
    /// The wire value.
    pub const fn bits(self) -> u32 {
        match self {
            NsFlags::Create => 0,
            NsFlags::Destroy => 1,
        }
    }
}

/// A name-service message: `{ char name[32]; u32 addr; u32 flags }`, exactly 40 bytes.
///
/// As Linux does, the name ends at the first NUL or at byte 31, whichever comes first: a
/// name without NUL never reads past its field.
///
/// ```
/// use vamp_rpmsg::wire::{Endian, NS_MSG_LEN, NameServiceMsg, NsFlags};
///
/// let announce = NameServiceMsg::new(b"rpmsg-raw", 0x400, NsFlags::Create);
/// let bytes: [u8; NS_MSG_LEN] = announce.encode(Endian::Little);
/// let parsed = NameServiceMsg::parse(&bytes, Endian::Little).unwrap();
/// assert_eq!(parsed, announce);
/// assert_eq!(parsed.name(), b"rpmsg-raw");
///
/// // Flags other than create (0) or destroy (1) are malformed.
/// let mut bad = bytes;
/// bad[36] = 7;
/// assert!(NameServiceMsg::parse(&bad, Endian::Little).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameServiceMsg {
    name: [u8; NS_NAME_LEN],
    /// The announced address.
    pub addr: u32,
    /// Create or destroy.
    pub flags: NsFlags,
}

impl NameServiceMsg {
    /// Builds a message; the name is cut to 31 bytes.
    pub fn new(name: &[u8], addr: u32, flags: NsFlags) -> Self {
        let mut field = [0u8; NS_NAME_LEN];
        let name = until_nul(name);
        let n = name.len().min(NS_NAME_LEN - 1);
        field[..n].copy_from_slice(&name[..n]);
        NameServiceMsg {
            name: field,
            addr,
            flags,
        }
    }

    /// Parses a payload. It must be exactly [`NS_MSG_LEN`] bytes and flags must be 0 or 1.
    pub fn parse(payload: &[u8], endian: Endian) -> Result<Self, WireError> {
        check_len(payload, NS_MSG_LEN)?;
        if payload.len() != NS_MSG_LEN {
            return Err(WireError::Malformed("name-service message is not 40 bytes"));
        }
        let mut name = [0u8; NS_NAME_LEN];
        name.copy_from_slice(&payload[..NS_NAME_LEN]);
        // Force termination, as Linux does, so the name never runs into the address.
        name[NS_NAME_LEN - 1] = 0;
        let flags = match field::FLAGS.get(payload, endian) {
            0 => NsFlags::Create,
            1 => NsFlags::Destroy,
            _ => {
                return Err(WireError::Malformed(
                    "name-service flags are neither create nor destroy",
                ));
            }
        };
        Ok(NameServiceMsg {
            name,
            addr: field::ADDR.get(payload, endian),
            flags,
        })
    }

    /// The name's bytes, up to (not including) the first NUL.
    pub fn name(&self) -> &[u8] {
        until_nul(&self.name)
    }

    /// The raw 32-byte name field.
    pub fn name_field(&self) -> &[u8; NS_NAME_LEN] {
        &self.name
    }

    /// Encodes the message into its 40 wire bytes.
    pub fn encode(&self, endian: Endian) -> [u8; NS_MSG_LEN] {
        let mut out = [0u8; NS_MSG_LEN];
        out[..NS_NAME_LEN].copy_from_slice(&self.name);
        field::ADDR.set(&mut out, endian, self.addr);
        field::FLAGS.set(&mut out, endian, self.flags.bits());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_layout() {
        let m = NameServiceMsg::new(b"rpmsg-client-sample", 0x400, NsFlags::Create);
        let bytes = m.encode(Endian::Little);
        assert_eq!(&bytes[..19], b"rpmsg-client-sample");
        assert_eq!(bytes[19], 0);
        assert_eq!(&bytes[32..40], &[0, 4, 0, 0, 0, 0, 0, 0]);
        let back = NameServiceMsg::parse(&bytes, Endian::Little).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.name(), b"rpmsg-client-sample");
    }

    #[test]
    fn rejects_wrong_length_and_flags() {
        assert!(NameServiceMsg::parse(&[0u8; 39], Endian::Little).is_err());
        assert!(NameServiceMsg::parse(&[0u8; 41], Endian::Little).is_err());
        let mut b = [0u8; 40];
        b[36] = 2;
        assert_eq!(
            NameServiceMsg::parse(&b, Endian::Little).unwrap_err(),
            WireError::Malformed("name-service flags are neither create nor destroy")
        );
    }

    #[test]
    fn name_without_nul_is_cut_at_31() {
        let mut b = [b'x'; 40];
        b[32..40].copy_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0]);
        let m = NameServiceMsg::parse(&b, Endian::Little).unwrap();
        assert_eq!(m.name().len(), 31);
        assert_eq!(m.flags, NsFlags::Destroy);
        assert_eq!(
            NameServiceMsg::new(&[b'y'; 50], 1, NsFlags::Create)
                .name()
                .len(),
            31
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(m) = NameServiceMsg::parse(&bytes, Endian::Little) {
                prop_assert!(m.name().len() < NS_NAME_LEN);
                prop_assert!(!m.name().contains(&0));
            }
        }
    }
}
