//! The engine: TUN ⇄ WireGuard ⇄ UDP on three threads.
//!
//! * **tx** (`weft-tx`): drains TUN (offload super-packets split into
//!   packets), seals every packet straight into a [`TxBatch`] and sends the
//!   batch as GSO runs. One thread does the whole path, so packets are never
//!   handed between threads.
//! * **rx** (`weft-rx`): `recvmmsg` with GRO, opens every datagram straight
//!   into a TUN write slot, and writes the batch through the GRO table.
//! * **timers** (`weft-timers`): calls [`Tunnel::handle_timeout`] every
//!   [`weft_wg::TIMER_TICK`].
//!
//! On a two-core machine tx and rx each get a core while a bulk transfer
//! runs: one seals, the other opens (acks, or the reverse direction).
//!
//! Threads sleep in `poll(2)` on their descriptor plus the stop [`Notify`],
//! so [`Engine::shutdown`] wakes and joins them at once. The UDP socket can
//! be replaced at run time ([`Engine::rebind`]); each thread picks up the
//! new one at its next batch (the rx thread is woken for it).
//!
//! Time enters here: each batch reads `Instant::now()` once and passes it to
//! the sans-IO core.
//!
//! Datagrams that do not travel over UDP (a relay carries them) take two side
//! doors, both off the direct path's per-packet work: on the way out, a run
//! (or a single datagram) whose address the tunnel claims
//! ([`Tunnel::diverts`], asked once per run) goes to
//! [`Tunnel::send_diverted`] instead of the socket; on the way in, datagrams
//! handed to an [`Injector`] (from any thread) are opened by the rx thread
//! like received ones, so TUN keeps a single writer.
//!
//! Packets made on the node itself for the host (the MagicDNS resolver's
//! replies) take the same door: [`Injector::write_tun`] queues a whole IP
//! packet, which the rx thread writes to TUN as it is.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use quinn_udp::RecvMeta;
use weft_packet::IpPacket;
use weft_wg::{Decapsulated, Encapsulated};

use crate::batch::{Span, TxBatch};
use crate::error::NetError;
use crate::gro;
use crate::notify::{self, Notify};
use crate::tun::{Tun, TunReader, TunWriter};
use crate::udp::{self, BoundSocket};

/// WireGuard data message overhead: 16-byte header, 16-byte tag, and up to
/// 15 bytes of padding to a multiple of 16.
const SEAL_OVERHEAD: usize = 16 + 16 + 15;
/// Smallest output buffer the core accepts (a handshake initiation).
const MIN_OUT: usize = 148;
/// Bytes in the tx arena: a full read batch of 1500-byte packets, and never
/// less than a few 64 KiB packets.
const TX_ARENA: usize = 1 << 20;
/// Runs per tx batch (each is one `sendmsg`).
const TX_RUNS: usize = 512;
/// Receive buffers per `recvmmsg` (each holds up to 64 GRO segments).
const RX_BUFFERS: usize = 16;
/// Size of one receive buffer: a full GRO train of 64 KiB.
const RX_BUFFER_BYTES: usize = 1 << 16;
/// Datagrams an [`Injector`] holds before it drops (about 6 MB of full-size
/// WireGuard datagrams: a relay's burst, not a standing queue).
pub const INJECT_QUEUE: usize = 4096;

