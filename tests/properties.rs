//! Properties of every parser that sees untrusted bytes: tokens, the `Authorization` header,
//! CIDR lists, client addresses, registry paths, JSON bodies, names, the config file, request
//! ids and one-time passwords. Each property runs `CASES` generated cases (override with
//! `PROPTEST_CASES`); failures found once are kept as plain `#[test]`s under `regressions`.

use proptest::prelude::*;

/// Cases per property: enough to find shallow bugs, few enough that the binary stays fast in
/// a debug build.
const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(CASES),
        // Found failures are kept as plain tests in `regressions` instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text with the characters parsers care about, more often than `any::<String>()` gives them.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,80}",
        "[%./@:a-fA-F0-9,\\[\\] -]{0,60}",
    ]
}

mod token_format {
    use super::*;
    use tokengate::token::{checksum, PlainToken, TokenFormatError, TokenKey, RANDOM_LEN};

    fn prefix() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_]{1,16}"
    }

    fn random_part() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]{30}"
    }

    fn token(prefix: &str, random: &str) -> String {
        format!("{prefix}{random}{}", checksum(random))
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn parse_never_panics(prefix in prefix(), s in hostile_text()) {
            let _ = PlainToken::parse(&prefix, &s);
            let _ = TokenKey::parse_hex(&s);
        }

        #[test]
        fn well_formed_tokens_parse_and_round_trip(prefix in prefix(), random in random_part()) {
            let s = token(&prefix, &random);
            let t = PlainToken::parse(&prefix, &s).expect("a well-formed token parses");
            prop_assert_eq!(t.expose(), s.as_str());
            prop_assert_eq!(t.key(), TokenKey::of(&s));
            prop_assert_eq!(TokenKey::parse_hex(&t.key().0), Some(t.key()));
            prop_assert!(s.starts_with(&t.redacted(&prefix)));
            let debug = format!("{t:?}");
            prop_assert!(!debug.contains(&random), "{}", debug);
        }

        #[test]
        fn generated_tokens_parse(prefix in prefix()) {
            let t = PlainToken::generate(&prefix);
            prop_assert_eq!(PlainToken::parse(&prefix, t.expose()), Ok(t));
        }

        /// CRC32 catches every single-character change, so none of them is accepted (the
        /// weaker "or it parses to another key" never has to be used).
        #[test]
        fn any_single_character_change_is_refused(
            prefix in prefix(),
            random in random_part(),
            at in any::<prop::sample::Index>(),
            with in any::<char>(),
        ) {
            let s = token(&prefix, &random);
            let chars: Vec<char> = s.chars().collect();
            let i = at.index(chars.len());
            prop_assume!(chars[i] != with);
            let mut changed = chars.clone();
            changed[i] = with;
            let changed: String = changed.into_iter().collect();
            let got = PlainToken::parse(&prefix, &changed);
            prop_assert!(got.is_err(), "{changed} was accepted");
            if i >= prefix.len() && with.is_ascii_alphanumeric() {
                prop_assert_eq!(got, Err(TokenFormatError::Checksum));
            }
        }

        #[test]
        fn a_token_of_another_length_is_refused(prefix in prefix(), body in "[A-Za-z0-9]{0,80}") {
            prop_assume!(body.len() != RANDOM_LEN + tokengate::token::CHECKSUM_LEN);
            prop_assert_eq!(
                PlainToken::parse(&prefix, &format!("{prefix}{body}")),
                Err(TokenFormatError::Length)
            );
        }
    }
}

