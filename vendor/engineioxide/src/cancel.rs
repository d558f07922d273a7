//! PATCHED (Parley, see vendor/README.md): a socket's cancellation, kept inside the
//! [`Socket`](crate::socket::Socket) in place of a `tokio_util::sync::CancellationToken`.
//!
//! A token is an `Arc` of a tree node (112 bytes of heap per socket) made for parents and
//! children, which the crate never makes: every socket has one token, cancelled once when the
//! session closes. Here it is a flag and a [`Notify`] in the socket. The futures are
//! tokio-util's, by another name: [`Cancelled`] is `WaitForCancellationFuture` and
//! [`RunUntilCancelled`] is `WithCancellationTokenFuture`, with its rules: made after the
//! cancel, it resolves to `None` without polling the future; made before, the future is polled
//! first at each poll (a future and a cancellation ready together give the future's output).

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::sync::{Notify, futures::Notified};

#[derive(Debug, Default)]
pub(crate) struct Cancellation {
    cancelled: AtomicBool,
    /// Woken (`notify_waiters`) once, when the flag is set.
    notify: Notify,
}

impl Cancellation {
    /// Cancels, for good: every [`Cancelled`] resolves, made before or after.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Resolves once cancelled.
    pub(crate) fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            cancellation: self,
            notified: self.notify.notified(),
        }
    }

    /// `future`'s output, or `None` once cancelled (see the module's doc for which wins).
    pub(crate) fn run_until_cancelled<F: Future>(&self, future: F) -> RunUntilCancelled<'_, F> {
        RunUntilCancelled {
            future: (!self.is_cancelled()).then_some(future),
            cancelled: self.cancelled(),
        }
    }
}

pin_project! {
    /// See [`Cancellation::cancelled`].
    pub(crate) struct Cancelled<'a> {
        cancellation: &'a Cancellation,
        #[pin]
        notified: Notified<'a>,
    }
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // The wait is registered (or already notified: a `Notified` made before a
        // `notify_waiters` resolves) before the flag is read, so a cancel between the two
        // wakes this task.
        if this.notified.poll(cx).is_ready() || this.cancellation.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

pin_project! {
    /// See [`Cancellation::run_until_cancelled`].
    pub(crate) struct RunUntilCancelled<'a, F> {
        // `None` when made after the cancel.
        #[pin]
        future: Option<F>,
        #[pin]
        cancelled: Cancelled<'a>,
    }
}

impl<F: Future> Future for RunUntilCancelled<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(output) = future.poll(cx) {
            Poll::Ready(Some(output))
        } else if this.cancelled.poll(cx).is_ready() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_wait_started_before_the_cancel_ends_with_it() {
        let cancellation = Arc::new(Cancellation::default());
        let waiting = tokio::spawn({
            let cancellation = cancellation.clone();
            async move { cancellation.cancelled().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        cancellation.cancel();
        tokio::time::timeout(TIMEOUT, waiting)
            .await
            .expect("the wait should end")
            .unwrap();
    }

    #[tokio::test]
    async fn a_wait_made_before_and_polled_after_the_cancel_ends_at_once() {
        let cancellation = Cancellation::default();
        let made_before = cancellation.cancelled();
        cancellation.cancel();
        tokio::time::timeout(TIMEOUT, made_before)
            .await
            .expect("the wait should end");
        tokio::time::timeout(TIMEOUT, cancellation.cancelled())
            .await
            .expect("and one made after too");
        assert!(cancellation.is_cancelled());
    }

    #[tokio::test]
    async fn a_run_gives_the_output_or_none_once_cancelled() {
        let cancellation = Cancellation::default();
        assert_eq!(cancellation.run_until_cancelled(async { 7 }).await, Some(7));

        let pending = cancellation.run_until_cancelled(std::future::pending::<()>());
        let ready_too = cancellation.run_until_cancelled(async { 8 });
        cancellation.cancel();
        assert_eq!(tokio::time::timeout(TIMEOUT, pending).await, Ok(None));
        assert_eq!(
            ready_too.await,
            Some(8),
            "made before the cancel: the future is polled first"
        );
        assert_eq!(
            cancellation.run_until_cancelled(async { 9 }).await,
            None,
            "made after the cancel: the future is not polled"
        );
    }
}
