//! The stream of a running eBPF source: ring-buffer records as they come
//! (those the programs write without a wakeup, at the next wakeup or a
//! catch-up read shortly after), and every sweep interval the idle
//! flows and the loss counters; with an active timeout, every timeout the
//! open flows' counters so far.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aya::Pod;
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use flow_core::clock::monotonic_now_ns;
use flow_core::{CloseReason, FlowError, FlowEvent, FlowStream, LossPoint, protocol};
use flow_ebpf_common::{
    COUNTER_FLOWS_INSERTED, COUNTER_FLOWS_REMOVED, COUNTER_INSERT_FAILED, COUNTER_PAYLOAD_LOST,
    COUNTER_RING_FULL, COUNTERS_MAP, DNS_CLIENTS_MAP, EVENTS_MAP, FLAG_FIN_ORIG, FLAG_FIN_REPLY,
    FLOWS_MAP, POLICY_PREFIXES_MAP, RawFlowKey, RawFlowState, sockets_hold_counts,
};
use futures::StreamExt;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use flow_cgroup as cgroup;

use crate::attach::Attached;
use crate::checkpoint::Checkpoint;
use crate::decode::{Record, decode_record, directions, flow_key};
use crate::resolver;
use crate::workloads::Workloads;
use crate::{BACKEND_NAME, EbpfConfig};
use flow_enrich::{EnrichConfig, Enricher};
use flow_policy::{Policy, RuleId};

/// The flow table's key, as aya reads it.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct TableKey(RawFlowKey);

/// The flow table's value, as aya reads it.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct TableValue(RawFlowState);

// SAFETY: both wrap `#[repr(C)]` plain-old-data structs with explicit padding
// fields, valid for any bit pattern (aya::Pod's contract).
#[allow(unsafe_code)]
unsafe impl Pod for TableKey {}
#[allow(unsafe_code)]
unsafe impl Pod for TableValue {}

type Item = Result<FlowEvent, FlowError>;

/// How much the enricher remembers: as many open flows as the kernel's
/// table holds.
fn enrich_config(config: &EbpfConfig) -> EnrichConfig {
    let flows = std::num::NonZeroUsize::new(config.flow_table_entries as usize)
        .unwrap_or(std::num::NonZeroUsize::MIN);
    EnrichConfig::default()
        .flows(flows)
        .names(config.name_cache_entries)
}

/// Takes the map `name` out of the loaded object, typed.
fn take_map<T>(attached: &mut Attached, name: &str) -> Result<T, FlowError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = attached.ebpf.take_map(name).ok_or_else(|| {
        FlowError::unavailable(BACKEND_NAME, format!("the eBPF object has no map {name}"))
    })?;
    T::try_from(map)
        .map_err(|e| FlowError::unavailable(BACKEND_NAME, format!("eBPF map {name}: {e}")))
}

/// Builds the stream; it owns the programs, so dropping it detaches them.
/// With `resolver`, the scope's DNS goes through it. Notified on `finish`,
/// it reads the ring to its end, reports the losses counted by then, and
/// ends.
pub(crate) fn stream(
    mut attached: Attached,
    config: EbpfConfig,
    resolver: Option<resolver::Sockets>,
    finish: Arc<tokio::sync::Notify>,
) -> Result<FlowStream, FlowError> {
    let resolver = match (resolver, &config.policy) {
        (Some(sockets), Some(policy)) => Some(resolver::start(
            sockets,
            Arc::clone(policy),
            take_map(&mut attached, POLICY_PREFIXES_MAP)?,
            take_map(&mut attached, DNS_CLIENTS_MAP)?,
        )?),
        _ => None,
    };
    let ring: RingBuf<MapData> = take_map(&mut attached, EVENTS_MAP)?;
    let flows: HashMap<MapData, TableKey, TableValue> = take_map(&mut attached, FLOWS_MAP)?;
    let counters: PerCpuArray<MapData, u64> = take_map(&mut attached, COUNTERS_MAP)?;
    // SAFETY: the ring buffer owns its map file descriptor, which stays open
    // and unchanged until the RingBuf (inside the AsyncFd) is dropped.
    #[allow(unsafe_code)]
    let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| FlowError::io("watching the eBPF ring buffer", e.into()))?;
    let mut sweep = tokio::time::interval(config.sweep_interval);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let checkpoint = attached.checkpoint.take();
    let reader = Reader {
        ring,
        policy: config.policy.clone(),
        table: Some(Table {
            flows,
            timeouts: Timeouts::from(&config),
            checkpoint,
            cgroup: config.cgroup.clone(),
        }),
        walking: None,
        updates: config.active_timeout.map(|every| Updates {
            every,
            next: std::time::Instant::now() + every,
        }),
        updated: None,
        counters,
        sweep,
        catch_up: None,
        cgroup: config.cgroup.clone(),
        capacity: u64::from(config.flow_table_entries),
        reported: Counts::default(),
        user_removed: 0,
        pending: VecDeque::new(),
        enricher: Enricher::new(enrich_config(&config)),
        resolver,
        workloads: config
            .workloads
            .then(|| Workloads::new(crate::workloads::mount_of(&config.cgroup))),
        failed: false,
        cgroup_removed: false,
        finish,
        finished: false,
        next_walk: std::time::Instant::now(),
        last_live: 0,
        attached,
    };
    Ok(futures::stream::unfold(reader, |mut reader| async move {
        let item = reader.next_item().await?;
        Some((item, reader))
    })
    .boxed())
}

