//! The listener: a thread of its own enters the scope's network
//! namespace (never a shared tokio worker), installs the rules and
//! settings, and opens the sockets ([`Session::open`]); the session's
//! sockets are then read by the stream, on the task that polls it, so that
//! one thread wakes per batch of messages, not two (the sockets belong to
//! the namespace they were opened in, whichever thread reads them). When
//! the stream ends or is dropped, the session goes back to its thread,
//! which drops it there: it removes its table and restores the
//! namespace's settings, and the thread leaves; a drop never blocks an
//! async runtime. A [`Finisher`] asks the stream to end after a last read
//! of the sockets, what they hold included.
//!
//! Order: the kernel queues the log of a DNS answer (or of a new flow's
//! first packet) before the answer reaches its socket, so before the NEW
//! event of any connection that used it; but on another socket. So the
//! reader receives a conntrack datagram, then reads every log message
//! queued by then, then handles the datagram's events: the answers and
//! owners an event depends on are known when it is handled. (Reading the
//! log first and then the events until none are left would race: an event
//! queued during that read could depend on a message logged after it.)

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flow_core::{CloseReason, FlowError, FlowEvent, FlowKey, LossPoint};
use flow_policy::Policy;
use futures::FutureExt;
use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, oneshot};

use crate::annotate::Annotator;
use crate::conntrack::{self, CtEntry};
use crate::mark_filter;
use crate::netlink::{Answered, Reply, Socket};
use crate::nflog::{self, DENY_PREFIX};
use crate::procs::Members;
use crate::rules::enforce::{self, POLICY_PREFIX};
use crate::rules::{self, MARK_BIT, RuleScope, Table};
use crate::sysctl::ConntrackSettings;
use crate::tracker::{Clock, FlowId, Step, Tracker};
use crate::{BACKEND_NAME, NflogConfig};

/// What the stream yields.
pub(crate) type Item = Result<FlowEvent, FlowError>;

/// How often the reader checks its table and its scope.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Datagrams of conntrack events a round reads at the most: rounds run on
/// the task that polls the stream, and a long queue (after a stall) read
/// whole would hold up the other sources and the output meanwhile.
const EVENTS_PER_ROUND: usize = 256;

/// Rounds of events (each up to [`EVENTS_PER_ROUND`] datagrams) read when
/// the scope ends, before its open flows are closed from a dump.
const ROUNDS_BEFORE_CLOSING: usize = 16;

/// Whether a round read the conntrack event socket to its end.
enum Drained {
    Yes,
    /// More may be queued: the next round reads on without waiting.
    No,
}

/// Asks the reader to finish: to read what its sockets hold (with the
/// losses that shows), yield it, and end the stream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Finisher {
    asked: Arc<Notify>,
}

impl Finisher {
    /// Asks; the reader finishes the round it is in first.
    pub(crate) fn finish(&self) {
        // A permit is kept when the reader is not waiting now.
        self.asked.notify_one();
    }
}

/// A socket's descriptor, registered with the runtime while the session
/// that owns the socket is read (see [`Reader::go_home`]).
struct Registered(RawFd);

impl AsRawFd for Registered {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The thread that opened a session, in the scope's namespace, waiting to
/// take it back and drop it there.
struct Home {
    sessions: std::sync::mpsc::Sender<Session>,
    /// Fired once the session is dropped (its table removed, its settings
    /// restored).
    undone: Option<oneshot::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Home {
    /// Sends `session` back to the thread, which drops it in the scope's
    /// namespace (the settings it restores are that namespace's) and
    /// leaves; the thread is joined off the runtime.
    fn take_back(&mut self, session: Session) {
        if let Err(std::sync::mpsc::SendError(session)) = self.sessions.send(session) {
            // The thread is gone (it cannot be, short of a panic). Dropped
            // here, the session would restore the settings in this thread's
            // namespace, not the scope's: it is left as it is, its table
            // and settings undone when the process ends (the table is its
            // socket's; the next start or `flowtrack cleanup` restores the
            // settings from their record).
            tracing::warn!("the nflog listener thread is gone: its clean-up waits for the exit");
            std::mem::forget(session);
        }
        if let Some(thread) = self.thread.take() {
            join_off_runtime(thread);
        }
    }
}

/// A session being read: its event and log sockets' readiness (dropped
/// before the session goes home, where the sockets close), and the session.
struct Reading {
    events: AsyncFd<Registered>,
    log: AsyncFd<Registered>,
    session: Session,
}

/// Reads a session's sockets: the flow stream's state.
pub(crate) struct Reader {
    /// Until the stream ends (then the session is home).
    reading: Option<Reading>,
    home: Home,
    finisher: Finisher,
    next_check: Instant,
    pending: VecDeque<Item>,
    /// The last round left messages queued: the next reads on at once.
    unread: bool,
    /// Nothing more is read: the stream ends once `pending` is yielded.
    ended: bool,
}

impl Reader {
    /// What asks the reader to finish.
    pub(crate) fn finisher(&self) -> Finisher {
        self.finisher.clone()
    }

