//! Who a client is and what it may do.
//!
//! Every request is made by a [`Principal`]: a certificate's identity and role on
//! gRPC ([`grpc`]), a configured bearer token's name and role on REST
//! ([`tokens`]). Roles (agent, reader, admin) are described in
//! [`infrawatch_common::role`]. A refusal names what was missing and is counted
//! in `infrawatch_aggregator_refused_total{reason}` ([`refused`]). Event
//! streams are capped per client and in total ([`streams`]); a token may be
//! restricted to clusters and namespaces ([`scope`]).

pub mod grpc;
pub mod scope;
pub mod streams;
pub mod tokens;

use std::sync::Arc;

use infrawatch_common::role::Role;

use self::scope::Scope;

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate (gRPC).
    Certificate,
    /// A bearer token (REST).
    Token,
    /// Nothing: REST on a loopback address with no tokens configured, where
    /// whoever can reach the port is the local operator.
    LocalOperator,
}

/// The client behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The certificate identity or the token name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How it proved it.
    pub credential: Credential,
    /// The clusters and namespaces it is restricted to (tokens only); `None`
    /// sees everything.
    pub scope: Option<Arc<Scope>>,
}

impl Principal {
    /// The local operator of an unauthenticated loopback REST port.
    pub fn local_operator() -> Self {
        Self {
            name: "local".into(),
            role: Role::Admin,
            credential: Credential::LocalOperator,
            scope: None,
        }
    }

    /// The key that owns what this principal creates (durable subscriptions):
    /// `cert:<name>`, `token:<name>` or `local`.
    pub fn owner_key(&self) -> String {
        match self.credential {
            Credential::Certificate => format!("cert:{}", self.name),
            Credential::Token => format!("token:{}", self.name),
            Credential::LocalOperator => "local".into(),
        }
    }

    /// True for an admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// True when `record` is within what this principal sees.
    pub fn sees(&self, record: &crate::model::ResourceRecord) -> bool {
        self.scope.as_ref().is_none_or(|s| s.admits_record(record))
    }

    /// Refuses a restricted principal what spans every cluster and namespace
    /// (agents, gaps, dead letters, the aggregator's own metrics).
    pub fn unrestricted(&self, what: &str) -> Result<(), String> {
        match &self.scope {
            None => Ok(()),
            Some(scope) => {
                let message = format!(
                    "{} is restricted to {}; {what} spans the whole fleet",
                    self.name,
                    scope.describe()
                );
                refused(Refusal::Scope, &self.name, &message);
                Err(message)
            }
        }
    }

    /// May this principal act on something owned by `owner`?
    pub fn may_manage(&self, owner: &str) -> bool {
        self.is_admin() || owner == self.owner_key()
    }
}

/// Why a client was refused, the `reason` label of
/// `infrawatch_aggregator_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No role, or one without the permission.
    Role,
    /// Something that belongs to another client.
    Ownership,
    /// A resource or machine outside what the agent's certificate may speak for.
    Scope,
    /// A budget of the client was spent.
    Budget,
    /// The client (or the aggregator) has as many event streams open as it may.
    StreamCap,
    /// A REST client did not send its request head in time.
    HeaderTimeout,
}

impl Refusal {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Role => "role",
            Refusal::Ownership => "ownership",
            Refusal::Scope => "scope",
            Refusal::Budget => "budget",
            Refusal::StreamCap => "stream_cap",
            Refusal::HeaderTimeout => "header_timeout",
        }
    }
}

/// Logs a refusal at most every 10 s per process.
static WARN: crate::telemetry::WarnEvery = crate::telemetry::WarnEvery::new(10_000);

/// Counts a refusal and logs it (at a bounded rate).
pub fn refused(reason: Refusal, client: &str, message: &str) {
    metrics::counter!(crate::telemetry::REFUSED, "reason" => reason.name()).increment(1);
    if WARN.should_warn(infrawatch_common::time::now_unix_ms()) {
        tracing::warn!(
            reason = reason.name(),
            client,
            message,
            "Request refused (all refusals are counted in infrawatch_aggregator_refused_total; logged at most every 10 s)."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_manages_only_its_own_and_an_admin_everything() {
        let reader = Principal {
            name: "grafana".into(),
            role: Role::Reader,
            credential: Credential::Token,
            scope: None,
        };
        assert_eq!(reader.owner_key(), "token:grafana");
        assert!(reader.may_manage("token:grafana"));
        assert!(!reader.may_manage("cert:grafana"));
        assert!(!reader.may_manage(""));
        let admin = Principal {
            role: Role::Admin,
            ..reader
        };
        assert!(admin.may_manage("cert:slo-service"));
        assert!(Principal::local_operator().may_manage("token:anyone"));
    }
}
