//! `QueryService` over gRPC: a thin adapter over [`crate::query`].

use std::sync::Arc;

use infrawatch_common::time::now_unix_ms;
use infrawatch_proto::v1 as pb;
use infrawatch_proto::v1::query_service_server::QueryService;
use tonic::{Request, Response, Status};

use crate::model::Health;
use crate::query::{self, ListParams, MetricParams};
use crate::state::State;
use crate::store::Store;

/// The gRPC query service.
#[derive(Clone)]
pub struct QueryApi {
    state: Arc<State>,
    store: Store,
}

impl QueryApi {
    /// Answers from `state`, and from `store` for older metric ranges.
    pub fn new(state: Arc<State>, store: Store) -> Self {
        Self { state, store }
    }
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn get_summary(
        &self,
        _request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::FleetSummary>, Status> {
        Ok(Response::new(query::summary(&self.state, None)))
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        let r = request.into_inner();
        let health = match Health::try_from(r.health) {
            Ok(Health::Unspecified) => None,
            Ok(h) => Some(h),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown health value {}",
                    r.health
                )));
            }
        };
        let params = ListParams::parse(&r.kind, health, &r.label_selector, r.limit, &r.cursor)?;
        let (resources, next) = query::list(&self.state, &params);
        Ok(Response::new(pb::ListResourcesResponse {
            resources,
            next_cursor: next.unwrap_or_default(),
        }))
    }

    async fn get_resource(
        &self,
        request: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        Ok(Response::new(query::get(
            &self.state,
            &request.into_inner().id,
            None,
        )?))
    }

    async fn query_metric(
        &self,
        request: Request<pb::QueryMetricRequest>,
    ) -> Result<Response<pb::QueryMetricResponse>, Status> {
        let r = request.into_inner();
        let params = MetricParams::parse(
            &r.resource_id,
            &r.metric,
            &r.attributes,
            r.from_unix_ms,
            r.to_unix_ms,
            r.step_ms,
            now_unix_ms(),
        )?;
        Ok(Response::new(
            query::metric(&self.state, &self.store, &params, None).await?,
        ))
    }

    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Result<Response<pb::Availability>, Status> {
        let r = request.into_inner();
        let (from, to) = crate::availability::window(r.from_unix_ms, r.to_unix_ms, now_unix_ms());
        Ok(Response::new(
            crate::availability::of_resource(
                &self.state,
                &self.store,
                &r.resource_id,
                from,
                to,
                None,
            )
            .await?,
        ))
    }
}
