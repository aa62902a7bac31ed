//! Flow export as OpenTelemetry log records over OTLP/gRPC (feature
//! `otlp`), with the OpenTelemetry project's crates: the SDK's batch log
//! processor and its OTLP exporter (tonic, no TLS).
//!
//! One log record per closed flow, per update and per denied flow; its
//! event name is `flowtrack.flow.closed`, `…update` or `…denied`, its body
//! the kind (`closed`), its time the event's (wall clock, from the
//! monotonic stamp: [`WallClock`]), and its attributes named by the
//! semantic conventions where they name the thing ([`describe`]). An
//! update carries the flow's counters so far, as the JSON line does (not
//! the IPFIX deltas).
//!
//! [`OtlpExporter::offer`] never blocks: the SDK's processor holds a
//! bounded queue that its own thread drains, in batches, to the collector.
//! The SDK drops silently what finds that queue full, and what a batch
//! that failed held: so the exporter counts the records handed to the SDK
//! and not yet seen by the OTLP exporter (wrapped: [`Counting`]), refuses
//! (and counts) a record when [`QUEUE`] are waiting, and counts every
//! record of a batch that could not be sent after the SDK's retries.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flow_core::{FlowEvent, FlowEventKind, protocol};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{
    BatchConfigBuilder, BatchLogProcessor, LogBatch, LogExporter, SdkLogRecord, SdkLogger,
    SdkLoggerProvider,
};

use super::wall::WallClock;
use super::{ExportUrl, ExportUrlError};

/// Records waiting for the collector at most (handed to the SDK and not yet
/// sent); more are dropped, counted.
pub const QUEUE: usize = 8_192;

/// Records sent to the collector in one request at most.
const BATCH: usize = 512;

/// How long a record waits for a batch to fill before it is sent.
const FLUSH_AFTER: Duration = Duration::from_millis(200);

/// How long one request may take (each of the SDK's retries).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`OtlpExporter::finish`] waits for what is queued to be sent.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The semantic conventions the attribute names follow.
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.42.0";

/// Where to export: `otlp+grpc://HOST:PORT` (or `otlp://HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpUrl {
    text: String,
    endpoint: String,
}