    /// The next items, at least one, all that were read with it; `None`
    /// as [`Reader::next_item`].
    pub(crate) async fn next_batch(&mut self) -> Option<Vec<Item>> {
        let first = self.next_item().await?;
        let mut batch = Vec::with_capacity(1 + self.pending.len());
        batch.push(first);
        batch.extend(self.pending.drain(..));
        Some(batch)
    }

    /// The next item; `None` once the stream ended (the scope gone, a
    /// fatal error, or a finish), after the session was undone at home.
    pub(crate) async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.ended {
                self.go_home();
                if let Some(undone) = self.home.undone.take() {
                    // The table is gone and the settings restored before
                    // the stream ends.
                    let _ = undone.await;
                }
                return None;
            }
            self.read_round().await;
        }
    }

    /// Waits for messages, a finish, or the time to check (whichever is
    /// first), then reads what the sockets hold into `pending`.
    async fn read_round(&mut self) {
        let Some(Reading {
            events,
            log,
            session,
        }) = &mut self.reading
        else {
            self.ended = true;
            return;
        };
        let deadline = match session.updates {
            Some((_, next_update)) => self.next_check.min(next_update),
            None => self.next_check,
        };
        let finishing = if self.unread {
            // Other tasks first, then on with the queue.
            tokio::task::yield_now().await;
            self.finisher.asked.notified().now_or_never().is_some()
        } else {
            tokio::select! {
                biased;
                () = self.finisher.asked.notified() => true,
                _ = events.readable() => false,
                _ = log.readable() => false,
                () = tokio::time::sleep_until(deadline.into()) => false,
            }
        };
        // The sockets are read below until they say there is nothing more
        // (or the next round reads on): a message that comes after that is
        // signalled anew.
        for socket in [events, log] {
            if let Some(Ok(mut ready)) = socket.readable().now_or_never() {
                ready.clear_ready();
            }
        }
        let mut batch = Vec::new();
        let round = if finishing {
            session
                .read_all_events(&mut batch)
                .map(|()| ScopeState::Gone)
        } else {
            session.read_events(&mut batch).and_then(|drained| {
                self.unread = matches!(drained, Drained::No);
                if Instant::now() >= self.next_check {
                    self.next_check = Instant::now() + CHECK_EVERY;
                    session.check_scope(&mut batch)
                } else {
                    session
                        .report_updates(&mut batch)
                        .map(|()| ScopeState::Live)
                }
            })
        };
        match round {
            Ok(ScopeState::Live) => {}
            Ok(ScopeState::Gone) => self.ended = true,
            Err(error) => {
                batch.push(Err(error));
                self.ended = true;
            }
        }
        self.pending.extend(batch);
    }

    /// Sends the session home (see [`Home::take_back`]), after its sockets
    /// are no longer watched.
    fn go_home(&mut self) {
        if let Some(Reading {
            events,
            log,
            session,
        }) = self.reading.take()
        {
            drop((events, log));
            self.home.take_back(session);
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.go_home();
    }
}

/// Joins `thread` on exit: on its own in this thread when it is no async
/// worker, else on the runtime's blocking pool (whose shutdown waits for
/// it), so that no worker waits for the thread's clean-up.
pub(crate) fn join_off_runtime(thread: JoinHandle<()>) {
    /// Joins on drop: when the runtime refuses the blocking task (it is
    /// shutting down) the task is dropped unrun, and the join happens there.
    struct JoinOnDrop(Option<JoinHandle<()>>);
    impl Drop for JoinOnDrop {
        fn drop(&mut self) {
            if let Some(thread) = self.0.take() {
                let name = thread.thread().name().unwrap_or("unnamed").to_owned();
                if thread.join().is_err() {
                    tracing::warn!(thread = %name, "a thread of the nflog backend panicked");
                }
            }
        }
    }
    let join = JoinOnDrop(Some(thread));
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(join))),
        Err(_) => drop(join),
    }
}

