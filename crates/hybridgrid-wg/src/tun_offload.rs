//! The TUN side of the userspace device with the kernel's offloads: `IFF_VNET_HDR` with TSO and
//! checksum offload, so one read brings a whole TCP super-frame (up to 64 KiB) and one write
//! hands the kernel many coalesced segments. gotatun reads and writes one packet per system call;
//! this is what took wireguard-go to multi-gigabit, and it is the relays' main cost here.
//!
//! Reads are split into MTU-sized packets in userspace (`tun-rs`'s GSO split, which also
//! computes the checksums the kernel left to us); writes go through a small writer task that
//! takes every packet waiting, coalesces consecutive TCP segments of a flow (`tun-rs`'s GRO
//! table) and writes each result once.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gotatun::packet::{Ip, Packet, PacketBufPool};
use gotatun::tun::{IpRecv, IpSend, MtuWatcher};
use tokio::sync::{mpsc, watch};
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::task::AbortOnDrop;

/// Packets waiting for the writer task; as gotatun's own channels.
const WRITE_QUEUE: usize = 4000;
/// How often the MTU is read back (the agent sets it after the device exists); as gotatun.
const MTU_POLL: Duration = Duration::from_secs(3);

/// Creates TUN device `ifname` with offloads and returns its two halves for gotatun's
/// `DeviceBuilder::with_ip_pair`. Must run inside a tokio runtime.
pub(crate) fn create(ifname: &str) -> io::Result<(OffloadTunTx, OffloadTunRx)> {
    let dev = tun_rs::DeviceBuilder::new()
        .name(ifname)
        .offload(true)
        // The agent brings the link up once it has its address, as with gotatun's own TUN.
        .enable(false)
        .build_async()?;
    if !dev.tcp_gso() {
        return Err(io::Error::other(
            "the kernel refused TUN offloads (IFF_VNET_HDR)",
        ));
    }
    // A read splits into at most IDEAL_BATCH_SIZE packets: the kernel segments larger frames
    // (tiny MSS) before they reach the TUN instead of handing over one tun-rs cannot split.
    let segs = IDEAL_BATCH_SIZE.to_string();
    let capped = std::process::Command::new("ip")
        .args(["link", "set", "dev", ifname, "gso_max_segs", &segs])
        .status();
    if !capped.is_ok_and(|s| s.success()) {
        tracing::warn!(
            ifname,
            "could not cap gso_max_segs at {segs}: frames of tiny segments drop"
        );
    }
    let dev = Arc::new(dev);
    let mtu = dev.mtu()?;
    let (mtu_tx, mtu_rx) = watch::channel(mtu);
    let mtu_task = Arc::new(AbortOnDrop(tokio::spawn(watch_mtu(
        Arc::downgrade(&dev),
        mtu,
        mtu_tx,
    ))));

    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let writer = Arc::new(AbortOnDrop(tokio::spawn(write_loop(Arc::clone(&dev), rx))));
    let send = OffloadTunTx {
        queue: tx,
        _writer: writer,
    };
    let recv = OffloadTunRx {
        dev,
        mtu: mtu_rx.into(),
        super_frame: vec![0; VIRTIO_NET_HDR_LEN + 65535],
        slots: Vec::with_capacity(IDEAL_BATCH_SIZE),
        sizes: vec![0; IDEAL_BATCH_SIZE],
        _mtu_task: mtu_task,
    };
    Ok((send, recv))
}

async fn watch_mtu(dev: std::sync::Weak<AsyncDevice>, mut mtu: u16, tx: watch::Sender<u16>) {
    loop {
        tokio::time::sleep(MTU_POLL).await;
        let Some(dev) = dev.upgrade() else { return };
        let Ok(new) = dev.mtu() else { return };
        if new != mtu {
            mtu = new;
            if tx.send(mtu).is_err() {
                return;
            }
        }
    }
}

/// An error of the device itself (deleted, closed) ends the device, as gotatun's TUN does
/// (gotatun takes these codes as fatal); anything else (a frame tun-rs cannot split, a one-off
/// errno) costs that frame only.
fn is_device_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::EBADFD | libc::ENODEV)
    )
}

