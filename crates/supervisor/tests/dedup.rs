//! `--backend both` correlation: one flow, one `opened`, one `closed`,
//! whichever backends saw it; timed with tokio's paused clock.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use flow_core::{CloseReason, FlowError, FlowEvent, FlowEventKind, FlowKey, LossPoint};
use flow_supervisor::dedup::{Correlated, DedupConfig};
use flow_supervisor::merge::MergedItem;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};

fn key(port: u16) -> FlowKey {
    FlowKey::tcp(
        format!("10.0.0.1:{port}").parse().unwrap(),
        "10.0.0.2:443".parse().unwrap(),
    )
}

fn seen(backend: &str, event: FlowEvent) -> MergedItem {
    MergedItem::from_source(&Arc::from(backend), Ok(event))
}

/// (kind, backend, backends, counters) of an output event.
type Line = (&'static str, String, Vec<String>, Option<(u64, u64)>);

fn line(item: &MergedItem) -> Line {
    let record = item.to_record().expect("an event or a loss");
    let counters = match &record.item {
        flow_core::record::RecordItem::Event(event) => match event.kind {
            FlowEventKind::Closed {
                pkt_count,
                byte_count,
            } => Some((pkt_count, byte_count)),
            _ => None,
        },
        _ => None,
    };
    let mut backends = vec![record.backend.to_string()];
    backends.extend(record.also_seen_by.iter().map(ToString::to_string));
    (
        record.kind_name(),
        record.backend.to_string(),
        backends,
        counters,
    )
}

struct Harness {
    input: mpsc::UnboundedSender<MergedItem>,
    output: Correlated<mpsc::UnboundedReceiver<MergedItem>>,
}

impl Harness {
    fn new(capacity: usize) -> Self {
        let (input, receiver) = mpsc::unbounded();
        let config = DedupConfig::for_backends(["ebpf", "nflog"])
            .capacity(capacity)
            .unwrap();
        Self {
            input,
            output: Correlated::new(receiver, config),
        }
    }

    fn send(&self, item: MergedItem) {
        self.input.unbounded_send(item).unwrap();
    }

    /// Each backend's event, in this order.
    fn send_all<const N: usize>(&self, events: [(&str, FlowEvent); N]) {
        for (backend, event) in events {
            self.send(seen(backend, event));
        }
    }

    /// Everything the correlator has ready now.
    fn ready(&mut self) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some(Some(item)) = self.output.next().now_or_never() {
            lines.push(line(&item));
        }
        lines
    }

    /// What comes out after `time` passes.
    async fn after(&mut self, time: Duration) -> Vec<Line> {
        let mut lines = self.ready();
        let deadline = tokio::time::Instant::now() + time;
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, self.output.next()).await {
            lines.push(line(&item));
        }
        lines
    }
}

fn both() -> Vec<String> {
    vec!["ebpf".into(), "nflog".into()]
}

#[tokio::test(start_paused = true)]
async fn a_flow_both_saw_comes_out_once_with_ebpf_counters() {
    let mut h = Harness::new(100);
    h.send(seen("nflog", FlowEvent::opened(key(1), 10)));
    h.send(seen("ebpf", FlowEvent::opened(key(1), 11)));
    h.send(seen("nflog", FlowEvent::closed(key(1), 9, 900, 20)));
    assert_eq!(
        h.after(Duration::from_millis(10)).await,
        [("opened", "ebpf".into(), both(), None)],
        "the open goes as soon as both saw it; the close waits for eBPF's"
    );
    h.send(seen("ebpf", FlowEvent::closed(key(1), 10, 1000, 21)));
    assert_eq!(
        h.after(Duration::from_millis(10)).await,
        [("closed", "ebpf".into(), both(), Some((10, 1000)))]
    );
    // nflog's late DESTROY-time view of the same flow is absorbed.
    assert_eq!(h.after(Duration::from_secs(5)).await, []);
}

