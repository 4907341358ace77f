//! What a client's first bytes are: a TLS ClientHello (passed through untouched), the HTTP/2
//! connection preface (ALPN `h2`), or anything else (the proxy's own TLS). A ClientHello is
//! recognised by parsing its record and handshake headers, as Envoy's `tls_inspector` and
//! nginx's `ssl_preread` do; one byte is never enough, or 1 client in 256 sending binary data
//! would have it relayed in the clear.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long the proxy waits for the bytes that decide (passthrough detection, ALPN `auto`).
pub(crate) const FIRST_BYTES_WAIT: Duration = Duration::from_secs(1);
/// A record header (type, version, length) and a handshake header (type, length): what it
/// takes to judge a ClientHello.
pub const HELLO_HEADERS: usize = 9;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// A ClientHello travels in a TLSPlaintext record, whose length "MUST NOT exceed 2^14" (RFC
/// 8446 §5.1, as RFC 5246 §6.2.1 before it). The larger bounds of RFC 5246 (2^14 + 1024, 2^14 +
/// 2048) are for compressed and encrypted records, which a first flight never is.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// The smallest ClientHello body (RFC 5246 §7.4.1.2, extensions omitted): version 2, random 32,
/// an empty session id 1, one cipher suite 2 + 2, one compression method 1 + 1.
pub const MIN_HELLO_BODY: usize = 41;
/// The largest ClientHello body (RFC 8446 §4.1.2): version 2, random 32, session id 1 + 32,
/// cipher suites 2 + (2^16 - 2), compression methods 1 + 255, extensions 2 + (2^16 - 1).
pub const MAX_HELLO_BODY: usize = 2 + 32 + 33 + 65_536 + 256 + 65_537;

/// What a client's first bytes are, as far as the proxy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// The headers of a TLS ClientHello: the client speaks TLS itself.
    ClientHello,
    /// The whole HTTP/2 connection preface.
    H2Preface,
    /// Anything else.
    Other,
    /// A prefix of something wanted: more bytes decide.
    NeedMore,
}

/// Which answers matter to a listener: the others are never looked for (so never waited for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// `tls_passthrough: auto`, with TLS on.
    pub client_hello: bool,
    /// ALPN `auto`, with TLS on.
    pub h2: bool,
}

/// What `first` is, among the answers `want` asks for. `NeedMore` only while `first` is a
/// strict prefix of something wanted; a longer string never contradicts an earlier verdict.
pub fn classify(first: &[u8], want: Want) -> FirstBytes {
    if want.client_hello {
        match client_hello(first) {
            Hello::Yes => return FirstBytes::ClientHello,
            Hello::Maybe => return FirstBytes::NeedMore,
            Hello::No => {}
        }
    }
    if want.h2 {
        if first.starts_with(H2_PREFACE) {
            return FirstBytes::H2Preface;
        }
        if H2_PREFACE.starts_with(first) {
            return FirstBytes::NeedMore;
        }
    }
    FirstBytes::Other
}

enum Hello {
    Yes,
    Maybe,
    No,
}

/// Judges the record and handshake headers of a would-be ClientHello, refusing as soon as
/// the bytes present break a rule (so a client is never kept waiting for a verdict already known).
fn client_hello(b: &[u8]) -> Hello {
    let breaks = |at: usize, ok: fn(u8) -> bool| b.get(at).is_some_and(|&v| !ok(v));
    if breaks(0, |t| t == CONTENT_HANDSHAKE)
        // legacy_record_version: 3.0 (SSL 3) to 3.4; TLS 1.3 writes 3.1 or 3.3 here.
        || breaks(1, |major| major == 3)
        || breaks(2, |minor| minor <= 4)
        || breaks(5, |t| t == HANDSHAKE_CLIENT_HELLO)
    {
        return Hello::No;
    }
    if b.len() >= 5 {
        let record = usize::from(u16::from_be_bytes([b[3], b[4]]));
        // Never empty, never over the limit, and big enough for the smallest ClientHello
        // (a fragmented one fills its first record).
        if !(4 + MIN_HELLO_BODY..=MAX_PLAINTEXT).contains(&record) {
            return Hello::No;
        }
    }
    if b.len() < HELLO_HEADERS {
        return Hello::Maybe;
    }
    let record = usize::from(u16::from_be_bytes([b[3], b[4]]));
    let body = usize::from(b[6]) << 16 | usize::from(b[7]) << 8 | usize::from(b[8]);
    if !(MIN_HELLO_BODY..=MAX_HELLO_BODY).contains(&body) {
        return Hello::No;
    }
    // A ClientHello ends at a record boundary (RFC 8446 §5.1: it may precede a key change), and
    // in no version does anything share its record: a client's first flight is that one
    // message. It may span records (§5.1 allows fragmentation), but a sender splits it only
    // when it does not fit in one, so its first record is full. A ClientHello chopped into
    // smaller records (an anti-censorship trick, or OpenSSL with a small max_send_fragment) is
    // therefore not recognised: it goes over the proxy's TLS and the master refuses it. Such a
    // client failing loudly is the price of random bytes never going out in the clear.
    let whole = 4 + body == record;
    let first_fragment = record == MAX_PLAINTEXT && 4 + body > record;
    if whole || first_fragment {
        Hello::Yes
    } else {
        Hello::No
    }
}

