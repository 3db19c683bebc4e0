//! Process group over TCP: rendezvous through rank 0, then a ring (each rank connected to the
//! next and from the previous one) carrying a bandwidth-optimal all-reduce (reduce-scatter +
//! all-gather over flat f32 buffers, in buckets) and a variable-size all-gather.
//!
//! Every collective produces bit-identical results on all ranks: each chunk of a sum is
//! reduced once, on one rank, in a fixed order, and then copied to the others.
//!
//! Each exchange step sends to the next rank while receiving from the previous one, on one
//! thread: both sockets are non-blocking and `poll(2)` says which one can move. There is no
//! helper thread to hand work to, so two ranks on two cores keep two threads busy, not four.
//!
//! A peer that dies closes its sockets: the neighbours see EOF / reset at once and fail with
//! [`Error::LostRank`] naming it. A peer that hangs is detected by the collective timeout.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"KILNRDV1";
/// Floats per all-reduce bucket (16 MiB).
pub const BUCKET_FLOATS: usize = 4 << 20;
/// Floats per socket read while reducing (256 KiB: stays in L2 while it is added).
const PIECE_FLOATS: usize = 64 << 10;

/// How this process finds the others (the torchrun / Kubernetes indexed-Job convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldEnv {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// Rank 0's host.
    pub master_addr: String,
    /// Rank 0's rendezvous port.
    pub master_port: u16,
}

impl WorldEnv {
    /// Reads `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`; `None` if `RANK` is unset.
    pub fn from_env() -> Result<Option<WorldEnv>> {
        let Ok(rank) = std::env::var("RANK") else {
            return Ok(None);
        };
        let get = |k: &str| {
            std::env::var(k).map_err(|_| Error::Comm(format!("RANK is set but {k} is not")))
        };
        let parse = |k: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| Error::Comm(format!("{k}={v} is not a number")))
        };
        let rank = parse("RANK", rank)?;
        let world = parse("WORLD_SIZE", get("WORLD_SIZE")?)?;
        let master_port = get("MASTER_PORT")?;
        let master_port = master_port
            .parse::<u16>()
            .map_err(|_| Error::Comm(format!("MASTER_PORT={master_port} is not a port")))?;
        let master_addr = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
        if world == 0 || rank >= world {
            return Err(Error::Comm(format!(
                "RANK={rank} must be < WORLD_SIZE={world}"
            )));
        }
        Ok(Some(WorldEnv {
            rank,
            world,
            master_addr,
            master_port,
        }))
    }
}

/// A connected process group.
pub struct Comm {
    rank: usize,
    world: usize,
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    /// Receive buffer of the reduce steps (f32-aligned, one piece).
    scratch: Vec<f32>,
    /// A peer that moves no data for this long counts as lost.
    timeout: Duration,
}