impl OtlpUrl {
    /// Parses `url`: the scheme `otlp+grpc` (or `otlp`), a host (a name
    /// must resolve now) and a port. `otlp+http` is refused: this build
    /// sends over gRPC only.
    ///
    /// ```
    /// use flow_supervisor::export::otlp::OtlpUrl;
    /// let url = OtlpUrl::parse("otlp+grpc://127.0.0.1:4317").unwrap();
    /// assert_eq!(url.endpoint(), "http://127.0.0.1:4317");
    /// assert!(OtlpUrl::parse("otlp+grpc://127.0.0.1").is_err());
    /// assert!(OtlpUrl::parse("otlp+http://127.0.0.1:4318").is_err());
    /// ```
    ///
    /// # Errors
    /// Another scheme, a missing port, or a host that does not resolve.
    pub fn parse(url: &str) -> Result<Self, ExportUrlError> {
        let refuse = |why: &str| ExportUrlError {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let authority = match url.split_once("://") {
            Some(("otlp" | "otlp+grpc", rest)) => rest.trim_end_matches('/'),
            Some(("otlp+http", _)) => {
                return Err(refuse(
                    "OTLP over HTTP is not supported; use otlp+grpc://HOST:PORT (a collector's port 4317)",
                ));
            }
            _ => return Err(refuse("expected otlp+grpc://HOST:PORT")),
        };
        // The host and port are checked as an IPFIX collector's are.
        ExportUrl::parse(&format!("ipfix://{authority}")).map_err(|error| refuse(&error.why))?;
        Ok(Self {
            text: url.to_owned(),
            endpoint: format!("http://{authority}"),
        })
    }

    /// The gRPC endpoint: `http://HOST:PORT`.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl fmt::Display for OtlpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What the exporter and its wrapped OTLP exporter count together.
#[derive(Debug, Default)]
struct Counts {
    /// Records handed to the SDK and not yet through an export.
    waiting: AtomicU64,
    /// Records dropped: refused at a full queue, or in a failed batch.
    dropped: AtomicU64,
    /// Whether the last batch failed (warned once per outage).
    failing: AtomicBool,
}

/// A running export to one OTLP collector: the SDK's logger, its batch
/// processor, and the Tokio runtime tonic's channel runs on.
#[derive(Debug)]
pub struct OtlpExporter {
    url: OtlpUrl,
    logger: SdkLogger,
    provider: SdkLoggerProvider,
    counts: Arc<Counts>,
    /// Taken by [`OtlpExporter::finish`] (or on drop), and shut down in
    /// the background: it may be dropped inside another runtime.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpExporter {
    /// Starts exporting to `url`'s collector. The connection is made when
    /// the first batch goes (and made again after a failure), so a
    /// collector that is not up yet is no error here.
    ///
    /// # Errors
    /// When the runtime or the exporter cannot be made.
    pub fn start(url: OtlpUrl) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flowtrack-otlp")
            .enable_all()
            .build()?;
        let otlp = {
            // tonic's channel starts its worker on the current runtime.
            let _entered = runtime.enter();
            opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(url.endpoint())
                .with_timeout(REQUEST_TIMEOUT)
                .build()
                .map_err(io::Error::other)?
        };
        let counts = Arc::new(Counts::default());
        let exporter = Counting {
            inner: otlp,
            counts: Arc::clone(&counts),
            url: url.to_string(),
        };
        let processor = BatchLogProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(QUEUE)
                    .with_max_export_batch_size(BATCH)
                    .with_scheduled_delay(FLUSH_AFTER)
                    .build(),
            )
            .build();
        let mut resource = Resource::builder()
            .with_service_name("flowtrack")
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if let Some(host) = host_name() {
            resource = resource.with_attribute(KeyValue::new("host.name", host));
        }
        let provider = SdkLoggerProvider::builder()
            .with_resource(resource.build())
            .with_log_processor(processor)
            .build();
        let logger = provider.logger_with_scope(
            InstrumentationScope::builder("flowtrack")
                .with_version(env!("CARGO_PKG_VERSION"))
                .with_schema_url(SCHEMA_URL)
                .build(),
        );
        Ok(Self {
            url,
            logger,
            provider,
            counts,
            runtime: Some(runtime),
        })
    }

    /// The collector's URL.
    #[must_use]
    pub fn url(&self) -> &OtlpUrl {
        &self.url
    }

    /// Hands `event` to the SDK as a log record, if it is a close, an
    /// update or a denial; never waits (when [`QUEUE`] records are
    /// waiting, it is dropped, counted).
    pub fn offer(&self, event: &FlowEvent) {
        let Some(name) = event_name(&event.kind) else {
            return;
        };
        if self.counts.waiting.fetch_add(1, Ordering::Relaxed) >= QUEUE as u64 {
            self.counts.waiting.fetch_sub(1, Ordering::Relaxed);
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut record = self.logger.create_log_record();
        record.set_event_name(name);
        record.set_body(AnyValue::from(event.kind.name()));
        record.set_severity_number(Severity::Info);
        record.set_severity_text("INFO");
        let clock = WallClock::now();
        record.set_timestamp(system_time(clock.ns(event.timestamp_ns)));
        record.set_observed_timestamp(SystemTime::now());
        describe(&mut record, event, &clock);
        self.logger.emit(record);
    }

    /// Records dropped so far (refused at a full queue, or not delivered).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.counts.dropped.load(Ordering::Relaxed)
    }

