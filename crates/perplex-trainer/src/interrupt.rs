//! Graceful stop on SIGINT (Ctrl-C) and SIGTERM (what Slurm and Kubernetes send before they kill
//! a job): the current step finishes, a checkpoint, the final weights and `summary.json` are
//! written, and the process can exit with `128 + signal` (130, 143). A second signal of either
//! kind ends the process at once with that status (signal-hook's conditional shutdown).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::TrainerError;

/// A signal that asks training to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Signal {
    /// Ctrl-C.
    Int,
    /// A polite kill (Slurm, Kubernetes, `kill`).
    Term,
}

impl Signal {
    /// `SIGINT` or `SIGTERM`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// The signal's number.
    pub fn number(self) -> i32 {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
        }
    }

    /// The conventional exit status of a process stopped by it: `128 + number` (130, 143).
    pub fn exit_code(self) -> u8 {
        (128 + self.number()) as u8
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The flag SIGINT/SIGTERM set; give it to [`crate::Trainer::with_interrupt`].
#[derive(Debug, Clone)]
pub struct Interrupt {
    received: Arc<AtomicUsize>,
}

/// What the handler writes to stderr on the first and on a second signal (fixed texts: a
/// signal handler may not format or allocate).
fn notices(signal: Signal) -> (&'static [u8], &'static [u8]) {
    match signal {
        Signal::Int => (
            b"\nSIGINT: stopping after the current step (or validation) with a checkpoint; \
              press Ctrl-C again to stop at once without one\n",
            b"\nSIGINT again: stopped at once, without a checkpoint for the steps since the \
              last one\n",
        ),
        Signal::Term => (
            b"\nSIGTERM: stopping after the current step (or validation) with a checkpoint\n",
            b"\nSIGTERM again: stopped at once, without a checkpoint for the steps since the \
              last one\n",
        ),
    }
}

impl Interrupt {
    /// Installs the handlers for SIGINT and SIGTERM in this process (once per process is
    /// enough; further calls add handlers that share nothing with the first).
    ///
    /// # Errors
    /// [`TrainerError::Config`] when the handlers cannot be installed.
    pub fn install() -> Result<Self, TrainerError> {
        let received = Arc::new(AtomicUsize::new(0));
        let armed = Arc::new(AtomicBool::new(false));
        for signal in [Signal::Int, Signal::Term] {
            let n = signal.number();
            let err = |e: std::io::Error| TrainerError::Config {
                source_name: signal.name().into(),
                message: format!("cannot install the signal handler: {e}"),
            };
            // Order matters: the notice and the shutdown run first, so only a second signal
            // ends the process.
            let notice_armed = Arc::clone(&armed);
            let (first, second) = notices(signal);
            // SAFETY: the action only loads an atomic and calls write(2), both
            // async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                signal_hook::low_level::register(n, move || {
                    let text = if notice_armed.load(Ordering::SeqCst) {
                        second
                    } else {
                        first
                    };
                    let _ = libc::write(2, text.as_ptr().cast(), text.len());
                })
            }
            .map_err(err)?;
            signal_hook::flag::register_conditional_shutdown(
                n,
                i32::from(signal.exit_code()),
                Arc::clone(&armed),
            )
            .map_err(err)?;
            signal_hook::flag::register(n, Arc::clone(&armed)).map_err(err)?;
            signal_hook::flag::register_usize(n, Arc::clone(&received), n as usize).map_err(err)?;
        }
        Ok(Self { received })
    }

    /// The signal received so far, if any.
    pub fn received(&self) -> Option<Signal> {
        match self.received.load(Ordering::SeqCst) as i32 {
            0 => None,
            n if n == libc::SIGTERM => Some(Signal::Term),
            _ => Some(Signal::Int),
        }
    }
}
