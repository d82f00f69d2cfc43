//! The TUN device, with Linux offloads when the kernel has them.
//!
//! With offloads on (`IFF_VNET_HDR` plus `TUNSETOFFLOAD` TSO4/TSO6, and USO
//! on kernels ≥ 6.2), every read returns one *super-packet* of up to 64 KiB
//! that the kernel did not segment, preceded by a `virtio_net_hdr`.
//! [`TunReader`] splits it back into MTU-sized packets (tun-rs's `gso_split`).
//! On the way in, [`TunWriter`] hands a batch of packets to our
//! [`crate::gro`], which coalesces consecutive TCP segments (and UDP
//! datagrams with USO) of one flow into super-packets again, so the kernel's
//! TCP stack sees few large packets instead of many small ones. That, not the crypto,
//! is what makes a userspace tunnel fast.
//!
//! Without offloads (old kernels, or [`Offload::Off`]) both sides fall back
//! to one plain packet per `read`/`write`, still batched in userspace.

use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd};

use tun_rs::{DeviceBuilder, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::error::TunError;
use crate::gro::{self, Gro};

/// Largest IP packet a TUN device can carry.
pub const MAX_PACKET: usize = 65535;

/// Packets per read batch: enough for one 64 KiB super-packet at MSS ≥ 512,
/// twice over, so draining several super-packets per batch never runs out
/// of room in the middle of a split.
const READ_SLOTS: usize = 2 * tun_rs::IDEAL_BATCH_SIZE;

/// With offloads, keep reading only while this many slots are free: a
/// super-packet that does not fit would be lost by `gso_split`.
const MIN_FREE_SLOTS_OFFLOAD: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Packets per write batch handed to the GRO table.
pub(crate) const WRITE_SLOTS: usize = tun_rs::IDEAL_BATCH_SIZE;

/// Whether to ask the kernel for segmentation offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// Use offloads if the kernel supports them, else plain packets.
    #[default]
    Auto,
    /// Never use offloads.
    Off,
}

/// How to create the TUN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name (1–15 bytes).
    pub name: String,
    /// Initial MTU.
    pub mtu: u16,
    /// Offload policy.
    pub offload: Offload,
    /// Transmit queue length (the kernel default for TUN is 500).
    pub tx_queue_len: Option<u32>,
    /// An IPv4 address and prefix length to assign at creation.
    pub ipv4: Option<(Ipv4Addr, u8)>,
}

impl TunConfig {
    /// Returns a config for `name` with MTU 1420, offloads on if available.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            mtu: 1420,
            offload: Offload::Auto,
            tx_queue_len: Some(1000),
            ipv4: None,
        }
    }
}

/// An open, non-persistent TUN device; the interface disappears when this is
/// dropped.
pub struct Tun {
    dev: SyncDevice,
    name: String,
    offload: bool,
    udp_offload: bool,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("offload", &self.offload)
            .field("udp_offload", &self.udp_offload)
            .finish_non_exhaustive()
    }
}

impl Tun {
    /// Creates the device, sets its MTU and brings it up, non-blocking.
    ///
    /// With [`Offload::Auto`], a kernel that refuses `IFF_VNET_HDR` or
    /// `TUNSETOFFLOAD` gets a second attempt without offloads.
    ///
    /// # Errors
    /// A [`TunError`] that names what is missing (the driver, the
    /// capability) and how to fix it.
    pub fn create(config: &TunConfig) -> Result<Self, TunError> {
        validate_name(&config.name)?;
        let attempt = |offload: bool| {
            let mut builder = DeviceBuilder::new()
                .name(config.name.clone())
                .mtu(config.mtu)
                .offload(offload)
                .enable(true);
            if let Some(len) = config.tx_queue_len {
                builder = builder.tx_queue_len(len);
            }
            if let Some((addr, prefix)) = config.ipv4 {
                builder = builder.ipv4(addr, prefix, None);
            }
            builder.build_sync()
        };
        let dev = match config.offload {
            Offload::Off => attempt(false).map_err(|e| classify(&config.name, e))?,
            Offload::Auto => match attempt(true) {
                Ok(dev) => dev,
                Err(e) => match classify(&config.name, e) {
                    TunError::Other { source, .. } => {
                        tracing::warn!(
                            error = %source,
                            "TUN offloads unavailable; falling back to one packet per read/write"
                        );
                        attempt(false).map_err(|e| classify(&config.name, e))?
                    }
                    fatal => return Err(fatal),
                },
            },
        };
        dev.set_nonblocking(true)
            .map_err(|source| TunError::Other {
                name: config.name.clone(),
                source,
            })?;
        let offload = dev.tcp_gso();
        let udp_offload = dev.udp_gso();
        tracing::debug!(name = %config.name, offload, udp_offload, "TUN device created");
        Ok(Self {
            dev,
            name: config.name.clone(),
            offload,
            udp_offload,
        })
    }