mod authorization {
    use super::*;
    use base64::Engine;
    use tokengate::auth::{parse_authorization, AuthHeader, AuthHeaderError};

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn scheme_case(scheme: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<bool>(), scheme.len()).prop_map(move |upper| {
            scheme
                .chars()
                .zip(upper)
                .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics(value in hostile_text()) {
            let _ = parse_authorization(&value);
            let _ = parse_authorization(&format!("Basic {value}"));
            let _ = parse_authorization(&format!("Basic {}", b64(&value)));
        }

        #[test]
        fn any_bytes_through_a_header_value_never_panic(bytes in any::<Vec<u8>>()) {
            if let Ok(v) = axum::http::HeaderValue::from_bytes(&bytes) {
                if let Ok(s) = v.to_str() {
                    let _ = parse_authorization(s);
                }
            }
        }

        /// The name ends at the first `:`; the password keeps every later one.
        #[test]
        fn basic_round_trips_user_and_password(
            scheme in scheme_case("basic"),
            name in "[ -9;-~]{0,20}",
            left in "[ -~]{0,20}",
            right in "[ -~]{0,20}",
            pad in " {0,3}",
        ) {
            let password = format!("{left}:{right}");
            let header = format!("{scheme} {pad}{}{pad}", b64(&format!("{name}:{password}")));
            match parse_authorization(&header) {
                Ok(AuthHeader::Basic { name: n, password: p }) => {
                    prop_assert_eq!(n, name);
                    prop_assert_eq!(p, password);
                }
                _ => prop_assert!(false, "{header} did not parse as Basic"),
            }
        }

        #[test]
        fn basic_without_a_colon_is_a_wrong_password(text in "[ -9;-~]{0,40}") {
            let header = format!("Basic {}", b64(&text));
            let refused = matches!(parse_authorization(&header), Err(AuthHeaderError::Basic));
            prop_assert!(refused, "{}", header);
        }

        #[test]
        fn bearer_gives_the_trimmed_token(scheme in scheme_case("bearer"), token in "[!-~]{0,60}", pad in " {0,3}") {
            let header = format!("{scheme} {pad}{token}{pad}");
            prop_assert!(parse_authorization(&header) == Ok(AuthHeader::Bearer(&token)));
        }

        #[test]
        fn other_schemes_are_refused(scheme in "[A-Za-z]{1,10}", rest in "[ -~]{0,40}") {
            prop_assume!(!scheme.eq_ignore_ascii_case("basic") && !scheme.eq_ignore_ascii_case("bearer"));
            let header = format!("{scheme} {rest}");
            let refused = matches!(parse_authorization(&header), Err(AuthHeaderError::Scheme));
            prop_assert!(refused, "{}", header);
        }
    }
}

/// Addresses and networks, shared by the CIDR and client-address properties.
mod nets {
    use super::*;
    use ipnet::IpNet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
            any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
            // IPv4-mapped IPv6, which must match IPv4 lists.
            any::<u32>().prop_map(|n| IpAddr::V6(Ipv4Addr::from(n).to_ipv6_mapped())),
        ]
    }

    pub fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32)
                .prop_map(|(n, p)| IpNet::new(Ipv4Addr::from(n).into(), p).unwrap()),
            (any::<u128>(), 0u8..=128)
                .prop_map(|(n, p)| IpNet::new(Ipv6Addr::from(n).into(), p).unwrap()),
        ]
    }

    /// Whether `ip` is in `net` by comparing the leading `prefix` bits, an IPv4-mapped IPv6
    /// address or network (`::ffff:a.b.c.d/96+n`) taken as its IPv4 form: the model the
    /// parsers are checked against.
    pub fn model_contains(net: IpNet, ip: IpAddr) -> bool {
        fn same(a: u128, b: u128, width: u32, prefix: u32) -> bool {
            prefix == 0 || (a >> (width - prefix)) == (b >> (width - prefix))
        }
        let ip4 = match ip {
            IpAddr::V4(v4) => Some(u32::from(v4)),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(u32::from),
        };
        let prefix = u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => {
                ip4.is_some_and(|a| same(a.into(), u32::from(n.addr()).into(), 32, prefix))
            }
            IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => {
                    ip4.is_some_and(|a| same(a.into(), u32::from(v4).into(), 32, prefix - 96))
                }
                _ => match (ip, ip4) {
                    (IpAddr::V6(v6), None) => {
                        same(u128::from(v6), u128::from(n.addr()), 128, prefix)
                    }
                    _ => false,
                },
            },
        }
    }
}

mod cidr {
    use super::nets::{ip, model_contains, net};
    use super::*;
    use ipnet::IpNet;
    use std::net::IpAddr;
    use tokengate::client_ip::{allowed, parse_cidr, parse_cidr_list};

    proptest! {
        #![proptest_config(config())]

        /// Any text is read exactly as ipnet reads it (a network, host bits cleared, or a bare
        /// address) or refused.
        #[test]
        fn any_text_parses_like_ipnet(s in hostile_text()) {
            let t = s.trim();
            let want = t
                .parse::<IpNet>()
                .map(|n| n.trunc())
                .ok()
                .or_else(|| t.parse::<IpAddr>().ok().map(IpNet::from));
            let got = parse_cidr(&s);
            // Equal up to IPv4-mapped networks, which may be kept as their IPv4 form.
            match (got, want) {
                (Some(g), Some(w)) if g != w => {
                    prop_assert!(
                        w.network().is_ipv6() && g.network().is_ipv4(),
                        "{s:?}: {g} vs {w}"
                    );
                }
                (g, w) => prop_assert_eq!(g.is_some(), w.is_some(), "{:?}", s),
            }
        }

        /// A parsed entry allows exactly the addresses whose leading bits match.
        #[test]
        fn entries_allow_exactly_their_network(net in net(), probe in ip(), pad in " {0,2}") {
            let text = format!("{pad}{net}{pad}");
            let parsed = parse_cidr(&text).expect("ipnet's own text parses");
            for candidate in [probe, net.addr(), net.network(), net.broadcast()] {
                prop_assert_eq!(
                    allowed(candidate, &[parsed]),
                    model_contains(net, candidate),
                    "{} in {}", candidate, text
                );
            }
        }

        #[test]
        fn a_bare_address_allows_itself(addr in ip()) {
            let parsed = parse_cidr(&addr.to_string()).expect("an address parses");
            prop_assert!(allowed(addr, &[parsed]), "{addr} not allowed by {parsed}");
        }

        /// A refused list names the bad entry, but never echoes a huge one.
        #[test]
        fn refusals_do_not_echo_huge_input(
            good in proptest::collection::vec(net().prop_map(|n| n.to_string()), 0..4),
            bad in "[a-z0-9./:]{1,40}",
            repeat in 1usize..400,
        ) {
            let bad = bad.repeat(repeat);
            prop_assume!(parse_cidr(&bad).is_none());
            let mut list = good;
            list.push(bad.clone());
            let err = parse_cidr_list(&list).unwrap_err();
            prop_assert!(err.starts_with("CIDR whitelist contains invalid CIDR entry: "), "{err}");
            prop_assert!(err.len() <= 300, "{} bytes", err.len());
            if bad.chars().count() <= tokengate::error::ECHO_CHARS {
                prop_assert!(err.contains(&bad));
            }
        }
    }
}

