//! flowtrack's own DNS forwarder, for enforce mode with name rules (the
//! kernel's side: `flow_ebpf_common::redirect`). The scope's queries reach
//! it instead of the server they were sent to; it asks that server (from a
//! socket of its own, outside the scope), learns what the answer teaches
//! the policy (`flow_policy::Matcher`: an allowed name's addresses), puts
//! those addresses in the kernel's prefix trie, and only then relays the
//! answer. So the workload cannot connect to an answered address before
//! the kernel allows it: no race, whatever the timing.
//!
//! Hand-written rather than a DNS server crate: it forwards messages
//! unchanged (UDP datagrams, TCP's length-prefixed messages) and only
//! reads answers, with the parser the passive path already uses
//! (`flow_names::dns`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, MapData};
use flow_core::{FlowError, FlowKey};
use flow_ebpf_common::{FAMILY_V4, FAMILY_V6, RawEndpoint};
use flow_policy::{Matcher, Policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::BACKEND_NAME;
use crate::decode::address;
use crate::enforce::{Rules, raw_rules, trie_prefix};

/// How long the server the query was for has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// The largest DNS message (TCP's length prefix is 16 bits).
const MAX_MESSAGE: usize = 65_535;
/// Ports tried before binding fails.
const PORT_TRIES: usize = 16;

/// [`RawEndpoint`] as a map key or value.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub(crate) struct Endpoint(RawEndpoint);

// SAFETY: plain integers, no padding (the layout is checked in
// flow-ebpf-common's tests), valid for any bit pattern.
#[allow(unsafe_code)]
unsafe impl aya::Pod for Endpoint {}

/// The resolver's sockets: UDP and TCP on `127.0.0.1` and `[::1]`, one
/// port for all four (the kernel's hooks redirect to it).
#[derive(Debug)]
pub(crate) struct Sockets {
    port: u16,
    udp: [std::net::UdpSocket; 2],
    tcp: [std::net::TcpListener; 2],
}

impl Sockets {
    /// Binds the four sockets on a free port (in the calling thread's
    /// network namespace: the scope's processes must share it).
    pub(crate) fn bind() -> Result<Self, FlowError> {
        let unable = |error: io::Error| {
            FlowError::unavailable(
                BACKEND_NAME,
                format!("cannot start the resolver that enforces name rules: {error}"),
            )
        };
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let udp4 = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(unable)?;
            let port = udp4.local_addr().map_err(unable)?.port();
            let rest = || -> io::Result<_> {
                Ok((
                    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, port))?,
                    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?,
                    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port))?,
                ))
            };
            match rest() {
                Ok((udp6, tcp4, tcp6)) => {
                    for socket in [&udp4, &udp6] {
                        socket.set_nonblocking(true).map_err(unable)?;
                    }
                    for listener in [&tcp4, &tcp6] {
                        listener.set_nonblocking(true).map_err(unable)?;
                    }
                    return Ok(Self {
                        port,
                        udp: [udp4, udp6],
                        tcp: [tcp4, tcp6],
                    });
                }
                // Taken for one of the others: another port.
                Err(error) => last = Some(error),
            }
        }
        Err(unable(
            last.unwrap_or_else(|| io::Error::other("no free port")),
        ))
    }

    /// The port the kernel redirects to.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

/// Answers relayed queued for the reader at most (a relay waits when it
/// is full: the answer is late, never lost).
const RELAYED_QUEUE: usize = 4096;

/// An answer the resolver relayed to the scope: the reader reports its
/// lookup and names flows after it, as it does with a passive copy.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// The lookup's flow as the kernel saw it: to the resolver
    /// ([`Running::as_the_client_made_it`] names the server).
    pub(crate) lookup: FlowKey,
    /// The DNS message.
    pub(crate) answer: Vec<u8>,
    /// When it was relayed (CLOCK_MONOTONIC ns).
    pub(crate) at_ns: u64,
}

/// The running resolver: its tasks end when it is dropped.
pub(crate) struct Running {
    port: u16,
    shared: SharedRef,
    relayed: mpsc::Receiver<Relayed>,
    _tasks: JoinSet<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// `key` as the client made it: a flow to the resolver is to the
    /// server its query was for (as the kernel filed it); others as they
    /// are.
    pub(crate) fn as_the_client_made_it(&self, key: FlowKey) -> FlowKey {
        if key.dst_port != self.port || !key.dst_addr.is_loopback() {
            return key;
        }
        let client = SocketAddr::new(key.src_addr, key.src_port);
        match lock(&self.shared).server_of(client, key.protocol) {
            Some(server) => FlowKey {
                dst_addr: server.ip(),
                dst_port: server.port(),
                ..key
            },
            None => key,
        }
    }