/// Decodes every record in the ring, in the kernel's order, through the
/// enricher into `pending`; undecodable ones are counted and reported as
/// a loss. A denial's rule is named by `policy`; flows and denials carry
/// their cgroup's workload when `workloads` is given. The answers the
/// `resolver` relayed come first: each was queued before the workload got
/// it, so before any record of a flow it names.
/// The next answer `resolver` relays (never, without one).
async fn next_relayed(resolver: &mut Option<resolver::Running>) -> Option<resolver::Relayed> {
    match resolver {
        Some(resolver) => resolver.relayed().await,
        None => std::future::pending().await,
    }
}

/// Reports the lookup of an answer the resolver relayed.
fn relayed_answer(
    enricher: &mut Enricher,
    relayed: resolver::Relayed,
    pending: &mut VecDeque<Item>,
) {
    let mut made = Vec::new();
    let answer = &relayed.answer;
    enricher.dns_answer(
        relayed.lookup,
        None,
        answer,
        answer.len(),
        relayed.at_ns,
        &mut made,
    );
    pending.extend(made);
}

/// Reads every record in the ring into `pending`; whether there was any.
fn drain(
    ring: &mut RingBuf<MapData>,
    enricher: &mut Enricher,
    policy: Option<&Policy>,
    mut workloads: Option<&mut Workloads>,
    resolver: Option<&mut resolver::Running>,
    pending: &mut VecDeque<Item>,
) -> bool {
    let mut made = Vec::new();
    let mut read = false;
    if let Some(resolver) = resolver {
        while let Some(relayed) = resolver.try_relayed() {
            relayed_answer(enricher, relayed, pending);
        }
    }
    while let Some(record) = ring.next() {
        read = true;
        match decode_record(&record) {
            Ok(Record::Opened(event, owner, cgroup_id)) => {
                let event = event.within(workloads.as_deref_mut().and_then(|w| w.of(cgroup_id)));
                pending.push_back(Ok(enricher.opened(event, owner)));
            }
            Ok(Record::Closed(event)) => pending.push_back(Ok(enricher.closed(event))),
            Ok(Record::Denied {
                flow,
                rule,
                timestamp_ns,
                owner,
                cgroup_id,
            }) => {
                let rule = match policy {
                    Some(policy) => policy.rule_text(RuleId::new(rule)),
                    None => flow_policy::DEFAULT_RULE.into(),
                };
                let event = FlowEvent::denied(flow, rule, true, timestamp_ns)
                    .within(workloads.as_deref_mut().and_then(|w| w.of(cgroup_id)));
                pending.push_back(Ok(enricher.denied(event, owner)));
            }
            Ok(Record::DnsAnswer {
                flow,
                tcp_seq,
                payload,
                original_len,
                timestamp_ns,
            }) => {
                enricher.dns_answer(
                    flow,
                    tcp_seq,
                    payload,
                    original_len,
                    timestamp_ns,
                    &mut made,
                );
                pending.extend(made.drain(..));
            }
            Ok(Record::FirstPayload { flow, payload }) => enricher.first_payload(flow, payload),
            Ok(Record::Exec(exec)) => enricher.executed(exec),
            Ok(Record::Fork(parent, child)) => enricher.forked(parent, child),
            Err(error) => {
                tracing::warn!(?error, "skipping an undecodable eBPF record");
                pending.push_back(Err(FlowError::lost(LossPoint::Malformed, Some(1))));
            }
        }
    }
    read
}