mod client_address {
    use super::nets::ip;
    use super::*;
    use ipnet::IpNet;
    use std::net::{IpAddr, Ipv4Addr};
    use tokengate::client_ip::{canonical, resolve};

    fn proxies() -> Vec<IpNet> {
        [
            "10.0.0.0/8",
            "192.168.0.0/16",
            "fd00::/8",
            "::ffff:172.16.0.0/108",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
    }

    fn trusted(ip: IpAddr) -> bool {
        proxies()
            .iter()
            .any(|n| super::nets::model_contains(*n, ip))
    }

    fn trusted_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)))),
            any::<u16>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | u32::from(n)))),
            any::<u128>().prop_map(|n| IpAddr::V6(((0xfd_u128 << 120) | (n >> 8)).into())),
            any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(0xac10_0000 | (n & 0x000f_ffff)))),
        ]
    }

    fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
        ip().prop_filter("not a proxy", |ip| !trusted(*ip))
    }

    /// How a hop is written in the header: plain, with a port, mapped.
    fn written(ip: IpAddr, form: u8) -> String {
        match (ip, form % 3) {
            (IpAddr::V4(v4), 1) => format!("{v4}:443"),
            (IpAddr::V4(v4), 2) => v4.to_ipv6_mapped().to_string(),
            (IpAddr::V6(v6), 1) => format!("[{v6}]:8080"),
            (ip, _) => ip.to_string(),
        }
    }

    /// The hops as one or more header values, split at random places, with random spaces.
    fn headers(hops: &[String], splits: &[bool]) -> Vec<String> {
        let mut out = vec![String::new()];
        for (i, hop) in hops.iter().enumerate() {
            let last = out.last_mut().unwrap();
            if !last.is_empty() {
                last.push_str(if i % 2 == 0 { ", " } else { "," });
            }
            last.push_str(hop);
            if splits.get(i).copied().unwrap_or(false) {
                out.push(String::new());
            }
        }
        out.retain(|h| !h.is_empty());
        out
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics(peer in ip(), values in proptest::collection::vec(hostile_text(), 0..4)) {
            let _ = resolve(peer, values.iter().map(String::as_str), &proxies());
        }

        /// An untrusted peer is the client, whatever it sends.
        #[test]
        fn forwarded_for_is_ignored_from_untrusted_peers(
            peer in untrusted_ip(),
            values in proptest::collection::vec(hostile_text(), 0..4),
        ) {
            let got = resolve(peer, values.iter().map(String::as_str), &proxies());
            prop_assert_eq!(got, canonical(peer));
        }

        /// Through a chain of trusted proxies, the client is the right-most untrusted hop;
        /// what stands left of it (written by the client) never counts.
        #[test]
        fn a_chain_of_trusted_proxies_gives_the_rightmost_untrusted_hop(
            spoofed in proptest::collection::vec(
                prop_oneof![ip().prop_map(|i| i.to_string()), hostile_text()], 0..3),
            client in untrusted_ip(),
            chain in proptest::collection::vec(trusted_ip(), 0..4),
            peer in trusted_ip(),
            forms in proptest::collection::vec(any::<u8>(), 8),
            splits in proptest::collection::vec(any::<bool>(), 8),
        ) {
            let spoofed: Vec<String> = spoofed
                .into_iter()
                .map(|s| s.replace(',', ""))
                .collect();
            let mut hops = spoofed;
            hops.push(written(client, forms[0]));
            for (i, hop) in chain.iter().enumerate() {
                hops.push(written(*hop, forms[i + 1]));
            }
            let values = headers(&hops, &splits);
            let got = resolve(peer, values.iter().map(String::as_str), &proxies());
            prop_assert_eq!(got, canonical(client), "{:?}", values);
        }

        /// Whatever the header says, the answer is the peer or an address written in it.
        #[test]
        fn the_answer_is_the_peer_or_a_written_hop(
            peer in trusted_ip(),
            hops in proptest::collection::vec(prop_oneof![ip(), trusted_ip()], 0..5),
            forms in proptest::collection::vec(any::<u8>(), 5),
        ) {
            let written: Vec<String> =
                hops.iter().zip(&forms).map(|(h, f)| written(*h, *f)).collect();
            let value = written.join(", ");
            let got = resolve(peer, [value.as_str()], &proxies());
            prop_assert!(
                got == canonical(peer) || hops.iter().any(|h| canonical(*h) == got),
                "{got} from {value}"
            );
        }
    }
}