/// The sans-IO side the engine drives: [`weft_wg::Device`], or a stand-in in
/// tests. `send` receives datagrams produced on the side (handshakes,
/// cookies, keepalives) that must go out right away.
///
/// Packets cross this boundary as `weft_packet` views, checked once: the
/// engine builds the view of each packet read from TUN (bytes that are no
/// packet are counted in [`EngineStats::tun_read_errors`] and dropped), and
/// the tunnel hands back the view of each packet for TUN, whose fields GRO
/// reads.
pub trait Tunnel: Send + Sync + 'static {
    /// Seals one IP packet from TUN into `out`.
    fn encapsulate<'o>(
        &self,
        packet: IpPacket<'_>,
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Encapsulated<'o>;

    /// Processes one datagram from the network into `out`.
    fn decapsulate<'o>(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Decapsulated<'o>;

    /// Runs timers.
    fn handle_timeout(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8]));

    /// Returns whether datagrams to `to` leave through the tunnel itself
    /// (e.g. a relay) instead of the UDP socket. Asked once per send run and
    /// for each single datagram, so it must be cheap; the default claims
    /// nothing.
    fn diverts(&self, _to: SocketAddr) -> bool {
        false
    }

    /// Sends one datagram to an address [`Tunnel::diverts`] claimed. Must
    /// not block (drop instead).
    fn send_diverted(&self, _to: SocketAddr, _datagram: &[u8]) {}
}

impl Tunnel for weft_wg::Device {
    fn encapsulate<'o>(
        &self,
        packet: IpPacket<'_>,
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Encapsulated<'o> {
        weft_wg::Device::encapsulate(self, packet, out, now, send)
    }

    fn decapsulate<'o>(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Decapsulated<'o> {
        weft_wg::Device::decapsulate(self, from, datagram, out, now, send)
    }

    fn handle_timeout(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        weft_wg::Device::handle_timeout(self, now, send);
    }
}

/// UDP settings at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineConfig {
    /// Port to bind (0 = a free one).
    pub listen_port: u16,
    /// `SO_MARK` for the socket (0 = none).
    pub fwmark: u32,
}

/// Driver-side counters (the core counts its own drops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Batches read from TUN.
    pub tun_read_batches: u64,
    /// Packets read from TUN (after splitting super-packets).
    pub tun_read_packets: u64,
    /// Reads from TUN that were malformed and skipped: super-packets that
    /// could not be split, and packets `weft_packet` refused.
    pub tun_read_errors: u64,
    /// Batch writes to TUN that failed.
    pub tun_write_errors: u64,
    /// `recvmmsg` calls that returned data.
    pub udp_recv_batches: u64,
    /// Datagrams received (after splitting GRO buffers).
    pub udp_recv_datagrams: u64,
    /// Non-fatal receive errors.
    pub udp_recv_errors: u64,
    /// Send calls (one per GSO run).
    pub udp_send_calls: u64,
    /// Datagrams sent in runs.
    pub udp_send_datagrams: u64,
    /// Runs that failed to send.
    pub udp_send_errors: u64,
    /// Datagrams sent through [`Tunnel::send_diverted`].
    pub diverted_datagrams: u64,
    /// Datagrams opened from the [`Injector`].
    pub injected_datagrams: u64,
    /// Datagrams the [`Injector`] dropped because its queue was full.
    pub inject_dropped: u64,
    /// Local IP packets written to TUN through [`Injector::write_tun`].
    pub tun_injected_packets: u64,
    /// Local IP packets [`Injector::write_tun`] dropped (queue full, or not
    /// an IP packet).
    pub tun_inject_dropped: u64,
}

#[derive(Default)]
struct Counters {
    tun_read_batches: AtomicU64,
    tun_read_packets: AtomicU64,
    tun_read_errors: AtomicU64,
    tun_write_errors: AtomicU64,
    udp_recv_batches: AtomicU64,
    udp_recv_datagrams: AtomicU64,
    udp_recv_errors: AtomicU64,
    udp_send_calls: AtomicU64,
    udp_send_datagrams: AtomicU64,
    udp_send_errors: AtomicU64,
    diverted_datagrams: AtomicU64,
    injected_datagrams: AtomicU64,
    tun_injected_packets: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    if n != 0 {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The current socket, replaceable while threads use it.
struct SocketSlot {
    current: Mutex<Arc<BoundSocket>>,
    generation: AtomicU64,
    /// Wakes the rx thread, which may sleep on the old socket.
    rebound: Notify,
}

/// A thread's cached view of [`SocketSlot`].
struct SocketView {
    generation: u64,
    sock: Arc<BoundSocket>,
}

impl SocketSlot {
    fn view(&self) -> SocketView {
        let generation = self.generation.load(Ordering::Acquire);
        let sock = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        SocketView { generation, sock }
    }

    /// Refreshes `view` if the socket was replaced; returns whether it was.
    fn refresh(&self, view: &mut SocketView) -> bool {
        if self.generation.load(Ordering::Acquire) == view.generation {
            return false;
        }
        *view = self.view();
        true
    }

    fn get(&self) -> Arc<BoundSocket> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, sock: BoundSocket) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(sock);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.rebound.notify();
    }
}

