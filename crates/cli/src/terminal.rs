//! `run --user`: a command that runs as another user never gets
//! flowtrack's terminal. Those of its standard descriptors that would have
//! been flowtrack's terminal get a pseudoterminal of its own instead,
//! which flowtrack relays to its terminal (as `sudo`'s `use_pty` and
//! `su --pty` do); the command starts a session of its own with that
//! pseudoterminal as its controlling terminal. So it cannot push input
//! into flowtrack's terminal (`TIOCSTI`), nor open it as `/dev/tty`.
//!
//! While the relay runs, flowtrack's terminal input is raw (keys, Ctrl-C
//! included, go to the command's terminal, whose line discipline makes
//! them signals), output processing stays on (flowtrack's own lines keep
//! their carriage returns), and window size changes are passed on. The
//! terminal's settings are put back when the relay ends.
//!
//! Hand-written on rustix: no maintained crate relays a pseudoterminal for
//! a child spawned with tokio's `Command` and a `pre_exec` of our own.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::{Mode, OFlags};
use rustix::process::{Gid, Uid};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, OutputModes, Termios};

/// Flowtrack's standard descriptors, by number.
const STANDARD: [RawFd; 3] = [0, 1, 2];

/// A pseudoterminal made for the command, before it starts.
pub(crate) struct CommandTerminal {
    master: OwnedFd,
    slave: OwnedFd,
    /// Which of the command's descriptors 0, 1, 2 take the slave (those
    /// that were flowtrack's terminal).
    replaced: [bool; 3],
}

/// What the command's `pre_exec` needs: the slave's descriptor number and
/// which standard descriptors it replaces (copied into the child).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildSide {
    slave: RawFd,
    replaced: [bool; 3],
}

impl ChildSide {
    /// In the forked child, before exec: a new session whose controlling
    /// terminal is the slave, on the descriptors that were terminals.
    ///
    /// # Errors
    /// The failing system call's error (the spawn then fails).
    pub(crate) fn enter(self) -> io::Result<()> {
        // SAFETY: the slave stays open in the parent until the child has
        // been spawned, so in the child the number is an open descriptor.
        #[allow(unsafe_code)]
        let slave = unsafe { BorrowedFd::borrow_raw(self.slave) };
        rustix::process::ioctl_tiocsctty(slave)?;
        let duplicate = [
            rustix::stdio::dup2_stdin::<BorrowedFd<'_>>,
            rustix::stdio::dup2_stdout::<BorrowedFd<'_>>,
            rustix::stdio::dup2_stderr::<BorrowedFd<'_>>,
        ];
        for (replaced, dup2) in self.replaced.into_iter().zip(duplicate) {
            if replaced {
                dup2(slave)?;
            }
        }
        Ok(())
    }
}

/// The new session of a command that runs as another user, in its
/// `pre_exec`, with its terminal when it has one.
///
/// # Errors
/// The failing system call's error.
pub(crate) fn enter_own_session(terminal: Option<ChildSide>) -> io::Result<()> {
    rustix::process::setsid()?;
    match terminal {
        Some(side) => side.enter(),
        None => Ok(()),
    }
}

impl CommandTerminal {
    /// A pseudoterminal for a command that will run as `uid`, if any of
    /// flowtrack's standard descriptors is a terminal (else the command
    /// needs none: it can reach no terminal through them).
    ///
    /// # Errors
    /// When the pseudoterminal cannot be made.
    pub(crate) fn for_user(uid: Uid, gid: Gid) -> io::Result<Option<Self>> {
        let replaced = STANDARD.map(is_terminal);
        if !replaced.contains(&true) {
            return Ok(None);
        }
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // The command's user owns its terminal, as after a login: it may
        // reopen it as /dev/tty.
        rustix::fs::fchown(&slave, Some(uid), Some(gid))?;
        if let Some(size) = STANDARD
            .iter()
            .find_map(|&fd| rustix::termios::tcgetwinsize(standard(fd)).ok())
        {
            let _ = rustix::termios::tcsetwinsize(&master, size);
        }
        Ok(Some(Self {
            master,
            slave,
            replaced,
        }))
    }

    /// What the command's `pre_exec` needs.
    pub(crate) fn child_side(&self) -> ChildSide {
        ChildSide {
            slave: self.slave.as_raw_fd(),
            replaced: self.replaced,
        }
    }