// === Reading them ===

/// The bytes read before deciding (relayed first, as they came) and what they are.
#[derive(Debug)]
pub struct First {
    buf: [u8; H2_PREFACE.len()],
    len: usize,
    pub kind: FirstBytes,
}

impl First {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Reads a client's first bytes until they decide among `want`, for at most `budget`.
/// `None` when the client closed without a byte. A client that stops (closes, or stalls past
/// the budget) on a prefix gets `Other`: only bytes that show a ClientHello are passed through.
pub async fn read_first<R: AsyncRead + Unpin>(
    client: &mut R,
    want: Want,
    budget: Duration,
) -> io::Result<Option<First>> {
    let mut first = First {
        buf: [0; H2_PREFACE.len()],
        len: 0,
        kind: FirstBytes::NeedMore,
    };
    let deadline = tokio::time::Instant::now() + budget;
    while first.kind == FirstBytes::NeedMore && first.len < first.buf.len() {
        let read = tokio::time::timeout_at(deadline, client.read(&mut first.buf[first.len..]));
        match read.await {
            Err(_) => break,
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) if first.len == 0 => return Ok(None),
            Ok(Ok(0)) => break,
            Ok(Ok(m)) => {
                first.len += m;
                first.kind = classify(first.bytes(), want);
            }
        }
    }
    if first.kind == FirstBytes::NeedMore {
        first.kind = FirstBytes::Other;
    }
    Ok(Some(first))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    const BOTH: Want = Want {
        client_hello: true,
        h2: true,
    };

    /// The first flight of a real rustls client: `alpn` offered, records of at most `fragment`.
    fn rustls_hello(alpn: Vec<Vec<u8>>, fragment: Option<usize>) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn;
        cfg.max_fragment_size = fragment;
        let name = rustls::pki_types::ServerName::try_from("det-master").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Headers of a record of `record` bytes holding a handshake message of type `kind` whose
    /// body is `body` bytes.
    fn headers(version: [u8; 2], record: usize, kind: u8, body: usize) -> Vec<u8> {
        let r = (record as u16).to_be_bytes();
        let b = (body as u32).to_be_bytes();
        vec![22, version[0], version[1], r[0], r[1], kind, b[1], b[2], b[3]]
    }

    #[test]
    fn a_real_client_hello_and_every_prefix_of_its_headers() {
        let hello = rustls_hello(vec![b"h2".to_vec()], None);
        assert_eq!(classify(&hello, BOTH), FirstBytes::ClientHello);
        assert_eq!(classify(&hello[..HELLO_HEADERS], BOTH), FirstBytes::ClientHello);
        for n in 0..HELLO_HEADERS {
            assert_eq!(classify(&hello[..n], BOTH), FirstBytes::NeedMore, "{n} bytes");
        }
        let off = Want {
            client_hello: false,
            h2: true,
        };
        assert_eq!(classify(&hello, off), FirstBytes::Other);
        assert_eq!(classify(&hello[..3], off), FirstBytes::Other);
    }

    #[test]
    fn a_client_hello_too_big_for_one_record_is_recognised_by_its_full_first_record() {
        // Enough ALPN names to take the ClientHello past 2^14 bytes.
        let alpn = (0..400).map(|i| format!("proto-{i:040}").into_bytes()).collect();
        let hello = rustls_hello(alpn, None);
        assert_eq!(&hello[3..5], &(MAX_PLAINTEXT as u16).to_be_bytes(), "not fragmented");
        assert_eq!(classify(&hello[..HELLO_HEADERS], BOTH), FirstBytes::ClientHello);
        let full = headers([3, 1], MAX_PLAINTEXT, 1, MAX_PLAINTEXT);
        assert_eq!(classify(&full, BOTH), FirstBytes::ClientHello);
    }

    #[test]
    fn a_client_hello_chopped_into_small_records_is_not_recognised() {
        let hello = rustls_hello(vec![b"h2".to_vec()], Some(128));
        assert_eq!(hello[0], 22);
        assert!(usize::from(u16::from_be_bytes([hello[3], hello[4]])) < MAX_PLAINTEXT);
        assert_eq!(classify(&hello, BOTH), FirstBytes::Other);
    }

