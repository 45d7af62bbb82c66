//! Any text as a CIDR allow-list, one entry a line: never panics; a refusal stays short; every
//! parsed network allows its own first address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::client_ip::{allowed, parse_cidr_list};

fuzz_target!(|data: &str| {
    let entries: Vec<String> = data.split('\n').map(str::to_owned).collect();
    match parse_cidr_list(&entries) {
        Ok(nets) => {
            for net in &nets {
                assert!(allowed(net.network(), std::slice::from_ref(net)), "{net}");
            }
        }
        Err(msg) => assert!(msg.len() <= 300, "{} bytes", msg.len()),
    }
});