impl Comm {
    /// A group of one (no sockets).
    pub fn single() -> Self {
        Self {
            rank: 0,
            world: 1,
            next: None,
            prev: None,
            scratch: Vec::new(),
            timeout: Duration::MAX,
        }
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn world(&self) -> usize {
        self.world
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    /// Joins the group: rank 0 listens on the master port, the others connect to it (retrying
    /// until `timeout`), everyone learns everyone's ring address, then each rank connects to the
    /// next rank and accepts the previous one.
    pub fn connect(env: &WorldEnv, timeout: Duration) -> Result<Comm> {
        if env.world == 1 {
            return Ok(Comm::single());
        }
        let deadline = Instant::now() + timeout;
        let ring = TcpListener::bind(("0.0.0.0", 0))
            .map_err(Error::comm_io("binding the ring listener"))?;
        let ring_port = ring
            .local_addr()
            .map_err(Error::comm_io("the ring listener's address"))?
            .port();
        let addrs: Vec<SocketAddr> = if env.rank == 0 {
            rendezvous_master(env, ring_port, deadline)?
        } else {
            rendezvous_worker(env, ring_port, deadline)?
        };
        let mut comm = Comm {
            rank: env.rank,
            world: env.world,
            next: None,
            prev: None,
            scratch: Vec::new(),
            timeout,
        };
        // Connect to the next rank (its listener's backlog accepts before it calls accept).
        let next_addr = addrs[comm.next_rank()];
        let mut next = connect_retry(next_addr, deadline).map_err(|e| {
            Error::lost_rank(comm.next_rank(), format!("connecting to {next_addr}"), e)
        })?;
        next.write_all(&(env.rank as u64).to_le_bytes())
            .map_err(Error::comm_io("ring handshake: sending this rank"))?;
        ring.set_nonblocking(true)
            .map_err(Error::comm_io("the ring listener"))?;
        let prev = loop {
            match ring.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(Error::LostRank {
                            rank: comm.prev_rank(),
                            message: format!("did not connect within {timeout:?}"),
                            source: None,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Error::comm_io("accepting the previous rank")(e)),
            }
        };
        prev.set_nonblocking(false)
            .map_err(Error::comm_io("ring socket options"))?;
        let mut prev = prev;
        prev.set_read_timeout(Some(timeout))
            .map_err(Error::comm_io("ring socket options"))?;
        let mut b = [0u8; 8];
        prev.read_exact(&mut b)
            .map_err(Error::comm_io("ring handshake"))?;
        if u64::from_le_bytes(b) as usize != comm.prev_rank() {
            return Err(Error::Comm(format!(
                "ring handshake: expected rank {} but rank {} connected",
                comm.prev_rank(),
                u64::from_le_bytes(b)
            )));
        }
        for s in [&next, &prev] {
            s.set_nodelay(true)
                .and_then(|()| s.set_nonblocking(true))
                .map_err(Error::comm_io("ring socket options"))?;
        }
        comm.next = Some(next);
        comm.prev = Some(prev);
        Ok(comm)
    }

    /// Timeout of collectives: a peer that moves no data for this long counts as lost.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout;
        Ok(())
    }

    /// Sums `buf` element-wise over all ranks, in place (identical result on every rank).
    pub fn allreduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        for bucket in buf.chunks_mut(BUCKET_FLOATS) {
            self.ring_allreduce(bucket)?;
        }
        Ok(())
    }

    fn ring_allreduce(&mut self, buf: &mut [f32]) -> Result<()> {
        let w = self.world;
        let n = buf.len();
        let bounds: Vec<usize> = (0..=w).map(|i| i * n / w).collect();
        let chunk = |c: usize| bounds[c]..bounds[c + 1];
        let (next_rank, prev_rank) = (self.next_rank(), self.prev_rank());
        let mut next = self.next.take().expect("ring");
        let mut prev = self.prev.take().expect("ring");
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = (|| {
            // Reduce-scatter: after w-1 steps rank r holds the full sum of chunk (r+1) % w.
            for s in 0..w - 1 {
                let send_c = (self.rank + w - s) % w;
                let recv_c = (self.rank + w - s - 1) % w;
                let (send, recv) = split_two(buf, chunk(send_c), chunk(recv_c));
                exchange(
                    &mut next,
                    next_rank,
                    as_bytes(send),
                    &mut prev,
                    prev_rank,
                    Recv::Add(recv),
                    &mut scratch,
                    self.timeout,
                )?;
            }
            // All-gather: pass the reduced chunks around the ring.
            for s in 0..w - 1 {
                let send_c = (self.rank + 1 + w - s) % w;
                let recv_c = (self.rank + w - s) % w;
                let (send, recv) = split_two(buf, chunk(send_c), chunk(recv_c));
                exchange(
                    &mut next,
                    next_rank,
                    as_bytes(send),
                    &mut prev,
                    prev_rank,
                    Recv::Copy(as_bytes_mut(recv)),
                    &mut scratch,
                    self.timeout,
                )?;
            }
            Ok(())
        })();
        self.next = Some(next);
        self.prev = Some(prev);
        self.scratch = scratch;
        r
    }