mod registry_paths {
    use super::*;
    use axum::http::Method;
    use tokengate::registry_path::{classify, redact_path, route, Operation};
    use tokengate::token::checksum;

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::HEAD),
            Just(Method::PUT),
            Just(Method::POST),
            Just(Method::DELETE),
            Just(Method::PATCH),
            "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
        ]
    }

    /// A segment of a path: npm-ish words, encodings, odd bytes.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._~-]{1,12}",
            Just("-".to_owned()),
            "@[a-z0-9]{1,8}(%2[fF][a-z0-9]{1,8})?",
            "%[0-9A-Fa-f]{2}[a-z]{0,4}",
            // Printable, but no `/`, `?` or `#`, which would end the segment or the path.
            "[ !\"$-.0->@-~]{0,10}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(segment(), 0..6).prop_map(|s| format!("/{}", s.join("/"))),
            hostile_text(),
        ]
    }

    /// A dot segment in one of its spellings, alone or inside an encoded-slash segment.
    fn dot_segment() -> impl Strategy<Value = String> {
        let dots = prop_oneof![
            Just("."),
            Just(".."),
            Just("%2e"),
            Just("%2E"),
            Just("%2e%2e"),
            Just("%2E%2e"),
            Just(".%2e"),
            Just("%2e."),
        ];
        (dots, "[a-z0-9@]{1,8}", 0u8..4).prop_map(|(d, word, form)| match form {
            0 => d.to_owned(),
            1 => format!("{word}%2f{d}"),
            2 => format!("{d}%2F{word}"),
            _ => format!("{word}%2f{d}%2f{word}"),
        })
    }

    fn package_part() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._~-]{0,12}"
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics(method in method(), path in path(), prefix in prop_oneof![Just(String::new()), "/[a-z%]{0,5}", hostile_text()]) {
            let _ = route(&method, &path, &prefix);
            let _ = classify(&method, &path);
            let _ = redact_path(&path);
        }

        /// A path with a `.` or `..` segment, spelled plainly, percent-encoded or hidden inside
        /// an encoded slash, is refused, whatever the method and the other segments.
        #[test]
        fn dot_segments_are_refused(
            method in method(),
            before in proptest::collection::vec(segment(), 0..4),
            dot in dot_segment(),
            after in proptest::collection::vec(segment(), 0..3),
            query in prop_oneof![Just(String::new()), "\\?[a-z=&]{0,10}"],
        ) {
            let mut segments = before;
            segments.push(dot);
            segments.extend(after);
            let path = format!("/{}{query}", segments.join("/"));
            prop_assert_eq!(classify(&method, &path), Operation::DotSegments, "{}", path);
        }

        /// The three spellings of a scoped name are the same request.
        #[test]
        fn scoped_name_spellings_classify_the_same(
            method in method(),
            scope in package_part(),
            name in package_part(),
            tail in prop_oneof![
                Just(String::new()),
                Just("/1.0.0".to_owned()),
                "/-/[a-z]{1,6}-1\\.0\\.0\\.tgz",
                "/-rev/[0-9]-[a-f]{4}",
            ],
            slash in prop_oneof![Just("%2f"), Just("%2F")],
            at in prop_oneof![Just("%40"), Just("@")],
        ) {
            prop_assume!(!matches!(scope.as_str(), "." | "..") && !matches!(name.as_str(), "." | ".."));
            let plain = route(&method, &format!("/@{scope}/{name}{tail}"), "");
            let encoded = route(&method, &format!("/@{scope}{slash}{name}{tail}"), "");
            let both = route(&method, &format!("/{at}{scope}{slash}{name}{tail}"), "");
            prop_assert_eq!(&plain, &encoded);
            prop_assert_eq!(&plain, &both);
            if plain.op != Operation::DotSegments {
                let want = format!("@{scope}/{name}");
                prop_assert_eq!(plain.package.as_deref(), Some(want.as_str()));
            }
        }

        /// A registry mounted under a prefix classifies as it would at the root.
        #[test]
        fn a_path_prefix_changes_nothing(method in method(), path in path(), prefix in "(/[a-z]{1,6}){1,2}") {
            let path = if path.starts_with('/') { path } else { format!("/{path}") };
            prop_assert_eq!(route(&method, &format!("{prefix}{path}"), &prefix), route(&method, &path, ""));
        }

        /// A token never reaches the log, wherever it sits in the path.
        #[test]
        fn redacted_paths_hold_no_token(
            before in path(),
            marker in prop_oneof![
                Just("/-/user/token/"),
                Just("/-/npm/v1/tokens/token/"),
                Just("/"),
                Just(""),
            ],
            prefix in "[a-z_]{1,6}",
            random in "[A-Za-z0-9]{30}",
            after in path(),
        ) {
            let token = format!("{prefix}{random}{}", checksum(&random));
            let path = format!("{before}{marker}{token}{after}");
            let shown = redact_path(&path);
            prop_assert!(!shown.contains(&random), "{} -> {}", path, shown);
        }
    }
}

