//! The userspace device: gotatun behind a UAPI unix socket, like wireguard-go.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use gotatun::device::DeviceBuilder;
use gotatun::device::uapi::command::Request;
use gotatun::device::uapi::{UapiClient, UapiServer};
use gotatun::tun::{IpRecv, IpSend};
use gotatun::udp::UdpTransportFactory;
use gotatun::udp::socket::UdpSocketFactory;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::backend::{DEFAULT_SOCKET_DIR, validate_ifname};
use crate::task::AbortOnDrop;
use crate::udp_gso::GsoUdpFactory;
use crate::{WgError, tun_offload, uapi};

/// UDP socket buffers for the device: measured ~30% faster than the defaults here (the
/// defaults drop packets at the receiving socket).
pub const DEFAULT_UDP_BUFFER_BYTES: usize = 7 * 1024 * 1024;

/// Options of the userspace device daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserspaceOptions {
    /// Directory of the UAPI socket `<ifname>.sock` (default [`DEFAULT_SOCKET_DIR`]).
    pub socket_dir: PathBuf,
    /// `SO_RCVBUF`/`SO_SNDBUF` of the UDP socket; `None` keeps the OS default.
    pub udp_buffer_bytes: Option<usize>,
    /// Which kernel offloads the data path uses.
    pub offload: Offload,
}

/// The kernel offloads of the device's data path, each a measured step (docs/benchmarks.md,
/// "Tunnel throughput"). [`Offload::All`] is what clusters run; the others exist to measure
/// each step and as a way out should a kernel refuse one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// gotatun's own TUN (one packet per read and write) and UDP socket (`sendmmsg`, `UDP_GRO`).
    None,
    /// TSO/checksum offload on the TUN device: 64 KiB reads split in userspace, writes coalesced.
    Tun,
    /// The TUN offloads and UDP segmentation offload (`UDP_SEGMENT`) on the underlay socket.
    #[default]
    All,
}

impl Offload {
    /// The name `wg-userspace --offload` takes.
    pub fn name(self) -> &'static str {
        match self {
            Offload::None => "none",
            Offload::Tun => "tun",
            Offload::All => "all",
        }
    }
}

impl FromStr for Offload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Offload::None, Offload::Tun, Offload::All]
            .into_iter()
            .find(|o| o.name() == s)
            .ok_or_else(|| format!("unknown offload {s:?}: none, tun or all"))
    }
}

impl Default for UserspaceOptions {
    fn default() -> Self {
        UserspaceOptions {
            socket_dir: PathBuf::from(DEFAULT_SOCKET_DIR),
            udp_buffer_bytes: Some(DEFAULT_UDP_BUFFER_BYTES),
            offload: Offload::default(),
        }
    }
}

/// Runs a gotatun device `ifname` with its UAPI socket until SIGTERM or SIGINT, then stops it
/// and removes the socket. Blocking; builds its own tokio runtime, so call it outside one.
pub fn run_userspace_device(ifname: &str, opts: &UserspaceOptions) -> Result<(), WgError> {
    validate_ifname(ifname)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(WgError::Runtime)?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(WgError::Runtime)?;
        let mut int = signal(SignalKind::interrupt()).map_err(WgError::Runtime)?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        };
        serve_userspace_device(ifname, opts, stop).await
    })
}

/// Removes the socket file when the daemon ends, however it ends (gotatun leaves it).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_socket(path: &Path) -> Result<(UnixListener, SocketFile), WgError> {
    let err = |source| WgError::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // Unlike gotatun's own socket helper, don't steal a live daemon's socket.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(WgError::SocketInUse(path.to_owned()));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok((listener, file))
}