/// Opens a session on a thread of its own (in the scope's namespace);
/// returns its reader once the rules are installed (or why they could not
/// be).
pub(crate) async fn spawn(config: NflogConfig) -> Result<Reader, FlowError> {
    let (opened_tx, opened_rx) = oneshot::channel();
    let (sessions, returned) = std::sync::mpsc::channel::<Session>();
    let (undone_tx, undone) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("flowtrack-nflog".into())
        .spawn(move || match Session::open(&config) {
            Ok(session) => {
                if let Err(Ok(session)) = opened_tx.send(Ok(session)) {
                    // The start was abandoned: undone here, in the namespace.
                    drop(session);
                    return;
                }
                if let Ok(session) = returned.recv() {
                    drop(session);
                }
                let _ = undone_tx.send(());
            }
            Err(error) => {
                let _ = opened_tx.send(Err(error));
            }
        })
        .map_err(|e| FlowError::io("starting the nflog listener thread", e))?;
    let opened = opened_rx.await.unwrap_or_else(|_| {
        Err(FlowError::unavailable(
            BACKEND_NAME,
            "the listener thread ended before it was ready",
        ))
    });
    let session = match opened {
        Ok(session) => session,
        Err(error) => {
            join_off_runtime(thread);
            return Err(error);
        }
    };
    let mut home = Home {
        sessions,
        undone: Some(undone),
        thread: Some(thread),
    };
    let watch = |socket: &Socket| {
        let fd = Registered(socket.fd().as_raw_fd());
        // SAFETY: the session owns the socket, which stays open until the
        // session goes home, after the AsyncFd is dropped (`go_home`).
        #[allow(unsafe_code)]
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| FlowError::io("watching the netlink sockets", e.into()))
    };
    let watched = watch(&session.events).and_then(|events| Ok((events, watch(&session.log)?)));
    let (events, log) = match watched {
        Ok(sockets) => sockets,
        Err(error) => {
            home.take_back(session);
            return Err(error);
        }
    };
    Ok(Reader {
        reading: Some(Reading {
            events,
            log,
            session,
        }),
        home,
        finisher: Finisher::default(),
        next_check: Instant::now() + CHECK_EVERY,
        pending: VecDeque::new(),
        unread: false,
        ended: false,
    })
}

fn permission(action: &str, needs: &str) -> FlowError {
    FlowError::PermissionDenied {
        action: action.into(),
        needs: needs.into(),
    }
}

/// Maps a setup error: EPERM/EACCES name the capability.
fn setup_error(action: &str, needs: &str, error: io::Error) -> FlowError {
    match error.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => permission(action, needs),
        _ => FlowError::io(action, error),
    }
}

/// The scope a session observes, to tell when it is gone.
enum Watched {
    /// A cgroup directory and its id (the directory's inode).
    Cgroup(PathBuf, u64),
    /// The nsfs file the session entered, and the namespace it named.
    Netns(PathBuf, NsId),
}

impl Watched {
    /// Why the scope is gone, if it is: a removed cgroup, or a namespace
    /// whose name was deleted (`ip netns delete`, or the process of a
    /// `/proc/PID/ns/net` path ended). The same path naming another
    /// cgroup or namespace counts as gone.
    fn gone(&self) -> Option<String> {
        match self {
            Self::Cgroup(path, id) => (std::fs::metadata(path).map(|m| m.ino()).ok() != Some(*id))
                .then(|| format!("the cgroup {} was removed", path.display())),
            Self::Netns(path, id) => (NsId::of(path).ok().as_ref() != Some(id))
                .then(|| format!("the network namespace {} was deleted", path.display())),
        }
    }
}

/// What the periodic check found.
enum ScopeState {
    /// The scope is there: go on.
    Live,
    /// The scope is gone: its flows are closed, the stream ends.
    Gone,
}

/// What a listener owns: its sockets, rules, settings and flows. Dropped
/// on the thread that opened it (in the scope's namespace): the drop
/// removes the table, then restores the settings.
struct Session {
    events: Socket,
    requests: Socket,
    log: Socket,
    nft: Socket,
    table: Table,
    tracker: Tracker,
    cgroup: Option<PathBuf>,
    watched: Vec<Watched>,
    receive_buffer: usize,
    max_receive_buffer: usize,
    resync_pending: bool,
    pending_fetches: Vec<(FlowId, Option<CloseReason>)>,
    /// With an active timeout: how often, and when next, the open flows
    /// are reported with their counters so far.
    updates: Option<(Duration, Instant)>,
    log_sequence: nflog::Sequence,
    denied: HashMap<FlowKey, Instant>,
    /// In enforce mode: the policy, to name the rule of each refusal.
    policy: Option<Arc<Policy>>,
    annotator: Annotator,
    // Dropped last: restores the settings after the table is gone.
    _settings: ConntrackSettings,
}

