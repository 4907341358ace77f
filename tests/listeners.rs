//! Listeners: unix sockets (mode, group, stale file), IPv6, several at once,
//! allowed_clients, addresses not on the host yet, max_connections.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;

fn unix_listener(name: &str, path: &Path, extra: &str) -> String {
    let listen = q(format!("unix:{}", path.display()));
    format!("{{name: {name}, listen: {listen}{extra}}}")
}

fn unix_roundtrip(path: &Path) {
    let mut c = UnixStream::connect(path).expect("connect to unix listener");
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"over a unix socket\n").unwrap();
    let mut back = [0u8; 19];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"over a unix socket\n");
    c.shutdown(Shutdown::Write).unwrap();
    let rest = read_until_closed(&mut c, IO_TIMEOUT);
    assert!(rest.is_empty());
}

#[test]
fn unix_socket_listener_relays_with_mode_0660() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let sock = dir.path().join("logs.sock");
    let proxy = master
        .cfg()
        .listeners(&[&unix_listener("logs", &sock, "")])
        .start(dir.path());
    assert_eq!(
        proxy.listener_addr("logs"),
        format!("unix:{}", sock.display())
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");
    unix_roundtrip(&sock);
    let access = proxy.nth_access_line("logs", 1);
    assert_eq!(access["outcome"], "ok", "{access}");
}

#[test]
fn unix_socket_mode_and_group_configurable() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let sock = dir.path().join("tasks.sock");
    // Root may hand the socket to any group; others only to their own.
    let gid = if nix::unistd::geteuid().is_root() {
        4242
    } else {
        nix::unistd::getegid().as_raw()
    };
    let extra = format!(", mode: \"0600\", group: \"{gid}\"");
    let proxy = master
        .cfg()
        .listeners(&[&unix_listener("tasks", &sock, &extra)])
        .start(dir.path());
    proxy.listener_addr("tasks");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.gid(), gid);
    unix_roundtrip(&sock);
}

#[test]
fn stale_unix_socket_file_replaced() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let sock = dir.path().join("stale.sock");
    // A socket file left behind by a previous run that was killed.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let proxy = master
        .cfg()
        .listeners(&[&unix_listener("logs", &sock, "")])
        .start(dir.path());
    proxy.listener_addr("logs");
    unix_roundtrip(&sock);
}

#[test]
fn ipv6_loopback_listener() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: v6, listen: "[::1]:0"}"#])
        .start(dir.path());
    let addr = proxy.tcp_addr("v6");
    assert!(addr.is_ipv6(), "listener address {addr}");
    let mut c = connect(addr);
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"v6"), b"v6");
    finish(&mut c);
    let access = proxy.access_line(local);
    assert_eq!(access["listener"], "v6");
    assert!(field(&access, "client").starts_with("[::1]:"), "{access}");
}

#[test]
fn ipv6_wildcard_listener_takes_ipv4_clients_judged_as_ipv4() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: any, listen: "[::]:0", allowed_clients: ["127.0.0.0/8"]}"#])
        .start(dir.path());
    // Dual-stack, as the admin endpoint's socket and systemd's: an IPv4 client arrives as
    // ::ffff:127.0.0.1 and allowed_clients judges it as 127.0.0.1.
    let port = proxy.tcp_addr("any").port();
    let mut c = connect(SocketAddr::from(([127, 0, 0, 1], port)));
    let local = c.local_addr().unwrap();
    assert_eq!(roundtrip(&mut c, b"v4"), b"v4");
    finish(&mut c);
    let mapped = SocketAddr::from((Ipv4Addr::LOCALHOST.to_ipv6_mapped(), local.port()));
    assert_eq!(proxy.access_line(mapped)["listener"], "any");
}

#[test]
fn two_listeners_each_named_in_access_log() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[
            r#"{name: agent, listen: "127.0.0.1:0"}"#,
            r#"{name: logs, listen: "127.0.0.1:0"}"#,
        ])
        .start(dir.path());
    let (a, b) = (proxy.tcp_addr("agent"), proxy.tcp_addr("logs"));
    assert_ne!(a, b);
    let mut ca = connect(a);
    let mut cb = connect(b);
    let (la, lb) = (ca.local_addr().unwrap(), cb.local_addr().unwrap());
    assert_eq!(roundtrip(&mut ca, b"agent"), b"agent");
    assert_eq!(roundtrip(&mut cb, b"logs"), b"logs");
    finish(&mut ca);
    finish(&mut cb);
    assert_eq!(proxy.access_line(la)["listener"], "agent");
    assert_eq!(proxy.access_line(lb)["listener"], "logs");
}

#[test]
fn allowed_clients_denies_client_outside_list() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[r#"{name: main, listen: "127.0.0.1:0", allowed_clients: ["10.0.0.0/8"]}"#])
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    let local = c.local_addr().unwrap();
    let _ = c.write_all(b"let me in");
    let got = read_until_closed(&mut c, Duration::from_secs(3));
    assert!(got.is_empty(), "denied client got {got:?}");
    let access = proxy.access_line(local);
    assert_eq!(access["outcome"], "denied", "{access}");
    assert_eq!(
        master.server.state().tcp_accepts,
        0,
        "the master was dialled for a denied client"
    );
}

#[test]
fn allowed_clients_admits_client_inside_list() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master
        .cfg()
        .listeners(&[
            r#"{name: main, listen: "127.0.0.1:0", allowed_clients: ["10.0.0.0/8", "127.0.0.0/8"]}"#,
        ])
        .start(dir.path());
    let mut c = connect(proxy.tcp_addr("main"));
    assert_eq!(roundtrip(&mut c, b"welcome"), b"welcome");
    finish(&mut c);
}

#[test]
fn listener_on_address_not_on_host_binds() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    // The Docker bridge before Docker starts: an address no interface has yet.
    let proxy = master
        .cfg()
        .listeners(&[
            r#"{name: main, listen: "127.0.0.1:0"}"#,
            r#"{name: bridge, listen: "192.0.2.77:0", allowed_clients: ["192.0.2.0/24"]}"#,
        ])
        .start(dir.path());
    let addr = proxy.listener_addr("bridge");
    assert!(
        addr.starts_with("192.0.2.77:"),
        "bridge listening on {addr}"
    );
}

#[test]
fn max_connections_holds_extra_clients_until_a_slot_frees() {
    let dir = tempdir();
    let master = Master::start(dir.path(), Behavior::Echo);
    let proxy = master.cfg().extra("max_connections: 1").start(dir.path());
    let addr = proxy.tcp_addr("main");
    let mut first = connect(addr);
    assert_eq!(roundtrip(&mut first, b"first"), b"first");

    let mut second = connect(addr);
    second.write_all(b"second").unwrap();
    // While the first is in flight the second is not served. (A bounded negative
    // check: it can only pass wrongly, never fail wrongly.)
    second
        .set_read_timeout(Some(Duration::from_millis(800)))
        .unwrap();
    let mut buf = [0u8; 6];
    match second.read(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
        other => panic!("second client served beyond max_connections: {other:?}"),
    }
    assert_eq!(master.server.state().tcp_accepts, 1);

    finish(&mut first);
    second.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    second.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"second");
    finish(&mut second);
}