    /// Returns the interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns whether TCP segmentation offload (virtio header) is on.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// Returns whether UDP segmentation offload (USO) is on as well.
    pub fn udp_offload(&self) -> bool {
        self.udp_offload
    }

    pub(crate) fn device(&self) -> &SyncDevice {
        &self.dev
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }
}

fn validate_name(name: &str) -> Result<(), TunError> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(TunError::InvalidName {
            name: name.to_owned(),
        })
    }
}

fn classify(name: &str, source: io::Error) -> TunError {
    let name = name.to_owned();
    match source.raw_os_error() {
        Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TunError::NoDriver { source },
        Some(libc::EPERM | libc::EACCES) => TunError::PermissionDenied { name, source },
        Some(libc::EBUSY) => TunError::Busy { name, source },
        _ => TunError::Other { name, source },
    }
}

/// Whether an I/O error means the device is gone (deleted, fd invalid).
pub(crate) fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EBADFD | libc::ENODEV | libc::ENXIO)
    )
}

/// Reusable buffers for reading batches of packets from TUN.
pub(crate) struct TunReader {
    /// One raw read: virtio header plus up to 64 KiB.
    original: Vec<u8>,
    slots: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
    min_free: usize,
}

impl TunReader {
    pub(crate) fn new(offload: bool) -> Self {
        Self {
            original: vec![0; VIRTIO_NET_HDR_LEN + MAX_PACKET],
            slots: (0..READ_SLOTS).map(|_| vec![0; MAX_PACKET]).collect(),
            sizes: vec![0; READ_SLOTS],
            count: 0,
            min_free: if offload { MIN_FREE_SLOTS_OFFLOAD } else { 1 },
        }
    }

    /// Reads whatever the device has queued, up to the batch size, without
    /// blocking. Returns the number of packets now in the batch (0 = nothing
    /// queued: poll the device). Malformed super-packets are skipped and
    /// counted in `bad`.
    ///
    /// # Errors
    /// Only errors that mean the device is gone ([`is_fatal`]).
    pub(crate) fn read_batch(&mut self, tun: &Tun, bad: &mut u64) -> io::Result<usize> {
        self.count = 0;
        while self.slots.len() - self.count >= self.min_free {
            let (slots, sizes) = (&mut self.slots[self.count..], &mut self.sizes[self.count..]);
            match tun
                .device()
                .recv_multiple(&mut self.original, slots, sizes, 0)
            {
                Ok(n) => self.count += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    *bad += 1;
                    tracing::debug!(error = %e, "dropping a packet TUN returned that could not be split");
                }
            }
        }
        Ok(self.count)
    }

    /// Returns the packets of the last batch.
    pub(crate) fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.slots
            .iter()
            .zip(&self.sizes)
            .take(self.count)
            .filter_map(|(slot, &size)| slot.get(..size))
    }
}

/// Reusable buffers for writing batches of packets to TUN, coalesced by
/// [`Gro`] when the device has offloads.
pub(crate) struct TunWriter {
    /// Each slot: virtio header room, then room for the largest packet.
    slots: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    /// Per committed packet: what GRO read from its view (`None`: not TCP
    /// or UDP, or no GRO).
    metas: Vec<Option<gro::Parsed>>,
    gro: Option<Gro>,
    to_write: Vec<usize>,
}

/// Room in front of each packet for the virtio header.
const HEADROOM: usize = gro::HEADER_LEN;

impl TunWriter {
    /// Creates a writer for a device with (`offload`) or without offloads;
    /// `udp_offload` allows coalescing UDP as well.
    pub(crate) fn new(offload: bool, udp_offload: bool) -> Self {
        Self {
            slots: (0..WRITE_SLOTS)
                .map(|_| vec![0; HEADROOM + MAX_PACKET].into_boxed_slice())
                .collect(),
            lens: Vec::with_capacity(WRITE_SLOTS),
            metas: Vec::with_capacity(WRITE_SLOTS),
            gro: offload.then(|| Gro::new(WRITE_SLOTS, udp_offload)),
            to_write: Vec::with_capacity(WRITE_SLOTS),
        }
    }

    /// Returns whether packets are coalesced (the device has offloads): only
    /// then does [`Self::commit`] need GRO's fields of each packet.
    pub(crate) fn coalesces(&self) -> bool {
        self.gro.is_some()
    }

    /// Returns whether the batch is full (flush before the next packet).
    pub(crate) fn is_full(&self) -> bool {
        self.lens.len() == self.slots.len()
    }

