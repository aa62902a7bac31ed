//! The transports an IPFIX exporter sends its messages over: a connected
//! UDP socket, or a TCP connection (RFC 7011 §10.4) that is made in the
//! exporter's thread and made again, with exponential backoff, when it
//! fails.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The first wait before connecting again after a failure.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one message may take to write before the connection is
/// taken as stuck (a collector that stopped reading): it is then closed,
/// and the message sent again on a new one.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Exponential backoff: [`BACKOFF_FIRST`], doubling up to [`BACKOFF_MAX`],
/// back to the first after a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt; the one after it doubles.
    ///
    /// ```
    /// use std::time::Duration;
    /// use flow_supervisor::export::link::Backoff;
    /// let mut backoff = Backoff::default();
    /// let waits: Vec<Duration> = (0..12).map(|_| backoff.failed()).collect();
    /// assert_eq!(waits[0], Duration::from_millis(100));
    /// assert_eq!(waits[1], Duration::from_millis(200));
    /// assert_eq!(waits[11], Duration::from_secs(30));
    /// backoff.succeeded();
    /// assert_eq!(backoff.failed(), Duration::from_millis(100));
    /// ```
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    /// A success: the next failure waits [`BACKOFF_FIRST`] again.
    pub fn succeeded(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// What sending a message did.
#[derive(Debug)]
pub enum Sent {
    /// The message went out.
    Sent,
    /// The message could not be sent now; `retry` says whether it may be
    /// offered again (TCP: on the next connection), else it is lost.
    Failed {
        /// Why.
        error: io::Error,
        /// Whether to keep the message for another attempt.
        retry: bool,
    },
}

/// A transport to one collector.
#[derive(Debug)]
pub enum Link {
    /// Datagrams on a connected socket; templates are resent at an
    /// interval.
    Udp(UdpSocket),
    /// A byte stream; templates go once at the start of each connection.
    Tcp(TcpLink),
}

impl Link {
    /// A UDP socket connected to `collector`.
    ///
    /// # Errors
    /// When the socket cannot be made or connected.
    pub fn udp(collector: SocketAddr) -> io::Result<Self> {
        let local: SocketAddr = if collector.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(collector)?;
        Ok(Self::Udp(socket))
    }

    /// A TCP link to `collector`, not yet connected.
    #[must_use]
    pub fn tcp(collector: SocketAddr) -> Self {
        Self::Tcp(TcpLink {
            collector,
            stream: None,
            backoff: Backoff::default(),
            next_attempt: Instant::now(),
        })
    }
}

/// A TCP connection to a collector, made when needed.
#[derive(Debug)]
pub struct TcpLink {
    collector: SocketAddr,
    stream: Option<TcpStream>,
    backoff: Backoff,
    /// The earliest time of the next connection attempt.
    next_attempt: Instant,
}

impl TcpLink {
    /// Whether a connection is up (as far as can be told without writing:
    /// a collector that closed its end is noticed here).
    pub fn connected(&mut self) -> bool {
        if self.stream.as_ref().is_some_and(closed_by_peer) {
            self.stream = None;
        }
        self.stream.is_some()
    }

    /// When the next connection attempt may be made.
    #[must_use]
    pub fn next_attempt(&self) -> Instant {
        self.next_attempt
    }

    /// Connects now; on failure the next attempt is put off by the
    /// backoff.
    ///
    /// # Errors
    /// When the collector cannot be reached.
    pub fn connect(&mut self) -> io::Result<()> {
        let made =
            TcpStream::connect_timeout(&self.collector, CONNECT_TIMEOUT).and_then(|stream| {
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
                stream.set_nodelay(true)?;
                Ok(stream)
            });
        match made {
            Ok(stream) => {
                self.stream = Some(stream);
                Ok(())
            }
            Err(error) => {
                self.next_attempt = Instant::now() + self.backoff.failed();
                Err(error)
            }
        }
    }

    /// Writes `message` whole on the connection; a failure closes it (a
    /// message written in part would corrupt the stream) and puts the
    /// next attempt off.
    pub fn send(&mut self, message: &[u8]) -> Sent {
        let Some(stream) = self.stream.as_mut() else {
            return Sent::Failed {
                error: io::ErrorKind::NotConnected.into(),
                retry: true,
            };
        };
        match stream.write_all(message) {
            Ok(()) => {
                self.backoff.succeeded();
                Sent::Sent
            }
            Err(error) => {
                self.stream = None;
                self.next_attempt = Instant::now() + self.backoff.failed();
                Sent::Failed { error, retry: true }
            }
        }
    }
}

/// Whether the collector closed the connection (an IPFIX collector sends
/// nothing, so a readable end of stream or an error means it is gone).
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0];
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match stream.peek(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => error.kind() != io::ErrorKind::WouldBlock,
    };
    closed || stream.set_nonblocking(false).is_err()
}

impl Link {
    /// Sends one message (UDP: a datagram, lost when it fails).
    pub fn send(&mut self, message: &[u8]) -> Sent {
        match self {
            Self::Udp(socket) => match socket.send(message) {
                Ok(_) => Sent::Sent,
                Err(error) => Sent::Failed {
                    error,
                    retry: false,
                },
            },
            Self::Tcp(tcp) => tcp.send(message),
        }
    }
}