/// Datagrams waiting for the rx thread (see [`Injector`]).
struct InjectQueue {
    queue: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    /// Whole IP packets for TUN ([`Injector::write_tun`]).
    packets: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
    dropped: AtomicU64,
    packets_dropped: AtomicU64,
}

/// Hands datagrams that arrived some other way than the UDP socket (a relay)
/// to the engine's rx thread, which opens them exactly like received ones
/// (`from` is what [`Tunnel::decapsulate`] sees). Cheap to clone; bounded
/// ([`INJECT_QUEUE`]): when full, datagrams are dropped and counted.
#[derive(Clone)]
pub struct Injector {
    inner: Arc<InjectQueue>,
}

impl Injector {
    /// Queues one datagram; returns `false` if the queue was full and it
    /// was dropped.
    pub fn inject(&self, from: SocketAddr, datagram: Vec<u8>) -> bool {
        {
            let mut q = self
                .inner
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.len() >= INJECT_QUEUE {
                drop(q);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            q.push_back((from, datagram));
        }
        self.inner.ready.notify();
        true
    }

    /// Queues one IP packet made on this node to be written to TUN as it
    /// is (the host receives it like one from a peer, but it passes no
    /// WireGuard and no packet filter). Returns `false` if the queue was
    /// full and it was dropped.
    pub fn write_tun(&self, packet: Vec<u8>) -> bool {
        {
            let mut q = self
                .inner
                .packets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.len() >= INJECT_QUEUE {
                drop(q);
                self.inner.packets_dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            q.push_back(packet);
        }
        self.inner.ready.notify();
        true
    }
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector").finish_non_exhaustive()
    }
}

// -- shared between the handle and the threads ------------------------------
struct Shared<T> {
    tunnel: Arc<T>,
    tun: Tun,
    socket: SocketSlot,
    /// Serializes rebind/fwmark changes.
    config: Mutex<EngineConfig>,
    stop: Notify,
    failed: Notify,
    failure: Mutex<Option<String>>,
    counters: Counters,
    inject: Arc<InjectQueue>,
}

impl<T: Tunnel> Shared<T> {
    /// Sends one datagram: through the tunnel if it claims the address,
    /// else on the socket.
    fn send_one(&self, sock: &BoundSocket, to: SocketAddr, datagram: &[u8]) {
        if self.tunnel.diverts(to) {
            add(&self.counters.diverted_datagrams, 1);
            self.tunnel.send_diverted(to, datagram);
        } else {
            sock.send_one(to, datagram);
        }
    }
}

impl<T> Shared<T> {
    fn fail(&self, thread: &str, error: &io::Error) {
        tracing::error!(thread, %error, "data-plane thread stopped");
        let mut f = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if f.is_none() {
            *f = Some(format!("{thread}: {error}"));
        }
        self.failed.notify();
    }
}

/// A running data plane. Dropping it stops and joins its threads.
pub struct Engine<T: Tunnel> {
    shared: Arc<Shared<T>>,
    threads: Vec<JoinHandle<()>>,
}

impl<T: Tunnel> Engine<T> {
    /// Binds the UDP socket and starts the threads.
    ///
    /// # Errors
    /// The bind or setup error; nothing keeps running then.
    pub fn start(tunnel: Arc<T>, tun: Tun, config: EngineConfig) -> Result<Self, NetError> {
        let sock = BoundSocket::bind(config.listen_port, config.fwmark)?;
        let notifier = |what| Notify::new().map_err(|source| NetError::Setup { what, source });
        let bound = EngineConfig {
            listen_port: sock.port(),
            fwmark: config.fwmark,
        };
        let shared = Arc::new(Shared {
            tunnel,
            tun,
            socket: SocketSlot {
                current: Mutex::new(Arc::new(sock)),
                generation: AtomicU64::new(0),
                rebound: notifier("creating an eventfd")?,
            },
            config: Mutex::new(bound),
            stop: notifier("creating an eventfd")?,
            failed: notifier("creating an eventfd")?,
            failure: Mutex::new(None),
            counters: Counters::default(),
            inject: Arc::new(InjectQueue {
                queue: Mutex::new(VecDeque::new()),
                packets: Mutex::new(VecDeque::new()),
                ready: notifier("creating an eventfd")?,
                dropped: AtomicU64::new(0),
                packets_dropped: AtomicU64::new(0),
            }),
        });
        tracing::info!(
            interface = %shared.tun.name(),
            port = bound.listen_port,
            tun_offload = shared.tun.offload(),
            tun_udp_offload = shared.tun.udp_offload(),
            udp_gso_segments = shared.socket.get().max_segments(),
            udp_gro_segments = shared.socket.get().gro_segments(),
            "data plane up"
        );
        let mut engine = Self {
            shared,
            threads: Vec::with_capacity(3),
        };
        engine.spawn("weft-tx", tx_thread)?;
        engine.spawn("weft-rx", rx_thread)?;
        engine.spawn("weft-timers", timer_thread)?;
        Ok(engine)
    }

