//! Flow export to collectors (feature `ipfix`): IPFIX over UDP or TCP;
//! with the feature `otlp`, OpenTelemetry log records over OTLP/gRPC
//! ([`otlp`]); [`destination`] picks one by the URL's scheme.
//!
//! [`Exporter::offer`] never blocks the pipeline: it hands the event to a
//! bounded queue ([`QUEUE`] records, or the URL's `?queue=N`) that a
//! thread of the exporter drains, encodes and sends ([`link`]). A record
//! that finds the queue full (a collector, or a network, slower than the
//! flows; over TCP a collector that is down, while the thread waits to
//! connect again), or whose message cannot be sent (UDP: no collector
//! listening, the kernel's "connection refused"), is counted as dropped
//! ([`Exporter::dropped`]); the caller reports the count (flowtrack: as
//! `export_dropped` loss items). One warning says when sending starts
//! failing, one when it works again. UDP cannot see every loss: a
//! collector that is not there is known from the ICMP error a message
//! draws, which fails the next send (counted) but not the message itself.
//!
//! Every exporter has the same interface: [`Exporter::start`],
//! [`Exporter::offer`], [`Exporter::dropped`], [`Exporter::finish`].
//!
//! Closed flows and updates are exported (opened, denied and DNS events
//! are not: IPFIX flow records are about counted traffic). A flow's update
//! records carry what it carried since its previous record, its close
//! record the rest, so that the records of one flow add up to its totals
//! (a close without counters by direction counts everything as the
//! initiator's).

#[cfg(test)]
mod decode;
pub mod destination;
pub mod ipfix;
pub mod link;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod wall;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flow_core::clock::monotonic_now_ns;
use flow_core::counters::{Counters, DirectionCounters};
use flow_core::{FlowEvent, FlowEventKind, FlowKey};

use self::ipfix::{Encoder, EndReason, FlowRecord, MAX_TCP_MESSAGE, MAX_UDP_MESSAGE};
use self::link::{Link, Sent};
use self::wall::WallClock;

/// Records the queue of an exporter holds at most, unless its URL says
/// otherwise (`?queue=N`).
pub const QUEUE: usize = 65_536;

/// How often templates are sent again over UDP (RFC 7011 §8.4: a
/// collector that started after the exporter, or lost a datagram, learns
/// them within this interval), and how often the clocks' offset is taken
/// again ([`wall`]).
pub const TEMPLATE_INTERVAL: Duration = Duration::from_secs(60);

/// How long a record waits in a message not yet full before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// How long [`Exporter::finish`] goes on trying to deliver what is queued
/// to a TCP collector that takes it slowly or not at all; then the rest is
/// dropped (counted). A collector that cannot be connected to at the end
/// is tried once.
pub const FINISH_GRACE: Duration = Duration::from_secs(5);

/// How long sending must work, with nothing dropped, before the exporter
/// says that it works again (so that a collector dropping every other
/// message does not fill stderr with lines).
const RESUMED_AFTER: Duration = Duration::from_secs(5);

/// The transport of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// IPFIX over UDP: one message per datagram, templates resent every
    /// [`TEMPLATE_INTERVAL`].
    Udp,
    /// IPFIX over TCP: one connection, templates at its start, messages up
    /// to 65,535 bytes; connected again with backoff when it fails.
    Tcp,
}

/// Where to export: `ipfix+udp://HOST:PORT` (or `ipfix://HOST:PORT`) or
/// `ipfix+tcp://HOST:PORT`, optionally with `?queue=RECORDS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportUrl {
    text: String,
    collector: SocketAddr,
    transport: Transport,
    queue: usize,
}

/// A URL [`ExportUrl::parse`] does not take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot export to {url:?}: {why}")]
pub struct ExportUrlError {
    url: String,
    why: String,
}