#[tokio::test(start_paused = true)]
async fn a_close_reason_only_nflog_knows_rides_on_ebpfs_counters() {
    let (input, receiver) = mpsc::unbounded();
    let mut output = Correlated::new(receiver, DedupConfig::for_backends(["ebpf", "nflog"]));
    for (backend, event) in [
        ("ebpf", FlowEvent::opened(key(9), 10)),
        ("nflog", FlowEvent::opened(key(9), 11)),
        (
            "nflog",
            FlowEvent::closed(key(9), 9, 900, 20).because(CloseReason::Reset),
        ),
        ("ebpf", FlowEvent::closed(key(9), 10, 1000, 21)),
    ] {
        input.unbounded_send(seen(backend, event)).unwrap();
    }
    drop(input);
    let closes: Vec<FlowEvent> = output
        .by_ref()
        .filter_map(|item| async move {
            match item {
                MergedItem::Event { event, .. } if event.kind.name() == "closed" => Some(event),
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(
        (closes[0].kind.clone(), closes[0].close_reason),
        (
            FlowEventKind::Closed {
                pkt_count: 10,
                byte_count: 1000
            },
            Some(CloseReason::Reset)
        )
    );
}

#[tokio::test(start_paused = true)]
async fn a_flow_one_backend_missed_is_reported_after_the_window() {
    let mut h = Harness::new(100);
    h.send(seen("nflog", FlowEvent::opened(key(2), 10)));
    assert_eq!(h.after(Duration::from_millis(100)).await, []);
    assert_eq!(
        h.after(Duration::from_secs(1)).await,
        [("opened", "nflog".into(), vec!["nflog".into()], None)]
    );
    h.send(seen("nflog", FlowEvent::closed(key(2), 2, 120, 30)));
    assert_eq!(
        h.after(Duration::from_secs(1)).await,
        [(
            "closed",
            "nflog".into(),
            vec!["nflog".into()],
            Some((2, 120))
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_opened_of_a_closed_flow_is_absorbed_and_a_reused_key_is_a_new_flow() {
    let mut h = Harness::new(100);
    h.send(seen("ebpf", FlowEvent::opened(key(3), 1)));
    h.send(seen("ebpf", FlowEvent::closed(key(3), 4, 400, 2)));
    let first = h.after(Duration::from_secs(1)).await;
    assert_eq!(first.len(), 2, "{first:?}");
    // nflog reports the same flow late: nothing new comes out.
    h.send(seen("nflog", FlowEvent::opened(key(3), 3)));
    h.send(seen("nflog", FlowEvent::closed(key(3), 4, 400, 4)));
    assert_eq!(h.after(Duration::from_secs(1)).await, []);
    // eBPF opens the key again after closing it: a new flow.
    h.send(seen("ebpf", FlowEvent::opened(key(3), 5)));
    let again = h.after(Duration::from_secs(1)).await;
    assert_eq!(
        again,
        [("opened", "ebpf".into(), vec!["ebpf".into()], None)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_table_evicts_the_oldest_and_counts_it() {
    let mut h = Harness::new(2);
    for port in 10..13 {
        h.send(seen("ebpf", FlowEvent::opened(key(port), u64::from(port))));
    }
    let out = h.after(Duration::from_millis(1)).await;
    assert_eq!(
        out.len(),
        1,
        "the oldest held open went out at once: {out:?}"
    );
    assert_eq!(h.output.evictions(), 1);
    assert_eq!(h.output.remembered(), 2);
}

#[tokio::test(start_paused = true)]
async fn losses_and_failures_pass_through() {
    let mut h = Harness::new(10);
    h.send(MergedItem::from_source(
        &Arc::from("nflog"),
        Err(FlowError::lost(LossPoint::NetlinkOverrun, Some(3))),
    ));
    let out = h.after(Duration::from_millis(1)).await;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "lost");
    drop(h.input);
    assert!(h.output.next().await.is_none(), "ends with its input");
}

#[tokio::test(start_paused = true)]
async fn a_close_owed_by_the_slower_backend_is_absorbed_even_after_the_linger() {
    let mut h = Harness::new(100);
    h.send(seen("ebpf", FlowEvent::opened(key(4), 1)));
    h.send(seen("nflog", FlowEvent::opened(key(4), 2)));
    h.send(seen("ebpf", FlowEvent::closed(key(4), 2, 100, 3)));
    let out = h.after(Duration::from_secs(1)).await;
    assert_eq!(out.len(), 2, "{out:?}");
    // conntrack's DESTROY of a UDP flow, 150 s later (past the 120 s linger).
    assert_eq!(h.after(Duration::from_secs(150)).await, []);
    h.send(seen("nflog", FlowEvent::closed(key(4), 2, 100, 4)));
    assert_eq!(
        h.after(Duration::from_secs(1)).await,
        [],
        "no second closed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_key_reused_while_conntrack_keeps_the_old_entry_gets_no_stray_close() {
    // A UDP socket reuses the port of a flow conntrack still tracks: eBPF
    // sees two flows, conntrack one (no second NEW), whose DESTROY comes
    // long after eBPF closed the second.
    let mut h = Harness::new(100);
    h.send(seen("ebpf", FlowEvent::opened(key(5), 1)));
    h.send(seen("nflog", FlowEvent::opened(key(5), 2)));
    h.send(seen("ebpf", FlowEvent::closed(key(5), 2, 100, 3)));
    assert_eq!(h.after(Duration::from_secs(1)).await.len(), 2);
    assert_eq!(h.after(Duration::from_secs(30)).await, []);
    h.send(seen("ebpf", FlowEvent::opened(key(5), 4)));
    h.send(seen("ebpf", FlowEvent::closed(key(5), 2, 100, 5)));
    let second = h.after(Duration::from_secs(1)).await;
    assert_eq!(
        second.iter().map(|line| line.0).collect::<Vec<_>>(),
        ["opened", "closed"],
        "{second:?}"
    );
    // The old entry's DESTROY, past the second flow's 120 s linger.
    assert_eq!(h.after(Duration::from_secs(150)).await, []);
    h.send(seen("nflog", FlowEvent::closed(key(5), 4, 200, 6)));
    assert_eq!(
        h.after(Duration::from_secs(1)).await,
        [],
        "the old flow's close is owed, not a flow of its own"
    );
    // Owed closes are not kept for ever: the key is forgotten in the end.
    assert_eq!(h.after(Duration::from_secs(700)).await, []);
    assert_eq!(h.output.remembered(), 0);
}

/// How many `opened` and `closed` lines `lines` has.
fn counts(lines: &[Line]) -> (usize, usize) {
    let of = |kind: &str| lines.iter().filter(|line| line.0 == kind).count();
    (of("opened"), of("closed"))
}

#[tokio::test(start_paused = true)]
async fn a_flow_nflog_rebuilt_after_an_overrun_is_one_ebpf_reported_not_a_new_one() {
    // After a stall, a port reused from TIME_WAIT carried two flows that
    // eBPF reports in a burst; nflog reports the first as it happened (and
    // it is matched to the second, which came in by then), and the second
    // from the table listing taken after its queue overran, stamped with
    // the listing's time.
    let mut h = Harness::new(100);
    h.send_all([
        ("ebpf", FlowEvent::opened(key(6), 1)),
        ("ebpf", FlowEvent::closed(key(6), 12, 840, 2)),
        ("ebpf", FlowEvent::opened(key(6), 3)),
        ("ebpf", FlowEvent::closed(key(6), 12, 840, 4)),
        ("nflog", FlowEvent::opened(key(6), 1)),
        ("nflog", FlowEvent::closed(key(6), 12, 840, 2)),
        ("nflog", FlowEvent::opened(key(6), 10).resynced(true)),
        (
            "nflog",
            FlowEvent::closed(key(6), 12, 840, 10).resynced(true),
        ),
    ]);
    let out = h.after(Duration::from_secs(5)).await;
    assert_eq!(counts(&out), (2, 2), "two flows, not three: {out:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_flow_is_absorbed_after_every_view_came_in() {
    // As above, but nflog's close of the first flow comes after the window:
    // by then every view of the flow it was matched to is in.
    let mut h = Harness::new(100);
    h.send_all([
        ("ebpf", FlowEvent::opened(key(7), 1)),
        ("ebpf", FlowEvent::closed(key(7), 12, 840, 2)),
        ("ebpf", FlowEvent::opened(key(7), 3)),
        ("ebpf", FlowEvent::closed(key(7), 12, 840, 4)),
        ("nflog", FlowEvent::opened(key(7), 1)),
    ]);
    assert_eq!(counts(&h.after(Duration::from_secs(1)).await), (2, 2));
    h.send(seen("nflog", FlowEvent::closed(key(7), 12, 840, 2)));
    assert_eq!(h.after(Duration::from_secs(1)).await, []);
    h.send(seen("nflog", FlowEvent::opened(key(7), 10).resynced(true)));
    h.send(seen(
        "nflog",
        FlowEvent::closed(key(7), 12, 840, 10).resynced(true),
    ));
    assert_eq!(h.after(Duration::from_secs(1)).await, [], "absorbed");
    // A view as it happened is a new flow, as when the key was forgotten.
    h.send(seen("nflog", FlowEvent::opened(key(7), 20)));
    assert_eq!(counts(&h.after(Duration::from_secs(1)).await), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_flow_reported_before_ebpfs_burst_is_no_extra_flow() {
    let mut h = Harness::new(100);
    h.send_all([
        ("nflog", FlowEvent::opened(key(8), 1)),
        ("nflog", FlowEvent::closed(key(8), 12, 840, 2)),
        ("nflog", FlowEvent::opened(key(8), 10).resynced(true)),
        (
            "nflog",
            FlowEvent::closed(key(8), 12, 840, 10).resynced(true),
        ),
        ("ebpf", FlowEvent::opened(key(8), 1)),
        ("ebpf", FlowEvent::closed(key(8), 12, 840, 2)),
        ("ebpf", FlowEvent::opened(key(8), 3)),
        ("ebpf", FlowEvent::closed(key(8), 12, 840, 4)),
    ]);
    let out = h.after(Duration::from_secs(5)).await;
    assert_eq!(counts(&out), (2, 2), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn a_flow_only_a_listing_showed_is_reported_and_marked_resynced() {
    let (input, receiver) = mpsc::unbounded();
    // nflog preferred: still, a view as it happened wins over a rebuilt one.
    let config = DedupConfig::for_backends(["nflog", "ebpf"]);
    let mut output = Correlated::new(receiver, config);
    for (backend, event) in [
        ("nflog", FlowEvent::opened(key(9), 50).resynced(true)),
        ("ebpf", FlowEvent::opened(key(9), 5)),
        ("nflog", FlowEvent::opened(key(10), 50).resynced(true)),
        (
            "nflog",
            FlowEvent::closed(key(10), 3, 300, 50).resynced(true),
        ),
    ] {
        input.unbounded_send(seen(backend, event)).unwrap();
    }
    drop(input);
    let mut lines = Vec::new();
    while let Some(item) = output.next().await {
        let record = item.to_record().unwrap();
        let flow_core::record::RecordItem::Event(event) = &record.item else {
            panic!("{record:?}")
        };
        lines.push((
            event.key.src_port,
            record.kind_name(),
            record.backend.to_string(),
            event.timestamp_ns,
            event.resynced,
        ));
    }
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            (9, "opened", "ebpf".into(), 5, false),
            (10, "closed", "nflog".into(), 50, true),
            (10, "opened", "nflog".into(), 50, true),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn closed_flows_are_forgotten_in_turn_and_a_close_owed_by_a_stopped_backend_is_not_awaited() {
    let mut h = Harness::new(100);
    let both_saw = |h: &Harness, port: u16| {
        for backend in ["ebpf", "nflog"] {
            h.send(seen(backend, FlowEvent::opened(key(port), 1)));
        }
        for backend in ["ebpf", "nflog"] {
            h.send(seen(backend, FlowEvent::closed(key(port), 2, 80, 2)));
        }
    };
    both_saw(&h, 11);
    assert_eq!(counts(&h.after(Duration::from_secs(60)).await), (1, 1));
    both_saw(&h, 12);
    // nflog opened this one and owes its close (a UDP flow's DESTROY).
    h.send(seen("ebpf", FlowEvent::opened(key(13), 1)));
    h.send(seen("nflog", FlowEvent::opened(key(13), 1)));
    h.send(seen("ebpf", FlowEvent::closed(key(13), 2, 80, 2)));
    assert_eq!(counts(&h.after(Duration::from_secs(61)).await), (2, 2));
    assert_eq!(
        h.output.remembered(),
        2,
        "the first is forgotten after 120 s"
    );
    assert_eq!(h.after(Duration::from_secs(60)).await, []);
    assert_eq!(h.output.remembered(), 1, "then the second; the third waits");
    source_stops(&mut h, "nflog", false).await;
    assert_eq!(h.after(Duration::from_secs(1)).await, []);
    assert_eq!(h.output.remembered(), 0, "nflog ended: nothing is owed");
}

#[tokio::test(start_paused = true)]
async fn a_lagging_backends_view_of_an_earlier_flow_on_a_reused_key_is_not_a_new_flow() {
    // After a stall, eBPF reports two flows of a key (a port reused from
    // TIME_WAIT) before nflog reports the first: nflog's view of the first
    // opened seconds before the flow remembered on the key did.
    const MS: u64 = 1_000_000;
    let mut h = Harness::new(100);
    h.send_all([
        ("ebpf", FlowEvent::opened(key(14), 1_000 * MS)),
        ("ebpf", FlowEvent::closed(key(14), 12, 840, 1_100 * MS)),
        ("ebpf", FlowEvent::opened(key(14), 4_000 * MS)),
        ("nflog", FlowEvent::opened(key(14), 1_000 * MS)),
        ("nflog", FlowEvent::closed(key(14), 12, 840, 4_000 * MS)),
        ("ebpf", FlowEvent::closed(key(14), 12, 840, 4_100 * MS)),
        ("nflog", FlowEvent::opened(key(14), 4_000 * MS)),
        ("nflog", FlowEvent::closed(key(14), 12, 840, 4_100 * MS)),
    ]);
    let out = h.after(Duration::from_secs(5)).await;
    assert_eq!(counts(&out), (2, 2), "two flows, not three: {out:?}");
    assert_eq!(
        out.last().map(|line| line.2.clone()),
        Some(both()),
        "the second flow, both saw: {out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lagging_backends_close_of_an_earlier_flow_leaves_the_next_flow_waiting_for_its_view() {
    // After a stall of nflog alone, eBPF has reported both flows of a key,
    // closes included, before nflog reports the first, close and all:
    // that close is the earlier flow's, and nflog's view of the second
    // flow is still to come (taken as all in, the second flow came out
    // twice: `run_both after_a_stall_within_the_buffer…` under load).
    const MS: u64 = 1_000_000;
    let mut h = Harness::new(100);
    h.send_all([
        ("ebpf", FlowEvent::opened(key(15), 1_000 * MS)),
        ("ebpf", FlowEvent::closed(key(15), 12, 840, 1_100 * MS)),
    ]);
    let mut out = h.after(Duration::from_secs(1)).await;
    h.send_all([
        ("ebpf", FlowEvent::opened(key(15), 4_000 * MS)),
        ("ebpf", FlowEvent::closed(key(15), 12, 840, 4_100 * MS)),
    ]);
    out.extend(h.after(Duration::from_secs(1)).await);
    h.send_all([
        ("nflog", FlowEvent::opened(key(15), 1_000 * MS)),
        ("nflog", FlowEvent::closed(key(15), 12, 840, 6_000 * MS)),
        ("nflog", FlowEvent::opened(key(15), 4_000 * MS)),
        ("nflog", FlowEvent::closed(key(15), 12, 840, 6_000 * MS)),
    ]);
    out.extend(h.after(Duration::from_secs(5)).await);
    assert_eq!(counts(&out), (2, 2), "two flows, not three: {out:?}");
}

/// Both backends report a flow on `key(port)`, nflog's close after the
/// flow was reported: every view of it is in.
async fn both_reported_a_flow(h: &mut Harness, port: u16) {
    h.send_all([
        ("ebpf", FlowEvent::opened(key(port), 1)),
        ("ebpf", FlowEvent::closed(key(port), 12, 840, 2)),
        ("nflog", FlowEvent::opened(key(port), 1)),
    ]);
    assert_eq!(counts(&h.after(Duration::from_secs(1)).await), (1, 1));
    h.send(seen("nflog", FlowEvent::closed(key(port), 12, 840, 2)));
    assert_eq!(h.after(Duration::from_secs(1)).await, []);
}

/// Sends `backend`'s end (`failed`: a failure) and takes it from the
/// output, where it passes unchanged.
async fn source_stops(h: &mut Harness, backend: &str, failed: bool) {
    let backend = Arc::from(backend);
    h.send(if failed {
        MergedItem::SourceFailed {
            backend,
            error: FlowError::io("reading the ring buffer", io::ErrorKind::BrokenPipe.into()),
        }
    } else {
        MergedItem::SourceEnded { backend }
    });
    let passed = h.output.next().await.unwrap();
    assert_eq!(
        matches!(passed, MergedItem::SourceFailed { .. }),
        failed,
        "{passed:?}"
    );
}

/// nflog's view of the flow on `key(port)`, rebuilt from a listing.
fn rebuilt(port: u16) -> [(&'static str, FlowEvent); 2] {
    [
        ("nflog", FlowEvent::opened(key(port), 10).resynced(true)),
        (
            "nflog",
            FlowEvent::closed(key(port), 12, 840, 10).resynced(true),
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_view_read_after_ebpf_ended_is_absorbed_into_the_flow_ebpf_reported() {
    // At the end of a run whose nflog queue overran, nflog's last listing
    // rebuilds flows both backends reported, and may be read after eBPF's
    // source ended with the scope (`run_both after_a_stall_each_flow_still_comes_out_once`,
    // one run in ten under load: hundreds of flows came out twice).
    let mut h = Harness::new(100);
    both_reported_a_flow(&mut h, 16).await;
    source_stops(&mut h, "ebpf", false).await;
    h.send_all(rebuilt(16));
    assert_eq!(h.after(Duration::from_secs(5)).await, [], "absorbed");
    // A key eBPF never reported is a flow only the listing showed.
    h.send_all(rebuilt(17));
    assert_eq!(counts(&h.after(Duration::from_secs(1)).await), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_view_read_after_ebpf_failed_is_reported() {
    // As above, but eBPF failed: it may have missed flows of the key since,
    // so the rebuilt view is reported.
    let mut h = Harness::new(100);
    both_reported_a_flow(&mut h, 18).await;
    source_stops(&mut h, "ebpf", true).await;
    h.send_all(rebuilt(18));
    assert_eq!(counts(&h.after(Duration::from_secs(5)).await), (1, 1));
}

/// nflog's close, alone in the window (eBPF's comes later), carries the
/// process the flow's `opened` line had from the kernel, not nflog's
/// guess.
#[tokio::test(start_paused = true)]
async fn a_close_alone_in_the_window_keeps_the_kernels_process() {
    use flow_core::process::{Attribution, Process};
    let kernel = Arc::new(Process::new(42).with_comm("python3"));
    let guess = Arc::new(Process::new(0).attributed(Attribution::BestEffort));
    let mut h = Harness::new(100);
    h.send_all([
        (
            "ebpf",
            FlowEvent::opened(key(9), 10).by(Arc::clone(&kernel)),
        ),
        (
            "nflog",
            FlowEvent::opened(key(9), 11).by(Arc::clone(&guess)),
        ),
        ("nflog", FlowEvent::closed(key(9), 2, 120, 30).by(guess)),
    ]);
    let mut items = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, h.output.next()).await {
        items.push(item);
    }
    let processes: Vec<(&str, Option<Attribution>)> = items
        .iter()
        .filter_map(|item| match item {
            MergedItem::Event { event, .. } => Some((
                event.kind.name(),
                event.process.as_ref().map(|process| process.attribution),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        processes,
        [
            ("opened", Some(Attribution::Kernel)),
            ("closed", Some(Attribution::Kernel))
        ]
    );
}