    fn spawn(
        &mut self,
        name: &'static str,
        f: fn(&Shared<T>) -> io::Result<()>,
    ) -> Result<(), NetError> {
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Err(e) = f(&shared) {
                    shared.fail(name, &e);
                }
            })
            .map_err(|source| NetError::Spawn { name, source })?;
        self.threads.push(handle);
        Ok(())
    }

    /// Returns the bound UDP port.
    pub fn listen_port(&self) -> u16 {
        self.shared.socket.get().port()
    }

    /// Returns a handle that feeds datagrams to the rx thread as if they had
    /// been received (see [`Injector`]).
    pub fn injector(&self) -> Injector {
        Injector {
            inner: Arc::clone(&self.shared.inject),
        }
    }

    /// Returns the TUN device.
    pub fn tun(&self) -> &Tun {
        &self.shared.tun
    }

    /// Moves the engine to UDP `port` (0 = a free one) and returns the port
    /// now bound. Binding the port already bound is a no-op. On error the
    /// old socket stays in use.
    ///
    /// # Errors
    /// [`NetError::Bind`] (e.g. the port is taken).
    pub fn rebind(&self, port: u16) -> Result<u16, NetError> {
        let mut config = self
            .shared
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if port != 0 && port == config.listen_port {
            return Ok(port);
        }
        let sock = BoundSocket::bind(port, config.fwmark)?;
        let bound = sock.port();
        self.shared.socket.replace(sock);
        config.listen_port = bound;
        tracing::info!(port = bound, "UDP socket rebound");
        Ok(bound)
    }

    /// Sets the socket's `SO_MARK` (0 clears it); kept across rebinds.
    ///
    /// # Errors
    /// [`NetError::Setup`] (EPERM without CAP_NET_ADMIN).
    pub fn set_fwmark(&self, mark: u32) -> Result<(), NetError> {
        let mut config = self
            .shared
            .config
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.shared.socket.get().set_mark(mark)?;
        config.fwmark = mark;
        Ok(())
    }

    /// Returns the `SO_MARK` of the current socket, read back from the
    /// kernel.
    ///
    /// # Errors
    /// The `getsockopt` error.
    pub fn socket_fwmark(&self) -> io::Result<u32> {
        self.shared.socket.get().mark()
    }

    /// Returns the notifier that becomes readable when a thread died (the
    /// TUN device was deleted, say). Poll it next to your signal handling.
    pub fn failed(&self) -> &Notify {
        &self.shared.failed
    }

    /// Returns why a thread died, if one did.
    pub fn failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Returns a snapshot of the driver counters.
    pub fn stats(&self) -> EngineStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EngineStats {
            tun_read_batches: l(&c.tun_read_batches),
            tun_read_packets: l(&c.tun_read_packets),
            tun_read_errors: l(&c.tun_read_errors),
            tun_write_errors: l(&c.tun_write_errors),
            udp_recv_batches: l(&c.udp_recv_batches),
            udp_recv_datagrams: l(&c.udp_recv_datagrams),
            udp_recv_errors: l(&c.udp_recv_errors),
            udp_send_calls: l(&c.udp_send_calls),
            udp_send_datagrams: l(&c.udp_send_datagrams),
            udp_send_errors: l(&c.udp_send_errors),
            diverted_datagrams: l(&c.diverted_datagrams),
            injected_datagrams: l(&c.injected_datagrams),
            inject_dropped: l(&self.shared.inject.dropped),
            tun_injected_packets: l(&c.tun_injected_packets),
            tun_inject_dropped: l(&self.shared.inject.packets_dropped),
        }
    }

    /// Stops all threads and waits for them. The TUN device (and with it
    /// the interface) is closed once the last reference to the engine's
    /// state is gone, which is on return.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.notify();
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("?").to_owned();
            if t.join().is_err() {
                tracing::error!(thread = name, "data-plane thread panicked");
            }
        }
    }
}

