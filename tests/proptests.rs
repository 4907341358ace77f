//! Property tests over the parsers that take outside input: configuration text (random
//! YAML-ish text, and mutated but plausible configurations), PEM bundles and keys, the
//! `trust` fingerprint parser, the first-bytes classifier (ClientHello, HTTP/2 preface) as
//! the proxy runs it, and certificate summaries of arbitrary DER. Never a panic; always a typed error (or a value that holds up).
//! The fuzz targets in fuzz/ cover the same entry points with coverage guidance.

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use det_tls_proxy::config::{self, Purpose};
use det_tls_proxy::diagnose::{self, CertSummary};
use det_tls_proxy::pem::{self as trust, PemError};
use det_tls_proxy::sniff::{
    self, classify, FirstBytes, Want, H2_PREFACE, HELLO_HEADERS, MAX_PLAINTEXT,
};
use proptest::prelude::*;
use proptest::string::string_regex;

// === Configuration text ===

/// Scalar values a key may get: well-formed, ill-formed and hostile ones. Paths stay among
/// files that are safe to open (no /dev/zero, no FIFO).
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("det-master".to_string()),
        Just("10.0.0.5".to_string()),
        Just("\"[::1]\"".to_string()),
        Just("127.0.0.1:8080".to_string()),
        Just("\"0.0.0.0:0\"".to_string()),
        Just("\"[::]:0\"".to_string()),
        Just("unix:/tmp/dtp-prop.sock".to_string()),
        Just("systemd:agent".to_string()),
        Just("8443".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("70000".to_string()),
        Just("18446744073709551616".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("yes".to_string()),
        Just("null".to_string()),
        Just("~".to_string()),
        Just("\"\"".to_string()),
        Just("10s".to_string()),
        Just("\"1h 30m\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"999999999999999999999h\"".to_string()),
        Just("\"0660\"".to_string()),
        Just("auto".to_string()),
        Just("none".to_string()),
        Just("[h2, http/1.1]".to_string()),
        Just("[\"\"]".to_string()),
        Just("[172.17.0.0/16]".to_string()),
        Just("[\"300.1.1.1/8\", ::/0]".to_string()),
        Just("json".to_string()),
        Just("\"info,[\"".to_string()),
        Just("/nonexistent/dtp-prop.pem".to_string()),
        Just("/dev/null".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("&anchor value".to_string()),
        Just("*anchor".to_string()),
        Just("!!binary aGVsbG8=".to_string()),
        Just("{}".to_string()),
        Just("[]".to_string()),
        string_regex("[a-z0-9.:/_-]{0,24}").unwrap(),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
    ]
}

const KEYS: &[&str] = &[
    "master_host",
    "master_port",
    "security",
    "tls",
    "enabled",
    "skip_verify",
    "master_cert",
    "master_cert_name",
    "client_cert",
    "client_key",
    "listeners",
    "name",
    "listen",
    "allowed_clients",
    "mode",
    "group",
    "alpn",
    "present_client_cert",
    "tls_passthrough",
    "timeouts",
    "connect",
    "handshake",
    "idle",
    "close",
    "shutdown",
    "max_connections",
    "admin",
    "post_quantum",
    "log",
    "format",
    "level",
    "access",
    "identity",
    "container_api",
    "unknown_key",
    "<<",
];

/// A YAML document over the proxy's key names, nested at random.
fn yaml_doc() -> impl Strategy<Value = String> {
    let leaf = (prop::sample::select(KEYS), scalar()).prop_map(|(k, v)| format!("{k}: {v}"));
    let tree = leaf.prop_recursive(4, 40, 6, |inner| {
        (
            prop::sample::select(KEYS),
            prop::collection::vec(inner, 1..6),
            any::<bool>(),
        )
            .prop_map(|(k, children, as_list)| {
                let body: Vec<String> = children
                    .iter()
                    .flat_map(|c| c.lines().map(|l| format!("  {l}")).collect::<Vec<_>>())
                    .collect();
                if as_list {
                    let mut out = format!("{k}:\n");
                    for c in &children {
                        let mut lines = c.lines();
                        if let Some(first) = lines.next() {
                            out += &format!("  - {first}\n");
                        }
                        for l in lines {
                            out += &format!("    {l}\n");
                        }
                    }
                    out.trim_end().to_string()
                } else {
                    format!("{k}:\n{}", body.join("\n"))
                }
            })
    });
    prop::collection::vec(tree, 0..8).prop_map(|items| items.join("\n") + "\n")
}

/// A document with some bytes cut out or replaced: broken indentation, unclosed flows.
fn mutated_doc() -> impl Strategy<Value = String> {
    (
        yaml_doc(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0usize..4), 0..6),
    )
        .prop_map(|(doc, edits)| {
            let mut b = doc.into_bytes();
            for (at, byte, len) in edits {
                if b.is_empty() {
                    break;
                }
                let i = at.index(b.len());
                let end = (i + len).min(b.len());
                let fill = b"{}[]:-,#&*!|>'\"\t\n %@`";
                b.splice(i..end, [fill[byte as usize % fill.len()]]);
            }
            String::from_utf8_lossy(&b).into_owned()
        })
}

