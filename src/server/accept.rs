//! What the accept loop does when `accept` fails. Running out of file descriptors
//! (EMFILE/ENFILE) leaves the connection in the listen backlog, so the listener stays
//! ready and a loop that retries at once spins at full CPU and logs a line per attempt.
//! Instead: back off (100 ms doubling to 1 s while it lasts), keep serving the open
//! connections meanwhile, and log once per interval with a count.

use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// Shortest and longest pause after running out of descriptors.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// Pause after any other accept error (e.g. a connection reset before it was accepted).
const OTHER_PAUSE: Duration = Duration::from_millis(20);
/// At most one log line per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether an accept error means the process or system is out of file descriptors.
pub fn out_of_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The state of a streak of accept failures.
#[derive(Default)]
pub struct Failures {
    pause: Option<Duration>,
    last_log: Option<Instant>,
    /// Failures not logged yet.
    unlogged: u64,
}

impl Failures {
    /// A connection was accepted: the streak is over.
    pub fn accepted(&mut self) {
        self.pause = None;
    }

    /// Records a failed accept; returns how long to wait before the next one.
    pub fn failed(&mut self, e: &std::io::Error, out_of_files: bool, pending: usize) -> Duration {
        self.unlogged += 1;
        let now = Instant::now();
        if self.last_log.is_none_or(|at| now >= at + LOG_EVERY) {
            warn!(
                error = %e,
                failures = self.unlogged,
                pending_connections = pending,
                "accept failed; open connections are still served (logged at most every {}s)",
                LOG_EVERY.as_secs()
            );
            self.last_log = Some(now);
            self.unlogged = 0;
        }
        if !out_of_files {
            return OTHER_PAUSE;
        }
        let pause = self.pause.map_or(FIRST_PAUSE, |p| (p * 2).min(LONGEST_PAUSE));
        self.pause = Some(pause);
        crate::observability::limit_rejected("open_files");
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_a_second_and_reset_after_an_accept() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(out_of_files(&emfile));
        let mut f = Failures::default();
        let pauses: Vec<u64> = (0..6).map(|_| f.failed(&emfile, true, 0).as_millis() as u64).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        // Logged once for the whole streak.
        assert_eq!(f.unlogged, 5);
        f.accepted();
        assert_eq!(f.failed(&emfile, true, 0), FIRST_PAUSE);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert!(!out_of_files(&reset));
        assert_eq!(f.failed(&reset, false, 0), OTHER_PAUSE);
    }
}