    /// Sends what is queued (waiting up to 10 s for the collector) and
    /// stops; returns the records dropped in all, those never delivered
    /// included.
    #[must_use]
    pub fn finish(mut self) -> u64 {
        // An error here is a timeout or a failed batch: both leave their
        // records counted, as dropped or still waiting.
        let _ = self.provider.shutdown_with_timeout(FINISH_TIMEOUT);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        self.counts.dropped.load(Ordering::Relaxed) + self.counts.waiting.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The event name of a record of `kind`, if such events are exported.
fn event_name(kind: &FlowEventKind) -> Option<&'static str> {
    match kind {
        FlowEventKind::Closed { .. } => Some("flowtrack.flow.closed"),
        FlowEventKind::Update { .. } => Some("flowtrack.flow.update"),
        FlowEventKind::Denied { .. } => Some("flowtrack.flow.denied"),
        _ => None,
    }
}

/// Sets the attributes of `event`'s record (README, "OpenTelemetry"): the
/// flow by the semantic conventions (`network.*`, `source.*`,
/// `destination.*`, `server.address`: the host name looked up, else the
/// TLS server name), its process (`process.*`; never the command line's
/// arguments), and what the conventions do not name under `flowtrack.*`.
fn describe(record: &mut SdkLogRecord, event: &FlowEvent, clock: &WallClock) {
    let key = &event.key;
    let transport = protocol::name(key.protocol)
        .map_or_else(|| key.protocol.to_string().into(), StringValue::from);
    record.add_attribute("network.transport", AnyValue::String(transport));
    let ipv4 = key.src_addr.to_canonical().is_ipv4();
    record.add_attribute("network.type", if ipv4 { "ipv4" } else { "ipv6" });
    record.add_attribute("source.address", key.src_addr.to_string());
    record.add_attribute("destination.address", key.dst_addr.to_string());
    if !matches!(key.protocol, protocol::ICMP | protocol::ICMPV6) {
        record.add_attribute("source.port", key.src_port);
        record.add_attribute("destination.port", key.dst_port);
    }
    if let Some(server) = event.host.as_ref().or(event.sni.as_ref()) {
        record.add_attribute("server.address", text(server));
    }
    if let Some(sni) = &event.sni {
        record.add_attribute("flowtrack.sni", text(sni));
    }
    if let Some(process) = &event.process {
        if let Some(pid) = process.pid {
            record.add_attribute("process.pid", pid);
        }
        if let Some(exe) = &process.exe {
            record.add_attribute("process.executable.path", text(exe));
        }
        if let Some(comm) = &process.comm {
            record.add_attribute("process.executable.name", text(comm));
        }
        if let Some(command) = process.cmdline.as_ref().and_then(|args| args.first()) {
            record.add_attribute("process.command", text(command));
        }
        if let Some(uid) = process.uid {
            record.add_attribute("process.user.id", uid);
        }
        if let Some(gid) = process.gid {
            record.add_attribute("flowtrack.process.group_id", gid);
        }
    }
    if let Some(workload) = &event.workload {
        record.add_attribute("flowtrack.cgroup", text(&workload.cgroup));
        if let Some(container) = &workload.container {
            record.add_attribute("container.id", text(container));
        }
    }
    if let Some(total) = event.kind.counters() {
        record.add_attribute("flowtrack.packets", count(total.packets));
        record.add_attribute("flowtrack.bytes", count(total.bytes));
    }
    if let Some(both) = &event.directions {
        record.add_attribute("flowtrack.src_packets", count(both.src.packets));
        record.add_attribute("flowtrack.src_bytes", count(both.src.bytes));
        record.add_attribute("flowtrack.dst_packets", count(both.dst.packets));
        record.add_attribute("flowtrack.dst_bytes", count(both.dst.bytes));
    }
    if let Some(start) = event.start_ns {
        record.add_attribute("flowtrack.start_unix_nano", count(clock.ns(start)));
    }
    if let Some(reason) = event.close_reason {
        record.add_attribute("flowtrack.close_reason", reason.name());
    }
    if let FlowEventKind::Denied { rule, enforced } = &event.kind {
        if let Some(rule) = rule {
            record.add_attribute("flowtrack.rule", text(rule));
        }
        record.add_attribute("flowtrack.enforced", *enforced);
    }
    if event.inbound {
        record.add_attribute("flowtrack.inbound", true);
    }
    if event.resynced {
        record.add_attribute("flowtrack.resynced", true);
    }
}

/// A shared string as an attribute value (no copy).
fn text(value: &Arc<str>) -> AnyValue {
    AnyValue::String(StringValue::from(Arc::clone(value)))
}

/// A counter as an OTLP integer (signed 64 bits; saturated).
fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `ns` since the UNIX epoch.
fn system_time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// This host's name, for the resource's `host.name`.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}

/// The OTLP exporter, counting what each batch held: the records are no
/// longer waiting, and those of a batch that failed (after the SDK's
/// retries) are dropped. One warning says when exporting starts failing,
/// one when it works again.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    counts: Arc<Counts>,
    url: String,
}