/// Like [`run_userspace_device`] inside an existing tokio runtime, stopping when `shutdown`
/// completes (or with [`WgError::DeviceFailed`] on a fatal device error).
pub async fn serve_userspace_device(
    ifname: &str,
    opts: &UserspaceOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WgError> {
    validate_ifname(ifname)?;
    let start_err = |e: &dyn std::fmt::Display| start_error(ifname, e);
    let udp = UdpSocketFactory {
        recv_buffer_size: opts.udp_buffer_bytes,
        send_buffer_size: opts.udp_buffer_bytes,
    };
    // TUN first, then the socket: a visible socket means a usable device (as wireguard-go).
    let builder = DeviceBuilder::new();
    let offload_tun = match opts.offload {
        Offload::None => None,
        Offload::Tun | Offload::All => match tun_offload::create(ifname) {
            Ok(halves) => Some(halves),
            // An older kernel or a TUN without IFF_VNET_HDR: the device still works, slower.
            Err(e) => {
                tracing::warn!(ifname, "TUN offloads unavailable ({e}); one packet per I/O");
                None
            }
        },
    };
    // UDP segmentation does not depend on the TUN: it stays when only the TUN offloads fail.
    let gso = opts.offload == Offload::All;
    match (offload_tun, gso) {
        (None, false) => {
            let builder = builder.with_udp(udp).create_tun(ifname);
            let builder = builder.map_err(|e| start_err(&e))?;
            serve_device(builder, ifname, opts, "none", shutdown).await
        }
        (None, true) => {
            let builder = builder.with_udp(GsoUdpFactory(udp)).create_tun(ifname);
            let builder = builder.map_err(|e| start_err(&e))?;
            serve_device(builder, ifname, opts, "udp", shutdown).await
        }
        (Some((tx, rx)), false) => {
            let builder = builder.with_udp(udp).with_ip_pair(tx, rx);
            serve_device(builder, ifname, opts, "tun", shutdown).await
        }
        (Some((tx, rx)), true) => {
            let builder = builder.with_udp(GsoUdpFactory(udp)).with_ip_pair(tx, rx);
            serve_device(builder, ifname, opts, "tun+udp", shutdown).await
        }
    }
}

fn start_error(ifname: &str, e: &dyn std::fmt::Display) -> WgError {
    WgError::DeviceStart {
        ifname: ifname.to_owned(),
        detail: format!("{e:#}"),
    }
}

/// Binds the UAPI socket, builds the device and serves until `shutdown` or a fatal error;
/// `offloads` names those in effect (for the log).
async fn serve_device<U, Tx, Rx>(
    builder: DeviceBuilder<U, Tx, Rx>,
    ifname: &str,
    opts: &UserspaceOptions,
    offloads: &str,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WgError>
where
    U: UdpTransportFactory,
    Tx: IpSend,
    Rx: IpRecv,
{
    let (listener, socket_file) = bind_socket(&uapi::socket_path(&opts.socket_dir, ifname))?;
    let (client, server) = UapiServer::new();
    // Ends with the daemon, so no client reaches a stopped device.
    let accept = AbortOnDrop(tokio::spawn(accept_loop(listener, client)));

    let mut device = builder
        .with_uapi(server)
        .build()
        .await
        .map_err(|e| start_error(ifname, &e))?;
    // The offloads in effect, which may be fewer than asked for.
    tracing::info!(ifname, offloads, "userspace WireGuard device up");

    let result = tokio::select! {
        () = device.wait() => Err(WgError::DeviceFailed(ifname.to_owned())),
        () = shutdown => Ok(()),
    };
    drop(accept);
    drop(socket_file);
    device.stop().await;
    result
}

async fn accept_loop(listener: UnixListener, client: UapiClient) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, client.clone()));
            }
            Err(e) => {
                tracing::warn!("UAPI accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One UAPI connection: requests are blocks of lines ended by an empty line (or EOF).
async fn serve_connection(stream: UnixStream, client: UapiClient) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut buf = String::new();
    loop {
        let line = lines.next_line().await;
        let eof = !matches!(line, Ok(Some(_)));
        if let Ok(Some(line)) = &line
            && !line.is_empty()
        {
            buf.push_str(line);
            buf.push('\n');
            continue;
        }
        if !buf.is_empty() {
            let response = match Request::from_str(&buf) {
                Ok(request) => match client.send(request).await {
                    Ok(response) => response.to_string(),
                    // Device stopped.
                    Err(_) => return,
                },
                Err(e) => {
                    tracing::warn!("bad UAPI request: {e:#}");
                    // EINVAL, as the kernel-style protocol expects an errno, not a hangup.
                    "errno=22\n".to_owned()
                }
            };
            buf.clear();
            if w.write_all(format!("{response}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
        if eof {
            return;
        }
    }
}