/// Never a panic; an error is a non-empty list of errors that each name a key and say
/// something; whatever validates is usable.
fn check_config_text(text: &str) -> Result<(), TestCaseError> {
    let loaded = match config::assemble_str(text) {
        Ok(l) => l,
        Err(e) => {
            prop_assert!(!e.0.is_empty());
            for one in &e.0 {
                prop_assert!(!one.key.is_empty() && !one.message.is_empty(), "{one:?}");
            }
            prop_assert!(e.to_string().contains("configuration error"));
            return Ok(());
        }
    };
    for purpose in [Purpose::Show, Purpose::Trust, Purpose::Serve] {
        match config::validate(&loaded, purpose) {
            Ok(c) => {
                prop_assert!(!c.listeners.is_empty());
                prop_assert!(c.max_connections >= 1);
                prop_assert!(c.master.port != 0);
                prop_assert!(!c.timeouts.connect.is_zero() && !c.timeouts.idle.is_zero());
                for l in &c.listeners {
                    if let config::ListenAddr::Tcp(a) = l.addr {
                        prop_assert!(
                            a.ip().is_loopback()
                                || l.allowed_clients.as_ref().is_some_and(|n| !n.is_empty()),
                            "non-loopback listener {a} validated without allowed_clients"
                        );
                    }
                }
                let _ = config::describe(&loaded, Some(&c));
            }
            Err(e) => {
                prop_assert!(!e.0.is_empty());
                for one in &e.0 {
                    prop_assert!(!one.key.is_empty() && !one.message.is_empty(), "{one:?}");
                }
                let _ = config::describe(&loaded, None);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_yaml_ish_text_never_panics(text in string_regex("[ -~\t\n]{0,400}").unwrap()) {
        check_config_text(&text)?;
    }

    #[test]
    fn random_yaml_ish_punctuation_never_panics(
        text in string_regex("([a-z_]{1,12}|[:\\-\\[\\]{},#&*!|>'\"%@ ]|\n {0,6}|[0-9.]{1,6}){0,80}").unwrap()
    ) {
        check_config_text(&text)?;
    }

    #[test]
    fn plausible_configs_never_panic(text in yaml_doc()) {
        check_config_text(&text)?;
    }

    #[test]
    fn mutated_configs_never_panic(text in mutated_doc()) {
        check_config_text(&text)?;
    }
}

// === PEM ===

struct RealPem {
    cert: String,
    der: Vec<u8>,
    key: String,
}

/// One real certificate and key (made once, at test time), for mutation.
fn real() -> &'static RealPem {
    static R: OnceLock<RealPem> = OnceLock::new();
    R.get_or_init(|| {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(vec!["det-master".to_string()]).unwrap();
        let cert = p.self_signed(&key).unwrap();
        RealPem {
            cert: cert.pem(),
            der: cert.der().to_vec(),
            key: key.serialize_pem(),
        }
    })
}

fn pem_block() -> impl Strategy<Value = Vec<u8>> {
    let label = prop_oneof![
        Just("CERTIFICATE".to_string()),
        Just("PRIVATE KEY".to_string()),
        Just("RSA PRIVATE KEY".to_string()),
        Just("EC PRIVATE KEY".to_string()),
        Just("X509 CRL".to_string()),
        Just("TRUSTED CERTIFICATE".to_string()),
        string_regex("[A-Z ]{0,20}").unwrap(),
    ];
    let body = prop_oneof![
        string_regex("[A-Za-z0-9+/=\n]{0,600}").unwrap(),
        string_regex("[A-Za-z0-9+/]{0,64}(\n[A-Za-z0-9+/]{64}){0,6}\n[A-Za-z0-9+/]{0,63}={0,3}")
            .unwrap(),
        string_regex("[ -~\n\r\t]{0,200}").unwrap(),
    ];
    (label.clone(), label, body, any::<bool>(), any::<bool>()).prop_map(
        |(begin, end, body, same_end, crlf)| {
            let end = if same_end { begin.clone() } else { end };
            let mut s = format!("-----BEGIN {begin}-----\n{body}\n-----END {end}-----\n");
            if crlf {
                s = s.replace('\n', "\r\n");
            }
            s.into_bytes()
        },
    )
}

/// Real PEM with bytes flipped, cut, or repeated.
fn mutated_real_pem() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0u8), Just(1u8), Just(2u8)],
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(which, flips, cut)| {
            let r = real();
            let mut b = match which {
                0 => r.cert.clone().into_bytes(),
                1 => r.key.clone().into_bytes(),
                _ => format!("{}{}{}", r.cert, r.key, r.cert).into_bytes(),
            };
            for (at, byte) in flips {
                let i = at.index(b.len());
                b[i] = byte;
            }
            let keep = cut.index(b.len() + 1);
            if keep > b.len() / 2 {
                b.truncate(keep);
            }
            b
        })
}

