//! Lines for people, on stderr (and `cleanup`'s list on stdout), that never
//! panic: a closed or full stderr loses the line, never the command
//! (`eprintln!` would panic, and flowtrack's own exit status would replace
//! the supervised command's).

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether `-q` asked for errors only.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences [`notice!`] lines from now on (`-q`).
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `-q` was given.
pub(crate) fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Writes `text` to stderr in one piece, ignoring a failure.
pub(crate) fn stderr(text: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(text);
}

/// Writes `text` to stdout and flushes it, ignoring a failure.
pub(crate) fn stdout(text: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_fmt(text).and_then(|()| stdout.flush());
}

/// One line on stderr, like `eprintln!` but never panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::diag::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// One line on stderr unless `-q` was given: information, not a problem.
macro_rules! notice {
    ($($arg:tt)*) => {
        if !$crate::diag::is_quiet() {
            $crate::diag::say!($($arg)*);
        }
    };
}

/// One line on stdout, like `println!` but never panicking.
macro_rules! tell {
    ($($arg:tt)*) => {
        $crate::diag::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {notice, say, tell};
