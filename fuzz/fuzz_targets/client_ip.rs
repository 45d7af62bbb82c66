//! Any `X-Forwarded-For` values (one a line) from a trusted or an untrusted peer: never panics;
//! an untrusted peer is the client whatever it sends; the answer is the peer or a written hop.
#![no_main]

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use tokengate::client_ip::{canonical, resolve};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let proxies: Vec<IpNet> = ["10.0.0.0/8", "fd00::/8", "::ffff:172.16.0.0/108"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let peers: [IpAddr; 4] = [
        "10.1.2.3".parse().unwrap(),
        "fd00::1".parse().unwrap(),
        "172.16.9.9".parse().unwrap(),
        "203.0.113.5".parse().unwrap(),
    ];
    let peer = peers[usize::from(pick) % peers.len()];
    let values: Vec<&str> = text.split('\n').collect();
    let got = resolve(peer, values.iter().copied(), &proxies);
    if peer == peers[3] {
        assert_eq!(got, peer);
    } else if got != canonical(peer) {
        // Whatever came from the header was written there, maybe with a port or mapped.
        let written = text.split([',', '\n']).map(str::trim).any(|hop| {
            hop.parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
                .is_some_and(|ip| canonical(ip) == got)
        });
        assert!(written, "{got} not in {text:?}");
    }
});
