//! The listener thread: it enters the scope's network namespace (a
//! dedicated thread, never a shared tokio worker), installs the rules and
//! settings, reads ctnetlink events and nflog packets, and hands batches of
//! items to the stream. Dropping the [`Listener`] stops it and undoes
//! everything it installed.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flow_core::{CloseReason, FlowError, FlowEvent, FlowEventKind, FlowKey, LossPoint};
use rustix::event::{PollFd, PollFlags};
use tokio::sync::{mpsc, oneshot};

use crate::conntrack::{self, CtEntry};
use crate::netlink::{Reply, Socket};
use crate::nflog::{self, DENY_PREFIX};
use crate::rules::{self, RuleScope, Table};
use crate::sysctl::ConntrackSettings;
use crate::tracker::{Clock, FlowId, Step, Tracker};
use crate::{BACKEND_NAME, NflogConfig};

/// What the stream yields.
pub(crate) type Item = Result<FlowEvent, FlowError>;

/// The running listener thread; dropping it stops the thread and waits
/// for its clean-up (rules removed, settings restored).
pub(crate) struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the listener; returns once its rules are installed (or why they
/// could not be).
pub(crate) async fn spawn(
    config: NflogConfig,
    items: mpsc::Sender<Vec<Item>>,
) -> Result<Listener, FlowError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread_stop = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("flowtrack-nflog".into())
        .spawn(move || match Session::open(&config) {
            Ok(mut session) => {
                let _ = ready_tx.send(Ok(()));
                session.run(&thread_stop, &items);
            }
            Err(error) => {
                let _ = ready_tx.send(Err(error));
            }
        })
        .map_err(|e| FlowError::io("starting the nflog listener thread", e))?;
    let listener = Listener {
        stop,
        thread: Some(thread),
    };
    match ready_rx.await {
        Ok(Ok(())) => Ok(listener),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(FlowError::unavailable(
            BACKEND_NAME,
            "the listener thread ended before it was ready",
        )),
    }
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

/// A process-wide counter making table names and marks unique.
static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// What the thread owns while it runs.
struct Session {
    events: Socket,
    requests: Socket,
    log: Socket,
    nft: Socket,
    table: Table,
    tracker: Tracker,
    cgroup: Option<std::path::PathBuf>,
    receive_buffer: usize,
    max_receive_buffer: usize,
    resync_pending: bool,
    pending_fetches: Vec<(FlowId, CloseReason)>,
    log_sequence: nflog::Sequence,
    denied: HashMap<FlowKey, Instant>,
    // Dropped last: restores the settings after the table is gone.
    _settings: ConntrackSettings,
}

impl Session {
    fn open(config: &NflogConfig) -> Result<Self, FlowError> {
        if let Some(netns) = &config.netns {
            enter_netns(netns)?;
        }
        let scope = match &config.cgroup {
            Some(cgroup) => cgroup_scope(cgroup)?,
            None => RuleScope::Netns,
        };
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
        let instance = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let table = Table {
            name: format!("{}{pid}_{instance}", rules::TABLE_PREFIX),
            scope,
            mark: 0x8000_0000 | (pid & 0x7fff) << 16 | (instance & 0xffff),
            log_group,
        };
        let seq = nft.next_seq();
        let (batch, last) = rules::create_batch(&table, seq);
        nft.transact(&batch, last)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::ENOENT) => FlowError::unavailable(
                    BACKEND_NAME,
                    format!(
                        "the kernel refused flowtrack's nf_tables rules ({e}): it lacks nf_tables, \
                     its ct, socket or log expressions (modules nft_ct, nft_socket, nft_log)"
                    ),
                ),
                _ => setup_error("installing the nf_tables rules", needs, e),
            })?;
        tracing::debug!(table = %table.name, mark = table.mark, group = table.log_group, "rules installed");
        Ok(Self {
            events,
            requests,
            log,
            nft,
            tracker: Tracker::new(table.mark),
            table,
            cgroup: config.cgroup.clone(),
            receive_buffer: granted,
            max_receive_buffer: config.max_receive_buffer,
            resync_pending: false,
            pending_fetches: Vec::new(),
            log_sequence: nflog::Sequence::default(),
            denied: HashMap::new(),
            _settings: settings,
        })
    }

    fn run(&mut self, stop: &AtomicBool, items: &mpsc::Sender<Vec<Item>>) {
        let mut last_check = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut batch = Vec::new();
            let mut round = self.wait_and_read(&mut batch);
            if round.is_ok() && last_check.elapsed() >= Duration::from_millis(250) {
                last_check = Instant::now();
                round = self.check_scope(&mut batch);
            }
            let failed = round.is_err();
            if let Err(error) = round {
                batch.push(Err(error));
            }
            if (!batch.is_empty() && items.blocking_send(batch).is_err()) || failed {
                break;
            }
        }
        self.remove_table();
    }

    fn wait_and_read(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        let (events, log) = (self.events.fd(), self.log.fd());
        let mut fds = [
            PollFd::new(&events, PollFlags::IN),
            PollFd::new(&log, PollFlags::IN),
        ];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(FlowError::io("waiting for netlink messages", e.into())),
        }
        self.read_events(batch)?;
        self.read_log(batch)
    }

    /// Drains the conntrack event socket.
    fn read_events(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        loop {
            // Decoded in the socket's buffer: the entries are owned, no copy.
            let (entries, malformed) = match self.events.recv(true) {
                Ok(datagram) => conntrack::decode_datagram(datagram),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.fetch_pending(batch)?;
                    if self.resync_pending {
                        self.resync_pending = false;
                        self.resync(batch)?;
                    }
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overrun(batch);
                    continue;
                }
                Err(e) => return Err(FlowError::io("reading conntrack events", e)),
            };
            let clock = Clock::now();
            push_malformed(batch, malformed);
            let mut steps = Vec::new();
            for entry in &entries {
                self.tracker.on_message(entry, clock, &mut steps);
            }
            self.apply(steps, batch);
        }
    }

    /// Emits events; queues closed TCP flows for their counters (fetched
    /// together once the event queue is drained).
    fn apply(&mut self, steps: Vec<Step>, batch: &mut Vec<Item>) {
        for step in steps {
            match step {
                Step::Emit(event) => batch.push(Ok(event)),
                Step::FetchCounters(flow, reason) => self.pending_fetches.push((flow, reason)),
            }
        }
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
            let mut bytes = conntrack::get_request(&chunk[0].0.key, first);
            let mut last = first;
            for (flow, _) in &chunk[1..] {
                last = self.requests.next_seq();
                bytes.extend_from_slice(&conntrack::get_request(&flow.key, last));
            }
            let answers = self
                .requests
                .transact_batch(&bytes, first, last)
                .map_err(|e| FlowError::io("reading conntrack entries", e))?;
            let now_ns = Clock::now().now_ns;
            for (seq, (flow, reason)) in (first..=last).zip(chunk) {
                let counters = match answers.get(&seq) {
                    Some(Ok(replies)) => entries(replies).into_iter().find_map(|e| e.counters),
                    _ => None,
                };
                let counters = counters.unwrap_or_default();
                if let Some(event) = self.tracker.close(*flow, counters, Some(*reason), now_ns) {
                    batch.push(Ok(event));
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

    /// Drains the nflog socket: denied packets and sequence gaps.
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
            for packet in &packets {
                self.on_logged(packet, batch);
            }
        }
    }

    fn on_logged(&mut self, packet: &nflog::LoggedPacket, batch: &mut Vec<Item>) {
        let gap = packet.seq.map_or(0, |seq| self.log_sequence.observe(seq));
        if gap > 0 {
            batch.push(Err(FlowError::lost(
                LossPoint::SequenceGap,
                Some(u64::from(gap)),
            )));
        }
        let Some(key) = packet.key else { return };
        if packet.prefix.starts_with(DENY_PREFIX) {
            // One Denied per flow per minute: a dropped SYN is retried.
            let now = Instant::now();
            self.denied
                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
            if self.denied.insert(key, now).is_none() {
                // The event has no owner field; the log shows who it was.
                tracing::info!(%key, uid = ?packet.uid, gid = ?packet.gid, prefix = %packet.prefix, "denied");
                let event = FlowEvent::new(key, FlowEventKind::Denied, Clock::now().now_ns);
                batch.push(Ok(event));
            }
        }
    }

    /// Every 250 ms: make sure the table is still there (deleted from
    /// outside, flows would go unmarked: a fatal error); forget old closed
    /// flows; when the cgroup has no process left, close what is still
    /// open.
    fn check_scope(&mut self, batch: &mut Vec<Item>) -> Result<(), FlowError> {
        self.check_table()?;
        let clock = Clock::now();
        self.tracker.expire(clock.now_ns);
        let Some(cgroup) = &self.cgroup else {
            return Ok(());
        };
        let ended = flow_cgroup::is_populated(cgroup) != Some(true);
        if ended && self.tracker.open_flows() > 0 {
            match self.dump() {
                Ok(table) => {
                    let mut steps = Vec::new();
                    self.tracker.close_all(&table, clock.now_ns, &mut steps);
                    batch.extend(steps.into_iter().filter_map(|step| match step {
                        Step::Emit(event) => Some(Ok(event)),
                        Step::FetchCounters(..) => None,
                    }));
                }
                Err(error) => batch.push(Err(error)),
            }
        }
        Ok(())
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

    fn remove_table(&mut self) {
        let seq = self.nft.next_seq();
        let (batch, last) = rules::delete_batch(&self.table.name, seq);
        if let Err(error) = self.nft.transact(&batch, last) {
            tracing::warn!(%error, table = %self.table.name, "could not remove the nf_tables table");
        }
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

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter_netns(path: &std::path::Path) -> Result<(), FlowError> {
    let file = std::fs::File::open(path).map_err(|e| {
        FlowError::invalid_input(
            format!("network namespace {}", path.display()),
            format!("cannot open it ({e}): is the name, path or pid right?"),
        )
    })?;
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
    })
}

/// The rule scope of a cgroup v2 directory: its id (the directory's inode)
/// and its depth below the cgroup v2 root.
fn cgroup_scope(cgroup: &std::path::Path) -> Result<RuleScope, FlowError> {
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

/// Deletes flowtrack tables whose process is gone (a crash before the
/// kernel could drop an owned table, or a kernel without table owners).
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
        let Some(pid) = rules::owner_pid(&name) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid.to_string()).exists() {
            let seq = nft.next_seq();
            let (batch, last) = rules::delete_batch(&name, seq);
            match nft.transact(&batch, last) {
                Ok(_) => {
                    tracing::info!(table = %name, "removed a leftover nf_tables table");
                    removed.push(format!("nf_tables table inet {name} (left by pid {pid})"));
                }
                Err(error) => {
                    tracing::warn!(%error, table = %name, "could not remove a leftover table");
                }
            }
        }
    }
    removed
}
