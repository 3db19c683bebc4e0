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
//! **Lost ranks.** A peer that dies closes its sockets: its ring neighbours see EOF / reset
//! at once. A peer that hangs is detected by the collective timeout, and a host lost without
//! FIN or RST by TCP keepalive ([`Comm::set_keepalive`], on every socket of the group). A
//! rank further along the ring only sees its neighbour stop, so the group also keeps the
//! rendezvous connections open as a *control* star (each worker to rank 0), watched by one
//! thread per rank that sleeps in `poll(2)`:
//!
//! * rank 0 sees any worker's process end (its control connection closes without a goodbye)
//!   and tells every other worker which rank was lost; a worker sees rank 0's end itself;
//! * a rank whose collective fails tells rank 0 what it saw (rank 0 tells the others);
//! * the first report wins, and every rank's [`Error::LostRank`] names that rank, not the
//!   neighbour that stopped because of it;
//! * a rank that is not in a collective (waiting for its data loader, say) asks
//!   [`Comm::check_peers`], and one in a collective is woken by the report.
//!
//! [`Comm::shutdown`] says goodbye before closing, so a rank that finished is not reported;
//! dropping a `Comm` without it closes like a process that died.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Keepalive of the group's sockets until [`Comm::set_keepalive`] changes it (the trainer's
/// default peer timeout).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

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
    /// The control connections and the thread that watches them (groups of two or more).
    monitor: Option<Monitor>,
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
            monitor: None,
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
        let (addrs, control): (Vec<SocketAddr>, Vec<(usize, TcpStream)>) = if env.rank == 0 {
            rendezvous_master(env, ring_port, deadline)?
        } else {
            let (addrs, s) = rendezvous_worker(env, ring_port, deadline)?;
            (addrs, vec![(0, s)])
        };
        let mut comm = Comm {
            rank: env.rank,
            world: env.world,
            next: None,
            prev: None,
            scratch: Vec::new(),
            timeout,
            monitor: None,
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
        comm.monitor = Some(Monitor::start(env.rank, env.world, control)?);
        comm.set_keepalive(DEFAULT_KEEPALIVE)?;
        Ok(comm)
    }

    /// Timeout of collectives: a peer that moves no data for this long counts as lost.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.timeout = timeout;
        Ok(())
    }

    /// TCP keepalive on every socket of the group (ring and control), so that a peer whose
    /// host is lost without a FIN or RST (power, network) is found within `within`: first
    /// probe after `within / 3` idle, then 3 probes `within / 6` apart (whole seconds, at
    /// least 1: `within` under 6 s gives about 4 s). A rank waiting for its data loader
    /// learns it through [`Comm::check_peers`].
    pub fn set_keepalive(&mut self, within: Duration) -> Result<()> {
        let mut fds: Vec<RawFd> = [&self.next, &self.prev]
            .into_iter()
            .flatten()
            .map(|s| s.as_raw_fd())
            .collect();
        if let Some(m) = &self.monitor {
            fds.extend(m.control_fds.iter().copied());
        }
        for fd in fds {
            keepalive(fd, within).map_err(Error::comm_io("setting TCP keepalive"))?;
        }
        Ok(())
    }

    /// `Err(Error::LostRank)` once any rank of the group is known lost (its process ended
    /// without [`Comm::shutdown`], its host stopped answering keepalives, or a rank's
    /// collective failed on it); call it while not in a collective, e.g. while waiting for
    /// data, to notice a dead peer then. Cheap: no system call.
    pub fn check_peers(&self) -> Result<()> {
        match self.monitor.as_ref().and_then(|m| m.shared.verdict()) {
            Some(v) => Err(v.error()),
            None => Ok(()),
        }
    }

    /// An error of a collective, with the rank the group found lost: a neighbour that
    /// stopped may have stopped because another rank died (the first report wins, see the
    /// module doc). Waits briefly for that report; without one, this rank's own observation
    /// is reported to the group.
    fn resolve(&self, e: Error) -> Error {
        let Some(m) = &self.monitor else { return e };
        let Error::LostRank { rank: seen, .. } = &e else {
            return e;
        };
        let seen = *seen;
        let grace = (self.timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
        let verdict = m.shared.verdict().or_else(|| {
            if m.shared.has_left(seen) {
                None
            } else {
                m.await_verdict(grace)
            }
        });
        match verdict {
            Some(v) if v.rank == seen => e,
            Some(v) => Error::LostRank {
                rank: v.rank,
                message: format!(
                    "{} (then rank {seen}, next to this rank, stopped: {})",
                    v.message,
                    observed(&e)
                ),
                source: None,
            },
            None => {
                m.shared.report(
                    seen,
                    format!("rank {} saw: {}", self.rank, observed(&e)),
                    true,
                );
                e
            }
        }
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
        let monitor = self.monitor.as_ref();
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
                    monitor,
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
                    monitor,
                )?;
            }
            Ok(())
        })();
        self.next = Some(next);
        self.prev = Some(prev);
        self.scratch = scratch;
        r.map_err(|e| self.resolve(e))
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
        let monitor = self.monitor.as_ref();
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
                    monitor,
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
                    monitor,
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
        r.map(|()| out).map_err(|e| self.resolve(e))
    }

    /// Waits until every rank reaches this point.
    pub fn barrier(&mut self) -> Result<()> {
        self.allgather_bytes(&[1]).map(|_| ())
    }

    /// Leaves the group: says goodbye on the control connections (so that this rank's
    /// closing is not taken for a death), then closes every socket (peers see EOF).
    pub fn shutdown(&mut self) {
        if let Some(m) = &self.monitor {
            m.shared.send_all(&frame(MSG_BYE, self.rank, ""));
        }
        self.close();
    }

    /// Closes every socket without a goodbye, as a process that dies does.
    fn close(&mut self) {
        if let Some(m) = self.monitor.take() {
            m.stop();
        }
        for s in [self.next.take(), self.prev.take()].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Comm {
    /// Without [`Comm::shutdown`] first, peers take this rank for lost (as when its process
    /// dies): they report it.
    fn drop(&mut self) {
        self.close();
    }
}

/// What a lost-rank error saw, without its "lost rank R" prefix: its message followed by
/// its sources, `: `-separated.
fn observed(e: &Error) -> String {
    let mut s = match e {
        Error::LostRank { message, .. } => message.clone(),
        e => e.to_string(),
    };
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// Control message: `rank` is lost (text: what was seen).
const MSG_LOST: u8 = 1;
/// Control message: `rank` leaves the group after finishing (its connections' closing is
/// not a loss).
const MSG_BYE: u8 = 2;
/// Longest text of a control message.
const MAX_CONTROL_TEXT: usize = 1 << 16;

/// A control message: kind (u8), rank (u32 LE), text length (u32 LE), UTF-8 text.
fn frame(kind: u8, rank: usize, text: &str) -> Vec<u8> {
    let text = &text.as_bytes()[..text.len().min(MAX_CONTROL_TEXT)];
    let mut f = Vec::with_capacity(9 + text.len());
    f.push(kind);
    f.extend_from_slice(&(rank as u32).to_le_bytes());
    f.extend_from_slice(&(text.len() as u32).to_le_bytes());
    f.extend_from_slice(text);
    f
}

/// The rank the group found lost, and what was seen.
#[derive(Debug, Clone)]
struct Verdict {
    rank: usize,
    message: String,
}

impl Verdict {
    fn error(&self) -> Error {
        Error::LostRank {
            rank: self.rank,
            message: self.message.clone(),
            source: None,
        }
    }
}

/// State shared by a rank's main thread and its control-connection watcher.
struct Shared {
    rank: usize,
    /// The first rank reported lost.
    verdict: Mutex<Option<Verdict>>,
    /// Ranks that said goodbye.
    left: Vec<AtomicBool>,
    /// Control connections, for writing: rank 0's to every worker, a worker's to rank 0.
    writers: Mutex<Vec<(usize, TcpStream)>>,
    /// Written once, when the verdict is set; the main thread polls the other end.
    wake: UnixStream,
}

impl Shared {
    fn verdict(&self) -> Option<Verdict> {
        self.verdict
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn has_left(&self, rank: usize) -> bool {
        self.left
            .get(rank)
            .is_some_and(|l| l.load(Ordering::SeqCst))
    }

    /// Records that `rank` is lost unless another rank already is (the first report wins),
    /// wakes the main thread, and with `tell` passes it on: rank 0 to every other worker, a
    /// worker to rank 0 (which passes it on). Returns the verdict.
    fn report(&self, rank: usize, message: String, tell: bool) -> Verdict {
        let (v, first) = {
            let mut g = self.verdict.lock().unwrap_or_else(|p| p.into_inner());
            match &*g {
                Some(v) => (v.clone(), false),
                None => {
                    let v = Verdict { rank, message };
                    *g = Some(v.clone());
                    (v, true)
                }
            }
        };
        if first {
            let _ = (&self.wake).write(&[1]);
            if tell {
                let f = frame(MSG_LOST, v.rank, &v.message);
                self.send(&f, |r| r != v.rank && !self.has_left(r));
            }
        }
        v
    }

    /// Writes `frame` to the control connections of the ranks `to` accepts (errors ignored:
    /// a peer that is gone cannot be told).
    fn send(&self, frame: &[u8], to: impl Fn(usize) -> bool) {
        let mut w = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        for (r, s) in w.iter_mut() {
            if to(*r) {
                let _ = s.write_all(frame);
            }
        }
    }

    fn send_all(&self, frame: &[u8]) {
        self.send(frame, |_| true);
    }
}

/// The control connections of one rank and the thread that watches them.
struct Monitor {
    shared: Arc<Shared>,
    /// Readable once a verdict is set.
    woken: UnixStream,
    /// Written to stop the watcher.
    stop: UnixStream,
    handle: Option<JoinHandle<()>>,
    control_fds: Vec<RawFd>,
    control: Vec<TcpStream>,
}

impl Monitor {
    fn start(rank: usize, world: usize, control: Vec<(usize, TcpStream)>) -> Result<Monitor> {
        let (wake, woken) = UnixStream::pair().map_err(Error::comm_io("a wake-up socket"))?;
        let (stop, stop_rx) = UnixStream::pair().map_err(Error::comm_io("a wake-up socket"))?;
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        let mut handles = Vec::new();
        for (r, s) in control {
            s.set_read_timeout(None)
                .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
                .and_then(|()| s.set_nodelay(true))
                .map_err(Error::comm_io("control connection options"))?;
            let clone =
                |s: &TcpStream| s.try_clone().map_err(Error::comm_io("control connections"));
            writers.push((r, clone(&s)?));
            readers.push((r, clone(&s)?));
            handles.push(s);
        }
        let shared = Arc::new(Shared {
            rank,
            verdict: Mutex::new(None),
            left: (0..world).map(|_| AtomicBool::new(false)).collect(),
            writers: Mutex::new(writers),
            wake,
        });
        let name = format!("kiln-comm-watch-{rank}");
        let sh = shared.clone();
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || watch(&sh, readers, stop_rx))
            .map_err(|source| Error::Thread { name, source })?;
        Ok(Monitor {
            shared,
            woken,
            stop,
            handle: Some(handle),
            control_fds: handles.iter().map(|s| s.as_raw_fd()).collect(),
            control: handles,
        })
    }

    /// Waits up to `wait` for a verdict.
    fn await_verdict(&self, wait: Duration) -> Option<Verdict> {
        let mut fd = libc::pollfd {
            fd: self.woken.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, ms) };
        self.shared.verdict()
    }

    /// Stops the watcher and closes the control connections.
    fn stop(mut self) {
        let _ = (&self.stop).write(&[1]);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        for s in &self.control {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The watcher of a rank's control connections: sleeps in `poll(2)` until a message, a
/// connection's end or `stop`. A connection that ends without a goodbye means its rank is
/// lost (the process ended, or keepalive found its host gone).
fn watch(shared: &Shared, mut peers: Vec<(usize, TcpStream)>, mut stop: UnixStream) {
    let me = shared.rank;
    let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); peers.len()];
    let mut open = vec![true; peers.len()];
    let mut tmp = vec![0u8; 8192];
    while open.iter().any(|o| *o) {
        let mut fds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
            .chain(
                peers
                    .iter()
                    .zip(&open)
                    .map(|((_, s), o)| if *o { s.as_raw_fd() } else { -1 }),
            )
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd structs for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 {
            let _ = stop.read(&mut tmp);
            return;
        }
        for (i, (peer, s)) in peers.iter_mut().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            let peer = *peer;
            let gone = match s.read(&mut tmp) {
                Ok(0) => Some(format!(
                    "its connection to rank {me} closed without a goodbye (the process exited or was killed)"
                )),
                Ok(n) => {
                    bufs[i].extend_from_slice(&tmp[..n]);
                    match take_frames(&mut bufs[i]) {
                        Ok(frames) => {
                            for (kind, rank, text) in frames {
                                match kind {
                                    MSG_LOST => {
                                        shared.report(rank, text, me == 0);
                                    }
                                    MSG_BYE => {
                                        if let Some(l) = shared.left.get(peer) {
                                            l.store(true, Ordering::SeqCst);
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            None
                        }
                        Err(m) => Some(m),
                    }
                }
                Err(e) if would_block(&e) => None,
                Err(e) => Some(format!(
                    "its connection to rank {me} failed ({e}): the process or its host is gone"
                )),
            };
            if let Some(message) = gone {
                open[i] = false;
                if !shared.has_left(peer) {
                    shared.report(peer, message, true);
                }
            }
        }
    }
}

/// The complete control messages at the start of `buf` (removed from it).
fn take_frames(buf: &mut Vec<u8>) -> std::result::Result<Vec<(u8, usize, String)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 9 {
        let kind = buf[at];
        let rank = u32::from_le_bytes(buf[at + 1..at + 5].try_into().expect("4")) as usize;
        let len = u32::from_le_bytes(buf[at + 5..at + 9].try_into().expect("4")) as usize;
        if len > MAX_CONTROL_TEXT {
            return Err(format!("sent a malformed control message ({len} bytes)"));
        }
        if buf.len() - at - 9 < len {
            break;
        }
        let text = String::from_utf8_lossy(&buf[at + 9..at + 9 + len]).into_owned();
        out.push((kind, rank, text));
        at += 9 + len;
    }
    buf.drain(..at);
    Ok(out)
}

/// Turns on TCP keepalive on socket `fd` so that a dead peer is found within about `within`
/// (see [`Comm::set_keepalive`]).
fn keepalive(fd: RawFd, within: Duration) -> std::io::Result<()> {
    let secs = within.as_secs().clamp(1, i32::MAX as u64);
    let idle = (secs / 3).max(1) as libc::c_int;
    let interval = (secs / 6).max(1) as libc::c_int;
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| {
        // SAFETY: `value` is a c_int that lives for the call; `fd` is an open socket.
        let r = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle)?;
    #[cfg(target_vendor = "apple")]
    set(libc::IPPROTO_TCP, libc::TCP_KEEPALIVE, idle)?;
    #[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
    {
        set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval)?;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    }
    let _ = (idle, interval);
    Ok(())
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
///
/// `monitor`'s wake-up socket is polled too: once the group knows a rank is lost, an
/// exchange whose sockets have nothing to move fails at once with that rank.
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
    monitor: Option<&Monitor>,
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
            libc::pollfd {
                fd: monitor.map_or(-1, |m| m.woken.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let left = timeout.saturating_sub(last_progress.elapsed());
        let wait_ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid array of three pollfd structs for the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 3, wait_ms) };
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
        if fds[2].revents != 0
            && fds[0].revents == 0
            && fds[1].revents == 0
            && let Some(v) = monitor.and_then(|m| m.shared.verdict())
        {
            return Err(v.error());
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

/// Rank 0's side: the ring addresses by rank, and each worker's connection (kept open as
/// its control connection).
#[allow(clippy::type_complexity)]
fn rendezvous_master(
    env: &WorldEnv,
    ring_port: u16,
    deadline: Instant,
) -> Result<(Vec<SocketAddr>, Vec<(usize, TcpStream)>)> {
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
                conns.push((rank, s));
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
    for (_, s) in &mut conns {
        s.write_all(&(table.len() as u64).to_le_bytes())
            .and_then(|()| s.write_all(&table))
            .map_err(Error::comm_io("rendezvous: sending the rank table"))?;
    }
    conns.sort_by_key(|(r, _)| *r);
    Ok((addrs, conns))
}

/// A worker's side: the ring addresses by rank, and the connection to rank 0 (kept open as
/// the control connection).
fn rendezvous_worker(
    env: &WorldEnv,
    ring_port: u16,
    deadline: Instant,
) -> Result<(Vec<SocketAddr>, TcpStream)> {
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
    Ok((out, s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::with_local_ring;

    fn opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes for the duration of the call.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        v
    }

    /// Every socket of the group: the ring's two and the control connections.
    fn sockets(c: &Comm) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = [&c.next, &c.prev]
            .into_iter()
            .flatten()
            .map(|s| s.as_raw_fd())
            .collect();
        fds.extend(c.monitor.as_ref().unwrap().control_fds.iter().copied());
        fds
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn every_socket_has_keepalive_within_the_peer_timeout() {
        let found = with_local_ring(3, |c| {
            let mut seen = Vec::new();
            for within in [DEFAULT_KEEPALIVE, Duration::from_secs(12)] {
                if within != DEFAULT_KEEPALIVE {
                    c.set_keepalive(within)?;
                }
                for fd in sockets(c) {
                    let on = opt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE);
                    let idle = opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE);
                    let interval = opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL);
                    let count = opt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT);
                    seen.push((within, on, idle + interval * count));
                }
            }
            Ok(seen)
        })
        .unwrap();
        for (rank, seen) in found.iter().enumerate() {
            // Ring sockets plus one control connection (rank 0: one per worker).
            assert_eq!(seen.len(), 2 * if rank == 0 { 4 } else { 3 });
            for (within, on, dead_after) in seen {
                assert_ne!(*on, 0, "rank {rank}: keepalive is off");
                assert!(
                    *dead_after as u64 <= within.as_secs(),
                    "rank {rank}: a silent host is found after {dead_after} s, not within {within:?}"
                );
            }
        }
    }

    #[test]
    fn control_messages_survive_partial_reads() {
        let mut buf = frame(MSG_LOST, 2, "gone");
        buf.extend(frame(MSG_BYE, 1, ""));
        let tail = buf.split_off(5);
        let mut got = Vec::new();
        let mut pending = buf;
        got.extend(take_frames(&mut pending).unwrap());
        assert!(got.is_empty());
        pending.extend(tail);
        got.extend(take_frames(&mut pending).unwrap());
        assert_eq!(
            got,
            vec![
                (MSG_LOST, 2, "gone".to_string()),
                (MSG_BYE, 1, String::new())
            ]
        );
        assert!(pending.is_empty());
        let mut bad = vec![MSG_LOST, 0, 0, 0, 0, 255, 255, 255, 255];
        assert!(take_frames(&mut bad).is_err());
    }
}
