//! `max_connections` (global, and each listener's own) as a limit a reload can resize. Raising it lets waiting clients in at
//! once; lowering it lets the connections above the new limit finish and makes new ones wait
//! until the count is below it.
//!
//! tokio's `Semaphore` cannot take back permits that are out, so a lowered limit would only
//! bind once enough connections ended; a counter and a `Notify` state the rule directly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Limit {
    max: AtomicUsize,
    active: AtomicUsize,
    /// Accept loops waiting for room; releases notify only when someone waits.
    waiting: AtomicUsize,
    room: Notify,
}

/// One connection's place under the limit, given back on drop.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Limit>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.room.notify_waiters();
        }
    }
}

impl Limit {
    pub fn new(max: usize) -> Arc<Limit> {
        Arc::new(Limit {
            max: AtomicUsize::new(max),
            active: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        })
    }

    /// Connections holding a permit now.
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Whether more places are out than the limit allows now (it was lowered since they were
    /// taken).
    pub fn over(&self) -> bool {
        self.active.load(Ordering::SeqCst) > self.max.load(Ordering::SeqCst)
    }

    /// Sets a new limit; connections already admitted are never cut.
    pub(crate) fn resize(&self, max: usize) {
        self.max.store(max, Ordering::SeqCst);
        self.room.notify_waiters();
    }

    /// A permit if the count is below the limit now.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut cur = self.active.load(Ordering::SeqCst);
        loop {
            if cur >= self.max.load(Ordering::SeqCst) {
                return None;
            }
            match self.active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Permit(self.clone())),
                Err(now) => cur = now,
            }
        }
    }

    /// Waits until the count is below the limit and takes a place.
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        if let Some(p) = self.try_acquire() {
            return p;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _unwait = Unwait(self);
        loop {
            // Registered before the check, so a release between the check and the await
            // still wakes us.
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.try_acquire() {
                return p;
            }
            notified.await;
        }
    }
}

struct Unwait<'a>(&'a Limit);

impl Drop for Unwait<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn lowering_the_limit_keeps_admitted_permits_and_holds_new_ones() {
        let limit = Limit::new(3);
        let a = limit.acquire().await;
        let b = limit.acquire().await;
        limit.resize(1);
        assert_eq!(limit.active(), 2, "admitted connections are not cut");
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_none(), "still at the lowered limit");
        let waiter = tokio::spawn({
            let l = limit.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("a release wakes the waiter")
            .unwrap();
        assert_eq!(limit.active(), 1);
        drop(c);
        assert_eq!(limit.active(), 0);
    }

    #[tokio::test]
    async fn raising_the_limit_wakes_a_waiter() {
        let limit = Limit::new(1);
        let _a = limit.acquire().await;
        let waiter = tokio::spawn({
            let l = limit.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        limit.resize(2);
        let _b = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("a raise wakes the waiter")
            .unwrap();
        assert_eq!(limit.active(), 2);
    }
}
