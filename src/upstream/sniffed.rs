//! The master's socket as rustls sees it: the first bytes kept for diagnosis, reads ahead
//! while data flows, and a shutdown that can leave the TCP stream open (inside a tunnel).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How much is read from the master's socket at once. rustls asks for 4 KiB at a time, which
/// costs four or five system calls per 16 KiB record; one read of this size serves them all.
pub const READ_AHEAD: usize = 64 * 1024;

/// The master's socket as rustls sees it:
/// - it keeps the first bytes the master sent, so a failed handshake can tell plaintext HTTP
///   from a broken TLS stack (a few bytes per connection);
/// - it reads ahead in [`READ_AHEAD`] chunks while data is flowing, and gives the buffer back
///   as soon as the socket has nothing more, so an idle connection holds none.
#[derive(Debug)]
pub struct Sniffed<IO> {
    io: IO,
    first: [u8; 8],
    len: u8,
    ahead: bytes::BytesMut,
    /// A shutdown flushes but sends no FIN (the stream is a tunnel through an egress proxy).
    pub hold_fin: bool,
}

impl<IO> Sniffed<IO> {
    pub fn new(io: IO) -> Self {
        Sniffed {
            io,
            first: [0; 8],
            len: 0,
            ahead: bytes::BytesMut::new(),
            hold_fin: false,
        }
    }
    /// What the master sent first: its own words, escaped when shown.
    pub fn first(&self) -> crate::untrusted::Untrusted<&[u8]> {
        crate::untrusted::Untrusted::new(&self.first[..self.len as usize])
    }

    fn sniff(&mut self, new: &[u8]) {
        let at = self.len as usize;
        let take = new.len().min(self.first.len() - at);
        self.first[at..at + take].copy_from_slice(&new[..take]);
        self.len += take as u8;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        use bytes::Buf;
        let this = self.get_mut();
        if this.ahead.is_empty() {
            // A reader with room for a whole chunk gets the socket directly.
            if buf.remaining() >= READ_AHEAD {
                let before = buf.filled().len();
                let r = Pin::new(&mut this.io).poll_read(cx, buf);
                if (this.len as usize) < this.first.len() {
                    let new = buf.filled()[before..].to_vec();
                    this.sniff(&new);
                }
                return r;
            }
            if this.ahead.capacity() < READ_AHEAD / 4 {
                this.ahead = bytes::BytesMut::with_capacity(READ_AHEAD);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.ahead) {
                Poll::Pending => {
                    // Nothing more for now: an idle connection keeps no buffer.
                    this.ahead = bytes::BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = buf.remaining().min(this.ahead.len());
        buf.put_slice(&this.ahead[..n]);
        if (this.len as usize) < this.first.len() {
            let new = this.ahead[..n].to_vec();
            this.sniff(&new);
        }
        this.ahead.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniffed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold_fin {
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

