//! The budget of request bodies in flight, the guarded request body (its deadline and its
//! share of the budget) and the response body that marks its request done; see the module
//! doc of [`super`].

use super::*;

/// Bytes of request bodies held, over every connection.
pub(super) struct BodyBudget {
    pub(super) in_flight: AtomicU64,
    pub(super) max: u64,
}

impl BodyBudget {
    pub(super) fn try_take(&self, n: u64) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                cur.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }
}

/// What one request holds of the budget, given back when its response is done.
pub(super) struct Reservation {
    pub(super) budget: Arc<BodyBudget>,
    pub(super) bytes: AtomicU64,
}

impl Reservation {
    pub(super) fn grow(&self, n: u64) -> bool {
        if self.budget.try_take(n) {
            self.bytes.fetch_add(n, Ordering::AcqRel);
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let n = *self.bytes.get_mut();
        self.budget.in_flight.fetch_sub(n, Ordering::AcqRel);
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the request body did not arrive within {0:?}")]
    TimedOut(Duration),
    #[error("too many request bodies in flight")]
    OverBudget,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A request body with a deadline, counted against the budget beyond what it reserved.
pub(super) struct GuardedBody {
    pub(super) inner: Incoming,
    pub(super) deadline: Pin<Box<tokio::time::Sleep>>,
    pub(super) timeout: Duration,
    pub(super) reservation: Arc<Reservation>,
    /// Bytes covered by the reservation taken up front (the declared length).
    pub(super) reserved: u64,
    pub(super) seen: u64,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let before = this.seen;
                    this.seen += n;
                    let over = this.seen.saturating_sub(this.reserved.max(before));
                    if over > 0 && !this.reservation.grow(over) {
                        return Poll::Ready(Some(Err(BodyError::OverBudget)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::TimedOut(this.timeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request done (and gives back its body budget) when it
/// ends or is dropped.
pub(super) struct TrackedBody {
    pub(super) inner: Body,
    pub(super) _done: RequestDone,
}

pub(super) struct RequestDone {
    pub(super) conns: Arc<Connections>,
    pub(super) id: u64,
    pub(super) _reservation: Option<Arc<Reservation>>,
}

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.conns.end_request(self.id);
    }
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------- serving
