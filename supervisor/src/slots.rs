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
    /// Opens and binds one socket per address. `listen`: start listening now (the slots opened
    /// at start, whose queues should hold clients until the first workers are ready). A slot
    /// added later (TTIN) is only bound: a bound TCP socket is not in the port's reuseport group,
    /// so no connection is hashed to it until its worker, once ready, calls `listen` itself.
    pub fn open(addrs: &[SocketAddr], backlog: i32, listen: bool) -> Result<Self, Error> {
        let sockets = addrs
            .iter()
            .map(|addr| {
                open_one(*addr, backlog, listen)
                    .map_err(|cause| Error::Listen { addr: *addr, cause })
            })
            .collect::<Result<_, _>>()?;
        Ok(SlotSockets { sockets })
    }

    /// Sockets handed over by a previous supervisor (an upgrade), already listening.
    pub fn adopt(sockets: Vec<TcpListener>) -> Self {
        SlotSockets { sockets }
    }

    /// Refuses to share an address with another process. SO_REUSEPORT would let a second
    /// gateway (same user) bind the same port and silently take half its connections; nginx and
    /// HAProxy refuse instead. A plain bind without SO_REUSEPORT fails while anyone listens on
    /// the address, so it is tried (and closed) before the slot sockets are opened.
    pub fn ensure_unused(addrs: &[SocketAddr]) -> Result<(), Error> {
        for addr in addrs.iter().filter(|a| a.port() != 0) {
            let probe = || -> std::io::Result<()> {
                let socket =
                    Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP))?;
                socket.set_reuse_address(true)?;
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.bind(&(*addr).into())
            };
            if let Err(e) = probe() {
                let source = if e.kind() == std::io::ErrorKind::AddrInUse {
                    std::io::Error::new(
                        e.kind(),
                        "address already in use (is another zkgate or server listening on it?)",
                    )
                } else {
                    e
                };
                return Err(Error::Listen { addr: *addr, cause: source });
            }
        }
        Ok(())
    }

    /// Raw descriptors, so the child can tell its own sockets from its siblings'.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.sockets.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The sockets themselves (the child duplicates them after `fork`).
    pub fn listeners(&self) -> &[TcpListener] {
        &self.sockets
    }
}

fn open_one(addr: SocketAddr, backlog: i32, listen: bool) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `[::]:80` should not also take the IPv4 port: operators list both when they want both.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if listen {
        socket.listen(backlog)?;
    }
    Ok(socket.into())
}

// asm-generic values (x86_64, aarch64, riscv, …); libc only exports them for Android.
const SO_ATTACH_REUSEPORT_CBPF: nix::libc::c_int = 51;
const SO_DETACH_REUSEPORT_BPF: nix::libc::c_int = 68;

impl SlotSockets {
    /// Steers new connections of every reuseport group this slot belongs to onto the first
    /// `keep` sockets of the group (the kernel keeps a group's sockets in the order they started
    /// listening, and slots only ever leave from the end). Used before a slot is removed: no new
    /// connection lands on its socket, so closing it after its worker took the queue loses
    /// nothing, with or without `tcp_migrate_req`.
    ///
    /// The program is classic BPF: `A = skb->hash % keep; return A`.
    pub fn steer_to_first(&self, keep: usize) -> std::io::Result<()> {
        use nix::libc::{
            sock_filter, sock_fprog, BPF_ABS, BPF_ALU, BPF_K, BPF_LD, BPF_MOD, BPF_RET, BPF_W,
        };
        let keep = u32::try_from(keep.max(1)).unwrap_or(u32::MAX);
        let mut prog = [
            sock_filter {
                code: (BPF_LD | BPF_W | BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: (nix::libc::SKF_AD_OFF + nix::libc::SKF_AD_RXHASH) as u32,
            },
            sock_filter { code: (BPF_ALU | BPF_MOD | BPF_K) as u16, jt: 0, jf: 0, k: keep },
            // BPF_RET | BPF_A: return the accumulator.
            sock_filter { code: (BPF_RET | 0x10) as u16, jt: 0, jf: 0, k: 0 },
        ];
        let fprog = sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
        for s in &self.sockets {
            // SAFETY: a valid socket fd and a pointer to a sock_fprog that outlives the call.
            let rc = unsafe {
                nix::libc::setsockopt(
                    s.as_raw_fd(),
                    nix::libc::SOL_SOCKET,
                    SO_ATTACH_REUSEPORT_CBPF,
                    &fprog as *const sock_fprog as *const nix::libc::c_void,
                    std::mem::size_of::<sock_fprog>() as nix::libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Back to the kernel's own hashing over every socket of the group.
    pub fn clear_steering(&self) {
        for s in &self.sockets {
            let zero: nix::libc::c_int = 0;
            // SAFETY: a valid socket fd and an int option value. ENOENT (nothing attached) is fine.
            unsafe {
                nix::libc::setsockopt(
                    s.as_raw_fd(),
                    nix::libc::SOL_SOCKET,
                    SO_DETACH_REUSEPORT_BPF,
                    &zero as *const nix::libc::c_int as *const nix::libc::c_void,
                    std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
                );
            }
        }
    }
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
    fn steering_sends_every_new_connection_to_the_first_sockets() {
        let first = SlotSockets::open(&["127.0.0.1:0".parse().unwrap()], 64, true).unwrap();
        let addr = first.sockets[0].local_addr().unwrap();
        let second = SlotSockets::open(&[addr], 64, true).unwrap();
        first.steer_to_first(1).unwrap();
        let clients: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut on_second = 0;
        while second.sockets[0].accept().is_ok() {
            on_second += 1;
        }
        let mut on_first = 0;
        while first.sockets[0].accept().is_ok() {
            on_first += 1;
        }
        assert_eq!((on_first, on_second), (20, 0));
        first.clear_steering();
        drop(clients);
    }

    #[test]
    fn two_slots_share_one_port_and_a_queued_connection_survives_a_closed_duplicate() {
        let first = SlotSockets::open(&["127.0.0.1:0".parse().unwrap()], 16, true).unwrap();
        let port = first.sockets[0].local_addr().unwrap();
        let second =
            SlotSockets::open(&[port], 16, true).expect("SO_REUSEPORT lets a second slot bind");
        drop(second);

        // A worker's copy closing must not close the slot socket.
        let copy = first.listeners()[0].try_clone().unwrap();
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