mod json_bodies {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::{json, Map, Value};
    use tokengate::api::parse_json;
    use tokengate::api::profile::ProfileUpdate;
    use tokengate::api::user::{LoginBody, WebLoginBody};
    use tokengate::token_request::CreateTokenBody;

    const LOGIN: &[&str] = &[
        "_id", "_rev", "name", "password", "email", "type", "roles", "date",
    ];
    const PROFILE: &[&str] = &[
        "email", "password", "fullname", "homepage", "freenode", "twitter", "github", "tfa",
    ];
    const TOKEN: &[&str] = &[
        "password",
        "name",
        "description",
        "token_description",
        "readonly",
        "automation",
        "cidr_whitelist",
        "cidr",
        "expires",
        "packages",
        "packages_all",
        "scopes",
        "orgs",
        "packages_and_scopes_permission",
        "orgs_permission",
        "bypass_2fa",
    ];
    const WEB_LOGIN: &[&str] = &["create"];

    /// A secret the error must not show: long enough never to occur in a message by chance,
    /// and sometimes holding the text serde's messages are cut at.
    fn secret() -> impl Strategy<Value = String> {
        ("[A-Za-z0-9!#$%&*+/=?^_{|}~ ]{4,24}", 0u8..4).prop_map(|(s, form)| match form {
            0 => format!("Zq{s}"),
            1 => format!("Zq{s}, expected a {s}"),
            2 => format!("Zq{s}\", expected"),
            _ => format!("Zq, expected {s} at line 1"),
        })
    }

