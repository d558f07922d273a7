//! PATCHED (Parley, see vendor/README.md): the socket's queue of packets waiting for the
//! connection, kept inside the [`Socket`](crate::socket::Socket) in place of a
//! `tokio::sync::mpsc::channel(max_buffer_size)`.
//!
//! The channel's shared state is a heap allocation of about 0.5 KiB (its sender and receiver
//! halves are padded to cache lines), and it allocates its first block of 32 slots when it is
//! made: about 0.8 KiB for every socket, idle or not (heaptrack, 1,000 idle connections). Here an
//! idle socket's queue holds no heap memory but a few slots it already used.
//!
//! The rules are the bounded channel's, as the crate used them:
//! - at most `capacity` packet buffers wait, counting the reserved places ([`Permit`]s);
//!   beyond, a send fails with [`TrySendError::Full`];
//! - once [`PacketQueue::close`] has run (the session closed), sends fail with
//!   [`TrySendError::Closed`], the buffers still queued can be received, then `recv` gives
//!   `None`, and [`PacketQueue::closed`] resolves;
//! - one receiver at a time: the connection that holds the socket's `internal_rx` lock.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;
use tokio::sync::{
    Notify,
    mpsc::error::{TryRecvError, TrySendError},
};

use crate::socket::QueuedPackets;

/// Slots a queue keeps once it is empty again: a burst (presence while many people sign in)
/// must not leave every idle socket holding its peak.
const KEPT_SLOTS: usize = 4;

pub(crate) struct PacketQueue {
    state: Mutex<State>,
    capacity: usize,
    /// The receiver's waker (there is one receiver at a time).
    receiver: AtomicWaker,
    /// Woken when the queue closes, and when a full queue gets room again.
    changed: Notify,
}

#[derive(Default)]
struct State {
    items: VecDeque<QueuedPackets>,
    /// Places held by [`Permit`]s not used yet.
    reserved: usize,
    closed: bool,
}

impl State {
    /// Whether a send (or a reservation) would exceed `capacity`, reserved places counted.
    fn full(&self, capacity: usize) -> bool {
        self.items.len() + self.reserved >= capacity
    }
}

impl PacketQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            capacity,
            receiver: AtomicWaker::new(),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `packets` if there is room.
    pub(crate) fn try_send(
        &self,
        packets: QueuedPackets,
    ) -> Result<(), TrySendError<QueuedPackets>> {
        {
            let mut state = self.state();
            if state.closed {
                return Err(TrySendError::Closed(packets));
            }
            if state.full(self.capacity) {
                return Err(TrySendError::Full(packets));
            }
            state.items.push_back(packets);
        }
        self.receiver.wake();
        Ok(())
    }

    /// Queues `packets`, waiting for room; gives them back if the queue is closed.
    pub(crate) async fn send(&self, mut packets: QueuedPackets) -> Result<(), QueuedPackets> {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the check, so that room made after it is not missed.
            changed.as_mut().enable();
            match self.try_send(packets) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(back),
                Err(TrySendError::Full(back)) => packets = back,
            }
            changed.await;
        }
    }

    /// Holds a place for one packet buffer, sent later with [`Permit::send`].
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        let mut state = self.state();
        if state.closed {
            return Err(TrySendError::Closed(()));
        }
        if state.full(self.capacity) {
            return Err(TrySendError::Full(()));
        }
        state.reserved += 1;
        Ok(Permit { queue: self })
    }

    /// The next packet buffer, or `None` once the queue is closed and empty.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<QueuedPackets>> {
        let mut state = self.state();
        match self.take(&mut state) {
            Ok(packets) => Poll::Ready(Some(packets)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                // Under the lock: a sender queues (and then wakes) only after this.
                self.receiver.register(cx.waker());
                Poll::Pending
            }
        }
    }

    /// The next packet buffer: cancel-safe, a buffer is only taken in the poll that returns it.
    /// PATCHED (Parley): the WebSocket writer polls `poll_recv` itself; tests and the test
    /// harness's dummy sockets await this.
    #[cfg(any(test, feature = "__test_harness"))]
    pub(crate) async fn recv(&self) -> Option<QueuedPackets> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub(crate) fn try_recv(&self) -> Result<QueuedPackets, TryRecvError> {
        self.take(&mut self.state())
    }

    fn take(&self, state: &mut State) -> Result<QueuedPackets, TryRecvError> {
        let was_full = state.full(self.capacity);
        let Some(packets) = state.items.pop_front() else {
            return Err(if state.closed {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        };
        if state.items.is_empty() && state.items.capacity() > KEPT_SLOTS {
            state.items = VecDeque::new();
        }
        if was_full {
            self.changed.notify_waiters();
        }
        Ok(packets)
    }

    /// Wakes the receiver without queueing anything: the WebSocket writer is the receiver, and
    /// the other things it waits for (the session's cancellation, a volatile packet, a pong)
    /// wake it this way (see `forward_to_socket`).
    pub(crate) fn wake_receiver(&self) {
        self.receiver.wake();
    }

    /// No more sends; what is queued can still be received.
    pub(crate) fn close(&self) {
        self.state().closed = true;
        self.changed.notify_waiters();
        self.receiver.wake();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Resolves once the queue is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.is_closed() {
                return;
            }
            changed.await;
        }
    }
}

