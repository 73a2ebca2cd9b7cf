//! The locks and atomics of [`crate::RamStore`]: parking_lot's and std's in every build, loom's
//! under the `loom` feature, so that `tests/loom_ram.rs` can run the store's put / commit /
//! collect protocol under every interleaving loom can reach. Only a loom test may enable the
//! feature: loom's types panic outside `loom::model`.

#[cfg(not(feature = "loom"))]
pub(crate) use parking_lot::{Mutex, RwLock};
#[cfg(not(feature = "loom"))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// parking_lot's shape (no poisoning) over loom's mutex.
#[cfg(feature = "loom")]
#[derive(Debug)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(feature = "loom")]
impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// parking_lot's shape (no poisoning) over loom's read-write lock.
#[cfg(feature = "loom")]
#[derive(Debug)]
pub(crate) struct RwLock<T>(loom::sync::RwLock<T>);

#[cfg(feature = "loom")]
impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> Self {
        RwLock(loom::sync::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> loom::sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self) -> loom::sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}
