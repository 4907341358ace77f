//! The ALPN preface sniffer: a client's first bytes choose `h2` only when they are the whole
//! HTTP/2 connection preface.
#![no_main]

use det_tls_proxy::proxy::{looks_like_h2, H2_PREFACE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(looks_like_h2(data), data == H2_PREFACE);
});