    /// Every rank's `mine`, indexed by rank (identical on every rank).
    pub fn allgather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let w = self.world;
        let mut out = vec![Vec::new(); w];
        out[self.rank] = mine.to_vec();
        if w == 1 {
            return Ok(out);
        }
        let (next_rank, prev_rank) = (self.next_rank(), self.prev_rank());
        let mut next = self.next.take().expect("ring");
        let mut prev = self.prev.take().expect("ring");
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = (|| {
            for s in 0..w - 1 {
                let send_i = (self.rank + w - s) % w;
                let recv_i = (self.rank + w - s - 1) % w;
                // Lengths first (small: no deadlock), then the payloads in both directions.
                let len = out[send_i].len() as u64;
                let mut lb = [0u8; 8];
                let mut got = Vec::new();
                exchange(
                    &mut next,
                    next_rank,
                    &len.to_le_bytes(),
                    &mut prev,
                    prev_rank,
                    Recv::Copy(&mut lb),
                    &mut scratch,
                    self.timeout,
                )?;
                let rlen = u64::from_le_bytes(lb) as usize;
                if rlen > (1 << 34) {
                    return Err(Error::Comm(format!(
                        "rank {prev_rank} announced {rlen} bytes: protocol error"
                    )));
                }
                got.resize(rlen, 0);
                let send = std::mem::take(&mut out[send_i]);
                let res = exchange(
                    &mut next,
                    next_rank,
                    &send,
                    &mut prev,
                    prev_rank,
                    Recv::Copy(&mut got),
                    &mut scratch,
                    self.timeout,
                );
                out[send_i] = send;
                res?;
                out[recv_i] = got;
            }
            Ok(())
        })();
        self.next = Some(next);
        self.prev = Some(prev);
        self.scratch = scratch;
        r.map(|()| out)
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&mut self) -> Result<()> {
        self.allgather_bytes(&[1]).map(|_| ())
    }

    /// Closes the sockets (peers see EOF).
    pub fn shutdown(&mut self) {
        for s in [self.next.take(), self.prev.take()].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// What to do with the bytes received from the previous rank.
enum Recv<'a> {
    /// Add the received f32s into this slice (received piece by piece into the scratch buffer).
    Add(&'a mut [f32]),
    /// Receive straight into this slice.
    Copy(&'a mut [u8]),
}

/// The receiving half of one exchange step: how far it got, and where the bytes go.
struct Receiving<'a> {
    into: Recv<'a>,
    /// Bytes received so far.
    got: usize,
    scratch: &'a mut Vec<f32>,
}

impl<'a> Receiving<'a> {
    fn new(into: Recv<'a>, scratch: &'a mut Vec<f32>) -> Self {
        if let Recv::Add(dst) = &into {
            scratch.resize(PIECE_FLOATS.min(dst.len()), 0.0);
        }
        Self {
            into,
            got: 0,
            scratch,
        }
    }

    fn done(&self) -> bool {
        self.got
            == match &self.into {
                Recv::Add(dst) => std::mem::size_of_val(*dst),
                Recv::Copy(dst) => dst.len(),
            }
    }

    /// One non-blocking read (never of zero bytes: call only while not [`Self::done`]). An
    /// `Add` is received a piece at a time into the scratch buffer, and each piece is added
    /// as soon as it is complete.
    fn read_from(&mut self, s: &mut TcpStream) -> std::io::Result<usize> {
        let n = match &mut self.into {
            Recv::Copy(dst) => s.read(&mut dst[self.got..])?,
            Recv::Add(dst) => {
                let start = self.got / 4 / PIECE_FLOATS * PIECE_FLOATS;
                let len = PIECE_FLOATS.min(dst.len() - start);
                let filled = self.got - start * 4;
                let piece = &mut self.scratch[..len];
                let n = s.read(&mut as_bytes_mut(piece)[filled..])?;
                if n > 0 && filled + n == len * 4 {
                    for (d, x) in dst[start..start + len].iter_mut().zip(piece.iter()) {
                        *d += *x;
                    }
                }
                n
            }
        };
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by peer",
            ));
        }
        self.got += n;
        Ok(n)
    }
}