impl std::fmt::Debug for PacketQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("PacketQueue")
            .field("queued", &state.items.len())
            .field("reserved", &state.reserved)
            .field("capacity", &self.capacity)
            .field("closed", &state.closed)
            .finish()
    }
}

/// A place held in a [`PacketQueue`]; given back if dropped unused.
pub(crate) struct Permit<'a> {
    queue: &'a PacketQueue,
}

impl Permit<'_> {
    /// Queues `packets` in the held place (dropped if the queue closed meanwhile, as the
    /// channel's receiver dropped what was sent after it closed).
    pub(crate) fn send(self, packets: QueuedPackets) {
        let queue = self.queue;
        std::mem::forget(self);
        {
            let mut state = queue.state();
            state.reserved -= 1;
            if state.closed {
                return;
            }
            state.items.push_back(packets);
        }
        queue.receiver.wake();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let was_full = {
            let mut state = self.queue.state();
            let was_full = state.full(self.queue.capacity);
            state.reserved -= 1;
            was_full
        };
        if was_full {
            self.queue.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engineioxide_core::Packet;
    use smallvec::smallvec;

    fn ping() -> QueuedPackets {
        Box::new(smallvec![Packet::Ping])
    }

    #[test]
    fn holds_at_most_its_capacity_counting_reserved_places() {
        let queue = PacketQueue::new(2);
        queue.try_send(ping()).unwrap();
        let permit = queue.try_reserve().unwrap();
        assert!(matches!(queue.try_send(ping()), Err(TrySendError::Full(_))));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Full(()))));
        drop(permit);
        queue.try_send(ping()).unwrap();
        assert!(queue.try_recv().is_ok());
        assert!(queue.try_recv().is_ok());
        assert!(matches!(queue.try_recv(), Err(TryRecvError::Empty)));
    }

    #[test]
    fn a_closed_queue_refuses_sends_and_still_gives_what_was_queued() {
        let queue = PacketQueue::new(4);
        queue.try_send(ping()).unwrap();
        let permit = queue.try_reserve().unwrap();
        queue.close();
        assert!(queue.is_closed());
        assert!(matches!(
            queue.try_send(ping()),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(queue.try_reserve(), Err(TrySendError::Closed(()))));
        permit.send(ping());
        assert!(queue.try_recv().is_ok());
        assert!(matches!(queue.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[test]
    fn an_emptied_queue_gives_back_the_slots_of_a_burst() {
        let queue = PacketQueue::new(128);
        for _ in 0..100 {
            queue.try_send(ping()).unwrap();
        }
        while queue.try_recv().is_ok() {}
        assert!(queue.state().items.capacity() <= KEPT_SLOTS);
    }

    #[tokio::test]
    async fn the_receiver_and_a_waiting_sender_are_woken() {
        let queue = std::sync::Arc::new(PacketQueue::new(1));
        let receiver = tokio::spawn({
            let queue = queue.clone();
            async move {
                let mut got = 0;
                while queue.recv().await.is_some() {
                    got += 1;
                }
                got
            }
        });
        for _ in 0..10 {
            queue.send(ping()).await.unwrap();
        }
        let closed = tokio::spawn({
            let queue = queue.clone();
            async move { queue.closed().await }
        });
        queue.close();
        closed.await.unwrap();
        assert_eq!(receiver.await.unwrap(), 10);
    }
}
