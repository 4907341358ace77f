//! The first-bytes classifier the proxy runs on every client: never a panic, a verdict that
//! never changes as more bytes arrive, a ClientHello only behind a handshake record header of
//! version 3.x and a client_hello type, `h2` only for the whole HTTP/2 preface.
#![no_main]

use det_tls_proxy::sniff::{classify, FirstBytes, Want, H2_PREFACE, HELLO_HEADERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (client_hello, h2) in [(false, false), (true, false), (false, true), (true, true)] {
        let want = Want { client_hello, h2 };
        let mut verdict = FirstBytes::NeedMore;
        for n in 0..=data.len().min(64) {
            let now = classify(&data[..n], want);
            if verdict != FirstBytes::NeedMore {
                assert_eq!(now, verdict, "changed at {n} bytes");
            }
            verdict = now;
        }
        let whole = classify(data, want);
        if whole == FirstBytes::ClientHello {
            assert!(client_hello && data.len() >= HELLO_HEADERS);
            assert!(data[0] == 22 && data[1] == 3 && data[2] <= 4 && data[5] == 1);
        }
        assert_eq!(
            whole == FirstBytes::H2Preface,
            h2 && data.starts_with(H2_PREFACE)
        );
    }
});
