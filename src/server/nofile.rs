//! The open-file budget. Every client is a socket, so at start the soft limit is raised to
//! the hard one, and the cap on pending (not yet upgraded) connections is kept well under
//! it: stalled sockets must never take the descriptors that a health check or a new
//! WebSocket needs.

use tracing::{info, warn};

/// Descriptors kept for everything that is not a client socket: the listener, the
/// database pool and replication connections, the runtime's epoll and eventfds, logs.
pub const RESERVED: u64 = 64;

/// Raises the soft open-file limit to the hard limit; returns the soft limit in force
/// (`None` when it cannot be read).
pub fn raise() -> Option<u64> {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE);
    if let Err(e) = &before {
        warn!(error = %e, "cannot read the open file limit");
    }
    let raised = rlimit::increase_nofile_limit(u64::MAX);
    match (&before, &raised) {
        (Ok((soft, hard)), Ok(now)) => {
            info!(
                soft_before = soft,
                hard,
                soft = now,
                "open file limit raised to the hard limit"
            )
        }
        (_, Err(e)) => warn!(error = %e, before = ?before.as_ref().ok(), "cannot raise the open file limit"),
        (Err(_), Ok(now)) => info!(soft = now, "open file limit"),
    }
    match raised {
        Ok(n) => Some(n),
        Err(_) => before.ok().map(|(soft, _)| soft),
    }
}

/// The pending-connection cap for `configured` (`MAX_PENDING_CONNECTIONS`) under the soft
/// file limit `nofile`: at most half of what is left after [`RESERVED`], so upgraded
/// WebSockets and health checks always find descriptors.
pub fn pending_cap(configured: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return configured.max(1);
    };
    let budget = usize::try_from(nofile.saturating_sub(RESERVED) / 2).unwrap_or(usize::MAX);
    configured.min(budget).max(1)
}

/// Logs the budget, and warns when WebSockets alone can use every descriptor.
pub fn report(configured: usize, cap: usize, max_users: usize, nofile: Option<u64>) {
    info!(
        pending_cap = cap,
        max_pending_connections = configured,
        open_file_limit = nofile,
        reserved = RESERVED,
        "pending (not yet upgraded) connections capped"
    );
    if let Some(nofile) = nofile {
        let needed = (max_users as u64).saturating_add(cap as u64).saturating_add(RESERVED);
        if needed > nofile {
            warn!(
                max_concurrent_users = max_users,
                pending_cap = cap,
                open_file_limit = nofile,
                "MAX_CONCURRENT_USERS + pending cap + {RESERVED} exceeds the open file limit: WebSockets \
                 can use every descriptor before the user limit refuses them; raise the limit or lower \
                 MAX_CONCURRENT_USERS"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_free() {
        assert_eq!(pending_cap(1024, Some(1_048_576)), 1024);
        assert_eq!(pending_cap(1024, Some(200)), 68);
        assert_eq!(pending_cap(1024, Some(10)), 1);
        assert_eq!(pending_cap(1024, None), 1024);
    }
}
