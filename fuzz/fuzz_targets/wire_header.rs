//! The rpmsg header view over arbitrary bytes, in both byte orders: a checked view never
//! reads past the buffer, its payload is exactly `len` bytes, and emitting the fields it read
//! gives bytes that parse back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vamp_rpmsg::wire::{Endian, HEADER_LEN, RpmsgHeader, encode_header};

fuzz_target!(|data: &[u8]| {
    for endian in [Endian::Little, Endian::Big] {
        let Ok(h) = RpmsgHeader::new_checked(data, endian) else {
            // Refused only when the header or the payload it announces does not fit.
            assert!(
                data.len() < HEADER_LEN
                    || HEADER_LEN + RpmsgHeader::new_unchecked(data, endian).len() as usize
                        > data.len()
            );
            continue;
        };
        let (src, dst, len) = (h.src(), h.dst(), h.len());
        let _ = (h.reserved(), h.flags(), h.is_empty());
        assert_eq!(h.payload().len(), len as usize);
        assert!(HEADER_LEN + h.payload().len() <= data.len());
        let encoded = encode_header(endian, src, dst, len);
        assert_eq!(encoded[..8], data[..8]);
        assert_eq!(encoded[12..14], data[12..14]);
        let mut copy = data.to_vec();
        RpmsgHeader::new_unchecked(&mut copy[..], endian).emit(src, dst, len);
        let again = RpmsgHeader::new_checked(&copy[..], endian).expect("an emitted header parses");
        let fields = (
            again.src(),
            again.dst(),
            again.len(),
            again.reserved(),
            again.flags(),
        );
        assert_eq!(fields, (src, dst, len, 0, 0));
        assert_eq!(again.payload(), h.payload());
    }
});