impl Session {
    fn open(config: &NflogConfig) -> Result<Self, FlowError> {
        if let Some(why) = config.policy.as_deref().and_then(Policy::enforce_refusal) {
            return Err(FlowError::unavailable(BACKEND_NAME, why));
        }
        let mut watched = Vec::new();
        if let Some(netns) = &config.netns {
            watched.push(Watched::Netns(netns.clone(), enter_netns(netns)?));
        }
        let scope = match &config.cgroup {
            Some(cgroup) => cgroup_scope(cgroup)?,
            None => RuleScope::Netns,
        };
        let members = match &config.cgroup {
            Some(cgroup) => Members::Cgroup(cgroup.clone()),
            None => Members::this_netns()
                .map_err(|e| FlowError::io("reading the network namespace's identity", e))?,
        };
        if let (Some(cgroup), RuleScope::Cgroup { id, .. }) = (&config.cgroup, scope) {
            watched.push(Watched::Cgroup(cgroup.clone(), id));
        }
        let needs = "CAP_NET_ADMIN";
        let events = Socket::open(&conntrack::EVENT_GROUPS)
            .map_err(|e| setup_error("subscribing to conntrack events", needs, e))?;
        let granted = events
            .force_receive_buffer(config.receive_buffer)
            .map_err(|e| setup_error("sizing the conntrack event buffer", needs, e))?;
        tracing::info!(
            requested = config.receive_buffer,
            granted,
            "conntrack event buffer"
        );
        let requests = Socket::open(&[])
            .map_err(|e| setup_error("opening a conntrack request socket", needs, e))?;
        requests
            .set_receive_timeout(Duration::from_secs(5))
            .map_err(|e| FlowError::io("setting a netlink timeout", e))?;
        let settings = ConntrackSettings::enable()
            .map_err(|e| setup_error("enabling conntrack accounting and timestamps", needs, e))?;
        let (log, log_group) = bind_log_group(config.log_group)?;
        log.force_receive_buffer(config.receive_buffer)
            .map_err(|e| setup_error("sizing the nflog buffer", needs, e))?;
        let mut nft =
            Socket::open(&[]).map_err(|e| setup_error("opening an nf_tables socket", needs, e))?;
        nft.set_receive_timeout(Duration::from_secs(5))
            .map_err(|e| FlowError::io("setting a netlink timeout", e))?;
        let _ = remove_leftover_tables(&mut nft);
        let mut create = |inner_payload: bool, labels: bool| {
            let make = |mark| {
                let mut table = Table::new(mark, scope, log_group);
                if !inner_payload {
                    table = table.without_inner_payload();
                }
                if !labels {
                    table = table.without_labels();
                }
                if !config.names {
                    table = table.without_names();
                }
                table
            };
            rules::create_with_free_mark(mark_candidates(), make, |table| {
                let seq = nft.next_seq();
                let (batch, last) = rules::create_batch(table, seq, config.owned_table);
                nft.transact(&batch, last).map(drop)
            })
        };
        // A kernel before 6.2 cannot read a transport payload in a rule,
        // and one without CONFIG_NF_CONNTRACK_LABELS cannot set a label:
        // each refuses the table with EOPNOTSUPP, and the table is made
        // again without what it lacks.
        let mut made = Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        for (inner_payload, labels) in [(true, true), (true, false), (false, true), (false, false)]
        {
            if labels && !config.labels {
                continue;
            }
            made = create(inner_payload, labels);
            if !matches!(&made, Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP)) {
                break;
            }
        }
        if let Ok(table) = &made {
            if !table.inner_payload {
                tracing::warn!(
                    "the kernel's nf_tables cannot match payload bytes (Linux 6.2 and later \
                     can): flows are not named after the ClientHello's server name (SNI)"
                );
            }
            if !table.labels {
                tracing::debug!(
                    "the kernel has no conntrack labels: TCP state changes are read from each \
                     connection's first FIN on"
                );
            }
        }
        let table = made.map_err(|e| match e.raw_os_error() {
            Some(libc::EOPNOTSUPP | libc::ENOENT) => FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "the kernel refused flowtrack's nf_tables rules ({e}): it lacks nf_tables, \
                     its ct, socket or log expressions (modules nft_ct, nft_socket, nft_log)"
                ),
            ),
            _ => setup_error("installing the nf_tables rules", needs, e),
        })?;
        if let Some(policy) = &config.policy
            && let Err(error) = install_policy(&mut nft, &table, policy, config.fail_enforcement)
        {
            remove_table(&mut nft, &table.name);
            return Err(error);
        }
        tracing::debug!(table = %table.name, mark = table.mark, group = table.log_group, "rules installed");
        if let Err(error) = mark_filter::attach(events.fd(), table.mark) {
            // The reader passes over other connections' events itself.
            tracing::warn!(%error, "no kernel filter on conntrack events: other connections' are read and passed over");
        }
        Ok(Self {
            events,
            requests,
            log,
            nft,
            tracker: Tracker::new(table.mark),
            table,
            cgroup: config.cgroup.clone(),
            watched,
            receive_buffer: granted,
            max_receive_buffer: config.max_receive_buffer,
            resync_pending: false,
            pending_fetches: Vec::new(),
            updates: config
                .active_timeout
                .map(|every| (every, Instant::now() + every)),
            log_sequence: nflog::Sequence::default(),
            denied: HashMap::new(),
            policy: config.policy.clone(),
            // After entering the namespace: its sock_diag socket is there.
            annotator: Annotator::new(
                config.processes.then_some(members),
                config.name_cache_entries,
            ),
            _settings: settings,
        })
    }

    /// Reads the conntrack event socket, up to [`EVENTS_PER_ROUND`]
    /// datagrams, and the nflog socket before each datagram's events that
    /// may need it (see the module's documentation) and at the end. Only
    /// an update of a flow already open needs nothing logged: a TCP state
    /// change (a connection closes after the final read of the log, with
    /// its counters), the most frequent event; for it the log is not read,
    /// a system call that would find it empty. Whether the event socket
    /// was read to its end.
    fn read_events(&mut self, batch: &mut Vec<Item>) -> Result<Drained, FlowError> {
        for _ in 0..EVENTS_PER_ROUND {
            // Decoded in the socket's buffer: the entries are owned, no copy.
            let (entries, malformed) = match self.events.recv(true) {
                Ok(datagram) => conntrack::decode_datagram(datagram),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_log(batch)?;
                    self.fetch_pending(batch)?;
                    if self.resync_pending {
                        self.resync_pending = false;
                        self.resync(batch)?;
                    }
                    return Ok(Drained::Yes);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overrun(batch);
                    continue;
                }
                Err(e) => return Err(FlowError::io("reading conntrack events", e)),
            };
            if entries
                .iter()
                .any(|entry| !self.tracker.is_open_update(entry))
            {
                self.read_log(batch)?;
            }
            let clock = Clock::now();
            push_malformed(batch, malformed);
            let mut steps = Vec::new();
            for entry in &entries {
                self.tracker.on_message(entry, clock, &mut steps);
            }
            self.apply(steps, batch);
        }
        // The closes read so far are not held back for the rest.
        self.fetch_pending(batch)?;
        Ok(Drained::No)
    }

    /// Reads the sockets to their end: the last read of a finish.
    fn read_all_events(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        while let Drained::No = self.read_events(batch)? {}
        Ok(())
    }

    /// When the active timeout's round is due: every flow open that long,
    /// with its counters so far, from a listing of the scope's entries
    /// (read as it arrives: a million entries are never held at once).
    fn report_updates(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        let Some((every, next)) = self.updates else {
            return Ok(());
        };
        let now = Instant::now();
        if now < next {
            return Ok(());
        }
        self.updates = Some((every, now + every));
        let now_ns = Clock::now().now_ns;
        let opened_by = now_ns.saturating_sub(u64::try_from(every.as_nanos()).unwrap_or(u64::MAX));
        let seq = self.requests.next_seq();
        let request = conntrack::dump_marked_request(self.tracker.mark(), seq);
        let (tracker, annotator) = (&self.tracker, &mut self.annotator);
        self.requests
            .dump_each(&request, seq, |kind, flags, payload| {
                if let Ok(entry) = conntrack::decode(kind, flags, payload)
                    && let Some(update) = tracker.update(&entry, now_ns, opened_by)
                {
                    batch.push(Ok(annotator.event(update)));
                }
            })
            .map_err(|e| FlowError::io("listing conntrack's entries for updates", e))
    }

    /// Emits events; queues closed TCP flows for their counters (fetched
    /// together once the event queue is drained).
    fn apply(&mut self, steps: Vec<Step>, batch: &mut Vec<Item>) {
        for step in steps {
            match step {
                Step::Emit(event) => self.emit(event, batch),
                Step::FetchCounters(flow, reason) => self.pending_fetches.push((flow, reason)),
            }
        }
    }

    /// Emits `event`, named and attributed. Behind an overrun (until the
    /// drained queue's resync) events are marked resynced: their messages
    /// waited in the backlog, so their times are when they were read, not
    /// when the flow opened or closed (after a stall, seconds later), and a
    /// correlated backend's view of the flow cannot be found by its time.
    fn emit(&mut self, mut event: FlowEvent, batch: &mut Vec<Item>) {
        event.resynced |= self.resync_pending;
        batch.push(Ok(self.annotator.event(event)));
    }

    /// Reads the counters of the TCP flows that closed, a batch of requests
    /// per round trip, and reports them closed. An entry already gone
    /// (its DESTROY, also queued, reports it) is passed over.
    fn fetch_pending(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        /// Requests per datagram: their replies (about 300 bytes each) fit
        /// the request socket's buffer with room to spare.
        const PER_ROUND_TRIP: usize = 64;
        let pending = std::mem::take(&mut self.pending_fetches);
        for chunk in pending.chunks(PER_ROUND_TRIP) {
            let first = self.requests.next_seq();
            let mut bytes = Vec::new();
            conntrack::append_get_request(&mut bytes, &chunk[0].0.key, first);
            let mut last = first;
            for (flow, _) in &chunk[1..] {
                last = self.requests.next_seq();
                conntrack::append_get_request(&mut bytes, &flow.key, last);
            }
            let answers = self
                .requests
                .transact_batch(&bytes, first, last, Answered::ByOneMessage)
                .map_err(|e| FlowError::io("reading conntrack entries", e))?;
            let now_ns = Clock::now().now_ns;
            for (seq, (flow, reason)) in (first..=last).zip(chunk) {
                let fetched = match answers.get(&seq) {
                    Some(Ok(replies)) => entries(replies).into_iter().next(),
                    _ => None,
                };
                // No event when not over yet (its change to TIME_WAIT is to
                // come) or gone (its DESTROY closes it).
                if let Some(event) =
                    self.tracker
                        .close_fetched(*flow, *reason, fetched.as_ref(), now_ns)
                {
                    self.emit(event, batch);
                }
            }
        }
        Ok(())
    }

    /// The whole conntrack table.
    fn dump(&mut self) -> Result<Vec<CtEntry>, FlowError> {
        let seq = self.requests.next_seq();
        self.requests
            .transact(&conntrack::dump_request(seq), seq)
            .map(|replies| entries(&replies))
            .map_err(|e| FlowError::io("dumping the conntrack table", e))
    }

    /// The event queue overflowed: report it, grow the buffer, and resync
    /// once the queue is drained. The kernel reports one overrun until the
    /// queue has been emptied, so a dump taken before that could miss
    /// flows whose events were dropped in between; a dump taken after it
    /// cannot (a later drop raises a new `ENOBUFS`).
    fn overrun(&mut self, batch: &mut Vec<Item>) {
        batch.push(Err(FlowError::lost(LossPoint::NetlinkOverrun, None)));
        self.resync_pending = true;
        if self.receive_buffer < self.max_receive_buffer {
            let wanted = (self.receive_buffer * 2).min(self.max_receive_buffer);
            match self.events.force_receive_buffer(wanted) {
                Ok(granted) => {
                    tracing::warn!(granted, "conntrack events overran; buffer grown");
                    self.receive_buffer = granted;
                }
                Err(error) => tracing::warn!(%error, "could not grow the conntrack event buffer"),
            }
        }
    }

    /// Reconciles the tracker with a dump of the table.
    fn resync(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        let table = self.dump()?;
        let mut steps = Vec::new();
        self.tracker.resync(&table, Clock::now().now_ns, &mut steps);
        self.apply(steps, batch);
        Ok(())
    }

    /// Drains the nflog socket: denied packets, new flows' owners, DNS
    /// answers, ClientHellos, and sequence gaps.
    fn read_log(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        loop {
            let (packets, malformed) = match self.log.recv(true) {
                Ok(datagram) => nflog::decode_datagram(datagram),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    batch.push(Err(FlowError::lost(LossPoint::NetlinkOverrun, None)));
                    continue;
                }
                Err(e) => return Err(FlowError::io("reading nflog packets", e)),
            };
            push_malformed(batch, malformed);
            for packet in packets {
                self.on_logged(packet, batch);
            }
        }
    }

    fn on_logged(&mut self, packet: nflog::LoggedPacket, batch: &mut Vec<Item>) {
        let gap = packet.seq.map_or(0, |seq| self.log_sequence.observe(seq));
        if gap > 0 {
            batch.push(Err(FlowError::lost(
                LossPoint::SequenceGap,
                Some(u64::from(gap)),
            )));
        }
        let Some(key) = packet.key else { return };
        let refused = packet.prefix == POLICY_PREFIX;
        if refused || packet.prefix.starts_with(DENY_PREFIX) {
            // One Denied per flow per minute: a dropped SYN is retried.
            let now = Instant::now();
            self.denied
                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            if self.denied.insert(key, now).is_none() {
                tracing::info!(%key, uid = ?packet.uid, gid = ?packet.gid, prefix = %packet.prefix, "denied");
                // A drop rule flowtrack does not own has no policy rule.
                let rule = match &self.policy {
                    Some(policy) if refused => Some(enforce::refusing_rule(policy, &key)),
                    _ => None,
                };
                let event = FlowEvent::denied(key, rule, true, Clock::now().now_ns);
                self.emit(event, batch);
            }
        } else {
            self.annotator
                .logged(packet, flow_core::clock::monotonic_now_ns(), batch);
        }
    }

    /// Every [`CHECK_EVERY`]: make sure the table is still there (deleted
    /// from outside, flows would go unmarked: a fatal error); forget old
    /// closed flows; when the cgroup has no process left, close what is
    /// still open; when the scope is gone, close what is open and end.
    fn check_scope(&mut self, batch: &mut Vec<Item>) -> Result<ScopeState, FlowError> {
        if let Some(gone) = self.watched.iter().find_map(Watched::gone) {
            tracing::warn!("{gone}: its flows are closed and the nflog backend ends");
            self.close_open_flows(batch);
            return Ok(ScopeState::Gone);
        }
        self.check_table()?;
        self.tracker.expire(Clock::now().now_ns);
        let ended = self
            .cgroup
            .as_ref()
            .is_some_and(|cgroup| flow_cgroup::is_populated(cgroup) != Some(true));
        if ended {
            self.close_open_flows(batch);
        }
        Ok(ScopeState::Live)
    }

    /// Closes every open flow (the scope ended), with the counters of a
    /// dump of the table. The events queued are read first, up to
    /// [`ROUNDS_BEFORE_CLOSING`] rounds: a process's last FIN exchange was
    /// signalled before it exited, but may have come after this round's
    /// read. A read that fails, or a queue that other connections keep
    /// full, does not keep the flows open: the dump closes the rest, each
    /// for the reason its TCP state gives.
    fn close_open_flows(&mut self, batch: &mut Vec<Item>) {
        for _ in 0..ROUNDS_BEFORE_CLOSING {
            if self.tracker.open_flows() == 0 {
                return;
            }
            match self.read_events(batch) {
                Ok(Drained::Yes) => break,
                Ok(Drained::No) => {}
                Err(error) => {
                    batch.push(Err(error));
                    break;
                }
            }
        }
        if self.tracker.open_flows() == 0 {
            return;
        }
        match self.dump() {
            Ok(table) => {
                let mut steps = Vec::new();
                self.tracker
                    .close_all(&table, Clock::now().now_ns, &mut steps);
                for step in steps {
                    if let Step::Emit(event) = step {
                        self.emit(event, batch);
                    }
                }
            }
            Err(error) => batch.push(Err(error)),
        }
    }

    /// Fails when the backend's table was deleted by someone else.
    fn check_table(&mut self) -> Result<(), FlowError> {
        let seq = self.nft.next_seq();
        match self
            .nft
            .transact(&rules::get_table_request(&self.table.name, seq), seq)
        {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(FlowError::unavailable(
                BACKEND_NAME,
                format!(
                    "its nf_tables table {} was deleted from outside: new connections are no \
                     longer marked or logged",
                    self.table.name
                ),
            )),
            Err(e) => Err(FlowError::io("checking the nf_tables table", e)),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        remove_table(&mut self.nft, &self.table.name);
    }
}