    /// A JSON value: right or wrong type for the field, holding `secret` where it is a string.
    fn value(secret: String) -> impl Strategy<Value = Value> {
        let s = secret.clone();
        let leaf = prop_oneof![
            Just(Value::String(s.clone())),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            Just(json!([s.clone()])),
            Just(json!({"old": s.clone(), "new": s.clone()})),
            Just(json!({"password": s.clone(), "mode": s.clone()})),
            Just(json!({"old": s.clone()})),
            Just(json!([s.clone(), 1])),
        ];
        leaf.prop_recursive(2, 8, 3, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::vec(("[a-z]{1,6}", inner), 0..3)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// A body of known (and sometimes unknown) fields with random values around one secret.
    fn body(fields: &'static [&'static str]) -> impl Strategy<Value = (Vec<u8>, String)> {
        secret().prop_flat_map(move |secret| {
            let field = prop_oneof![
                9 => proptest::sample::select(fields).prop_map(str::to_owned),
                1 => "[a-z_]{1,10}",
            ];
            (
                proptest::collection::vec((field, value(secret.clone())), 0..5),
                Just(secret),
            )
                .prop_map(|(kv, secret)| {
                    let map: Map<String, Value> = kv.into_iter().collect();
                    (serde_json::to_vec(&Value::Object(map)).unwrap(), secret)
                })
        })
    }

    /// Error messages never hold the secret, nor its JSON-escaped form.
    fn check<T: DeserializeOwned>(bytes: &[u8], secret: &str) -> Result<(), TestCaseError> {
        if let Err(e) = parse_json::<T>(bytes) {
            let msg = e.to_string();
            let escaped = serde_json::to_string(secret).unwrap();
            let inner = escaped.trim_matches('"');
            prop_assert!(!msg.contains(secret), "{msg}");
            prop_assert!(!msg.contains(inner), "{msg}");
            // Nor any long piece of it: the text after a `, expected` inside the secret.
            for piece in secret.split(", expected").skip(1) {
                if piece.len() >= 6 {
                    prop_assert!(!msg.contains(piece), "{msg} holds {piece:?}");
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_bytes_never_panic(bytes in any::<Vec<u8>>()) {
            let _ = parse_json::<LoginBody>(&bytes);
            let _ = parse_json::<ProfileUpdate>(&bytes);
            let _ = parse_json::<CreateTokenBody>(&bytes);
            let _ = parse_json::<WebLoginBody>(&bytes);
        }

        #[test]
        fn login_errors_hide_values((bytes, secret) in body(LOGIN)) {
            check::<LoginBody>(&bytes, &secret)?;
        }

        #[test]
        fn profile_errors_hide_values((bytes, secret) in body(PROFILE)) {
            check::<ProfileUpdate>(&bytes, &secret)?;
        }

        #[test]
        fn token_errors_hide_values((bytes, secret) in body(TOKEN)) {
            check::<CreateTokenBody>(&bytes, &secret)?;
        }

        #[test]
        fn web_login_errors_hide_values((bytes, secret) in body(WEB_LOGIN)) {
            check::<WebLoginBody>(&bytes, &secret)?;
        }

        /// Each field alone, holding the secret in every shape: whichever shape is the wrong
        /// type for that field, the refusal names the field but not the secret.
        #[test]
        fn each_mistyped_field_hides_its_value(secret in secret()) {
            let shapes = [
                json!(secret),
                json!([secret]),
                json!({ "old": secret, "new": 1 }),
                json!({ "password": secret }),
                json!([1, secret]),
            ];
            for shape in &shapes {
                for (fields, parse) in [
                    (LOGIN, check::<LoginBody> as fn(&[u8], &str) -> Result<(), TestCaseError>),
                    (PROFILE, check::<ProfileUpdate>),
                    (TOKEN, check::<CreateTokenBody>),
                    (WEB_LOGIN, check::<WebLoginBody>),
                ] {
                    for field in fields {
                        let bytes = serde_json::to_vec(&json!({ *field: shape })).unwrap();
                        parse(&bytes, &secret)?;
                    }
                }
            }
        }

        /// Token bodies that parse are validated without panicking, and a refusal is short.
        #[test]
        fn token_bodies_validate_without_panic((bytes, _secret) in body(TOKEN), max_days in 1u32..=36_500) {
            if let Ok(body) = parse_json::<CreateTokenBody>(&bytes) {
                let limits = tokengate::token_request::ExpiryLimits { max_days, default_days: 0 };
                if let Err(msg) = tokengate::token_request::validate(&body, limits, chrono::Utc::now()) {
                    prop_assert!(msg.len() <= 400, "{} bytes", msg.len());
                }
            }
        }
    }
}

mod names {
    use super::*;
    use tokengate::names::{
        normalize_org, normalize_scope, validate_email, validate_package, validate_username,
    };

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panic_and_refusals_stay_short(s in hostile_text(), repeat in 1usize..200) {
            let s = s.repeat(repeat);
            for result in [
                validate_username(&s),
                validate_email(&s),
                validate_package(&s),
                normalize_scope(&s).map(drop),
                normalize_org(&s).map(drop),
            ] {
                if let Err(msg) = result {
                    // 40 characters, each at most 10 bytes once Debug-escaped, and the text.
                    prop_assert!(msg.len() <= 600, "{} bytes", msg.len());
                }
            }
        }

        /// A valid name is the package of its own registry path, scoped names with the slash
        /// encoded as npm sends them.
        #[test]
        fn valid_package_names_route_to_themselves(s in "@?[a-z0-9._~A-Z-]{0,10}(/[a-z0-9._~-]{0,10})?") {
            if validate_package(&s).is_ok() {
                let path = format!("/{}", s.replacen('/', "%2f", 1));
                let got = tokengate::registry_path::route(&axum::http::Method::GET, &path, "");
                prop_assert_eq!(got.op, tokengate::registry_path::Operation::PackageRead);
                prop_assert_eq!(got.package, Some(s));
            }
        }

        #[test]
        fn scopes_and_orgs_normalise_idempotently(s in "@?[a-z0-9._~-]{0,12}") {
            if let Ok(scope) = normalize_scope(&s) {
                prop_assert_eq!(normalize_scope(&scope), Ok(scope.clone()));
                prop_assert!(scope.starts_with('@'));
            }
            if let Ok(org) = normalize_org(&s) {
                prop_assert_eq!(normalize_org(&org), Ok(org.clone()));
                prop_assert!(!org.starts_with('@'));
            }
        }
    }
}

mod config_file {
    use super::*;
    use chrono::{Duration as Days, Utc};
    use std::time::{Duration, Instant};
    use tokengate::config::Config;

    /// The keys of the config file, from the defaults; `upstream.*` for the table.
    fn keys() -> Vec<String> {
        let table = toml::Table::try_from(Config::default()).unwrap();
        let mut keys = vec![];
        for (k, v) in table {
            match v {
                toml::Value::Table(inner) => {
                    keys.extend(inner.keys().map(|i| format!("{k}.{i}")));
                    keys.push(k);
                }
                _ => keys.push(k),
            }
        }
        keys
    }

    fn value() -> impl Strategy<Value = toml::Value> {
        use toml::Value as V;
        let leaf = prop_oneof![
            any::<i64>().prop_map(V::Integer),
            (0i64..100).prop_map(V::Integer),
            prop_oneof![
                Just(i64::from(u32::MAX)),
                Just(i64::MAX),
                Just(1 << 40),
                Just(-1)
            ]
            .prop_map(V::Integer),
            any::<bool>().prop_map(V::Boolean),
            any::<f64>().prop_map(V::Float),
            prop_oneof![
                Just("sqlite://x.db"),
                Just("postgres://u@h/db"),
                Just("http://127.0.0.1:1"),
                Just("https://x"),
                Just("/-/metrics"),
                Just("/npm"),
                Just("npm_"),
                Just("127.0.0.1:0"),
                Just("[::1]:80"),
                Just("open"),
                Just("json"),
                Just("10.0.0.0/8"),
            ]
            .prop_map(|s| V::String(s.to_owned())),
            hostile_text().prop_map(V::String),
        ];
        leaf.prop_recursive(1, 6, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(V::Array)
        })
    }

    fn table() -> impl Strategy<Value = toml::Table> {
        let keys = keys();
        proptest::collection::vec((proptest::sample::select(keys), value()), 0..12).prop_map(
            |pairs| {
                let mut table = toml::Table::new();
                for (key, value) in pairs {
                    match key.split_once('.') {
                        Some((section, field)) => {
                            let entry = table
                                .entry(section.to_owned())
                                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                            if let toml::Value::Table(inner) = entry {
                                inner.insert(field.to_owned(), value);
                            }
                        }
                        None => {
                            table.insert(key, value);
                        }
                    }
                }
                table
            },
        )
    }

    /// What the running service computes from the times in an accepted config, checked.
    fn times_are_usable(c: &Config) -> Result<(), String> {
        let now = Utc::now();
        let later = |what: &str, d: Option<Days>| {
            d.and_then(|d| now.checked_add_signed(d))
                .and_then(|t| t.checked_add_signed(Days::days(1)))
                .map(drop)
                .ok_or_else(|| format!("{what} overflows the calendar"))
        };
        later(
            "max_token_expiry_days",
            Days::try_days(c.max_token_expiry_days.into()),
        )?;
        later(
            "session_expiry_hours",
            Days::try_hours(c.session_expiry_hours.into()),
        )?;
        later(
            "web_session_max_hours",
            Days::try_hours(c.web_session_max_hours.into()),
        )?;
        later(
            "web_session_idle_minutes",
            Days::try_minutes(c.web_session_idle_minutes.into()),
        )?;
        Days::try_days(c.audit_retention_days.into())
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or("audit_retention_days overflows the calendar")?;
        let base = Instant::now();
        // Every time setting as a clock time; the calendar ones were also checked above.
        for (what, secs) in c.times_in_secs() {
            base.checked_add(Duration::from_secs(secs))
                .ok_or_else(|| format!("{what} overflows the clock"))?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics_and_accepted_configs_are_usable(table in table()) {
            let text = toml::to_string(&table).unwrap();
            if let Ok(config) = Config::from_toml(&text) {
                prop_assert_eq!(times_are_usable(&config), Ok(()), "{}", text);
            }
        }

        #[test]
        fn any_text_never_panics(text in hostile_text()) {
            let _ = Config::from_toml(&text);
        }

        /// Large time settings on their own, so that each one is surely reached.
        #[test]
        fn large_time_settings_are_refused_or_usable(key in proptest::sample::select(keys()), n in prop_oneof![Just(i64::from(u32::MAX)), Just(i64::MAX), 0i64..(1 << 50)]) {
            let text = match key.split_once('.') {
                Some((section, field)) => format!("[{section}]\n{field} = {n}\n"),
                None => format!("{key} = {n}\n"),
            };
            if let Ok(config) = Config::from_toml(&text) {
                prop_assert_eq!(times_are_usable(&config), Ok(()), "{}", text);
            }
        }
    }
}

mod request_ids {
    use super::*;
    use tokengate::fit_request_id;

    proptest! {
        #![proptest_config(config())]

        /// A kept id is short and holds nothing that could break a log line or a header.
        #[test]
        fn kept_ids_are_short_and_plain(bytes in prop_oneof![any::<Vec<u8>>(), "[ -~]{0,80}".prop_map(String::into_bytes)]) {
            if fit_request_id(&bytes) {
                prop_assert!(!bytes.is_empty() && bytes.len() <= 64);
                prop_assert!(bytes.iter().all(|b| b.is_ascii_graphic()));
                let odd = bytes.iter().any(|b| b"\"'\\<>{}%&,; ".contains(b));
                prop_assert!(!odd, "{:?}", bytes);
            }
        }

        #[test]
        fn uuids_and_trace_ids_are_kept(id in any::<u128>()) {
            let uuid = uuid::Uuid::from_u128(id).to_string();
            prop_assert!(fit_request_id(uuid.as_bytes()));
            let trace = format!("{id:032x}");
            prop_assert!(fit_request_id(trace.as_bytes()), "{}", trace);
        }
    }
}

mod one_time_passwords {
    use super::*;
    use tokengate::totp::{
        code_at_step, hash_recovery_code, is_totp_shape, matching_step, step_of, STEP_SECS,
    };

    fn secret() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 20)
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_code_never_panics(code in hostile_text(), secret in secret(), now in any::<i64>(), last in any::<Option<i64>>()) {
            let got = matching_step(&secret, &code, now, last);
            if got.is_some() {
                prop_assert!(is_totp_shape(&code));
            }
            let _ = hash_recovery_code(&code);
        }

        /// The current code is accepted once: never again once its step is recorded.
        #[test]
        fn codes_match_their_step_and_never_replay(secret in secret(), now in 0i64..4_000_000_000, delta in -1i64..=1) {
            let step = step_of(now) + delta;
            let code = code_at_step(&secret, step);
            prop_assert!(is_totp_shape(&code));
            let got = matching_step(&secret, &code, now, None);
            prop_assert!(got.is_some());
            let got = got.unwrap();
            prop_assert!((got - step_of(now)).abs() <= 1);
            prop_assert_eq!(matching_step(&secret, &code, now, Some(got.max(step))), None);
            prop_assert!(now - got * STEP_SECS as i64 <= 2 * STEP_SECS as i64);
        }

        #[test]
        fn recovery_codes_ignore_case_and_surrounding_space(code in "[0-9a-fA-F]{64}", pad in "[ \t]{0,3}") {
            prop_assert_eq!(
                hash_recovery_code(&format!("{pad}{code}{pad}")),
                hash_recovery_code(&code.to_lowercase())
            );
        }
    }
}

/// The minimal failing inputs the properties found, kept as plain cases (each fix also has a
/// unit test next to its code).
mod regressions {
    use axum::http::Method;
    use tokengate::api::parse_json;
    use tokengate::client_ip::{allowed, parse_cidr, parse_cidr_list, resolve};
    use tokengate::registry_path::{classify, redact_path, route, Operation};

