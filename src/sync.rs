//! Locking a `std::sync::Mutex` or `RwLock` whose holder may have panicked.
//!
//! The mutexes in this server guard plain maps and queues, and no critical section leaves
//! them half-updated on a panic that matters (there are no panics reachable from input).
//! A poisoned lock therefore means a bug elsewhere; skipping the work would silently drop
//! presence, broadcasts or history instead. So the data is used as it is, the poison is
//! cleared, and the event is logged once, at error level, naming the lock.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tracing::error;

/// Locks `m`, recovering (and logging once) if a previous holder panicked.
pub fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> MutexGuard<'a, T> {
    match m.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            error!(
                lock = what,
                "a task panicked while holding this lock; continuing with its data"
            );
            let guard = poisoned.into_inner();
            m.clear_poison();
            guard
        }
    }
}

/// Read-locks `l`, recovering (and logging once) if a writer panicked.
pub fn read<'a, T>(l: &'a RwLock<T>, what: &'static str) -> RwLockReadGuard<'a, T> {
    match l.read() {
        Ok(guard) => guard,
        Err(poisoned) => {
            error!(
                lock = what,
                "a task panicked while holding this lock; continuing with its data"
            );
            let guard = poisoned.into_inner();
            l.clear_poison();
            guard
        }
    }
}

/// Write-locks `l`, recovering (and logging once) if a previous holder panicked.
pub fn write<'a, T>(l: &'a RwLock<T>, what: &'static str) -> RwLockWriteGuard<'a, T> {
    match l.write() {
        Ok(guard) => guard,
        Err(poisoned) => {
            error!(
                lock = what,
                "a task panicked while holding this lock; continuing with its data"
            );
            let guard = poisoned.into_inner();
            l.clear_poison();
            guard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data_and_cleared() {
        let m = std::sync::Arc::new(Mutex::new(vec![1]));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            g.push(2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m, "test"), vec![1, 2]);
        assert!(!m.is_poisoned());
    }
}