/// Puts `policy` in the made `table` (its rules, sets and the jump to
/// them), in one batch: in place, or an error saying why.
fn install_policy(
    nft: &mut Socket,
    table: &Table,
    policy: &Policy,
    fail: bool,
) -> Result<(), FlowError> {
    let seq = nft.next_seq();
    let (batch, last) = enforce::policy_batch(table, policy, seq, fail);
    let unable = |why: String| {
        FlowError::unavailable(
            BACKEND_NAME,
            format!("cannot put the policy in the kernel: {why}"),
        )
    };
    nft.fit_send_buffer(batch.len()).map_err(|e| {
        unable(format!(
            "a send buffer for {} bytes of rules: {e}",
            batch.len()
        ))
    })?;
    nft.transact(&batch, last)
        .map(drop)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::EOPNOTSUPP) => unable(format!(
                "the kernel refused its nf_tables rules ({e}): it lacks the reject or lookup \
             expressions or interval sets (modules nft_reject_inet, nft_set_rbtree)"
            )),
            _ => unable(format!("the kernel refused its nf_tables rules: {e}")),
        })
}

/// Deletes the table `name` (a warning when it cannot).
fn remove_table(nft: &mut Socket, name: &str) {
    let seq = nft.next_seq();
    let (batch, last) = rules::delete_batch(name, seq);
    if let Err(error) = nft.transact(&batch, last) {
        tracing::warn!(%error, table = %name, "could not remove the nf_tables table");
    }
}

