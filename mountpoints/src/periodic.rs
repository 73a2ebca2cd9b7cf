//! A background thread that runs a job every so often until it is stopped: the daemon's
//! audit flusher and garbage collector.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Runs `job` every `interval` on a named thread. [`Periodic::stop`] (or dropping it) wakes
/// the thread, lets a job in progress finish, and joins it.
pub struct Periodic {
    name: &'static str,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Periodic {
    /// Starts the thread; `job` runs first one `interval` from now.
    pub fn start(
        name: &'static str,
        interval: Duration,
        mut job: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Periodic> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let (lock, cv) = &*flag;
                loop {
                    {
                        let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                        let (stopped, _) = cv
                            .wait_timeout_while(stopped, interval, |s| !*s)
                            .unwrap_or_else(|p| p.into_inner());
                        if *stopped {
                            return;
                        }
                    }
                    job();
                }
            })?;
        Ok(Periodic {
            name,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (after the job in progress, if any) and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(thread = self.name, "a background thread panicked");
            }
        }
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.halt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn runs_until_stopped() {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        let p = Periodic::start("test-periodic", Duration::from_millis(5), move || {
            counter.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        p.stop();
        let after = runs.load(Ordering::Relaxed);
        assert!(after >= 2, "ran {after} times");
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(runs.load(Ordering::Relaxed), after, "no run after stop");
    }
}