    /// Returns the number of packets waiting in the batch.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lens.len()
    }

    /// Returns the buffer for the next packet (room for any IP packet), or
    /// `None` when the batch is full.
    pub(crate) fn next_slot(&mut self) -> Option<&mut [u8]> {
        let slot = self.slots.get_mut(self.lens.len())?;
        slot.get_mut(HEADROOM..)
    }

    /// Commits the packet written into the slot from [`Self::next_slot`]:
    /// `len` bytes starting `offset` bytes into it, with what GRO read from
    /// its view (`gro::Parsed::from_packet`).
    pub(crate) fn commit(&mut self, offset: usize, len: usize, meta: Option<gro::Parsed>) {
        let Some(slot) = self.slots.get_mut(self.lens.len()) else {
            return;
        };
        if len == 0 || HEADROOM + offset + len > slot.len() {
            return; // not a packet
        }
        if offset != 0 {
            slot.copy_within(HEADROOM + offset..HEADROOM + offset + len, HEADROOM);
        }
        self.lens.push(len);
        self.metas.push(meta);
    }

    /// Writes the batch (coalesced where possible) and empties it. Returns
    /// the number of writes that failed (the packets are lost).
    ///
    /// # Errors
    /// Only a fatal error ([`is_fatal`]): the device is gone.
    pub(crate) fn flush(&mut self, tun: &Tun) -> io::Result<u64> {
        let mut failed = 0;
        let dev = tun.device();
        let mut check = |r: io::Result<usize>| -> io::Result<()> {
            match r {
                Ok(_) => Ok(()),
                Err(e) if is_fatal(&e) => Err(e),
                Err(e) => {
                    failed += 1;
                    tracing::debug!(error = %e, "TUN write failed");
                    Ok(())
                }
            }
        };
        let result = match &mut self.gro {
            Some(gro) => {
                gro.coalesce(&mut self.slots, &self.lens, &self.metas, &mut self.to_write);
                let (slots, lens, gro) = (&self.slots, &self.lens, &*gro);
                self.to_write.iter().try_for_each(|&i| {
                    let own = lens.get(i).and_then(|&l| slots.get(i)?.get(..HEADROOM + l));
                    let Some(own) = own else { return Ok(()) };
                    let mut iov = [IoSlice::new(&[]); 1 + gro::MAX_SEGMENTS as usize];
                    iov[0] = IoSlice::new(own);
                    let mut n = 1;
                    for (j, range) in gro.joined(i) {
                        let Some(part) = slots.get(j).and_then(|s| s.get(range)) else {
                            continue;
                        };
                        if let Some(slot) = iov.get_mut(n) {
                            *slot = IoSlice::new(part);
                            n += 1;
                        }
                    }
                    check(if n == 1 {
                        dev.send(own)
                    } else {
                        dev.send_vectored(&iov[..n])
                    })
                })
            }
            None => self
                .lens
                .iter()
                .zip(&self.slots)
                .try_for_each(|(&len, slot)| {
                    slot.get(HEADROOM..HEADROOM + len)
                        .map_or(Ok(()), |p| check(dev.send(p)))
                }),
        };
        self.lens.clear();
        self.metas.clear();
        result.map(|()| failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_validated_before_touching_the_kernel() {
        assert!(validate_name("labwga").is_ok());
        assert!(validate_name("a23456789012345").is_ok());
        for bad in ["", "a234567890123456", "a/b", "a b", "x:1", "..", "."] {
            assert!(
                matches!(validate_name(bad), Err(TunError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn permission_and_driver_errors_say_how_to_fix_them() {
        let e = classify("wg0", io::Error::from_raw_os_error(libc::EPERM));
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        let e = classify("wg0", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(e.to_string().contains("modprobe tun"), "{e}");
        let e = classify("wg0", io::Error::from_raw_os_error(libc::EBUSY));
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn the_writer_moves_a_packet_written_at_an_offset_to_the_front() {
        let mut w = TunWriter::new(true, true);
        let slot = w.next_slot().unwrap();
        assert!(slot.len() >= MAX_PACKET);
        slot[10..14].copy_from_slice(&[0x45, 1, 2, 3]);
        w.commit(10, 4, None);
        assert_eq!(w.len(), 1);
        assert_eq!(&w.slots[0][HEADROOM..HEADROOM + 4], &[0x45, 1, 2, 3]);
    }

    #[test]
    fn the_writer_ignores_an_empty_packet() {
        let mut w = TunWriter::new(false, false);
        w.next_slot().unwrap();
        w.commit(0, 0, None);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn the_writer_reports_full_after_its_slots_are_used() {
        let mut w = TunWriter::new(true, false);
        for _ in 0..WRITE_SLOTS {
            assert!(!w.is_full());
            w.next_slot().unwrap();
            w.commit(0, 20, None);
        }
        assert!(w.is_full());
        assert!(w.next_slot().is_none());
    }
}
