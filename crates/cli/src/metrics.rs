//! `--metrics-addr ADDR`: Prometheus text exposition of what flowtrack
//! writes, served over HTTP (hyper) at any path.
//!
//! Counters count the output lines, by the line's `backend`: flows opened,
//! closed, denied and updated, and DNS lookups; loss reports and observations lost by backend and
//! loss point. Gauges: each backend up (1) or failed/ended (0), and the
//! size of the `--backend both` correlation table.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use flow_core::FlowEventKind;
use flow_supervisor::merge::MergedItem;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::scrape;

/// Labels of per-backend metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

/// Labels of loss metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LossLabels {
    backend: String,
    point: String,
}

/// flowtrack's metrics; cheap to clone (shared counters).
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    opened: Family<BackendLabel, Counter>,
    closed: Family<BackendLabel, Counter>,
    denied: Family<BackendLabel, Counter>,
    updates: Family<BackendLabel, Counter>,
    lookups: Family<BackendLabel, Counter>,
    loss_reports: Family<LossLabels, Counter>,
    lost: Family<LossLabels, Counter>,
    up: Family<BackendLabel, Gauge>,
    correlation_flows: Gauge<i64, AtomicI64>,
    correlation_source: Arc<std::sync::Mutex<Option<Arc<AtomicUsize>>>>,
}

impl Metrics {
    /// Registers every metric.
    pub(crate) fn new() -> Self {
        let (opened, closed, denied) = (Family::default(), Family::default(), Family::default());
        let (updates, lookups) = (Family::default(), Family::default());
        let (loss_reports, lost) = (Family::default(), Family::default());
        let up = Family::default();
        let correlation_flows = Gauge::default();
        let mut registry = Registry::with_prefix("flowtrack");
        registry.register("flows_opened", "Flows reported opened", opened.clone());
        registry.register("flows_closed", "Flows reported closed", closed.clone());
        registry.register(
            "flows_denied",
            "Flows a logging drop rule dropped",
            denied.clone(),
        );
        registry.register(
            "flow_updates",
            "Interim reports of flows still open (--active-timeout)",
            updates.clone(),
        );
        registry.register(
            "dns_lookups",
            "DNS lookups the scope made (answers seen)",
            lookups.clone(),
        );
        registry.register(
            "loss_reports",
            "Loss items reported, by backend and loss point",
            loss_reports.clone(),
        );
        registry.register(
            "observations_lost",
            "Observations reported lost (a loss of unknown size counts one), by backend and loss point",
            lost.clone(),
        );
        registry.register(
            "backend_up",
            "1 while a backend runs, 0 once it failed or ended",
            up.clone(),
        );
        registry.register(
            "correlation_flows",
            "Flows the --backend both correlation table holds",
            correlation_flows.clone(),
        );
        Self {
            registry: Arc::new(registry),
            opened,
            closed,
            denied,
            updates,
            lookups,
            loss_reports,
            lost,
            up,
            correlation_flows,
            correlation_source: Arc::default(),
        }
    }

    /// Marks `backend` as running.
    pub(crate) fn backend_started(&self, backend: &str) {
        self.up.get_or_create(&label(backend)).set(1);
    }

    /// Reads the correlation table's size from `gauge` at each scrape.
    pub(crate) fn watch_correlation(&self, gauge: Arc<AtomicUsize>) {
        if let Ok(mut source) = self.correlation_source.lock() {
            *source = Some(gauge);
        }
    }

    /// Counts one item of the output stream.
    pub(crate) fn record(&self, item: &MergedItem) {
        match item {
            MergedItem::Event { backend, event, .. } => {
                let family = match event.kind {
                    FlowEventKind::Opened => &self.opened,
                    FlowEventKind::Closed { .. } => &self.closed,
                    FlowEventKind::Denied { .. } => &self.denied,
                    FlowEventKind::Update { .. } => &self.updates,
                    FlowEventKind::Dns(_) => &self.lookups,
                    _ => return,
                };
                family.get_or_create(&label(backend)).inc();
            }
            MergedItem::Lost {
                backend,
                point,
                count,
                ..
            } => {
                let labels = LossLabels {
                    backend: backend.to_string(),
                    point: point.name().to_owned(),
                };
                self.loss_reports.get_or_create(&labels).inc();
                self.lost.get_or_create(&labels).inc_by(count.unwrap_or(1));
            }
            MergedItem::SourceFailed { backend, .. } | MergedItem::SourceEnded { backend } => {
                self.up.get_or_create(&label(backend)).set(0);
            }
            _ => {}
        }
    }

    /// The text exposition.
    fn encode(&self) -> String {
        if let Ok(source) = self.correlation_source.lock()
            && let Some(gauge) = source.as_ref()
        {
            self.correlation_flows
                .set(i64::try_from(gauge.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Binds `addr` and serves the metrics on it until the process ends
    /// ([`crate::scrape`]); the address bound (its port, when `addr` asked
    /// for port 0).
    pub(crate) async fn serve(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let (listener, bound) = scrape::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let metrics = self.clone();
        scrape::spawn(listener, move || metrics.encode());
        Ok(bound)
    }
}

fn label(backend: &str) -> BackendLabel {
    BackendLabel {
        backend: backend.to_owned(),
    }
}