    /// The next answer relayed, if one is waiting.
    pub(crate) fn try_relayed(&mut self) -> Option<Relayed> {
        self.relayed.try_recv().ok()
    }

    /// The next answer relayed, when it comes.
    pub(crate) async fn relayed(&mut self) -> Option<Relayed> {
        self.relayed.recv().await
    }
}

/// What every query needs: the policy's memory of names, the kernel's
/// trie, and the clients' servers.
struct Shared {
    matcher: Matcher,
    trie: LpmTrie<MapData, [u8; 16], Rules>,
    clients: HashMap<MapData, Endpoint, Endpoint>,
}

type SharedRef = Arc<Mutex<Shared>>;

impl Shared {
    /// The server `client` sent its query to over `protocol`, as the egress
    /// program filed it.
    fn server_of(&self, client: SocketAddr, protocol: u8) -> Option<SocketAddr> {
        let (addr, family) = endpoint_address(client.ip());
        let key = Endpoint(RawEndpoint {
            addr,
            port: client.port(),
            family,
            protocol,
        });
        let server = self.clients.get(&key, 0).ok()?.0;
        Some(SocketAddr::new(
            address(server.family, &server.addr),
            server.port,
        ))
    }

    /// Puts what `answer` teaches the policy into the kernel.
    fn learn(&mut self, answer: &[u8]) {
        let Ok(answer) = flow_names::dns::parse_response(answer) else {
            return;
        };
        let learned = self.matcher.learn(&answer.lookup);
        if learned.dropped > 0 {
            tracing::warn!(
                query = %answer.lookup.query,
                addresses = learned.dropped,
                "too many addresses learned: these stay denied"
            );
        }
        for address in learned.addresses {
            // One address: its full length.
            let full = if address.address.is_ipv4() { 32 } else { 128 };
            let (len, bytes) = trie_prefix(address.address, full);
            let key = Key::new(len, bytes);
            let inserted = raw_rules(&address.entries)
                .map_err(|why| why.to_string())
                .and_then(|rules| {
                    self.trie
                        .insert(&key, Rules(rules), 0)
                        .map_err(|error| error.to_string())
                });
            if let Err(why) = inserted {
                tracing::warn!(address = %address.address, %why, "an answered address stays denied");
            }
        }
    }
}

/// `address` as the kernel's maps hold it.
fn endpoint_address(address: IpAddr) -> ([u8; 16], u8) {
    match address {
        IpAddr::V4(v4) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (addr, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// Starts serving on `sockets` (in the current runtime).
pub(crate) fn start(
    sockets: Sockets,
    policy: Arc<Policy>,
    trie: LpmTrie<MapData, [u8; 16], Rules>,
    clients: HashMap<MapData, Endpoint, Endpoint>,
) -> Result<Running, FlowError> {
    let shared = Arc::new(Mutex::new(Shared {
        matcher: Matcher::new(policy),
        trie,
        clients,
    }));
    let (relays, relayed) = mpsc::channel(RELAYED_QUEUE);
    let mut tasks = JoinSet::new();
    let unable = |error: io::Error| FlowError::io("starting the resolver", error);
    let relay = Relay {
        shared: Arc::clone(&shared),
        relays,
    };
    for socket in sockets.udp {
        let socket = Arc::new(UdpSocket::from_std(socket).map_err(unable)?);
        tasks.spawn(serve_udp(socket, relay.clone()));
    }
    for listener in sockets.tcp {
        let listener = TcpListener::from_std(listener).map_err(unable)?;
        tasks.spawn(serve_tcp(listener, relay.clone()));
    }
    Ok(Running {
        port: sockets.port,
        shared,
        relayed,
        _tasks: tasks,
    })
}

/// What a relay of an answer needs.
#[derive(Clone)]
struct Relay {
    shared: SharedRef,
    relays: mpsc::Sender<Relayed>,
}

impl Relay {
    /// Before `answer` (to a query `client` sent, redirected, to the
    /// resolver's socket at `local`) goes back: its addresses allowed in
    /// the kernel, then the answer queued for the reader (so that its
    /// lookup comes before any flow it names).
    async fn learn(&self, client: SocketAddr, local: SocketAddr, protocol: u8, answer: &[u8]) {
        lock(&self.shared).learn(answer);
        let relayed = Relayed {
            lookup: FlowKey::new(client, local, protocol),
            answer: answer.to_vec(),
            at_ns: flow_core::clock::monotonic_now_ns(),
        };
        let _ = self.relays.send(relayed).await;
    }
}

fn lock(shared: &SharedRef) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes the scope's queries over UDP, each relayed by a task of its own.
async fn serve_udp(socket: Arc<UdpSocket>, relay: Relay) {
    let mut relays = JoinSet::new();
    let mut buffer = vec![0; MAX_MESSAGE];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let Ok((len, client)) = received else { continue };
                let Some(server) = lock(&relay.shared).server_of(client, 17) else {
                    tracing::debug!(%client, "a query from a socket the kernel did not redirect");
                    continue;
                };
                let query = buffer[..len].to_vec();
                relays.spawn(relay_udp(Arc::clone(&socket), relay.clone(), query, client, server));
            }
            Some(_) = relays.join_next() => {}
        }
    }
}