    #[test]
    fn headers_breaking_one_rule_are_other() {
        let good = headers([3, 1], 200, 1, 196);
        assert_eq!(classify(&good, BOTH), FirstBytes::ClientHello);
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("SSL 2 record version", headers([2, 0], 200, 1, 196)),
            ("record version 3.5", headers([3, 5], 200, 1, 196)),
            ("empty record", headers([3, 1], 0, 1, 196)),
            ("record over 2^14", headers([3, 3], MAX_PLAINTEXT + 1, 1, MAX_PLAINTEXT - 3)),
            ("server_hello", headers([3, 3], 200, 2, 196)),
            ("body shorter than the record", headers([3, 3], 200, 1, 100)),
            ("body longer than a record not full", headers([3, 3], 200, 1, 400)),
            ("body too small for a ClientHello", headers([3, 3], 44, 1, 40)),
            ("body too large for a ClientHello", headers([3, 3], MAX_PLAINTEXT, 1, MAX_HELLO_BODY + 1)),
        ];
        let mut alert = good.clone();
        alert[0] = 21;
        cases.push(("alert record", alert));
        for (what, bytes) in cases {
            assert_eq!(classify(&bytes, BOTH), FirstBytes::Other, "{what}");
            let decided = (1..=HELLO_HEADERS).find(|&n| classify(&bytes[..n], BOTH) == FirstBytes::Other);
            assert!(decided.is_some(), "{what}: a prefix said NeedMore after all");
        }
        // Refused as soon as the bytes present show it, without waiting for the rest.
        assert_eq!(classify(&[22, 3, 1, 0, 0], BOTH), FirstBytes::Other);
        assert_eq!(classify(&[22, 4], BOTH), FirstBytes::Other);
    }

    #[test]
    fn the_h2_preface_is_wanted_whole() {
        assert_eq!(classify(H2_PREFACE, BOTH), FirstBytes::H2Preface);
        let mut longer = H2_PREFACE.to_vec();
        longer.extend_from_slice(b"\0\0\x12\x04");
        assert_eq!(classify(&longer, BOTH), FirstBytes::H2Preface);
        assert_eq!(classify(&H2_PREFACE[..23], BOTH), FirstBytes::NeedMore);
        assert_eq!(classify(b"PRI * HTTP/1.1", BOTH), FirstBytes::Other);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n", BOTH), FirstBytes::Other);
        let no_h2 = Want {
            client_hello: true,
            h2: false,
        };
        assert_eq!(classify(H2_PREFACE, no_h2), FirstBytes::Other);
        assert_eq!(classify(b"PR", no_h2), FirstBytes::Other);
        assert_eq!(classify(b"", Want::default()), FirstBytes::Other);
    }

    // === read_first ===

    /// A client that sends one scripted chunk per read: `Some(bytes)`, or `None` for EOF;
    /// after the script it sends nothing, ever.
    struct Script(VecDeque<Option<Vec<u8>>>);

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.pop_front() {
                Some(Some(mut chunk)) => {
                    let rest = chunk.split_off(chunk.len().min(buf.remaining()));
                    buf.put_slice(&chunk);
                    if !rest.is_empty() {
                        self.0.push_front(Some(rest));
                    }
                    Poll::Ready(Ok(()))
                }
                Some(None) => Poll::Ready(Ok(())),
                None => Poll::Pending,
            }
        }
    }

    fn read(script: Vec<Option<&[u8]>>, want: Want) -> Option<(Vec<u8>, FirstBytes)> {
        let mut client = Script(script.into_iter().map(|c| c.map(<[u8]>::to_vec)).collect());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let first = rt
            .block_on(read_first(&mut client, want, Duration::from_millis(50)))
            .unwrap();
        first.map(|f| (f.bytes().to_vec(), f.kind))
    }

    #[test]
    fn a_client_hello_in_pieces_is_waited_for() {
        let hello = rustls_hello(vec![b"h2".to_vec()], None);
        let script = vec![Some(&hello[..1]), Some(&hello[1..4]), Some(&hello[4..])];
        let (bytes, kind) = read(script, BOTH).unwrap();
        assert_eq!(kind, FirstBytes::ClientHello);
        assert_eq!(bytes, &hello[..bytes.len()], "read as sent");
        assert!(bytes.len() >= HELLO_HEADERS);
    }

    #[test]
    fn a_prefix_cut_short_is_other_with_its_bytes_kept() {
        let stall = vec![Some(&[22u8, 3][..])];
        assert_eq!(read(stall, BOTH), Some((vec![22, 3], FirstBytes::Other)));
        let closes = vec![Some(&[22u8, 3, 1, 0][..]), None];
        assert_eq!(read(closes, BOTH), Some((vec![22, 3, 1, 0], FirstBytes::Other)));
        let h2_stall = vec![Some(&H2_PREFACE[..10])];
        assert_eq!(read(h2_stall, BOTH), Some((H2_PREFACE[..10].to_vec(), FirstBytes::Other)));
    }

    #[test]
    fn silence_and_a_close_without_a_byte() {
        assert_eq!(read(vec![None], BOTH), None);
        assert_eq!(read(vec![], BOTH), Some((vec![], FirstBytes::Other)));
    }

    #[test]
    fn an_unwanted_prefix_is_not_waited_for() {
        // With neither answer wanted, the first read decides (the rest never comes here).
        let one = vec![Some(&[22u8][..]), Some(&[3, 1, 0][..])];
        assert_eq!(read(one, Want::default()), Some((vec![22], FirstBytes::Other)));
        let p = vec![Some(&b"PRI"[..]), Some(&b" * HTTP"[..])];
        let hello_only = Want {
            client_hello: true,
            h2: false,
        };
        assert_eq!(read(p, hello_only), Some((b"PRI".to_vec(), FirstBytes::Other)));
    }
}
