//! Shared by `loadgen` and `tlssink` (benchmark harness): the wire protocol between
//! them and the byte pattern both sides check, so a proxy that corrupts, drops or reorders
//! bytes is caught instead of being measured.
//!
//! Protocol, after the TLS handshake at the sink (the proxy in between sees plaintext):
//! the client's first byte selects the connection's mode.
//! - `E` echo: every following byte is echoed back; the client's EOF ends it.
//! - `S` sink: the sink reads and checks the pattern until EOF, then replies with 8 bytes
//!   (u64, big-endian): the count of bytes received, or, when a byte differed from the
//!   pattern, `MISMATCH_FLAG | offset_of_first_wrong_byte`; then it closes.
//! - `O` + 8 bytes N (u64, big-endian) source: the sink sends N bytes of the pattern, then
//!   closes (close_notify + FIN).
#![allow(dead_code)]

use std::net::SocketAddr;

pub const CMD_ECHO: u8 = b'E';
pub const CMD_SINK: u8 = b'S';
pub const CMD_SOURCE: u8 = b'O';
pub const MISMATCH_FLAG: u64 = 1 << 63;

/// The pattern repeats with this period: a prime, so it never lines up with TLS records,
/// socket buffers or read sizes, and a chunk relayed twice or skipped shows.
pub const PERIOD: usize = 65_521;

/// The pattern, written out over three periods so any window of up to two periods starting
/// inside the first one is one contiguous slice.
pub struct Pattern {
    bytes: Vec<u8>,
}

impl Pattern {
    pub fn new() -> Self {
        // xorshift: cheap, deterministic, not all-zero or periodic within a period.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut one = Vec::with_capacity(PERIOD);
        for _ in 0..PERIOD {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            one.push((x >> 24) as u8);
        }
        let mut bytes = Vec::with_capacity(3 * PERIOD);
        for _ in 0..3 {
            bytes.extend_from_slice(&one);
        }
        Pattern { bytes }
    }

    /// The pattern bytes for stream offsets `offset .. offset + len`, `len <= 2 * PERIOD`.
    pub fn window(&self, offset: u64, len: usize) -> &[u8] {
        assert!(len <= 2 * PERIOD);
        let start = (offset % PERIOD as u64) as usize;
        &self.bytes[start..start + len]
    }

    /// Checks `data`, found at stream offset `offset`; returns the offset of the first wrong
    /// byte, if any.
    pub fn check(&self, offset: u64, data: &[u8]) -> Option<u64> {
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(2 * PERIOD);
            let want = self.window(offset + done as u64, n);
            let got = &data[done..done + n];
            if want != got {
                let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
                return Some(offset + (done + i) as u64);
            }
            done += n;
        }
        None
    }
}

/// All benchmark traffic stays on this machine.
pub fn require_loopback(addr: &SocketAddr, what: &str) -> Result<(), String> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{what} {addr} is not a loopback address: the harness only talks to 127.0.0.0/8 or ::1"
        ))
    }
}
