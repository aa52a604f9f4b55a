//! The hub's topology parser (TOML) on arbitrary text: it parses or says why, never panics;
//! a topology it accepts answers every question about itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vamp_vmm_backend::config::Topology;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let topology = match Topology::parse(text) {
        Ok(t) => t,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    topology.validate().expect("a parsed topology is valid");
    let names: Vec<&str> = topology
        .guests
        .iter()
        .map(|g| g.name.as_str())
        .chain(topology.remotes.iter().map(|r| r.name.as_str()))
        .collect();
    for (i, &name) in names.iter().enumerate() {
        assert_eq!(topology.link_index(name), Some(i), "names are unique");
        let _ = topology.services_for(name).count();
        for &other in &names {
            for channel in &topology.channels {
                for offered in channel.names.iter().flatten() {
                    let _ = topology.offers(name, offered.as_bytes(), other);
                }
            }
            assert!(
                !topology.offers(name, b"x", name),
                "nobody is offered its own names"
            );
        }
    }
});