impl<T: Tunnel> Drop for Engine<T> {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[allow(clippy::disallowed_methods)] // the driver is where time enters
fn now() -> Instant {
    Instant::now()
}

// -- tx: TUN → seal → UDP ---------------------------------------------------
fn tx_thread<T: Tunnel>(shared: &Shared<T>) -> io::Result<()> {
    let mut reader = TunReader::new(shared.tun.offload());
    let mut batch = TxBatch::new(TX_ARENA, TX_RUNS);
    let mut view = shared.socket.view();
    batch.set_max_segments(view.sock.max_segments());
    let c = &shared.counters;
    loop {
        if shared.stop.is_set() {
            return Ok(());
        }
        let mut bad = 0;
        let n = reader.read_batch(&shared.tun, &mut bad)?;
        add(&c.tun_read_errors, bad);
        if n == 0 {
            notify::wait(shared.tun.as_fd(), PollFlags::POLLIN, &[&shared.stop], None)?;
            continue;
        }
        add(&c.tun_read_batches, 1);
        add(&c.tun_read_packets, n as u64);
        if shared.socket.refresh(&mut view) {
            flush_tx(shared, &mut batch, &view.sock);
            batch.set_max_segments(view.sock.max_segments());
        }
        let now = now();
        let sock = &*view.sock;
        let mut send_now = |to: SocketAddr, d: &[u8]| shared.send_one(sock, to, d);
        for packet in reader.packets() {
            let Ok(packet) = IpPacket::new(packet) else {
                add(&c.tun_read_errors, 1);
                tracing::trace!("Dropped a packet from TUN that is not a valid IP packet");
                continue;
            };
            let need = (packet.total_len() + SEAL_OVERHEAD).max(MIN_OUT);
            if batch.tail(need).is_none() {
                flush_tx(shared, &mut batch, sock);
            }
            let Some(out) = batch.tail(need) else {
                continue; // cannot happen after a flush: the arena fits any packet
            };
            let span = Span::of(out);
            let (to, offset, len) = match shared.tunnel.encapsulate(packet, out, now, &mut send_now)
            {
                Encapsulated::Send { to, datagram } => {
                    let Some(offset) = span.offset_of(datagram) else {
                        shared.send_one(sock, to, datagram);
                        continue;
                    };
                    (to, offset, datagram.len())
                }
                Encapsulated::Queued | Encapsulated::Dropped(_) => continue,
            };
            batch.commit(to, offset, len);
        }
        flush_tx(shared, &mut batch, sock);
    }
}

fn flush_tx<T: Tunnel>(shared: &Shared<T>, batch: &mut TxBatch, sock: &BoundSocket) {
    let c = &shared.counters;
    for (run, bytes) in batch.runs() {
        if shared.tunnel.diverts(run.to) {
            for d in bytes.chunks(run.segment.max(1)) {
                shared.tunnel.send_diverted(run.to, d);
            }
            add(&c.diverted_datagrams, run.count as u64);
            continue;
        }
        add(&c.udp_send_calls, 1);
        match sock.send_run(run.to, bytes, run.segment, &shared.stop) {
            Ok(()) => add(&c.udp_send_datagrams, run.count as u64),
            Err(e) => {
                add(&c.udp_send_errors, 1);
                tracing::debug!(error = %e, datagrams = run.count, "UDP send failed");
            }
        }
    }
    batch.clear();
    batch.set_max_segments(sock.max_segments());
}

// -- rx: UDP → open → TUN ---------------------------------------------------
fn rx_thread<T: Tunnel>(shared: &Shared<T>) -> io::Result<()> {
    let mut storage: Vec<Vec<u8>> = (0..RX_BUFFERS).map(|_| vec![0; RX_BUFFER_BYTES]).collect();
    let mut meta = [RecvMeta::default(); RX_BUFFERS];
    let mut writer = TunWriter::new(shared.tun.offload(), shared.tun.udp_offload());
    let coalesce = writer.coalesces();
    let mut view = shared.socket.view();
    let c = &shared.counters;
    // The injector's descriptor woke the last wait: drain it even if its
    // flag reads clear (see `Notify::clear`).
    let mut inject_woke = false;
    loop {
        if shared.stop.is_set() {
            return Ok(());
        }
        if shared.socket.rebound.is_set() {
            shared.socket.rebound.clear();
        }
        shared.socket.refresh(&mut view);
        let sock = &*view.sock;
        if std::mem::take(&mut inject_woke) || shared.inject.ready.is_set() {
            open_injected(shared, sock, &mut writer, coalesce)?;
        }
        let n = {
            let mut bufs = storage.iter_mut();
            let mut iovs: [IoSliceMut<'_>; RX_BUFFERS] = std::array::from_fn(|_| {
                IoSliceMut::new(bufs.next().map_or(&mut [][..], |b| &mut b[..]))
            });
            match sock.recv(&mut iovs, &mut meta) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = notify::wait(
                        sock.as_fd(),
                        PollFlags::POLLIN,
                        &[&shared.stop, &shared.socket.rebound, &shared.inject.ready],
                        None,
                    )?;
                    inject_woke = ready.notified[2];
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    add(&c.udp_recv_errors, 1);
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            }
        };
        add(&c.udp_recv_batches, 1);
        let now = now();
        let mut send_now = |to: SocketAddr, d: &[u8]| shared.send_one(sock, to, d);
        let mut datagrams = 0u64;
        for (m, buf) in meta.iter().zip(&storage).take(n) {
            let from = udp::normalize(m.addr);
            let Some(filled) = buf.get(..m.len) else {
                continue;
            };
            // `chunks` yields nothing for an empty datagram, which the core
            // must still see (and count as malformed).
            let empty: &[&[u8]] = if filled.is_empty() { &[&[]] } else { &[] };
            for datagram in filled.chunks(m.stride.max(1)).chain(empty.iter().copied()) {
                datagrams += 1;
                open_one(
                    shared,
                    &mut writer,
                    coalesce,
                    from,
                    datagram,
                    now,
                    &mut send_now,
                )?;
            }
        }
        add(&c.udp_recv_datagrams, datagrams);
        flush_rx(shared, &mut writer)?;
    }
}