/// Reports `count` undecodable messages as one loss item.
fn push_malformed(batch: &mut Vec<Item>, count: usize) {
    if count > 0 {
        batch.push(Err(FlowError::lost(
            LossPoint::Malformed,
            Some(count as u64),
        )));
    }
}

/// The conntrack entries among `replies`.
fn entries(replies: &[Reply]) -> Vec<CtEntry> {
    replies
        .iter()
        .filter_map(|reply| conntrack::decode(reply.kind, reply.flags, &reply.payload).ok())
        .collect()
}

/// A namespace's identity: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    /// The namespace `path` names now.
    fn of(path: &Path) -> io::Result<Self> {
        let metadata = std::fs::metadata(path)?;
        Ok(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        })
    }
}

/// Moves the calling thread into the network namespace at `path`; which
/// namespace that was.
pub(crate) fn enter_netns(path: &Path) -> Result<NsId, FlowError> {
    let file = std::fs::File::open(path).map_err(|e| {
        FlowError::invalid_input(
            format!("network namespace {}", path.display()),
            format!("cannot open it ({e}): is the name, path or pid right?"),
        )
    })?;
    let metadata = file
        .metadata()
        .map_err(|e| FlowError::io(format!("network namespace {}", path.display()), e))?;
    let id = NsId {
        dev: metadata.dev(),
        ino: metadata.ino(),
    };
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| match e {
        rustix::io::Errno::PERM => permission("entering a network namespace", "CAP_SYS_ADMIN"),
        rustix::io::Errno::INVAL => FlowError::invalid_input(
            format!("network namespace {}", path.display()),
            "not a network namespace",
        ),
        other => FlowError::io("entering a network namespace", other.into()),
    })?;
    Ok(id)
}