impl<E: LogExporter> LogExporter for Counting<E> {
    async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
        let records = batch.iter().count() as u64;
        let result = self.inner.export(batch).await;
        let counts = &self.counts;
        match &result {
            Ok(()) => {
                if counts.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(collector = %self.url, "export resumed");
                }
            }
            Err(error) => {
                counts.dropped.fetch_add(records, Ordering::Relaxed);
                if !counts.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(collector = %self.url, %error, "cannot export flow records; they are dropped and counted until the collector takes them again");
                }
            }
        }
        counts.waiting.fetch_sub(records, Ordering::Relaxed);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use flow_core::clock::monotonic_now_ns;
    use flow_core::counters::{Counters, DirectionCounters};
    use flow_core::process::Process;
    use flow_core::{CloseReason, FlowKey};
    use flowtrack_otlp_receiver::{Receiver, Value};

    use super::*;

    /// A TCP flow from 10.1.2.3:40000 to 192.0.2.80:443.
    fn key() -> FlowKey {
        let [src, dst] = ["10.1.2.3:40000", "192.0.2.80:443"].map(|a| a.parse().unwrap());
        FlowKey::tcp(src, dst)
    }

    fn str(value: &str) -> Value {
        Value::Str(value.to_owned())
    }

    /// `url`'s exporter, after it was offered `events`: the records it
    /// dropped in all.
    fn export(url: &str, events: &[FlowEvent]) -> u64 {
        let exporter = OtlpExporter::start(OtlpUrl::parse(url).unwrap()).unwrap();
        events.iter().for_each(|event| exporter.offer(event));
        exporter.finish()
    }

    #[test]
    fn closes_updates_and_denials_reach_the_collector_with_their_attributes() {
        let receiver = Receiver::start();
        let now = monotonic_now_ns();
        let both = DirectionCounters::new(Counters::new(11, 2_000), Counters::new(13, 54_000));
        let process = Arc::new(
            Process::new(4242)
                .with_comm("curl")
                .with_exe("/usr/bin/curl")
                .with_cmdline(["curl", "-u", "secret"])
                .with_uid(1000),
        );
        let closed = FlowEvent::closed_by_direction(key(), both, now)
            .started(now - 1_500_000_000)
            .because(CloseReason::Fin)
            .named("example.org")
            .with_sni("cdn.example.org")
            .by(process);
        let update = FlowEvent::update_by_direction(key(), both, now);
        let denied_key = FlowKey::udp(
            "[fd00::2]:5353".parse().unwrap(),
            "[fd00::1]:53".parse().unwrap(),
        );
        let id = "0123456789abcdef".repeat(4);
        let mut denied = FlowEvent::denied(denied_key, "default", true, now);
        denied.workload = Some(Arc::new(flow_core::workload::Workload::new(format!(
            "/system.slice/docker-{id}.scope"
        ))));
        let dropped = export(
            &format!("otlp+grpc://{}", receiver.addr()),
            &[FlowEvent::opened(key(), now), update, closed, denied],
        );
        assert_eq!(dropped, 0);
        let records = receiver.wait_for(3);
        let names: Vec<&str> = records.iter().map(|r| r.event_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "flowtrack.flow.update",
                "flowtrack.flow.closed",
                "flowtrack.flow.denied"
            ]
        );
        let closed = &records[1];
        assert_eq!(closed.body, Some(str("closed")));
        assert_eq!(closed.resource["service.name"], str("flowtrack"));
        let wall_now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let wall_now = u64::try_from(wall_now.as_nanos()).unwrap();
        assert!(
            wall_now.abs_diff(closed.time_unix_nano) < 60_000_000_000,
            "{} is not about now ({wall_now})",
            closed.time_unix_nano
        );
        let int = |value: i64| Value::Int(value);
        let expected: BTreeMap<String, Value> = [
            ("network.transport", str("tcp")),
            ("network.type", str("ipv4")),
            ("source.address", str("10.1.2.3")),
            ("source.port", int(40_000)),
            ("destination.address", str("192.0.2.80")),
            ("destination.port", int(443)),
            ("server.address", str("example.org")),
            ("flowtrack.sni", str("cdn.example.org")),
            ("process.pid", int(4242)),
            ("process.executable.path", str("/usr/bin/curl")),
            ("process.executable.name", str("curl")),
            ("process.command", str("curl")),
            ("process.user.id", int(1000)),
            ("flowtrack.packets", int(24)),
            ("flowtrack.bytes", int(56_000)),
            ("flowtrack.src_packets", int(11)),
            ("flowtrack.src_bytes", int(2_000)),
            ("flowtrack.dst_packets", int(13)),
            ("flowtrack.dst_bytes", int(54_000)),
            (
                "flowtrack.start_unix_nano",
                int(i64::try_from(closed.time_unix_nano).unwrap() - 1_500_000_000),
            ),
            ("flowtrack.close_reason", str("fin")),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        assert_eq!(closed.attributes, expected, "no command-line argument");
        assert_eq!(records[0].attributes["flowtrack.bytes"], int(56_000));
        let denied = &records[2].attributes;
        assert_eq!(denied["network.type"], str("ipv6"));
        assert_eq!(denied["network.transport"], str("udp"));
        assert_eq!(denied["flowtrack.rule"], str("default"));
        assert_eq!(denied["flowtrack.enforced"], Value::Bool(true));
        assert_eq!(denied["container.id"], str(&id));
        assert_eq!(
            denied["flowtrack.cgroup"],
            str(&format!("/system.slice/docker-{id}.scope"))
        );
    }

    /// A port of 127.0.0.1 nothing listens on.
    fn free_port() -> u16 {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    }

    #[test]
    fn export_resumes_when_the_collector_comes_up_and_only_what_it_missed_is_dropped() {
        let port = free_port();
        let url = OtlpUrl::parse(&format!("otlp+grpc://127.0.0.1:{port}")).unwrap();
        let exporter = OtlpExporter::start(url).unwrap();
        let closed = FlowEvent::closed(key(), 2, 120, monotonic_now_ns());
        (0..10).for_each(|_| exporter.offer(&closed));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while exporter.dropped() < 10 {
            assert!(std::time::Instant::now() < deadline, "never dropped");
            std::thread::sleep(Duration::from_millis(20));
        }
        let receiver = Receiver::start_at(None, port);
        (0..5).for_each(|_| exporter.offer(&closed));
        assert_eq!(exporter.finish(), 10);
        assert_eq!(receiver.records().len(), 5);
    }

    #[test]
    fn records_nobody_receives_are_dropped_and_counted() {
        let port = free_port();
        let closed = FlowEvent::closed(key(), 2, 120, monotonic_now_ns());
        let dropped = export(
            &format!("otlp+grpc://127.0.0.1:{port}"),
            &vec![closed; 1_000],
        );
        assert_eq!(dropped, 1_000);
    }
}