/// Idle limits, in nanoseconds.
struct Timeouts {
    datagram: u64,
    tcp: u64,
    fin_linger: u64,
}

impl From<&EbpfConfig> for Timeouts {
    fn from(config: &EbpfConfig) -> Self {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            datagram: ns(config.datagram_idle),
            tcp: ns(config.tcp_idle),
            fin_linger: ns(config.fin_linger),
        }
    }
}

/// Kernel counters, summed over CPUs, and what was already reported.
#[derive(Default, Clone, Copy)]
struct Counts {
    ring_full: u64,
    payload_lost: u64,
    insert_failed: u64,
    evicted: u64,
}

/// The flow table and what a walk of it needs: moved to a blocking thread
/// for the walk, and back.
struct Table {
    flows: HashMap<MapData, TableKey, TableValue>,
    timeouts: Timeouts,
    /// Moves the counting sockets' counts into the table before an update
    /// walk (loaded when an active timeout is set).
    checkpoint: Option<Checkpoint>,
    /// The scope: its processes' network namespaces are where the
    /// checkpoint walks.
    cgroup: PathBuf,
}

/// When the open flows are next reported with their counters so far.
struct Updates {
    every: Duration,
    next: std::time::Instant,
}

/// What an update walk reports: every live flow that opened at or before
/// `opened_by` (CLOCK_MONOTONIC ns), sent on `sender` as it is read, so
/// that a million of them are never held at once.
struct UpdateRequest {
    opened_by: u64,
    sender: tokio::sync::mpsc::Sender<FlowEvent>,
}

/// Updates the reader holds at once, on their way from a walk.
const UPDATES_IN_FLIGHT: usize = 1024;

/// What one walk of the table found and did.
struct Walked {
    table: Table,
    /// Flows left in the table.
    live: u64,
    /// The flows it removed, closed.
    closes: Vec<FlowEvent>,
    took: Duration,
}

impl Table {
    /// Closes the idle flows (all of them once the scope has ended); with
    /// `updates`, first moves the counting sockets' counts into the table,
    /// then reports the flows it asks for with their counters so far.
    fn walk(mut self, scope_ended: bool, updates: Option<UpdateRequest>) -> Walked {
        let started = std::time::Instant::now();
        if updates.is_some()
            && let Some(checkpoint) = &self.checkpoint
            && let Err(error) = checkpoint.run(&self.cgroup)
        {
            tracing::warn!(%error, "the checkpoint iterator failed: updates carry the counts of the flow table alone");
        }
        let now = monotonic_now_ns();
        let mut live = 0_u64;
        let mut expired = Vec::new();
        for entry in self.flows.iter() {
            let Ok((key, TableValue(state))) = entry else {
                continue;
            };
            live += 1;
            let idle = now.saturating_sub(state.last_seen_ns);
            let limit = if scope_ended {
                self.timeouts.fin_linger
            } else {
                self.idle_limit(&key.0, &state)
            };
            if idle >= limit {
                expired.push(key);
            } else if let Some(request) = &updates
                && state.first_seen_ns <= request.opened_by
            {
                let update = FlowEvent::update_by_direction(
                    flow_key(&key.0.oriented(state.flags)),
                    directions(&state.orig, &state.reply),
                    now,
                )
                .started(state.first_seen_ns);
                // The reader is gone: the stream is being dropped.
                if request.sender.blocking_send(update).is_err() {
                    break;
                }
            }
        }
        let mut closes = Vec::new();
        for key in expired {
            // Read, then remove: whoever removes the entry reports the close.
            let Ok(TableValue(state)) = self.flows.get(&key, 0) else {
                continue;
            };
            if self.flows.remove(&key).is_ok() {
                live = live.saturating_sub(1);
                let reason = if is_fin_exchange(&key.0, &state) {
                    CloseReason::Fin // its last ACK never came
                } else if scope_ended {
                    CloseReason::ScopeEnded
                } else {
                    CloseReason::Idle
                };
                closes.push(
                    FlowEvent::closed_by_direction(
                        flow_key(&key.0.oriented(state.flags)),
                        directions(&state.orig, &state.reply),
                        now,
                    )
                    .started(state.first_seen_ns)
                    .because(reason),
                );
            }
        }
        Walked {
            table: self,
            live,
            closes,
            took: started.elapsed(),
        }
    }

    fn idle_limit(&self, key: &RawFlowKey, state: &RawFlowState) -> u64 {
        match key.protocol {
            // Established, its socket counting: it closes with the socket.
            protocol::TCP if sockets_hold_counts(state.flags) => u64::MAX,
            protocol::TCP if is_fin_exchange(key, state) => self.timeouts.fin_linger,
            protocol::TCP => self.timeouts.tcp,
            _ => self.timeouts.datagram,
        }
    }
}