/// The rule scope of a cgroup v2 directory: its id (the directory's inode)
/// and its depth below the cgroup v2 root.
fn cgroup_scope(cgroup: &Path) -> Result<RuleScope, FlowError> {
    use std::os::unix::fs::MetadataExt;
    let context = || format!("cgroup {}", cgroup.display());
    let mount = flow_cgroup::cgroup2_mount().map_err(|e| {
        FlowError::unavailable(BACKEND_NAME, format!("cgroup v2 is not mounted ({e})"))
    })?;
    let path = cgroup
        .canonicalize()
        .map_err(|e| FlowError::invalid_input(context(), format!("it does not exist ({e})")))?;
    let relative = path.strip_prefix(&mount).map_err(|_| {
        FlowError::invalid_input(
            context(),
            format!("not under the cgroup v2 mount {}", mount.display()),
        )
    })?;
    let level = u32::try_from(relative.components().count())
        .map_err(|_| FlowError::invalid_input(context(), "nested too deep"))?;
    let id = std::fs::metadata(&path)
        .map_err(|e| FlowError::io(context(), e))?
        .ino();
    Ok(RuleScope::Cgroup { id, level })
}

/// Binds `group`, or the first free group from a per-process start when
/// none is given; nflog allows one listener per group.
fn bind_log_group(group: Option<u16>) -> Result<(Socket, u16), FlowError> {
    let candidates: Vec<u16> = match group {
        Some(group) => vec![group],
        None => {
            let start = 0x4000 + (std::process::id() % 0x1000) as u16;
            (0..64).map(|i| start + i * 0x40).collect()
        }
    };
    let mut last_error = None;
    for candidate in candidates {
        let mut socket = Socket::open(&[])
            .map_err(|e| setup_error("opening an nflog socket", "CAP_NET_ADMIN", e))?;
        socket
            .set_receive_timeout(Duration::from_secs(5))
            .map_err(|e| FlowError::io("setting a netlink timeout", e))?;
        let seq = socket.next_seq();
        match socket.transact(&nflog::bind_request(candidate, seq), seq) {
            Ok(_) => return Ok((socket, candidate)),
            // The kernel answers EPERM when another socket has the group (a
            // missing privilege failed earlier, at the conntrack
            // subscription).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EBUSY)) => {
                last_error = Some(candidate);
            }
            Err(e) => return Err(setup_error("binding an nflog group", "CAP_NET_ADMIN", e)),
        }
    }
    Err(FlowError::unavailable(
        BACKEND_NAME,
        format!(
            "nflog group {} already has a listener (another flowtrack or ulogd): choose a free one",
            last_error.unwrap_or_default()
        ),
    ))
}