impl ExportUrl {
    /// Parses `url`: the scheme `ipfix+udp` (or `ipfix`) or `ipfix+tcp`, a
    /// host (a name is resolved now) and a port, and optionally the
    /// queue's size in records (`?queue=N`, at least 1).
    ///
    /// ```
    /// use flow_supervisor::export::{ExportUrl, Transport};
    /// let url = ExportUrl::parse("ipfix+udp://127.0.0.1:4739").unwrap();
    /// assert_eq!(url.collector().port(), 4739);
    /// assert_eq!(url.transport(), Transport::Udp);
    /// let url = ExportUrl::parse("ipfix+tcp://127.0.0.1:4739?queue=100").unwrap();
    /// assert_eq!((url.transport(), url.queue()), (Transport::Tcp, 100));
    /// assert!(ExportUrl::parse("ipfix+udp://127.0.0.1").is_err());
    /// assert!(ExportUrl::parse("ipfix+tcp://127.0.0.1:4739?queue=0").is_err());
    /// assert!(ExportUrl::parse("ipfix+sctp://127.0.0.1:4739").is_err());
    /// ```
    ///
    /// # Errors
    /// An unknown scheme, a missing port, a host that does not resolve, or
    /// a query other than `queue=N`.
    pub fn parse(url: &str) -> Result<Self, ExportUrlError> {
        let error = |why: &str| ExportUrlError {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| error("expected ipfix+udp://HOST:PORT or ipfix+tcp://HOST:PORT"))?;
        let transport = match scheme {
            "ipfix" | "ipfix+udp" => Transport::Udp,
            "ipfix+tcp" => Transport::Tcp,
            _ => {
                return Err(error(
                    "unknown scheme (this build exports ipfix+udp://HOST:PORT and ipfix+tcp://HOST:PORT)",
                ));
            }
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let queue = match query {
            "" => QUEUE,
            _ => query
                .strip_prefix("queue=")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| error("the only option is ?queue=RECORDS (at least 1)"))?,
        };
        let collector = authority
            .trim_end_matches('/')
            .to_socket_addrs()
            .map_err(|e| error(&format!("expected HOST:PORT ({e})")))?
            .next()
            .ok_or_else(|| error("the host has no address"))?;
        Ok(Self {
            text: url.to_owned(),
            collector,
            transport,
            queue,
        })
    }

    /// The collector's address.
    #[must_use]
    pub fn collector(&self) -> SocketAddr {
        self.collector
    }

    /// UDP or TCP.
    #[must_use]
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The records the exporter's queue holds at most.
    #[must_use]
    pub fn queue(&self) -> usize {
        self.queue
    }
}

impl fmt::Display for ExportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the caller and the exporter's thread share.
#[derive(Debug, Default)]
struct Shared {
    /// Records dropped so far.
    dropped: AtomicU64,
    /// Whether the export is failing (said once on stderr when it starts,
    /// once when it works again).
    failing: AtomicBool,
    /// Set by [`Exporter::finish`].
    finishing: AtomicBool,
    /// When a record was last dropped (CLOCK_MONOTONIC ns).
    last_drop_ns: AtomicU64,
}

impl Shared {
    /// Counts `records` dropped now.
    fn dropped(&self, records: u64) {
        self.dropped.fetch_add(records, Ordering::Relaxed);
        self.last_drop_ns
            .store(monotonic_now_ns(), Ordering::Relaxed);
    }

    /// Marks the export failing; says why when it was not yet.
    fn failing(&self, url: &str, why: &dyn fmt::Display) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "cannot export flow records to {url}: {why}; records that cannot wait are dropped and counted as export_dropped until it works again (the output has every flow)"
            );
        }
    }
}

/// A running export to one collector: a bounded queue and the thread that
/// sends what it holds.
#[derive(Debug)]
pub struct Exporter {
    url: ExportUrl,
    queue: SyncSender<FlowEvent>,
    shared: Arc<Shared>,
    sender: JoinHandle<()>,
}

impl Exporter {
    /// Starts exporting to `url`'s collector: over UDP a socket connected
    /// to it now; over TCP the connection is made by the thread that
    /// sends, so a collector that is not up yet delays nothing.
    ///
    /// # Errors
    /// When the UDP socket cannot be made or connected, or the thread not
    /// started.
    pub fn start(url: ExportUrl) -> io::Result<Self> {
        let (link, max_message) = match url.transport {
            Transport::Udp => (Link::udp(url.collector)?, MAX_UDP_MESSAGE),
            Transport::Tcp => (Link::tcp(url.collector), MAX_TCP_MESSAGE),
        };
        let (queue, records) = sync_channel(url.queue);
        let shared = Arc::new(Shared::default());
        let sending = Sending {
            link,
            url: url.to_string(),
            shared: Arc::clone(&shared),
            encoder: Encoder::new(max_message, 1),
            sequence: 0,
            templates_due: Instant::now(),
            clock_due: Instant::now() + TEMPLATE_INTERVAL,
            clock: WallClock::now(),
            reported: HashMap::new(),
            fresh: false,
            link_failed: false,
            deadline: None,
            gave_up: false,
        };
        let sender = std::thread::Builder::new()
            .name("flowtrack-export".into())
            .spawn(move || sending.run(&records))?;
        Ok(Self {
            url,
            queue,
            shared,
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
                self.shared.dropped(1);
                self.shared.failing(
                    &self.url.text,
                    &format_args!(
                        "its queue of {} records is full (the collector is down, or slower than the flows)",
                        self.url.queue
                    ),
                );
            }
        }
    }