/// The receiving half: gotatun's outgoing task reads packets to encrypt from here.
pub(crate) struct OffloadTunRx {
    dev: Arc<AsyncDevice>,
    mtu: MtuWatcher,
    /// One read: the virtio header and a frame of up to 64 KiB.
    super_frame: Vec<u8>,
    /// Pool buffers the next read's segments land in, refilled as gotatun takes them.
    slots: Vec<Packet<[u8]>>,
    sizes: Vec<usize>,
    _mtu_task: Arc<AbortOnDrop>,
}

impl IpRecv for OffloadTunRx {
    async fn recv<'a>(
        &'a mut self,
        pool: &mut PacketBufPool,
    ) -> io::Result<impl Iterator<Item = Packet<Ip>> + Send + 'a> {
        while self.slots.len() < IDEAL_BATCH_SIZE {
            self.slots.push(pool.get());
        }
        let n = loop {
            let mut bufs: Vec<&mut [u8]> = self.slots.iter_mut().map(|p| &mut p[..]).collect();
            match self
                .dev
                .recv_multiple(&mut self.super_frame, &mut bufs, &mut self.sizes, 0)
                .await
            {
                Ok(n) => break n,
                Err(e) if is_device_error(&e) => return Err(e),
                Err(e) => {
                    tracing::warn!("dropped a frame from the TUN device: {e}");
                    // A repeating error must not spin a core.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        let sizes = &self.sizes[..n];
        Ok(self
            .slots
            .drain(..n)
            .zip(sizes)
            .filter_map(|(mut packet, &size)| {
                packet.truncate(size);
                packet.try_into_ip().ok()
            }))
    }

    fn mtu(&self) -> MtuWatcher {
        self.mtu.clone()
    }
}

/// The sending half: gotatun's incoming task hands decrypted packets here; the writer task
/// writes them to the kernel.
#[derive(Clone)]
pub(crate) struct OffloadTunTx {
    queue: mpsc::Sender<Packet<Ip>>,
    _writer: Arc<AbortOnDrop>,
}

impl IpSend for OffloadTunTx {
    async fn send(&mut self, packet: Packet<Ip>) -> io::Result<()> {
        // A closed queue means the writer met a device error: gotatun takes BrokenPipe as the
        // end of the TUN device, as when its own TUN is deleted.
        self.queue
            .send(packet)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "TUN writer stopped"))
    }
}

/// Takes every packet waiting (up to a batch), copies each behind room for the virtio header,
/// coalesces and writes. Batches form by themselves under load: while one write runs, the next
/// packets queue up.
async fn write_loop(dev: Arc<AsyncDevice>, mut queue: mpsc::Receiver<Packet<Ip>>) {
    let mut gro = GROTable::default();
    let mut batch: Vec<Packet<Ip>> = Vec::with_capacity(IDEAL_BATCH_SIZE);
    let mut bufs: Vec<BytesMut> = Vec::with_capacity(IDEAL_BATCH_SIZE);
    loop {
        let n = queue.recv_many(&mut batch, IDEAL_BATCH_SIZE).await;
        if n == 0 {
            return;
        }
        // Room for a whole coalesced frame in every buffer: tun-rs coalesces into a buffer only
        // if it need not grow (untouched capacity costs no memory).
        bufs.resize_with(n.max(bufs.len()), || {
            BytesMut::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65535)
        });
        for (buf, packet) in bufs.iter_mut().zip(batch.drain(..)) {
            buf.clear();
            buf.resize(VIRTIO_NET_HDR_LEN, 0);
            buf.extend_from_slice(&packet.into_bytes()[..]);
        }
        if let Err(e) = dev
            .send_multiple(&mut gro, &mut bufs[..n], VIRTIO_NET_HDR_LEN)
            .await
        {
            if is_device_error(&e) {
                tracing::error!("TUN device is gone: {e}");
                return;
            }
            tracing::warn!("TUN write of {n} packets failed: {e}");
        }
    }
}