    /// Once the command is spawned: closes flowtrack's copy of the slave
    /// (so that the relay sees the end when the command's side closes) and
    /// relays until the returned [`Relay`] is dropped.
    ///
    /// # Errors
    /// When the relay cannot start (its wake-up pipe, or a thread).
    pub(crate) fn relay(self) -> io::Result<Relay> {
        let Self {
            master, replaced, ..
        } = self;
        let master = Arc::new(master);
        let (wake_reader, wake_writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
        let wake_reader = Arc::new(wake_reader);
        // Keys are relayed only while flowtrack is in its terminal's
        // foreground: setting a terminal from the background stops the
        // process (SIGTTOU), and the keys are not ours then.
        let saved = (replaced[0] && in_foreground()).then(raw_input).flatten();
        let input = match saved {
            // Keys typed once the relay stops are the shell's: no drain.
            Some(_) => Some(spawn_copy(
                "flowtrack-tty-in",
                Endpoint::Standard(0),
                Endpoint::Master(Arc::clone(&master)),
                Arc::clone(&wake_reader),
                Drain::No,
            )?),
            None => None,
        };
        let output_to = if replaced[1] {
            Endpoint::Standard(1)
        } else if replaced[2] {
            Endpoint::Standard(2)
        } else {
            Endpoint::Discard
        };
        let output = spawn_copy(
            "flowtrack-tty-out",
            Endpoint::Master(Arc::clone(&master)),
            output_to,
            wake_reader,
            Drain::Yes,
        )?;
        let resize = tokio::spawn(pass_window_size_changes(Arc::clone(&master)));
        Ok(Relay {
            wake: Some(wake_writer),
            input,
            output: Some(output),
            saved,
            resize,
        })
    }
}

/// The relay between the command's pseudoterminal and flowtrack's
/// terminal. Dropping it (after the command and what it left are gone)
/// copies what the command wrote last, stops the relay and puts the
/// terminal's settings back.
pub(crate) struct Relay {
    wake: Option<OwnedFd>,
    input: Option<JoinHandle<()>>,
    output: Option<JoinHandle<()>>,
    saved: Option<Termios>,
    resize: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.resize.abort();
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(standard(0), OptionalActions::Now, saved);
        }
        // Closing the pipe's write end wakes both threads.
        drop(self.wake.take());
        for thread in [self.input.take(), self.output.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

fn standard(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: 0, 1 and 2 stay open for the life of the process (the Rust
    // runtime reopens them on /dev/null if they were closed at start).
    #[allow(unsafe_code)]
    unsafe {
        BorrowedFd::borrow_raw(fd)
    }
}

fn is_terminal(fd: RawFd) -> bool {
    rustix::termios::isatty(standard(fd))
}

/// Whether flowtrack's process group is its terminal's foreground.
fn in_foreground() -> bool {
    rustix::termios::tcgetpgrp(standard(0)).is_ok_and(|group| group == rustix::process::getpgrp())
}

/// Makes flowtrack's terminal input raw, keeping output processing;
/// returns the settings to put back.
fn raw_input() -> Option<Termios> {
    let saved = rustix::termios::tcgetattr(standard(0)).ok()?;
    let mut raw = saved.clone();
    raw.make_raw();
    raw.output_modes |= OutputModes::OPOST | OutputModes::ONLCR;
    rustix::termios::tcsetattr(standard(0), OptionalActions::Now, &raw).ok()?;
    Some(saved)
}

/// One end of a copy.
enum Endpoint {
    /// One of flowtrack's standard descriptors.
    Standard(RawFd),
    /// The command's pseudoterminal.
    Master(Arc<OwnedFd>),
    /// Nowhere (the output of a command with no terminal output).
    Discard,
}

impl Endpoint {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        match self {
            Self::Standard(fd) => Some(standard(*fd)),
            Self::Master(master) => Some(master.as_fd()),
            Self::Discard => None,
        }
    }
}

/// Whether a copy, once woken to stop, still copies what its source holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    Yes,
    No,
}

fn spawn_copy(
    name: &str,
    from: Endpoint,
    to: Endpoint,
    wake: Arc<OwnedFd>,
    drain: Drain,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || copy(&from, &to, &wake, drain))
}

/// Copies from `from` to `to` until `from` ends (the command's side of the
/// pseudoterminal closed: `EIO`) or `wake` is closed; after a wake-up,
/// with [`Drain::Yes`], what `from` holds already is still copied.
fn copy(from: &Endpoint, to: &Endpoint, wake: &OwnedFd, drain: Drain) {
    let Some(source) = from.fd() else { return };
    let mut buffer = [0_u8; 4096];
    let mut woken = false;
    loop {
        let mut fds = [
            PollFd::new(&source, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        // After the wake-up, only what is there already.
        let timeout = woken.then_some(&rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        match poll(&mut fds, timeout) {
            Ok(0) => return,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        let readable = !fds[0].revents().is_empty();
        woken = woken || !fds[1].revents().is_empty();
        if woken && drain == Drain::No {
            return;
        }
        if !readable {
            if woken {
                continue;
            }
            return;
        }
        let read = match rustix::io::read(source, &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if let Some(target) = to.fd()
            && write_all(target, &buffer[..read]).is_err()
        {
            return;
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> rustix::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(written) => bytes = &bytes[written..],
            Err(rustix::io::Errno::INTR) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Passes flowtrack's terminal size to the command's on every SIGWINCH.
async fn pass_window_size_changes(master: Arc<OwnedFd>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut changes) = signal(SignalKind::window_change()) else {
        return;
    };
    while changes.recv().await.is_some() {
        if let Some(size) = STANDARD
            .iter()
            .find_map(|&fd| rustix::termios::tcgetwinsize(standard(fd)).ok())
        {
            let _ = rustix::termios::tcsetwinsize(&*master, size);
        }
    }
}
