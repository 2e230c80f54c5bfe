//! Slot sockets: one SO_REUSEPORT listening socket per worker slot and per `listen` address.
//!
//! With SO_REUSEPORT the kernel gives every socket its own accept queue and hashes each new
//! connection to one of them. Closing a socket drops the connections queued on it (nginx ticket
//! #1300), so the supervisor holds every slot's sockets for the slot's whole life: a worker that
//! dies leaves its queue intact for its replacement. Only removing a slot for good (TTOU) closes
//! its sockets; with `net.ipv4.tcp_migrate_req=1` the kernel then moves the queue to a sibling.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::Error;

/// The listening sockets of one slot, one per configured address, in `listen` order.
#[derive(Debug)]
pub struct SlotSockets {
    sockets: Vec<TcpListener>,
}

impl SlotSockets {
    /// Opens, binds and listens on one socket per address.
    pub fn open(addrs: &[SocketAddr], backlog: i32) -> Result<Self, Error> {
        let sockets = addrs
            .iter()
            .map(|addr| open_one(*addr, backlog).map_err(|source| Error::Listen { addr: *addr, source }))
            .collect::<Result<_, _>>()?;
        Ok(SlotSockets { sockets })
    }

    /// Raw descriptors, so the child can tell its own sockets from its siblings'.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The sockets themselves (the child duplicates them after `fork`).
    pub fn listeners(&self) -> &[TcpListener] {
        &self.sockets
    }

    /// Duplicates the sockets for a worker. The duplicates share the kernel socket (and its
    /// accept queue); the worker may close its copies without affecting the slot.
    pub fn try_clone(&self) -> std::io::Result<Vec<TcpListener>> {
        self.sockets.iter().map(TcpListener::try_clone).collect()
    }
}

fn open_one(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:80` should not also take the IPv4 port: operators list both when they want both.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Reads `net.ipv4.tcp_migrate_req`; `None` where the kernel has no such setting (before 5.14).
pub fn tcp_migrate_req() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").ok().map(|v| v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn two_slots_share_one_port_and_a_queued_connection_survives_a_closed_duplicate() {
        let first = SlotSockets::open(&["127.0.0.1:0".parse().unwrap()], 16).unwrap();
        let port = first.sockets[0].local_addr().unwrap();
        let second = SlotSockets::open(&[port], 16).expect("SO_REUSEPORT lets a second slot bind");
        drop(second);

        // A worker's copy closing must not close the slot socket.
        let copy = first.try_clone().unwrap();
        drop(copy);
        let mut client = TcpStream::connect(port).unwrap();
        client.write_all(b"x").unwrap();
        first.sockets[0].set_nonblocking(false).unwrap();
        let (mut conn, _) = first.sockets[0].accept().unwrap();
        let mut buf = [0u8; 1];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }
}
