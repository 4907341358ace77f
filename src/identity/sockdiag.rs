//! A TCP client of this network namespace, looked up in the kernel's socket tables over
//! `NETLINK_SOCK_DIAG`: one request naming the client's socket by its exact address pair
//! (seen from the client: source = its address and port, destination = ours) and one reply
//! carrying the socket's owner uid, inode and, from Linux 5.7, the id of the cgroup that
//! created it (`INET_DIAG_CGROUP_ID`, always sent, no extension to ask for).
//!
//! The kernel answers inside the `send()`: a sock_diag request is handled in the sender's
//! system call and the reply queued on our socket before it returns. So a lookup is two
//! non-blocking system calls and never waits; a reply that is not there is an error, not
//! something to wait for. Sockets are kept in a small pool; one that failed is dropped, never
//! reused, so a stray reply cannot answer a later request.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use socket2::{Domain, Protocol, Socket, Type};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 72;
const INET_DIAG_CGROUP_ID: u16 = 21;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
/// Idle sockets kept for the next lookups: one. A lookup never waits, so two overlap only when
/// two runtime workers identify clients at the same instant; the second then opens a socket of
/// its own and closes it after. A pool that kept what a burst opened would hold descriptors
/// past the burst, which a leak check cannot tell from a leak.
const POOL_MAX: usize = 1;

