//! An OTLP/gRPC logs receiver for tests: the OpenTelemetry project's own
//! protocol definitions (`opentelemetry-proto`'s generated
//! `LogsServiceServer`) on tonic's server, keeping every log record it is
//! sent, decoded into plain values.
//!
//! ```no_run
//! let receiver = flowtrack_otlp_receiver::Receiver::start();
//! let url = format!("otlp+grpc://{}", receiver.addr());
//! // … export to `url`, then:
//! let records = receiver.wait_for(1);
//! assert_eq!(records[0].attributes["network.transport"].as_str(), Some("tcp"));
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tonic::{Request, Response, Status};

/// A value of an attribute or a body, as the receiver decoded it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Any other kind, debug-formatted.
    Other(String),
}

impl Value {
    /// The string, if it is one.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(text) => Some(text),
            _ => None,
        }
    }

    /// The integer, if it is one.
    #[must_use]
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(value) => Some(*value),
            _ => None,
        }
    }

    fn of(value: Option<&AnyValue>) -> Self {
        match value.and_then(|value| value.value.as_ref()) {
            Some(any_value::Value::StringValue(text)) => Self::Str(text.clone()),
            Some(any_value::Value::IntValue(value)) => Self::Int(*value),
            Some(any_value::Value::BoolValue(value)) => Self::Bool(*value),
            other => Self::Other(format!("{other:?}")),
        }
    }
}

/// One log record received.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Its resource's attributes (who sent it).
    pub resource: BTreeMap<String, Value>,
    /// The instrumentation scope's name.
    pub scope: String,
    /// `LogRecord.event_name`.
    pub event_name: String,
    /// `LogRecord.body`.
    pub body: Option<Value>,
    /// `LogRecord.time_unix_nano`.
    pub time_unix_nano: u64,
    /// `LogRecord.observed_time_unix_nano`.
    pub observed_time_unix_nano: u64,
    /// Its attributes.
    pub attributes: BTreeMap<String, Value>,
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, Value> {
    list.iter()
        .map(|kv| (kv.key.clone(), Value::of(kv.value.as_ref())))
        .collect()
}

/// The service: keeps what it is sent.
struct Keep(Arc<Mutex<Vec<Record>>>);

#[tonic::async_trait]
impl LogsService for Keep {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut kept = Vec::new();
        for resource_logs in request.into_inner().resource_logs {
            let resource = resource_logs
                .resource
                .map(|resource| attributes(&resource.attributes))
                .unwrap_or_default();
            for scope_logs in resource_logs.scope_logs {
                let scope = scope_logs.scope.map(|scope| scope.name).unwrap_or_default();
                kept.extend(scope_logs.log_records.into_iter().map(|record| Record {
                    resource: resource.clone(),
                    scope: scope.clone(),
                    event_name: record.event_name,
                    body: record.body.as_ref().map(|body| Value::of(Some(body))),
                    time_unix_nano: record.time_unix_nano,
                    observed_time_unix_nano: record.observed_time_unix_nano,
                    attributes: attributes(&record.attributes),
                }));
            }
        }
        self.0.lock().unwrap().extend(kept);
        Ok(Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// A receiver listening on a free port of 127.0.0.1, serving on a thread
/// of its own until dropped.
pub struct Receiver {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<Record>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// In the test's network namespace.
    ///
    /// # Panics
    /// When it cannot listen.
    #[must_use]
    pub fn start() -> Self {
        Self::start_in(None)
    }

    /// In the network namespace bound at `netns` (`/run/netns/NAME`; needs
    /// CAP_SYS_ADMIN), or in the test's for `None`.
    ///
    /// # Panics
    /// When it cannot enter the namespace or listen.
    #[must_use]
    pub fn start_in(netns: Option<&Path>) -> Self {
        Self::start_at(netns, 0)
    }

    /// On `port` of 127.0.0.1 (0: a free one), in the network namespace
    /// bound at `netns`, or in the test's for `None`.
    ///
    /// # Panics
    /// When it cannot enter the namespace or listen.
    #[must_use]
    pub fn start_at(netns: Option<&Path>, port: u16) -> Self {
        let records = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, addr) = std::sync::mpsc::channel();
        let netns = netns.map(Path::to_path_buf);
        let service = LogsServiceServer::new(Keep(Arc::clone(&records)));
        let thread = std::thread::spawn(move || {
            if let Some(netns) = netns {
                let file = std::fs::File::open(&netns).unwrap();
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .unwrap();
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                bound.send(listener.local_addr().unwrap()).unwrap();
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(
                        tonic::transport::server::TcpIncoming::from(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
                    .unwrap();
            });
        });
        Self {
            addr: addr.recv().expect("the receiver listens"),
            records,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The records received so far.
    ///
    /// # Panics
    /// When the service panicked.
    #[must_use]
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// The records received, once there are at least `count` (polled for
    /// up to 30 s).
    ///
    /// # Panics
    /// When fewer arrive.
    #[must_use]
    pub fn wait_for(&self, count: usize) -> Vec<Record> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = self.records();
            if records.len() >= count {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} records received: {records:?}",
                records.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