/// Asks `server`, learns from its answer, then answers `client`.
async fn relay_udp(
    socket: Arc<UdpSocket>,
    relay: Relay,
    query: Vec<u8>,
    client: SocketAddr,
    server: SocketAddr,
) {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let asked = async {
        let upstream = UdpSocket::bind(local).await?;
        upstream.connect(server).await?;
        upstream.send(&query).await?;
        let mut answer = vec![0; MAX_MESSAGE];
        let len = upstream.recv(&mut answer).await?;
        answer.truncate(len);
        io::Result::Ok(answer)
    };
    match tokio::time::timeout(ANSWER_WITHIN, asked).await {
        Ok(Ok(answer)) => {
            if let Ok(local) = socket.local_addr() {
                relay.learn(client, local, 17, &answer).await;
            }
            let _ = socket.send_to(&answer, client).await;
        }
        Ok(Err(error)) => tracing::debug!(%server, %error, "a query was not answered"),
        Err(_) => tracing::debug!(%server, "a query was not answered in time"),
    }
}

/// Takes the scope's TCP connections, each relayed by a task of its own.
async fn serve_tcp(listener: TcpListener, relay: Relay) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, client)) = accepted else { continue };
                let Some(server) = lock(&relay.shared).server_of(client, 6) else {
                    tracing::debug!(%client, "a connection the kernel did not redirect");
                    continue;
                };
                relays.spawn(relay_tcp(stream, relay.clone(), client, server));
            }
            Some(_) = relays.join_next() => {}
        }
    }
}

/// Relays one client's TCP connection, message by message, learning from
/// each answer before it passes it on.
async fn relay_tcp(mut stream: TcpStream, relay: Relay, client: SocketAddr, server: SocketAddr) {
    let Ok(Ok(mut upstream)) =
        tokio::time::timeout(ANSWER_WITHIN, TcpStream::connect(server)).await
    else {
        return;
    };
    while let Ok(query) = read_message(&mut stream).await {
        let answered = async {
            write_message(&mut upstream, &query).await?;
            read_message(&mut upstream).await
        };
        let Ok(Ok(answer)) = tokio::time::timeout(ANSWER_WITHIN, answered).await else {
            return;
        };
        if let Ok(local) = stream.local_addr() {
            relay.learn(client, local, 6, &answer).await;
        }
        if write_message(&mut stream, &answer).await.is_err() {
            return;
        }
    }
}

/// One DNS-over-TCP message: a 16-bit length, then that many bytes.
async fn read_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len()).map_err(|_| io::Error::other("a message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_filed_as_the_kernel_files_them() {
        let (v4, family) = endpoint_address("127.0.0.1".parse().unwrap());
        assert_eq!(
            (&v4[..4], &v4[4..], family),
            (&[127, 0, 0, 1][..], &[0; 12][..], FAMILY_V4)
        );
        let (v6, family) = endpoint_address("::1".parse().unwrap());
        assert_eq!((v6[15], family), (1, FAMILY_V6));
    }

    #[tokio::test]
    async fn the_four_sockets_share_one_port() {
        let sockets = Sockets::bind().unwrap();
        let port = sockets.port();
        assert_ne!(port, 0);
        for socket in &sockets.udp {
            assert_eq!(socket.local_addr().unwrap().port(), port);
        }
        for listener in &sockets.tcp {
            assert_eq!(listener.local_addr().unwrap().port(), port);
        }
    }
}
