//! Just enough HTTP/1.1 and HTTP/2 to answer one `curl` request: the master stand-in for
//! the ALPN tests. The HTTP/2 side decodes no HPACK; it answers the first HEADERS frame
//! with `:status: 200`, a content-length and the body.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, body: &str) -> io::Result<()> {
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).await?;
    if preface != H2_PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no HTTP/2 preface",
        ));
    }
    s.write_all(&frame(FRAME_SETTINGS, 0, 0, &[])).await?;
    s.flush().await?;
    loop {
        let mut head = [0u8; 9];
        match s.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await?;
        match kind {
            FRAME_SETTINGS if flags & FLAG_ACK == 0 => {
                s.write_all(&frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]))
                    .await?;
            }
            FRAME_PING if flags & FLAG_ACK == 0 => {
                s.write_all(&frame(FRAME_PING, FLAG_ACK, 0, &payload))
                    .await?;
            }
            FRAME_HEADERS => {
                // HPACK: 0x88 = indexed ":status: 200"; 0x0f 0x0d = literal without
                // indexing, name index 28 (content-length); then the value.
                let len = body.len().to_string();
                let mut block = vec![0x88, 0x0f, 0x0d, len.len() as u8];
                block.extend_from_slice(len.as_bytes());
                s.write_all(&frame(FRAME_HEADERS, FLAG_END_HEADERS, stream, &block))
                    .await?;
                s.write_all(&frame(FRAME_DATA, FLAG_END_STREAM, stream, body.as_bytes()))
                    .await?;
            }
            FRAME_GOAWAY => return Ok(()),
            _ => {}
        }
        s.flush().await?;
    }
}

pub async fn serve_http1<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    body: &str,
) -> io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request cut short",
            ));
        }
        req.extend_from_slice(&buf[..n]);
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    );
    s.write_all(resp.as_bytes()).await?;
    s.flush().await
}