/// What the socket tables say about a client's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SockInfo {
    pub uid: u32,
    pub(crate) inode: u32,
    /// `None` before Linux 5.7.
    pub(crate) cgroup_id: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DiagError {
    /// No such socket here: the client is in another network namespace (or another host).
    #[error("no such socket in this network namespace")]
    NotFound,
    /// Only a TIME_WAIT remnant is left, which has no owner.
    #[error("the client's socket is already closed")]
    Closed,
    #[error("NETLINK_SOCK_DIAG: {0}")]
    Io(#[from] io::Error),
    #[error("NETLINK_SOCK_DIAG: malformed reply ({0})")]
    Malformed(&'static str),
}

/// The pool of netlink sockets and the request sequence.
#[derive(Default)]
pub(crate) struct Diag {
    idle: Mutex<Vec<Socket>>,
    seq: AtomicU32,
}

impl Diag {
    /// The socket of the client at `client` connected to our `local` address.
    pub fn lookup(&self, client: SocketAddr, local: SocketAddr) -> Result<SockInfo, DiagError> {
        let (client, local) = (unmapped(client), unmapped(local));
        if client.is_ipv4() != local.is_ipv4() {
            return Err(DiagError::NotFound);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let sock = match self.take() {
            Some(s) => s,
            None => open()?,
        };
        sock.send(&request(seq, client, local))?;
        let mut buf = [0u8; 4096];
        loop {
            // The reply was queued before send() returned: nothing to wait for. A socket that
            // has none is dropped with the error, so it never answers a later request.
            let n = (&sock).read(&mut buf)?;
            match parse(&buf[..n], seq)? {
                None => continue,
                Some(answer) => {
                    self.put(sock);
                    return answer;
                }
            }
        }
    }

    fn take(&self) -> Option<Socket> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put(&self, sock: Socket) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX {
            idle.push(sock);
        }
    }
}

fn open() -> io::Result<Socket> {
    let s = Socket::new(
        Domain::from(nix::libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(nix::libc::NETLINK_SOCK_DIAG)),
    )?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A dual-stack socket shows IPv4 peers as `::ffff:a.b.c.d`; their sockets are IPv4 ones.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The 16 address bytes of `struct inet_diag_sockid` (IPv4 in the first 4).
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    }
    b
}

/// `nlmsghdr` + `inet_diag_req_v2` for the socket whose own address is `src` and whose peer
/// is `dst`. Netlink headers are in host order, ports and addresses in network order.
fn request(seq: u32, src: SocketAddr, dst: SocketAddr) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut b = [0u8; NLMSG_HDRLEN + REQ_LEN];
    b[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    let r = &mut b[NLMSG_HDRLEN..];
    r[0] = if src.is_ipv4() { nix::libc::AF_INET } else { nix::libc::AF_INET6 } as u8;
    r[1] = nix::libc::IPPROTO_TCP as u8;
    // r[2] idiag_ext: no extensions; the cgroup id comes regardless.
    r[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
    r[8..10].copy_from_slice(&src.port().to_be_bytes());
    r[10..12].copy_from_slice(&dst.port().to_be_bytes());
    r[12..28].copy_from_slice(&addr_bytes(src.ip()));
    r[28..44].copy_from_slice(&addr_bytes(dst.ip()));
    // idiag_if: a link-local client's socket is bound to its interface; others match any.
    if let SocketAddr::V6(v6) = src {
        r[44..48].copy_from_slice(&v6.scope_id().to_ne_bytes());
    }
    // Cookie: INET_DIAG_NOCOOKIE, do not check it.
    r[48..56].copy_from_slice(&[0xff; 8]);
    b
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The answer to request `seq` in one datagram; `Ok(None)` when the datagram answers another.
fn parse(buf: &[u8], seq: u32) -> Result<Option<Result<SockInfo, DiagError>>, DiagError> {
    if buf.len() < NLMSG_HDRLEN {
        return Err(DiagError::Malformed("short header"));
    }
    let len = (u32_at(buf, 0) as usize).min(buf.len());
    if len < NLMSG_HDRLEN {
        return Err(DiagError::Malformed("bad length"));
    }
    if u32_at(buf, 8) != seq {
        return Ok(None);
    }
    let body = &buf[NLMSG_HDRLEN..len];
    match u16_at(buf, 4) {
        NLMSG_ERROR => {
            if body.len() < 4 {
                return Err(DiagError::Malformed("short error"));
            }
            let errno = -(u32_at(body, 0) as i32);
            Ok(Some(Err(if errno == nix::libc::ENOENT {
                DiagError::NotFound
            } else {
                DiagError::Io(io::Error::from_raw_os_error(errno))
            })))
        }
        SOCK_DIAG_BY_FAMILY => Ok(Some(diag_msg(body))),
        _ => Err(DiagError::Malformed("unexpected message type")),
    }
}

/// `struct inet_diag_msg` and its attributes.
fn diag_msg(body: &[u8]) -> Result<SockInfo, DiagError> {
    if body.len() < MSG_LEN {
        return Err(DiagError::Malformed("short inet_diag_msg"));
    }
    let state = body[1];
    // TIME_WAIT and request sockets carry no owner: their uid field reads 0, not root.
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        return Err(DiagError::Closed);
    }
    let mut info = SockInfo {
        uid: u32_at(body, 64),
        inode: u32_at(body, 68),
        cgroup_id: None,
    };
    let mut at = MSG_LEN;
    while at + 4 <= body.len() {
        let len = u16_at(body, at) as usize;
        let kind = u16_at(body, at + 2) & 0x3fff;
        if len < 4 || at + len > body.len() {
            break;
        }
        if kind == INET_DIAG_CGROUP_ID && len >= 12 {
            let v = &body[at + 4..at + 12];
            info.cgroup_id = Some(u64::from_ne_bytes(v.try_into().unwrap_or_default()));
        }
        at += (len + 3) & !3;
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_request_names_the_client_socket_by_its_address_pair() {
        let r = request(7, "127.0.0.2:40000".parse().unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(u32_at(&r, 0), 72);
        assert_eq!(u32_at(&r, 8), 7);
        let q = &r[NLMSG_HDRLEN..];
        assert_eq!((q[0], q[1]), (2, 6));
        assert_eq!(&q[8..12], &[0x9c, 0x40, 0x1f, 0x90]);
        assert_eq!(&q[12..16], &[127, 0, 0, 2]);
        assert_eq!(&q[28..32], &[127, 0, 0, 1]);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(unmapped(mapped), "10.0.0.1:5".parse().unwrap());
    }

    #[test]
    fn replies_for_other_requests_and_time_wait_sockets_are_not_an_owner() {
        let mut reply = vec![0u8; NLMSG_HDRLEN + MSG_LEN];
        let n = reply.len() as u32;
        reply[0..4].copy_from_slice(&n.to_ne_bytes());
        reply[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        reply[8..12].copy_from_slice(&3u32.to_ne_bytes());
        assert!(matches!(parse(&reply, 4), Ok(None)));
        reply[NLMSG_HDRLEN + 1] = TCP_TIME_WAIT;
        assert!(matches!(parse(&reply, 3), Ok(Some(Err(DiagError::Closed)))));
        assert!(matches!(parse(&reply[..10], 3), Err(DiagError::Malformed(_))));
    }

    /// A real lookup: a loopback connection made by this process is found, owned by our uid,
    /// with our cgroup (when the kernel reports socket cgroups).
    #[tokio::test]
    async fn finds_a_loopback_client_socket_of_this_process() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let diag = Diag::default();
        let info = diag.lookup(peer, server.local_addr().unwrap()).unwrap();
        assert_eq!(info.uid, nix::unistd::geteuid().as_raw());
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&client)))
            .unwrap()
            .ino();
        assert_eq!(u64::from(info.inode), ino);
        assert!(info.cgroup_id.is_some(), "no INET_DIAG_CGROUP_ID (Linux < 5.7?)");
        // A pair no socket has is simply not there.
        let none = diag.lookup("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        assert!(matches!(none, Err(DiagError::NotFound)), "{none:?}");
        assert_eq!(diag.idle.lock().unwrap().len(), 1, "the socket went back to the pool");
    }
}
