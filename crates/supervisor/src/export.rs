//! Flow export to collectors (feature `ipfix`): IPFIX over UDP; with the
//! feature `otlp`, OpenTelemetry log records over OTLP/gRPC ([`otlp`]);
//! [`destination`] picks one by the URL's scheme.
//!
//! [`Exporter::offer`] never blocks the pipeline: it hands the event to a
//! bounded queue ([`QUEUE`] records) that a thread of the exporter drains,
//! encodes and sends. A record that finds the queue full (a collector, or
//! a network, slower than the flows), or whose message cannot be sent (no
//! collector listening: the kernel's "connection refused"), is counted as
//! dropped ([`Exporter::dropped`]); one warning says when sending starts
//! failing, one when it works again. UDP cannot see every loss: a
//! collector that is not there is known from the ICMP error a message
//! draws, which fails the next send (counted) but not the message itself.
//!
//! Closed flows and updates are exported (opened, denied and DNS events
//! are not: IPFIX flow records are about counted traffic). A flow's update
//! records carry what it carried since its previous record, its close
//! record the rest, so that the records of one flow add up to its totals
//! (a close without counters by direction counts everything as the
//! initiator's).

pub mod destination;
pub mod ipfix;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod wall;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flow_core::counters::{Counters, DirectionCounters};
use flow_core::{FlowEvent, FlowEventKind, FlowKey};

use self::ipfix::{Encoder, EndReason, FlowRecord, MAX_UDP_MESSAGE};
use self::wall::WallClock;

/// Records the queue of an exporter holds at most.
pub const QUEUE: usize = 65_536;

/// How often templates are sent again over UDP (RFC 7011 §8.4: a
/// collector that started after the exporter, or lost a datagram, learns
/// them within this interval).
pub const TEMPLATE_INTERVAL: Duration = Duration::from_secs(60);

/// How long a record waits in a message not yet full before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// Where to export: `ipfix+udp://HOST:PORT` (or `ipfix://HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportUrl {
    text: String,
    collector: SocketAddr,
}

/// A URL [`ExportUrl::parse`] does not take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot export to {url:?}: {why}")]
pub struct ExportUrlError {
    url: String,
    why: String,
}

impl ExportUrl {
    /// Parses `url`: the scheme `ipfix+udp` (or `ipfix`), a host (a name
    /// is resolved now) and a port.
    ///
    /// ```
    /// use flow_supervisor::export::ExportUrl;
    /// let url = ExportUrl::parse("ipfix+udp://127.0.0.1:4739").unwrap();
    /// assert_eq!(url.collector().port(), 4739);
    /// assert!(ExportUrl::parse("ipfix+udp://127.0.0.1").is_err());
    /// assert!(ExportUrl::parse("otlp://127.0.0.1:4317").is_err());
    /// ```
    ///
    /// # Errors
    /// An unknown scheme, a missing port, or a host that does not resolve.
    pub fn parse(url: &str) -> Result<Self, ExportUrlError> {
        let error = |why: &str| ExportUrlError {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| error("expected ipfix+udp://HOST:PORT"))?;
        if !matches!(scheme, "ipfix" | "ipfix+udp") {
            return Err(error(
                "unknown scheme (this build exports ipfix+udp://HOST:PORT)",
            ));
        }
        let authority = rest.trim_end_matches('/');
        let collector = authority
            .to_socket_addrs()
            .map_err(|e| error(&format!("expected HOST:PORT ({e})")))?
            .next()
            .ok_or_else(|| error("the host has no address"))?;
        Ok(Self {
            text: url.to_owned(),
            collector,
        })
    }

    /// The collector's address.
    #[must_use]
    pub fn collector(&self) -> SocketAddr {
        self.collector
    }
}

impl fmt::Display for ExportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A running export to one collector: a bounded queue and the thread that
/// sends what it holds.
#[derive(Debug)]
pub struct Exporter {
    url: ExportUrl,
    queue: SyncSender<FlowEvent>,
    dropped: Arc<AtomicU64>,
    sender: JoinHandle<()>,
}