fn pem_ish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..1024),
        prop::collection::vec(pem_block(), 0..4).prop_map(|v| v.concat()),
        (
            prop::collection::vec(any::<u8>(), 0..64),
            pem_block(),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(a, b, c)| [a, b, c].concat()),
        mutated_real_pem(),
    ]
}

fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pem_ish_bytes_give_certificates_or_a_typed_error(bytes in pem_ish()) {
        let path = Path::new("/etc/determined/master.crt");
        match trust::certs_from_pem(path, &bytes) {
            Ok(certs) => {
                prop_assert!(!certs.is_empty());
                for c in &certs {
                    // What a bundle holds is described to the operator: must not panic.
                    if let Some(s) = CertSummary::from_der(c.as_ref()) {
                        let _ = s.to_string();
                    }
                }
            }
            Err(e) => {
                prop_assert!(
                    matches!(e, PemError::Malformed { .. } | PemError::NoCertificate { .. }),
                    "unexpected error kind: {e:?}"
                );
                prop_assert!(e.to_string().contains("/etc/determined/master.crt"), "{e}");
            }
        }
    }

    #[test]
    fn pem_ish_files_give_certificates_keys_or_a_typed_error(bytes in pem_ish()) {
        let f = write_temp(&bytes);
        match trust::load_certs(f.path()) {
            Ok(certs) => prop_assert!(!certs.is_empty()),
            Err(e) => prop_assert!(
                matches!(e, PemError::Malformed { .. } | PemError::NoCertificate { .. } | PemError::Empty { .. }),
                "{e:?}"
            ),
        }
        match trust::load_key(f.path()) {
            Ok(_) => {}
            Err(e) => prop_assert!(
                matches!(e, PemError::Malformed { .. } | PemError::NoKey { .. } | PemError::Empty { .. }),
                "{e:?}"
            ),
        }
    }
}

// === Certificates from arbitrary DER ===

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    /// A master (or whoever answers in its place) chooses the certificate the proxy
    /// describes when verification fails.
    #[test]
    fn der_bytes_summarised_without_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
        random in prop::collection::vec(any::<u8>(), 0..512),
        use_random in any::<bool>(),
    ) {
        let der = if use_random {
            random
        } else {
            let mut d = real().der.clone();
            for (at, byte) in flips {
                let i = at.index(d.len());
                d[i] = byte;
            }
            let keep = cut.index(d.len() + 1);
            d.truncate(keep.max(d.len() / 2));
            d
        };
        if let Some(s) = CertSummary::from_der(&der) {
            // Whatever the names hold, what is shown holds no control character.
            let shown = s.to_string();
            prop_assert!(!shown.chars().any(char::is_control), "{shown:?}");
            let _ = s.names();
            let _ = s.days_left();
        }
        prop_assert_eq!(diagnose::fingerprint(&der).len(), 95);
    }

    /// Every instant an X.509 certificate can state (UTCTime and GeneralizedTime: years
    /// 0000 to 9999) can be written in a message.
    #[test]
    fn every_certificate_time_formats(secs in -62_167_219_200i64..=253_402_300_799i64) {
        let s = diagnose::rfc3339(secs);
        prop_assert!(s.ends_with('Z'), "{s}");
    }
}

// === Fingerprints ===

