//! Work that outlives the request that started it.

use std::future::Future;
use std::pin::Pin;

/// Work that must run to its end even if whoever awaits it goes away: when
/// dropped or detached before it finished, it goes on as a task of its own.
pub(super) struct Detached(Option<Pin<Box<dyn Future<Output = ()> + Send + 'static>>>);

impl Detached {
    pub(super) fn new(work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(Box::pin(work)))
    }

    pub(super) fn detach(&mut self) {
        if let Some(work) = self.0.take() {
            tokio::spawn(work);
        }
    }
}

impl Future for Detached {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(work) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let done = work.as_mut().poll(cx);
        if done.is_ready() {
            self.0 = None;
        }
        done
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.detach();
    }
}