impl Exporter {
    /// Starts exporting to `url`'s collector: a UDP socket connected to
    /// it, and the thread that sends.
    ///
    /// # Errors
    /// When the socket cannot be made or connected.
    pub fn start(url: ExportUrl) -> io::Result<Self> {
        let local: SocketAddr = if url.collector.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(url.collector)?;
        let (queue, records) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let sending = Sending {
            socket,
            url: url.to_string(),
            dropped: Arc::clone(&dropped),
            encoder: Encoder::new(MAX_UDP_MESSAGE, 1),
            sequence: 0,
            templates_due: Instant::now(),
            clock: WallClock::now(),
            reported: HashMap::new(),
            failing: false,
        };
        let sender = std::thread::Builder::new()
            .name("flowtrack-export".into())
            .spawn(move || sending.run(&records))?;
        Ok(Self {
            url,
            queue,
            dropped,
            sender,
        })
    }

    /// The collector's URL.
    #[must_use]
    pub fn url(&self) -> &ExportUrl {
        &self.url
    }

    /// Queues `event` for export, if it is a close or an update; never
    /// waits (a full queue drops it, counted).
    pub fn offer(&self, event: &FlowEvent) {
        if !matches!(
            event.kind,
            FlowEventKind::Closed { .. } | FlowEventKind::Update { .. }
        ) {
            return;
        }
        match self.queue.try_send(event.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped so far (queue full, or not sent).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends what is queued and stops; returns the records dropped in all.
    #[must_use]
    pub fn finish(self) -> u64 {
        drop(self.queue);
        let _ = self.sender.join();
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The exporter's thread.
struct Sending {
    socket: UdpSocket,
    url: String,
    dropped: Arc<AtomicU64>,
    encoder: Encoder,
    /// Data records sent so far (the IPFIX sequence number).
    sequence: u32,
    templates_due: Instant,
    clock: WallClock,
    /// What each open flow's records have counted so far.
    reported: HashMap<FlowKey, DirectionCounters>,
    /// Whether the last send failed (warned once per outage).
    failing: bool,
}

impl Sending {
    fn run(mut self, records: &Receiver<FlowEvent>) {
        self.start_message();
        let mut oldest: Option<Instant> = None;
        loop {
            let wait = oldest.map_or(Duration::from_secs(3_600), |since| {
                FLUSH_AFTER.saturating_sub(since.elapsed())
            });
            match records.recv_timeout(wait) {
                Ok(event) => {
                    let record = self.record(&event);
                    if !self.encoder.push(&record) {
                        self.send();
                        self.start_message();
                        let _ = self.encoder.push(&record);
                    }
                    oldest.get_or_insert_with(Instant::now);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if oldest.is_some_and(|since| since.elapsed() >= FLUSH_AFTER) {
                self.send();
                self.start_message();
                oldest = None;
            }
        }
        if self.encoder.records() > 0 {
            self.send();
        }
    }

    /// Starts the next message, with the templates when they are due
    /// (first, then every [`TEMPLATE_INTERVAL`]); the clocks' offset is
    /// taken again then.
    fn start_message(&mut self) {
        let templates = Instant::now() >= self.templates_due;
        if templates {
            self.templates_due = Instant::now() + TEMPLATE_INTERVAL;
            self.clock = WallClock::now();
        }
        self.encoder.start(templates);
    }

    /// Sends the message built; its records are dropped if that fails.
    fn send(&mut self) {
        let records = self.encoder.records();
        let message = self.encoder.finish(WallClock::export_secs(), self.sequence);
        match self.socket.send(message) {
            Ok(_) => {
                self.sequence = self.sequence.wrapping_add(records);
                if self.failing {
                    tracing::warn!(collector = %self.url, "export resumed");
                    self.failing = false;
                }
            }
            Err(error) => {
                self.dropped
                    .fetch_add(u64::from(records), Ordering::Relaxed);
                // The templates went with the lost message: send them again.
                self.templates_due = Instant::now();
                if !self.failing {
                    tracing::warn!(collector = %self.url, %error, "cannot export flow records; they are dropped and counted until the collector takes them again");
                    self.failing = true;
                }
            }
        }
    }

    /// The record of `event`: what it carried since its flow's previous
    /// record.
    fn record(&mut self, event: &FlowEvent) -> FlowRecord {
        let so_far = event.directions.unwrap_or_else(|| {
            DirectionCounters::new(
                event.kind.counters().unwrap_or_default(),
                Counters::default(),
            )
        });
        let (before, reason) = match event.kind {
            FlowEventKind::Update { .. } => {
                (self.reported.insert(event.key, so_far), EndReason::Active)
            }
            _ => (
                self.reported.remove(&event.key),
                EndReason::of_close(event.close_reason),
            ),
        };
        let counters = before.map_or(so_far, |before| so_far.since(&before));
        let end_ms = self.clock.ms(event.timestamp_ns);
        FlowRecord {
            key: event.key,
            counters,
            start_ms: event.start_ns.map_or(end_ms, |start| self.clock.ms(start)),
            end_ms,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey::tcp(
            "10.1.2.3:40000".parse().unwrap(),
            "192.0.2.80:443".parse().unwrap(),
        )
    }

    fn both(src: (u64, u64), dst: (u64, u64)) -> DirectionCounters {
        DirectionCounters::new(Counters::new(src.0, src.1), Counters::new(dst.0, dst.1))
    }

    /// The data records of IPv4 template 256 in `message`: initiator's
    /// bytes and packets, reason, responder's bytes and packets.
    fn v4_records(message: &[u8]) -> Vec<(u64, u64, u8, u64, u64)> {
        let u64_at = |at: usize| u64::from_be_bytes(message[at..at + 8].try_into().unwrap());
        let mut records = Vec::new();
        let mut at = 16;
        while at < message.len() {
            let id = u16::from_be_bytes([message[at], message[at + 1]]);
            let len = usize::from(u16::from_be_bytes([message[at + 2], message[at + 3]]));
            if id == ipfix::TEMPLATE_V4 {
                for record in (at + 4..at + len).step_by(62) {
                    records.push((
                        u64_at(record + 13),
                        u64_at(record + 21),
                        message[record + 45],
                        u64_at(record + 46),
                        u64_at(record + 54),
                    ));
                }
            }
            at += len;
        }
        records
    }

    #[test]
    fn a_flows_update_and_close_add_up_to_its_totals() {
        let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
        let url =
            ExportUrl::parse(&format!("ipfix+udp://{}", collector.local_addr().unwrap())).unwrap();
        let exporter = Exporter::start(url).unwrap();
        let update =
            FlowEvent::update_by_direction(key(), both((5, 1_000), (4, 20_000)), 2).started(1);
        let closed = FlowEvent::closed_by_direction(key(), both((11, 2_000), (13, 54_000)), 3)
            .started(1)
            .because(Some(flow_core::CloseReason::Fin));
        exporter.offer(&FlowEvent::opened(key(), 1));
        exporter.offer(&update);
        exporter.offer(&closed);
        assert_eq!(exporter.finish(), 0);
        let mut message = vec![0; 65_536];
        let len = collector.recv(&mut message).unwrap();
        message.truncate(len);
        assert_eq!(&message[8..12], &[0, 0, 0, 0], "no data record sent before");
        assert_eq!(
            v4_records(&message),
            [
                (1_000, 5, EndReason::Active as u8, 20_000, 4),
                (1_000, 6, EndReason::EndOfFlow as u8, 34_000, 9),
            ]
        );
    }

    #[test]
    fn records_nobody_receives_are_dropped_and_counted() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = ExportUrl::parse(&format!("ipfix+udp://127.0.0.1:{port}")).unwrap();
        let exporter = Exporter::start(url).unwrap();
        let closed = FlowEvent::closed_by_direction(key(), both((1, 60), (1, 60)), 3);
        for _ in 0..200 {
            exporter.offer(&closed);
        }
        // UDP learns that nothing listens from the ICMP error a message
        // draws: the next send fails with it (its records counted), and
        // the one after goes out again. On loopback that is every other
        // message of the ten.
        let dropped = exporter.finish();
        assert!((80..=200).contains(&dropped), "{dropped}");
    }
}