/// ct marks to try for a new table: random ones (the table's name carries
/// the mark, so the kernel refuses one another instance in the namespace
/// holds, and the next is tried).
fn mark_candidates() -> impl Iterator<Item = u32> {
    let random = std::collections::hash_map::RandomState::new();
    (0u32..64).map(move |attempt| (random.hash_one(attempt) as u32) & !MARK_BIT)
}

/// Deletes flowtrack tables no netlink socket owns: a live flowtrack's
/// table is owned by its socket (and goes with it), so one without an
/// owner was left by a flowtrack on a kernel without table owners, or by
/// another version.
pub(crate) fn remove_leftover_tables(nft: &mut Socket) -> Vec<String> {
    let mut removed = Vec::new();
    let seq = nft.next_seq();
    let Ok(replies) = nft.transact(&rules::list_tables_request(seq), seq) else {
        return removed;
    };
    for reply in replies {
        let Some(name) = rules::table_name(&reply.payload) else {
            continue;
        };
        if !rules::is_flowtrack_table(&name) || rules::is_owned(&reply.payload) {
            continue;
        }
        let seq = nft.next_seq();
        let (batch, last) = rules::delete_batch(&name, seq);
        match nft.transact(&batch, last) {
            Ok(_) => {
                tracing::info!(table = %name, "removed a leftover nf_tables table");
                removed.push(format!("nf_tables table inet {name} (owned by no process)"));
            }
            Err(error) => {
                tracing::warn!(%error, table = %name, "could not remove a leftover table");
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn marks_are_flowtrack_marks_and_vary() {
        let marks: Vec<u32> = mark_candidates().collect();
        assert_eq!(marks.len(), 64);
        assert!(
            marks.iter().all(|mark| mark & MARK_BIT == 0),
            "the bit is added with the table"
        );
        let distinct: std::collections::HashSet<_> = marks.iter().collect();
        assert!(distinct.len() > 60, "{marks:?}");
    }

    /// A thread that finishes once released (or after 10 seconds).
    fn held_thread() -> (JoinHandle<()>, std::sync::mpsc::Sender<()>, Arc<AtomicBool>) {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let thread_finished = Arc::clone(&finished);
        let thread = std::thread::spawn(move || {
            let _ = released.recv_timeout(Duration::from_secs(10));
            thread_finished.store(true, Ordering::SeqCst);
        });
        (thread, release, finished)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inside_a_runtime_the_join_waits_on_the_blocking_pool() {
        let (thread, release, finished) = held_thread();
        join_off_runtime(thread);
        // Joined in place, the call would have returned after the thread.
        assert!(!finished.load(Ordering::SeqCst), "the caller did not wait");
        release.send(()).unwrap();
    }

    #[test]
    fn outside_a_runtime_the_join_is_in_place() {
        let (thread, release, finished) = held_thread();
        release.send(()).unwrap();
        join_off_runtime(thread);
        assert!(finished.load(Ordering::SeqCst));
    }
}