fn canonical(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fingerprint_parser_is_total_and_canonical(s in "\\PC{0,120}") {
        if let Some(f) = diagnose::parse_fingerprint(&s) {
            prop_assert_eq!(f.len(), 95);
            prop_assert!(f.split(':').all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())));
            prop_assert_eq!(diagnose::parse_fingerprint(&f), Some(f.clone()));
        }
    }

    #[test]
    fn every_spelling_of_a_fingerprint_parses_to_it(
        bytes in prop::array::uniform32(any::<u8>()),
        upper in any::<bool>(),
        sep in prop_oneof![Just(":"), Just(""), Just(" ")],
        prefix in prop_oneof![Just(""), Just("sha256:"), Just("SHA256:"), Just("SHA256 Fingerprint="), Just("  ")],
    ) {
        let want = canonical(&bytes);
        let mut hex = bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(sep);
        if upper {
            hex = hex.to_uppercase();
        }
        let spelled = format!("{prefix}{hex}\n");
        prop_assert_eq!(diagnose::parse_fingerprint(&spelled), Some(want));
    }

    #[test]
    fn a_wrong_length_fingerprint_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assume!(bytes.len() != 32);
        prop_assert_eq!(diagnose::parse_fingerprint(&canonical(&bytes)), None);
    }
}

// === A client's first bytes: the classifier the proxy runs ===

fn want() -> impl Strategy<Value = Want> {
    (any::<bool>(), any::<bool>()).prop_map(|(client_hello, h2)| Want { client_hello, h2 })
}

/// The rules a ClientHello's first nine bytes follow (RFC 8446 §5.1, §4.1.2), read off the
/// bytes independently of the classifier: handshake record, version 3.x with x <= 4, a
/// record of 1..=2^14 bytes, client_hello, a body a ClientHello can have, ending with its
/// record or (too big for one) filling it.
fn follows_the_rules(b: &[u8]) -> bool {
    let record = usize::from(u16::from_be_bytes([b[3], b[4]]));
    let body = u32::from_be_bytes([0, b[6], b[7], b[8]]) as usize;
    b[0] == 22
        && b[1] == 3
        && b[2] <= 4
        && (1..=MAX_PLAINTEXT).contains(&record)
        && b[5] == 1
        && (sniff::MIN_HELLO_BODY..=sniff::MAX_HELLO_BODY).contains(&body)
        && (body + 4 == record || (record == MAX_PLAINTEXT && body + 4 > record))
}

/// Nine header bytes, each field valid more often than not and otherwise just past a bound or
/// anything, then anything: about one case in ten follows every rule.
fn near_hello() -> impl Strategy<Value = Vec<u8>> {
    let byte = |valid: std::ops::RangeInclusive<u8>, near: [u8; 2]| prop_oneof![6 => valid, 1 => Just(near[0]), 1 => Just(near[1]), 1 => any::<u8>()];
    let record = prop_oneof![
        6 => 45u16..=16384,
        2 => Just(16384u16),
        1 => prop::sample::select(vec![0u16, 1, 44, 16385]),
        1 => any::<u16>(),
    ];
    let body_off = prop_oneof![
        6 => Just(0i64),
        2 => -6i64..6,
        1 => 1i64..200_000,
        1 => any::<u32>().prop_map(i64::from),
    ];
    (
        byte(22..=22, [21, 23]),
        byte(3..=3, [2, 4]),
        byte(0..=4, [5, 0xff]),
        record,
        byte(1..=1, [0, 2]),
        body_off,
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(kind, major, minor, record, hs, off, tail)| {
            let body = (i64::from(record) - 4 + off).clamp(0, 0xff_ffff) as u32;
            let (r, b) = (record.to_be_bytes(), body.to_be_bytes());
            let mut v = vec![kind, major, minor, r[0], r[1], hs, b[1], b[2], b[3]];
            v.extend(tail);
            v
        })
}