    /// Records dropped so far (queue full, or not sent).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Sends what is queued (over TCP for at most [`FINISH_GRACE`]) and
    /// stops; returns the records dropped in all.
    #[must_use]
    pub fn finish(self) -> u64 {
        self.shared.finishing.store(true, Ordering::Relaxed);
        drop(self.queue);
        self.sender.thread().unpark();
        let _ = self.sender.join();
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// The exporter's thread.
struct Sending {
    link: Link,
    url: String,
    shared: Arc<Shared>,
    encoder: Encoder,
    /// Data records sent so far in this transport session (the IPFIX
    /// sequence number).
    sequence: u32,
    /// When the templates go again (UDP).
    templates_due: Instant,
    /// When the clocks' offset is taken again.
    clock_due: Instant,
    clock: WallClock,
    /// What each open flow's records have counted so far.
    reported: HashMap<FlowKey, DirectionCounters>,
    /// Whether no data message went on this TCP connection yet.
    fresh: bool,
    /// Whether sending or connecting failed since the export last worked.
    link_failed: bool,
    /// When finishing, the end of [`FINISH_GRACE`].
    deadline: Option<Instant>,
    /// Finishing, the collector is out of reach: the rest is dropped.
    gave_up: bool,
}

impl Sending {
    fn run(mut self, records: &Receiver<FlowEvent>) {
        self.start_message();
        let mut oldest: Option<Instant> = None;
        loop {
            // Over TCP, records are taken from the queue only once a
            // connection is up: while the collector is down they wait
            // there, up to its bound.
            while self.encoder.records() == 0 && !self.gave_up() && !self.connected() {}
            let wait = oldest.map_or(Duration::from_secs(3_600), |since| {
                FLUSH_AFTER.saturating_sub(since.elapsed())
            });
            match records.recv_timeout(wait) {
                Ok(event) => {
                    let record = self.record(&event);
                    if !self.encoder.push(&record) {
                        self.deliver();
                        self.start_message();
                        let _ = self.encoder.push(&record);
                    }
                    oldest.get_or_insert_with(Instant::now);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if oldest.is_some_and(|since| since.elapsed() >= FLUSH_AFTER) {
                self.deliver();
                self.start_message();
                oldest = None;
            }
        }
        if self.encoder.records() > 0 {
            self.deliver();
        }
    }

    /// Starts the next message, over UDP with the templates when they are
    /// due (first, then every [`TEMPLATE_INTERVAL`]); the clocks' offset is
    /// taken again at that interval.
    fn start_message(&mut self) {
        let now = Instant::now();
        if now >= self.clock_due {
            self.clock_due = now + TEMPLATE_INTERVAL;
            self.clock = WallClock::now();
        }
        let templates = matches!(self.link, Link::Udp(_)) && now >= self.templates_due;
        if templates {
            self.templates_due = now + TEMPLATE_INTERVAL;
        }
        self.encoder.start(templates);
    }

    /// Sends the message built. Over TCP it waits for a connection (the
    /// records offered meanwhile wait in the queue) and is sent again on a
    /// new connection when one fails; over UDP, and over TCP once
    /// finishing gave up, its records are dropped (counted) when it cannot
    /// be sent.
    fn deliver(&mut self) {
        let records = self.encoder.records();
        loop {
            if !self.gave_up() && !self.connected() {
                continue;
            }
            if self.gave_up {
                break;
            }
            let message = self.encoder.finish(WallClock::export_secs(), self.sequence);
            match self.link.send(message) {
                Sent::Sent => {
                    self.sequence = self.sequence.wrapping_add(records);
                    self.worked();
                    return;
                }
                Sent::Failed { error, retry } => {
                    self.link_failed = true;
                    self.shared.failing(&self.url, &error);
                    if !retry {
                        // The templates went with the lost message: send
                        // them again.
                        self.templates_due = Instant::now();
                        break;
                    }
                }
            }
        }
        self.shared.dropped(u64::from(records));
    }

    /// Whether the link can take a message now: UDP always; TCP when
    /// connected, else after one connection attempt at its time (this
    /// waits for it; [`Exporter::finish`] cuts the wait short), and the
    /// templates written on the new connection.
    fn connected(&mut self) -> bool {
        let Link::Tcp(tcp) = &mut self.link else {
            return true;
        };
        if tcp.connected() {
            return true;
        }
        let finishing = self.shared.finishing.load(Ordering::Relaxed);
        if !finishing {
            let wait = tcp.next_attempt().saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::park_timeout(wait);
                return false;
            }
        }
        if let Err(error) = tcp.connect() {
            self.link_failed = true;
            self.shared.failing(&self.url, &error);
            // At the end, a collector that cannot be reached is not waited
            // for.
            self.gave_up = finishing;
            return false;
        }
        // A new transport session: templates first, sequence from 0.
        self.sequence = 0;
        self.fresh = true;
        let mut templates = Encoder::new(0, 1);
        templates.start(true);
        matches!(
            tcp.send(templates.finish(WallClock::export_secs(), 0)),
            Sent::Sent
        )
    }

    /// Whether finishing gave up on the collector ([`FINISH_GRACE`] over,
    /// or it could not be reached): what is left is dropped.
    fn gave_up(&mut self) -> bool {
        if !self.gave_up && self.shared.finishing.load(Ordering::Relaxed) {
            let deadline = *self
                .deadline
                .get_or_insert_with(|| Instant::now() + FINISH_GRACE);
            self.gave_up = Instant::now() >= deadline;
        }
        self.gave_up
    }

    /// A message went out: if the export was failing, says that it works
    /// again when this was the first message on a connection made after a
    /// failed one, or nothing was dropped for [`RESUMED_AFTER`].
    fn worked(&mut self) {
        let fresh = std::mem::take(&mut self.fresh);
        if !self.shared.failing.load(Ordering::Relaxed) {
            return;
        }
        let last_drop = self.shared.last_drop_ns.load(Ordering::Relaxed);
        let quiet = Duration::from_nanos(monotonic_now_ns().saturating_sub(last_drop));
        if (fresh && self.link_failed) || quiet >= RESUMED_AFTER {
            self.link_failed = false;
            self.shared.failing.store(false, Ordering::Relaxed);
            tracing::warn!(
                "export to {} works again ({} flow records dropped so far)",
                self.url,
                self.shared.dropped.load(Ordering::Relaxed)
            );
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
    use std::net::UdpSocket;

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

    /// A TCP collector on a free port of 127.0.0.1: it takes one
    /// connection at a time and keeps each one's bytes; with `read` off it
    /// accepts and never reads.
    struct Collector {
        port: u16,
        /// Bytes read so far, from every connection.
        received: Arc<std::sync::atomic::AtomicUsize>,
        streams: std::sync::mpsc::Receiver<Vec<u8>>,
    }

    impl Collector {
        fn listen(listener: std::net::TcpListener, read: bool) -> Self {
            use std::io::Read;
            let port = listener.local_addr().unwrap().port();
            let (kept, streams) = std::sync::mpsc::channel();
            let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = Arc::clone(&received);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    let mut stream = stream.unwrap();
                    let mut bytes = Vec::new();
                    let mut chunk = vec![0; 65_536];
                    while let Some(n) = read
                        .then(|| stream.read(&mut chunk).ok())
                        .flatten()
                        .filter(|&n| n > 0)
                    {
                        bytes.extend_from_slice(&chunk[..n]);
                        counted.fetch_add(n, Ordering::Relaxed);
                    }
                    held.push(stream);
                    if kept.send(bytes).is_err() {
                        break;
                    }
                }
            });
            Self {
                port,
                received,
                streams,
            }
        }

        fn url(&self, queue: usize) -> ExportUrl {
            ExportUrl::parse(&format!(
                "ipfix+tcp://127.0.0.1:{}?queue={queue}",
                self.port
            ))
            .unwrap()
        }
    }

    fn closed(n: u16, v6: bool) -> FlowEvent {
        let (src, dst) = if v6 {
            (
                format!("[2001:db8::1]:{n}"),
                "[2001:db8::80]:443".to_owned(),
            )
        } else {
            (format!("10.1.2.3:{n}"), "192.0.2.80:443".to_owned())
        };
        let key = FlowKey::tcp(src.parse().unwrap(), dst.parse().unwrap());
        let both = both((u64::from(n), 1_000 + u64::from(n)), (2, 20_000));
        FlowEvent::closed_by_direction(key, both, 3_000_000_000)
            .started(1_000_000_000)
            .because(Some(flow_core::CloseReason::Fin))
    }

    /// The keys and counters of what `events` should export.
    fn expected(events: &[FlowEvent]) -> Vec<(FlowKey, DirectionCounters)> {
        events
            .iter()
            .map(|event| (event.key, event.directions.unwrap()))
            .collect()
    }

    fn exported(records: &[FlowRecord]) -> Vec<(FlowKey, DirectionCounters)> {
        records.iter().map(|r| (r.key, r.counters)).collect()
    }

    /// Each message's sequence number is the data records sent before it
    /// in the session.
    fn assert_sequenced(messages: &[(u32, usize, bool)]) {
        let mut before = 0;
        for &(sequence, records, _) in messages {
            assert_eq!(sequence as usize, before, "{messages:?}");
            before += records;
        }
    }

    #[test]
    fn over_tcp_the_templates_go_first_and_every_record_arrives() {
        let collector =
            Collector::listen(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), true);
        let exporter = Exporter::start(collector.url(QUEUE)).unwrap();
        let events: Vec<FlowEvent> = (0..3_000).map(|n| closed(n, n % 3 == 0)).collect();
        events.iter().for_each(|event| exporter.offer(event));
        assert_eq!(exporter.finish(), 0);
        let decoded = decode::decode(&collector.streams.recv().unwrap());
        assert_eq!(decoded.messages[0], (0, 0, true), "templates alone, first");
        assert!(decoded.messages[1..].iter().all(|m| !m.2), "templates once");
        assert!(decoded.messages.len() < 20, "messages up to 64 KiB");
        assert_sequenced(&decoded.messages);
        assert_eq!(exported(&decoded.records), expected(&events));
        let clock = WallClock::now();
        let first = &decoded.records[0];
        assert_eq!(
            (first.start_ms, first.end_ms, first.reason),
            (
                clock.ms(1_000_000_000),
                clock.ms(3_000_000_000),
                EndReason::EndOfFlow
            )
        );
    }

    #[test]
    fn a_tcp_collector_down_at_first_gets_the_queue_then_fresh_templates_and_the_rest() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = ExportUrl::parse(&format!("ipfix+tcp://{addr}?queue=10")).unwrap();
        let exporter = Exporter::start(url).unwrap();
        // More than one message and the queue hold: the rest is dropped.
        let down: Vec<FlowEvent> = (0..3_000).map(|n| closed(n, false)).collect();
        down.iter().for_each(|event| exporter.offer(event));
        let dropped = exporter.dropped();
        assert_eq!(
            dropped,
            3_000 - 10,
            "the queue holds 10 while the collector is down"
        );
        let collector = Collector::listen(std::net::TcpListener::bind(addr).unwrap(), true);
        // Offered once the records kept while it was down have all gone
        // (the templates, and at least one message of IPv4 records).
        let kept = 3_000 - usize::try_from(dropped).unwrap();
        let mut templates = Encoder::new(0, 1);
        templates.start(true);
        let sent = templates.finish(0, 0).len() + 16 + 4 + kept * 62;
        let deadline = Instant::now() + Duration::from_secs(60);
        while collector.received.load(Ordering::Relaxed) < sent {
            assert!(
                Instant::now() < deadline,
                "the exporter never connected again"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let up: Vec<FlowEvent> = (3_000..3_010).map(|n| closed(n, true)).collect();
        up.iter().for_each(|event| exporter.offer(event));
        assert_eq!(exporter.finish(), dropped, "nothing dropped once it is up");
        let decoded = decode::decode(&collector.streams.recv().unwrap());
        assert_eq!(decoded.messages[0], (0, 0, true), "fresh templates first");
        assert_sequenced(&decoded.messages);
        let records = exported(&decoded.records);
        assert_eq!(records.len(), kept + 10);
        assert_eq!(
            records[..kept],
            expected(&down)[..kept],
            "the oldest kept, in order"
        );
        assert_eq!(records[kept..], expected(&up));
    }

    #[test]
    fn a_tcp_collector_that_stops_reading_holds_nothing_up() {
        let collector =
            Collector::listen(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), false);
        let exporter = Exporter::start(collector.url(1_000)).unwrap();
        // Offered until the exporter, its connection stuck (the socket
        // buffers full), gave it up and connected again.
        let event = closed(1, true);
        let mut connections = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while connections < 2 {
            assert!(
                Instant::now() < deadline,
                "the stuck connection was never left"
            );
            (0..1_000).for_each(|_| exporter.offer(&event));
            connections += collector.streams.try_iter().count();
        }
        assert!(exporter.dropped() > 0);
        let dropped = exporter.finish();
        assert_eq!(collector.received.load(Ordering::Relaxed), 0);
        assert!(dropped > 0);
    }
}
