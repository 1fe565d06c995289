//! `EventService` over gRPC: live filtered streams resumable from a position, and
//! durable subscriptions. Callers are readers or admins (a [`crate::auth::grpc::RoleGate`]
//! in front of the service); a reader uses only its own subscriptions.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use infrawatch_proto::v1 as pb;
use infrawatch_proto::v1::event_service_server::EventService;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::auth::grpc::caller;
use crate::auth::streams::StreamCaps;
use crate::events::StoredEvent;
use crate::events::filter::FilterSpec;
use crate::events::log::{EventLog, LogError};
use crate::events::subscriptions::Subscriptions;
use crate::events::watch;

/// The gRPC event service; also what the REST event endpoints share.
#[derive(Clone)]
pub struct EventApi {
    /// The event log.
    pub log: Arc<EventLog>,
    /// Durable subscriptions.
    pub subscriptions: Subscriptions,
    /// Caps on open streams.
    pub caps: Arc<StreamCaps>,
    /// Ends every stream at shutdown.
    pub stop: CancellationToken,
}

impl EventApi {
    /// The service over `log` and `subscriptions`, with at most what `caps`
    /// allows open at once; streams end when `stop` is cancelled.
    pub fn new(
        log: Arc<EventLog>,
        subscriptions: Subscriptions,
        caps: Arc<StreamCaps>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            log,
            subscriptions,
            caps,
            stop,
        }
    }

    /// Where a watch starts and what it carries: a subscription's cursor and filter,
    /// or the given position (default: now) and filter.
    pub async fn resolve(
        &self,
        who: &Principal,
        filter: FilterSpec,
        after: Option<u64>,
        subscription: &str,
    ) -> Result<(u64, crate::events::filter::EventFilter), Status> {
        let (spec, after) = if subscription.is_empty() {
            (filter, after.unwrap_or_else(|| self.log.head()))
        } else {
            if !filter.is_empty() || after.is_some() {
                return Err(Status::invalid_argument(
                    "a subscription brings its own filter and position; leave filter and after_position empty",
                ));
            }
            let sub = self.subscriptions.get(&self.log, who, subscription).await?;
            (sub.filter, sub.position)
        };
        let head = self.log.head();
        if after > head {
            return Err(Status::out_of_range(format!(
                "position {after} is beyond the newest event {head}"
            )));
        }
        let compiled = spec
            .compile()
            .map_err(Status::invalid_argument)?
            .within(who.scope.clone());
        Ok((after, compiled))
    }
}

/// Maps a log error to the status a client sees.
pub fn log_status(e: &LogError) -> Status {
    match e {
        LogError::Pruned { .. } | LogError::Ahead { .. } => Status::out_of_range(e.to_string()),
        LogError::Store(_) => Status::unavailable(e.to_string()),
        LogError::Undecodable { .. } => Status::internal(e.to_string()),
    }
}

fn envelope(e: &StoredEvent) -> pb::EventEnvelope {
    pb::EventEnvelope {
        position: e.position,
        event: Some(e.event.clone()),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::EventEnvelope, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let who = caller(&request)?.clone();
        let ticket = self.caps.admit(&who).map_err(Status::resource_exhausted)?;
        let r = request.into_inner();
        let (after, filter) = self
            .resolve(
                &who,
                FilterSpec::from_proto(r.filter.as_ref()),
                r.after_position,
                &r.subscription,
            )
            .await?;
        // Fail early (not as the first stream item) when the position was pruned.
        if let Err(e) = self.log.read_after(after, 1).await {
            return Err(log_status(&e));
        }
        let rx = watch::watch(self.log.clone(), after, filter, self.stop.clone());
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        // The ticket lives as long as the stream: closing it frees the place.
        let stream = futures::StreamExt::map(stream, move |item| {
            let _open = &ticket;
            match item {
                Ok(e) => Ok(envelope(&e)),
                Err(e) => Err(log_status(&e)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request)?.clone();
        let r = request.into_inner();
        let sub = self
            .subscriptions
            .create(
                &self.log,
                &who,
                &r.name,
                FilterSpec::from_proto(r.filter.as_ref()),
            )
            .await?;
        Ok(Response::new(sub.to_proto()))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let subs = self
            .subscriptions
            .list(&self.log, caller(&request)?)
            .await?;
        Ok(Response::new(pb::ListSubscriptionsResponse {
            subscriptions: subs.iter().map(|s| s.to_proto()).collect(),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<pb::DeleteSubscriptionRequest>,
    ) -> Result<Response<pb::DeleteSubscriptionResponse>, Status> {
        let who = caller(&request)?;
        self.subscriptions
            .delete(&self.log, who, &request.get_ref().name)
            .await?;
        Ok(Response::new(pb::DeleteSubscriptionResponse {}))
    }

    async fn ack_events(
        &self,
        request: Request<pb::AckEventsRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let who = caller(&request)?;
        let r = request.get_ref();
        let sub = self
            .subscriptions
            .ack(&self.log, who, &r.name, r.position)
            .await?;
        Ok(Response::new(sub.to_proto()))
    }
}