/// Opens one datagram into the next TUN write slot (flushing first when the
/// writer is full).
fn open_one<T: Tunnel>(
    shared: &Shared<T>,
    writer: &mut TunWriter,
    coalesce: bool,
    from: SocketAddr,
    datagram: &[u8],
    now: Instant,
    send_now: &mut dyn FnMut(SocketAddr, &[u8]),
) -> io::Result<()> {
    if writer.is_full() {
        flush_rx(shared, writer)?;
    }
    let Some(out) = writer.next_slot() else {
        return Ok(());
    };
    let span = Span::of(out);
    if let Decapsulated::ToTunnel(packet) = shared
        .tunnel
        .decapsulate(from, datagram, out, now, send_now)
    {
        // GRO reads the tunnel's view now, while it borrows the slot.
        let meta = coalesce
            .then(|| gro::Parsed::from_packet(&packet))
            .flatten();
        match span.offset_of(packet.as_bytes()) {
            Some(offset) => {
                let len = packet.total_len();
                writer.commit(offset, len, meta);
            }
            None => tracing::debug!("core returned a packet outside the buffer"),
        }
    }
    Ok(())
}

/// Opens everything the [`Injector`] queued, then flushes to TUN.
fn open_injected<T: Tunnel>(
    shared: &Shared<T>,
    sock: &BoundSocket,
    writer: &mut TunWriter,
    coalesce: bool,
) -> io::Result<()> {
    shared.inject.ready.clear();
    let queued = std::mem::take(
        &mut *shared
            .inject
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let packets = std::mem::take(
        &mut *shared
            .inject
            .packets
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for packet in &packets {
        if writer.is_full() {
            flush_rx(shared, writer)?;
        }
        let Some(slot) = writer.next_slot() else {
            continue;
        };
        let valid = IpPacket::new(packet).is_ok_and(|p| p.total_len() == packet.len());
        match slot.get_mut(..packet.len()) {
            Some(dst) if valid => {
                dst.copy_from_slice(packet);
                writer.commit(0, packet.len(), None);
                add(&shared.counters.tun_injected_packets, 1);
            }
            _ => {
                shared
                    .inject
                    .packets_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if queued.is_empty() {
        return flush_rx(shared, writer);
    }
    let now = now();
    let mut send_now = |to: SocketAddr, d: &[u8]| shared.send_one(sock, to, d);
    add(&shared.counters.injected_datagrams, queued.len() as u64);
    for (from, datagram) in &queued {
        open_one(
            shared,
            writer,
            coalesce,
            *from,
            datagram,
            now,
            &mut send_now,
        )?;
    }
    flush_rx(shared, writer)
}

fn flush_rx<T>(shared: &Shared<T>, writer: &mut TunWriter) -> io::Result<()> {
    let failed = writer.flush(&shared.tun)?;
    add(&shared.counters.tun_write_errors, failed);
    Ok(())
}

// -- timers -----------------------------------------------------------------
fn timer_thread<T: Tunnel>(shared: &Shared<T>) -> io::Result<()> {
    let tick: Duration = weft_wg::TIMER_TICK;
    let mut view = shared.socket.view();
    loop {
        let ready = notify::wait(shared.stop.as_fd(), PollFlags::POLLIN, &[], Some(tick))?;
        if ready.io || shared.stop.is_set() {
            return Ok(());
        }
        shared.socket.refresh(&mut view);
        let sock = &*view.sock;
        shared
            .tunnel
            .handle_timeout(now(), &mut |to, d| shared.send_one(sock, to, d));
    }
}
