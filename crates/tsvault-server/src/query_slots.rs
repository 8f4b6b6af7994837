//! Queries across all requests: at most `concurrency` run at once (each within its own
//! sample budget), so the memory all queries hold together is bounded too; more wait their
//! turn for up to `queue_timeout`, then get a 503 naming the limit (as VictoriaMetrics'
//! `-search.maxConcurrentRequests` and `-search.maxQueueDuration`).

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::QueryLimits;

pub(crate) struct QuerySlots {
    limits: QueryLimits,
    slots: Arc<Semaphore>,
}

impl QuerySlots {
    pub(crate) fn new(limits: QueryLimits) -> Self {
        let slots = Arc::new(Semaphore::new(limits.concurrency.max(1)));
        QuerySlots { limits, slots }
    }

    /// The most samples one query may read.
    pub(crate) fn samples_max(&self) -> usize {
        self.limits.samples_max
    }

    /// Waits for a turn to run a query; refuses after the queue timeout.
    pub(crate) async fn acquire(&self) -> Result<OwnedSemaphorePermit, (StatusCode, String)> {
        match tokio::time::timeout(
            self.limits.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} queries are running and this one waited {} s for its turn; retry shortly",
                    self.limits.concurrency,
                    self.limits.queue_timeout.as_secs()
                ),
            )),
        }
    }
}