    #[test]
    fn a_mapped_address_entry_allows_that_address() {
        let entry = parse_cidr("::ffff:0.0.0.0").unwrap();
        assert!(allowed("::ffff:0.0.0.0".parse().unwrap(), &[entry]));
    }

    #[test]
    fn a_mapped_proxy_network_is_trusted() {
        let proxies = ["10.0.0.0/8", "::ffff:172.16.0.0/108"].map(|n| n.parse().unwrap());
        let got = resolve(
            "10.0.0.0".parse().unwrap(),
            ["0.0.0.0,172.16.0.0"],
            &proxies,
        );
        assert_eq!(got, "0.0.0.0".parse::<std::net::IpAddr>().unwrap());
    }

    #[test]
    fn a_huge_cidr_entry_is_not_echoed() {
        let err = parse_cidr_list(&["a".repeat(157)]).unwrap_err();
        assert!(err.len() < 100, "{err}");
    }

    #[test]
    fn a_long_name_is_not_echoed() {
        let msg = tokengate::names::validate_username(&"  \u{1d552}".repeat(34)).unwrap_err();
        assert!(msg.len() < 300, "{msg}");
    }

    #[test]
    fn a_dot_behind_an_encoded_slash_is_refused() {
        assert_eq!(classify(&Method::GET, "/a%2f%2e"), Operation::DotSegments);
    }

    #[test]
    fn a_token_outside_the_markers_is_redacted() {
        let shown = redact_path("//_0a0a0AAaAaAa00aaAAAAaaa000AAaA3DGJIe/");
        assert!(!shown.contains("0a0a0AAaAaAa00aaAAAAaaa000AAaA"), "{shown}");
    }

    #[test]
    fn a_value_holding_expected_is_not_shown() {
        let e = parse_json::<tokengate::api::profile::ProfileUpdate>(
            br#"{"password": "Zq 00?, expected a  00?"}"#,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains("00?"), "{e}");
    }

    #[test]
    fn a_timeout_past_the_clock_is_refused() {
        let text = "request_timeout_secs = 9223372036854775807";
        assert!(tokengate::config::Config::from_toml(text).is_err());
    }

    #[test]
    fn the_package_dash_is_refused() {
        assert!(tokengate::names::validate_package("-").is_err());
        assert_eq!(route(&Method::GET, "/-", "").package, None);
    }
}
