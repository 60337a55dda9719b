//! Running one benchmarked process: its output lines with the time each appeared, its own peak
//! resident set (`wait4`'s `ru_maxrss`, not shared with other children) and a time limit.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One output line and when it was read (seconds after the spawn).
#[derive(Debug, Clone)]
pub struct Line {
    pub at_s: f64,
    pub stream: Stream,
    pub text: String,
}

/// What a finished child did.
#[derive(Debug)]
pub struct Finished {
    /// Exit code, `None` when a signal ended it.
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Killed for running past the limit.
    pub timed_out: bool,
    /// Seconds from spawn to exit.
    pub wall_s: f64,
    /// Peak resident set of this child (MiB).
    pub peak_rss_mib: f64,
    /// Minor page faults of this child (`ru_minflt`): pages mapped in without I/O, e.g. every
    /// page of a freshly `mmap`ed buffer on first touch.
    pub minor_faults: u64,
    /// Its output, in order of arrival.
    pub lines: Vec<Line>,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Exit status in words.
    pub fn describe(&self) -> String {
        match (self.code, self.signal, self.timed_out) {
            (_, _, true) => format!("killed after {:.0} s (time limit)", self.wall_s),
            (Some(c), _, _) => format!("exit code {c}"),
            (None, Some(9), _) => "killed by signal 9 (SIGKILL: out of memory?)".to_string(),
            (None, Some(s), _) => format!("killed by signal {s}"),
            (None, None, _) => "unknown exit status".to_string(),
        }
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..]
            .iter()
            .map(|l| format!("    {}", l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The first line containing all of `needles` and when it appeared.
    pub fn first_line_with(&self, needles: &[&str]) -> Option<&Line> {
        self.lines
            .iter()
            .find(|l| needles.iter().all(|n| l.text.contains(n)))
    }
}

/// Runs `cmd` to completion (or kills it after `limit`), capturing its output; the output is also
/// written to `log` when given.
pub fn run(cmd: &mut Command, limit: Duration, log: Option<&Path>) -> Result<Finished> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let lines = Arc::new(Mutex::new(Vec::<Line>::new()));
    let mut readers = Vec::new();
    let pipes: [(Stream, Box<dyn std::io::Read + Send>); 2] = [
        (
            Stream::Stdout,
            Box::new(child.stdout.take().expect("piped")),
        ),
        (
            Stream::Stderr,
            Box::new(child.stderr.take().expect("piped")),
        ),
    ];
    for (stream, pipe) in pipes {
        let lines = Arc::clone(&lines);
        readers.push(std::thread::spawn(move || {
            for raw in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                let at_s = start.elapsed().as_secs_f64();
                let text = strip_ansi(&raw);
                lines
                    .lock()
                    .expect("reader")
                    .push(Line { at_s, stream, text });
            }
        }));
    }
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's Child is never waited on).
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("waiting for a benchmark process");
        }
        if !timed_out && start.elapsed() > limit {
            timed_out = true;
            // SAFETY: signalling our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall_s = start.elapsed().as_secs_f64();
    for r in readers {
        let _ = r.join();
    }
    let lines = std::mem::take(&mut *lines.lock().expect("reader"));
    if let Some(path) = log {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).ok();
        }
        let mut f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "# {cmd:?}")?;
        for l in &lines {
            let tag = match l.stream {
                Stream::Stdout => "out",
                Stream::Stderr => "err",
            };
            writeln!(f, "{:9.3} {tag} {}", l.at_s, l.text)?;
        }
    }
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Finished {
        code,
        signal,
        timed_out,
        wall_s,
        // Linux reports ru_maxrss in KiB.
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        minor_faults: usage.ru_minflt as u64,
        lines,
    })
}

/// `text` without ANSI escape sequences (tracing colours its field names).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters... final byte in '@'..='~'.
            if chars.next() == Some('[') {
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_colours_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[3mstep\u{1b}[0m\u{1b}[2m=\u{1b}[0m12"),
            "step=12"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