/// Sends `send` to the next rank while receiving from the previous rank into `recv`, on this
/// thread: both sockets are non-blocking, and `poll(2)` wakes us when either can move. A
/// peer that moves no data for `timeout` is reported lost.
#[allow(clippy::too_many_arguments)]
fn exchange(
    next: &mut TcpStream,
    next_rank: usize,
    send: &[u8],
    prev: &mut TcpStream,
    prev_rank: usize,
    recv: Recv<'_>,
    scratch: &mut Vec<f32>,
    timeout: Duration,
) -> Result<()> {
    let lost = |rank: usize, message: String| Error::LostRank {
        rank,
        message,
        source: None,
    };
    let mut receiving = Receiving::new(recv, scratch);
    let mut sent = 0;
    let mut last_progress = Instant::now();
    while sent < send.len() || !receiving.done() {
        // A negative fd is ignored by poll: only wait on the directions still moving.
        let mut fds = [
            libc::pollfd {
                fd: if sent < send.len() {
                    next.as_raw_fd()
                } else {
                    -1
                },
                events: libc::POLLOUT,
                revents: 0,
            },
            libc::pollfd {
                fd: if receiving.done() {
                    -1
                } else {
                    prev.as_raw_fd()
                },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = timeout.saturating_sub(last_progress.elapsed());
        let wait_ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::comm_io("poll")(e));
        }
        if ready == 0 {
            return Err(if receiving.done() {
                lost(
                    next_rank,
                    format!("sending: no data accepted for {timeout:?}"),
                )
            } else {
                lost(prev_rank, format!("receiving: no data for {timeout:?}"))
            });
        }
        if fds[0].revents != 0 {
            match next.write(&send[sent..]) {
                Ok(n) => {
                    sent += n;
                    last_progress = Instant::now();
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(Error::lost_rank(next_rank, "sending", e)),
            }
        }
        if fds[1].revents != 0 {
            match receiving.read_from(prev) {
                Ok(_) => last_progress = Instant::now(),
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(Error::lost_rank(prev_rank, "receiving", e)),
            }
        }
    }
    Ok(())
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

fn split_two(
    buf: &mut [f32],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&[f32], &mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start);
    if a.start < b.start {
        let (x, y) = buf.split_at_mut(b.start);
        (&x[a], &mut y[..b.end - b.start])
    } else {
        let (x, y) = buf.split_at_mut(a.start);
        (&y[..a.end - a.start], &mut x[b])
    }
}

/// The f32s as little-endian bytes.
pub fn as_bytes(v: &[f32]) -> &[u8] {
    const { assert!(cfg!(target_endian = "little")) };
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; u8 alignment is 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// The f32s as mutable little-endian bytes.
pub fn as_bytes_mut(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; every byte pattern is a valid f32.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

fn connect_retry(addr: SocketAddr, deadline: Instant) -> std::io::Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn rendezvous_master(env: &WorldEnv, ring_port: u16, deadline: Instant) -> Result<Vec<SocketAddr>> {
    let listener = TcpListener::bind(("0.0.0.0", env.master_port)).map_err(Error::comm_io(
        format!("rank 0 cannot listen on port {}", env.master_port),
    ))?;
    listener
        .set_nonblocking(true)
        .map_err(Error::comm_io("the rendezvous listener"))?;
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; env.world];
    addrs[0] = Some(SocketAddr::from(([127, 0, 0, 1], ring_port)));
    let mut conns = Vec::new();
    while conns.len() < env.world - 1 {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false)
                    .map_err(Error::comm_io("rendezvous socket options"))?;
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .map_err(Error::comm_io("rendezvous socket options"))?;
                let mut hello = [0u8; 8 + 8 + 8 + 2];
                s.read_exact(&mut hello).map_err(Error::comm_io(format!(
                    "rendezvous: reading hello from {peer}"
                )))?;
                if &hello[..8] != MAGIC {
                    return Err(Error::Comm(format!(
                        "rendezvous: {peer} is not a kiln worker"
                    )));
                }
                let rank = u64::from_le_bytes(hello[8..16].try_into().expect("8")) as usize;
                let world = u64::from_le_bytes(hello[16..24].try_into().expect("8")) as usize;
                let port = u16::from_le_bytes(hello[24..26].try_into().expect("2"));
                if world != env.world {
                    return Err(Error::Comm(format!(
                        "rank {rank} says WORLD_SIZE={world}, rank 0 has {}",
                        env.world
                    )));
                }
                if rank == 0 || rank >= env.world || addrs[rank].is_some() {
                    return Err(Error::Comm(format!(
                        "rendezvous: duplicate or invalid rank {rank} from {peer}"
                    )));
                }
                addrs[rank] = Some(SocketAddr::new(peer.ip(), port));
                conns.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (1..env.world)
                        .filter(|r| addrs[*r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(Error::Comm(format!(
                        "rendezvous timed out: rank(s) {} did not join on port {}",
                        missing.join(", "),
                        env.master_port
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(Error::comm_io("rendezvous accept")(e)),
        }
    }
    let addrs: Vec<SocketAddr> = addrs.into_iter().map(|a| a.expect("all joined")).collect();
    let table =
        serde_json::to_vec(&addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()).expect("json");
    for mut s in conns {
        s.write_all(&(table.len() as u64).to_le_bytes())
            .and_then(|()| s.write_all(&table))
            .map_err(Error::comm_io("rendezvous: sending the rank table"))?;
    }
    Ok(addrs)
}

fn rendezvous_worker(env: &WorldEnv, ring_port: u16, deadline: Instant) -> Result<Vec<SocketAddr>> {
    let master = (env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()
        .map_err(Error::comm_io(format!("MASTER_ADDR {}", env.master_addr)))?
        .next()
        .ok_or_else(|| Error::Comm(format!("MASTER_ADDR {} has no address", env.master_addr)))?;
    let mut s = connect_retry(master, deadline).map_err(|e| {
        Error::lost_rank(0, format!("rendezvous: cannot reach rank 0 at {master}"), e)
    })?;
    let mut hello = Vec::with_capacity(26);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(env.rank as u64).to_le_bytes());
    hello.extend_from_slice(&(env.world as u64).to_le_bytes());
    hello.extend_from_slice(&ring_port.to_le_bytes());
    s.write_all(&hello)
        .map_err(Error::comm_io("rendezvous: sending hello"))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    s.set_read_timeout(Some(left))
        .map_err(Error::comm_io("rendezvous socket options"))?;
    let lost = |e: std::io::Error| Error::lost_rank(0, "rendezvous: waiting for the rank table", e);
    let mut lb = [0u8; 8];
    s.read_exact(&mut lb).map_err(lost)?;
    let mut table = vec![0u8; u64::from_le_bytes(lb) as usize];
    s.read_exact(&mut table).map_err(lost)?;
    let addrs: Vec<String> =
        serde_json::from_slice(&table).map_err(Error::comm_failed("rendezvous table"))?;
    let mut out = Vec::new();
    for (r, a) in addrs.iter().enumerate() {
        let mut a: SocketAddr = a
            .parse()
            .map_err(|_| Error::Comm(format!("rendezvous table: bad address {a}")))?;
        if r == 0 {
            a.set_ip(master.ip());
        }
        out.push(a);
    }
    Ok(out)
}
