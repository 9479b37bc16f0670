//! The node's one lock-poison policy, for every `std::sync` lock it holds.
//!
//! Its locks guard plain in-memory state (maps of connections, rooms, cache entries, pools,
//! counters), and every change made under one is a single insert, removal, swap or counter
//! step: a panic while one was held leaves the data whole. So a poisoned lock's data is used as
//! it is. Skipping the work instead (the `if let Ok(..) = lock()` form) would strand what the
//! skipped step owned (a connection never removed, a pool connection never returned, a cache
//! entry never marked stale) and hide the panic's cause for good; the panic itself is logged
//! where it happened.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The mutex's guard, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A read guard of the lock, poisoned or not.
pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// A write guard of the lock, poisoned or not.
pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_poisoned_by_a_panic_still_gives_its_data() {
        let map = Arc::new(Mutex::new(vec![1]));
        let held = map.clone();
        let panicked = std::thread::spawn(move || {
            let mut guard = held.lock().unwrap_or_else(PoisonError::into_inner);
            guard.push(2);
            panic!("while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(map.is_poisoned());
        lock(&map).push(3);
        assert_eq!(*lock(&map), vec![1, 2, 3]);

        let rw = Arc::new(RwLock::new(0));
        let held = rw.clone();
        let _ = std::thread::spawn(move || {
            let _guard = held.write().unwrap_or_else(PoisonError::into_inner);
            panic!("while holding the write lock");
        })
        .join();
        assert!(rw.is_poisoned());
        *write(&rw) += 1;
        assert_eq!(*read(&rw), 1);
    }
}
