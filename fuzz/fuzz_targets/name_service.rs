//! Name-service messages from arbitrary bytes, in both byte orders: only 40-byte messages
//! with flags 0 or 1 parse; the name ends at the first NUL, at most 31 bytes, as Linux reads
//! it; encoding and parsing again gives the same message. Building one from any bytes never
//! panics and cuts the name the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vamp_rpmsg::wire::{Endian, NS_MSG_LEN, NS_NAME_LEN, NameServiceMsg, NsFlags};

fuzz_target!(|data: &[u8]| {
    for endian in [Endian::Little, Endian::Big] {
        match NameServiceMsg::parse(data, endian) {
            Ok(m) => {
                assert_eq!(data.len(), NS_MSG_LEN);
                let n = data[..NS_NAME_LEN - 1]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(NS_NAME_LEN - 1);
                assert_eq!(m.name(), &data[..n]);
                assert_eq!(m.addr, endian.u32(data[32..36].try_into().unwrap()));
                let flags = endian.u32(data[36..40].try_into().unwrap());
                assert_eq!(m.flags.bits(), flags);
                let back = NameServiceMsg::parse(&m.encode(endian), endian).expect("re-parse");
                assert_eq!(back, m);
            }
            Err(_) => {
                if data.len() == NS_MSG_LEN {
                    let flags = endian.u32(data[36..40].try_into().unwrap());
                    assert!(flags > 1, "refused a valid message");
                }
            }
        }
        let addr = data.len() as u32;
        for flags in [NsFlags::Create, NsFlags::Destroy] {
            let m = NameServiceMsg::new(data, addr, flags);
            assert!(m.name().len() < NS_NAME_LEN && !m.name().contains(&0));
            assert!(data.starts_with(m.name()));
            let back = NameServiceMsg::parse(&m.encode(endian), endian).expect("re-parse");
            assert_eq!(back, m);
        }
    }
});