/// A TCP flow both of whose ends sent a FIN.
fn is_fin_exchange(key: &RawFlowKey, state: &RawFlowState) -> bool {
    let fins = FLAG_FIN_ORIG | FLAG_FIN_REPLY;
    key.protocol == protocol::TCP && state.flags & fins == fins
}

/// A walk in progress on a blocking thread.
struct Walk {
    handle: tokio::task::JoinHandle<Walked>,
    started: std::time::Instant,
    /// Flows the programs had inserted when it started.
    inserted_before: u64,
    /// The cgroup was removed before it started.
    after_removal: bool,
}

/// The next update a walk in progress sent, if any (else waits forever).
async fn next_update(
    updated: &mut Option<tokio::sync::mpsc::Receiver<FlowEvent>>,
) -> Option<FlowEvent> {
    match updated {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// How long after the last read that found records the ring is read again,
/// for the records the programs write without a wakeup (a close, a DNS
/// answer, a ClientHello: `ebpf/src/wakeup.rs`, which writes them so only
/// within 2 ms of a wakeup): the longest such a record waits when nothing
/// else wakes the reader.
const CATCH_UP: Duration = Duration::from_millis(5);

/// Waits for the catch-up read, if one is scheduled (else forever).
async fn catch_up_due(catch_up: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match catch_up {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Waits for the walk in progress, if any (else forever).
async fn walk_done(walking: &mut Option<Walk>) -> Result<Walked, tokio::task::JoinError> {
    match walking {
        Some(walk) => (&mut walk.handle).await,
        None => std::future::pending().await,
    }
}

struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// The enforced policy, which names the rules of denials.
    policy: Option<Arc<Policy>>,
    /// `None` while a walk has it.
    table: Option<Table>,
    walking: Option<Walk>,
    /// When to report the open flows' counters so far, with an active
    /// timeout.
    updates: Option<Updates>,
    /// The updates of the walk in progress, as it reads them.
    updated: Option<tokio::sync::mpsc::Receiver<FlowEvent>>,
    counters: PerCpuArray<MapData, u64>,
    sweep: tokio::time::Interval,
    /// A read of the ring [`CATCH_UP`] after the last one that found
    /// records, for the records the programs write without waking the
    /// reader.
    catch_up: Option<Pin<Box<tokio::time::Sleep>>>,
    cgroup: PathBuf,
    capacity: u64,
    reported: Counts,
    /// Flows this reader removed from the table (idle or scope ended).
    user_removed: u64,
    pending: VecDeque<Item>,
    /// Names and attributes the flows as their records come.
    enricher: Enricher,
    /// The cgroups' workloads, when flows carry them.
    workloads: Option<Workloads>,
    /// The resolver the scope's DNS goes through (name rules enforced).
    resolver: Option<resolver::Running>,
    /// A fatal error was queued: the stream ends after `pending`.
    failed: bool,
    /// The cgroup was removed: each sweep walks the table as for an ended
    /// scope (its sockets' last packets may still pass: they hold the
    /// cgroup), and the stream ends once a walk finds it empty.
    cgroup_removed: bool,
    /// Notified when the stream is to finish: the losses counted by then
    /// are reported, and it ends once the ring is read to its end.
    finish: Arc<tokio::sync::Notify>,
    /// A walk since the removal found the table empty, or the stream
    /// finishes: it ends once the ring and `pending` are empty.
    finished: bool,
    /// When the table may be walked next (see [`Reader::sweep`]).
    next_walk: std::time::Instant,
    /// Flows in the table at the last walk.
    last_live: u64,
    /// Declared last: dropped after the maps, it detaches the programs.
    attached: Attached,
}

impl Reader {
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(match (item, &self.resolver) {
                    // A flow to the resolver is reported as to the server
                    // the client asked.
                    (Ok(mut event), Some(resolver)) => {
                        event.key = resolver.as_the_client_made_it(event.key);
                        Ok(event)
                    }
                    (item, _) => item,
                });
            }
            if self.failed {
                return None;
            }
            // Records already in the ring are read without waiting for the
            // reactor, so a shutdown drain sees everything the kernel wrote.
            self.drain_ring();
            if !self.pending.is_empty() {
                continue;
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                guard = self.ring.readable_mut() => match guard {
                    Ok(mut guard) => {
                        let read = drain(
                            guard.get_inner_mut(),
                            &mut self.enricher,
                            self.policy.as_deref(),
                            self.workloads.as_mut(),
                            self.resolver.as_mut(),
                            &mut self.pending,
                        );
                        guard.clear_ready();
                        self.catch_up_after(read);
                    }
                    Err(e) => return Some(Err(FlowError::io("reading the eBPF ring buffer", e))),
                },
                _ = self.sweep.tick() => self.sweep(),
                () = catch_up_due(&mut self.catch_up) => self.catch_up = None,
                Some(update) = next_update(&mut self.updated) => {
                    self.pending.push_back(Ok(self.enricher.update(update)));
                }
                walked = walk_done(&mut self.walking) => self.walk_done(walked),
                Some(relayed) = next_relayed(&mut self.resolver) => {
                    relayed_answer(&mut self.enricher, relayed, &mut self.pending);
                }
                () = self.finish.notified() => {
                    self.last_walk_near_capacity().await;
                    self.report_losses(None);
                    self.finished = true;
                }
            }
        }
    }

    fn drain_ring(&mut self) {
        let read = drain(
            self.ring.get_mut(),
            &mut self.enricher,
            self.policy.as_deref(),
            self.workloads.as_mut(),
            self.resolver.as_mut(),
            &mut self.pending,
        );
        self.catch_up_after(read);
    }

    /// After a read that found records, (re)schedules the catch-up read
    /// [`CATCH_UP`] later: a busy ring pushes it back, an idle one costs it
    /// once.
    fn catch_up_after(&mut self, read: bool) {
        if !read {
            return;
        }
        let due = tokio::time::Instant::now() + CATCH_UP;
        match &mut self.catch_up {
            Some(sleep) => sleep.as_mut().reset(due),
            None => self.catch_up = Some(Box::pin(tokio::time::sleep_until(due))),
        }
    }

    /// Reports new losses, starts a walk of the table for idle flows (on a
    /// schedule that keeps walking under a tenth of the time); fails the
    /// stream when a program was detached from outside, and ends it, after
    /// closing every flow, when the cgroup was removed.
    fn sweep(&mut self) {
        // A removed cgroup takes its links with it: that is the scope's
        // end, not a detach from outside.
        if !self.cgroup_removed && !self.cgroup.exists() {
            tracing::warn!(
                cgroup = %self.cgroup.display(),
                "the cgroup was removed: its flows are closed and the eBPF backend ends"
            );
            self.cgroup_removed = true;
        }
        if !self.cgroup_removed
            && let Some(program) = self.attached.detached_program()
        {
            self.pending.push_back(Err(FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "its program {program} was detached from cgroup {} from outside: \
                     the cgroup's traffic is no longer observed",
                    self.cgroup.display()
                ),
            )));
            self.failed = true;
            return;
        }
        self.report_losses(None);
        let scope_ended = self.cgroup_removed || cgroup::is_populated(&self.cgroup) == Some(false);
        let now = std::time::Instant::now();
        let update_due = !scope_ended
            && self
                .updates
                .as_ref()
                .is_some_and(|updates| now >= updates.next);
        let due = now >= self.next_walk
            || (scope_ended && self.last_live > 0)
            || self.cgroup_removed
            || update_due;
        // Walking the table costs a system call per flow: with a million
        // flows, seconds. It runs on a blocking thread, so that the ring
        // keeps being read meanwhile.
        if due && let Some(table) = self.table.take() {
            let inserted_before = self.counter(COUNTER_FLOWS_INSERTED);
            let updates = match &mut self.updates {
                Some(updates) if update_due => {
                    updates.next = now + updates.every;
                    let (sender, receiver) = tokio::sync::mpsc::channel(UPDATES_IN_FLIGHT);
                    self.updated = Some(receiver);
                    let every = u64::try_from(updates.every.as_nanos()).unwrap_or(u64::MAX);
                    Some(UpdateRequest {
                        opened_by: monotonic_now_ns().saturating_sub(every),
                        sender,
                    })
                }
                _ => None,
            };
            self.start_walk(table, inserted_before, scope_ended, updates);
        }
    }

    /// Walks `table` on a blocking thread (see [`Reader::walk_done`]);
    /// `inserted_before` is the flows inserted until now.
    fn start_walk(
        &mut self,
        table: Table,
        inserted_before: u64,
        scope_ended: bool,
        updates: Option<UpdateRequest>,
    ) {
        self.walking = Some(Walk {
            handle: tokio::task::spawn_blocking(move || table.walk(scope_ended, updates)),
            started: std::time::Instant::now(),
            inserted_before,
            after_removal: self.cgroup_removed,
        });
    }

    /// At a finish: the flows a full table evicted since the last walk are
    /// found by a walk only, so one more is taken (after the one under
    /// way) when the table is near capacity; else they would be reported
    /// neither closed nor lost.
    async fn last_walk_near_capacity(&mut self) {
        if self.walking.is_some() {
            let walked = walk_done(&mut self.walking).await;
            self.walk_done(walked);
        }
        let inserted_before = self.counter(COUNTER_FLOWS_INSERTED);
        if self.outstanding_near_capacity(inserted_before).is_none() {
            return;
        }
        let Some(table) = self.table.take() else {
            return;
        };
        self.start_walk(table, inserted_before, false, None);
        let walked = walk_done(&mut self.walking).await;
        self.walk_done(walked);
    }

    /// Takes a finished walk's results: the table back, its closes, and
    /// when to walk next.
    fn walk_done(&mut self, walked: Result<Walked, tokio::task::JoinError>) {
        let Some(walk) = self.walking.take() else {
            return;
        };
        let walked = match walked {
            Ok(walked) => walked,
            Err(error) => {
                self.pending.push_back(Err(FlowError::unavailable(
                    BACKEND_NAME,
                    format!("walking the flow table failed: {error}"),
                )));
                self.failed = true;
                return;
            }
        };
        self.next_walk = walk.started + self.sweep.period().max(walked.took * 10);
        self.last_live = walked.live;
        self.user_removed += walked.closes.len() as u64;
        // The walk's last updates, before its closes.
        if let Some(mut updated) = self.updated.take() {
            while let Ok(update) = updated.try_recv() {
                self.pending.push_back(Ok(self.enricher.update(update)));
            }
        }
        let enricher = &mut self.enricher;
        self.pending.extend(
            walked
                .closes
                .into_iter()
                .map(|closed| Ok(enricher.closed(closed))),
        );
        self.table = Some(walked.table);
        let evicted = self.evicted(walk.inserted_before, walked.live);
        self.report_losses(Some(evicted));
        self.finished = walk.after_removal && walked.live == 0;
    }

    fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Flows the LRU table evicted (it does so silently when full): of the
    /// flows inserted before a walk, those neither removed by its end nor
    /// in the table when it looked. Counted this way, flows inserted or
    /// removed while the table was walked make it a lower bound, exact once
    /// the table is quiet. Only near capacity can a flow be evicted, which
    /// keeps a race from looking like loss elsewhere.
    fn evicted(&self, inserted_before: u64, live: u64) -> u64 {
        self.outstanding_near_capacity(inserted_before)
            .map_or(0, |outstanding| outstanding.saturating_sub(live))
    }

    /// The flows inserted before a walk and not removed since, when they
    /// come within 4,096 of the table's capacity (else `None`: none can
    /// have been evicted).
    fn outstanding_near_capacity(&self, inserted_before: u64) -> Option<u64> {
        let removed = self.counter(COUNTER_FLOWS_REMOVED) + self.user_removed;
        let outstanding = inserted_before.saturating_sub(removed);
        (outstanding + 4_096 >= self.capacity).then_some(outstanding)
    }

    /// Turns counter increases into loss items, one per loss point;
    /// `evicted` is a new count from a walk ([`Reader::evicted`]).
    fn report_losses(&mut self, evicted: Option<u64>) {
        let ring_full = self.counter(COUNTER_RING_FULL);
        let payload_lost = self.counter(COUNTER_PAYLOAD_LOST);
        let insert_failed = self.counter(COUNTER_INSERT_FAILED);
        let evicted = evicted.unwrap_or(0).max(self.reported.evicted);
        for (point, now, before) in [
            (
                LossPoint::RingBufferFull,
                ring_full,
                self.reported.ring_full,
            ),
            (
                LossPoint::PayloadLost,
                payload_lost,
                self.reported.payload_lost,
            ),
            (
                LossPoint::FlowTableEviction,
                insert_failed + evicted,
                self.reported.insert_failed + self.reported.evicted,
            ),
        ] {
            if now > before {
                self.pending
                    .push_back(Err(FlowError::lost(point, Some(now - before))));
            }
        }
        self.reported.ring_full = ring_full;
        self.reported.payload_lost = payload_lost;
        self.reported.insert_failed = insert_failed;
        self.reported.evicted = evicted;
    }
}