/// Headers every rule holds for: a whole ClientHello in its record, or the first, full,
/// record of one too big for it.
fn valid_hello() -> impl Strategy<Value = Vec<u8>> {
    let whole = (sniff::MIN_HELLO_BODY..=MAX_PLAINTEXT - 4).prop_map(|b| (b + 4, b));
    let fragmented = (MAX_PLAINTEXT - 3..=sniff::MAX_HELLO_BODY).prop_map(|b| (MAX_PLAINTEXT, b));
    (
        0u8..=4,
        prop_oneof![whole, fragmented],
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(|(minor, (record, body), tail)| {
            let (r, b) = ((record as u16).to_be_bytes(), (body as u32).to_be_bytes());
            let mut v = vec![22, 3, minor, r[0], r[1], 1, b[1], b[2], b[3]];
            v.extend(tail);
            v
        })
}

fn settled(kind: FirstBytes) -> FirstBytes {
    if kind == FirstBytes::NeedMore {
        FirstBytes::Other
    } else {
        kind
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_client_hello_is_exactly_what_follows_the_rules(bytes in near_hello(), w in want()) {
        let w = Want { client_hello: true, ..w };
        let verdict = classify(&bytes, w);
        prop_assert_eq!(verdict == FirstBytes::ClientHello, follows_the_rules(&bytes), "{:02x?}", &bytes[..9]);
        prop_assert_ne!(verdict, FirstBytes::NeedMore);
    }

    #[test]
    fn valid_headers_are_a_client_hello_and_their_prefixes_wait(bytes in valid_hello(), w in want()) {
        let w = Want { client_hello: true, ..w };
        prop_assert_eq!(classify(&bytes, w), FirstBytes::ClientHello);
        for n in 0..HELLO_HEADERS {
            prop_assert_eq!(classify(&bytes[..n], w), FirstBytes::NeedMore, "{} bytes", n);
        }
        // With passthrough off, never a ClientHello (nor a wait for one).
        prop_assert_eq!(classify(&bytes, Want { client_hello: false, h2: true }), FirstBytes::Other);
    }

    #[test]
    fn a_verdict_never_changes_with_more_bytes(
        bytes in prop_oneof![prop::collection::vec(any::<u8>(), 0..48), near_hello(), valid_hello()],
        w in want(),
    ) {
        let mut verdict = FirstBytes::NeedMore;
        for n in 0..=bytes.len() {
            let now = classify(&bytes[..n], w);
            if verdict != FirstBytes::NeedMore {
                prop_assert_eq!(now, verdict, "{} bytes of {:02x?}", n, bytes);
            }
            verdict = now;
            if n >= H2_PREFACE.len() || (n >= HELLO_HEADERS && !w.h2) {
                prop_assert_ne!(now, FirstBytes::NeedMore, "{} bytes still undecided", n);
            }
        }
    }

    #[test]
    fn the_h2_preface_is_recognised_whole_and_nothing_else_is(
        bytes in prop::collection::vec(any::<u8>(), 0..48),
        take in 0usize..=24,
        hello in any::<bool>(),
    ) {
        let auto = Want { client_hello: hello, h2: true };
        prop_assert_eq!(classify(&bytes, auto) == FirstBytes::H2Preface, bytes.starts_with(H2_PREFACE));
        let expect = if take == 24 { FirstBytes::H2Preface } else { FirstBytes::NeedMore };
        prop_assert_eq!(classify(&H2_PREFACE[..take], auto), expect);
        let mut longer = H2_PREFACE.to_vec();
        longer.extend_from_slice(&bytes);
        prop_assert_eq!(classify(&longer, auto), FirstBytes::H2Preface);
        prop_assert_eq!(classify(&longer, Want { client_hello: hello, h2: false }), FirstBytes::Other);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    /// `sniff::read_first`, as the proxy calls it, over a real socket: the bytes sent in two
    /// writes and then a FIN are read as sent and judged as the classifier judges them all.
    #[test]
    fn first_bytes_read_over_a_socket_are_judged_as_sent(
        sent in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            near_hello(),
            valid_hello(),
            Just(H2_PREFACE.to_vec()),
            (0usize..24).prop_map(|n| H2_PREFACE[..n].to_vec()),
        ],
        split in any::<prop::sample::Index>(),
        w in want(),
    ) {
        let at = split.index(sent.len() + 1);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let first = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (head, tail) = (sent[..at].to_vec(), sent[at..].to_vec());
            let client = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
                c.set_nodelay(true).unwrap();
                c.write_all(&head).await.unwrap();
                c.write_all(&tail).await.unwrap();
                c.shutdown().await.unwrap();
                c
            });
            let (mut server, _) = listener.accept().await.unwrap();
            let first = sniff::read_first(&mut server, w, Duration::from_secs(10)).await.unwrap();
            drop(client.await.unwrap());
            first
        });
        match first {
            None => prop_assert!(sent.is_empty()),
            Some(f) => {
                prop_assert!(sent.starts_with(f.bytes()), "read {:02x?} of {:02x?}", f.bytes(), sent);
                let all = &sent[..sent.len().min(H2_PREFACE.len())];
                prop_assert_eq!(f.kind, settled(classify(all, w)));
            }
        }
    }
}
