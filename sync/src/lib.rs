//! Locking a `std::sync::Mutex` whose holder panicked.
//!
//! Every lock in CERES guards state that is valid between statements (a
//! map, a counter, a cached report): a panic while holding one leaves the
//! last complete value, not a torn one. So a poisoned lock is taken as it
//! is, rather than spreading the panic to every later caller (a relay
//! thread, the status RPC, the metrics page). This trait is that decision,
//! written once.

use std::sync::{Mutex, MutexGuard};

/// `lock()` and `get_mut()` that ignore poisoning (see the crate docs).
pub trait Unpoison<T: ?Sized> {
    /// Locks, taking over the value a panicking holder left.
    fn locked(&self) -> MutexGuard<'_, T>;
    /// The value through an exclusive reference, poisoned or not.
    fn locked_mut(&mut self) -> &mut T;
}

impl<T: ?Sized> Unpoison<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn locked_mut(&mut self) -> &mut T {
        self.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_holder_leaves_the_lock_usable_with_its_last_value() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = std::sync::Arc::clone(&m);
        let r = std::thread::spawn(move || {
            let mut g = held.lock().unwrap();
            *g = 2;
            panic!("holder panics");
        })
        .join();
        assert!(r.is_err());
        assert!(m.is_poisoned(), "the std lock is poisoned");
        assert_eq!(*m.locked(), 2, "the value written before the panic");
        *m.locked() = 3;
        let mut owned = std::sync::Arc::try_unwrap(m).unwrap();
        assert_eq!(*owned.locked_mut(), 3);
    }
}
