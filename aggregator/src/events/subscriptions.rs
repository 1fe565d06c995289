//! Named durable subscriptions: a filter and a cursor that the aggregator keeps in
//! the database, so a consumer can be away for hours and catch up from where it
//! acknowledged. Events stay in the outbox until every subscription has
//! acknowledged them (or they pass the configured maximum retention).

use infrawatch_proto::v1 as pb;

use super::filter::FilterSpec;
use super::log::EventLog;
use crate::auth::{Principal, Refusal, refused};
use crate::store::{CursorKind, CursorRow, Store, StoreError};

/// Longest subscription name.
pub const MAX_NAME_LEN: usize = 64;

/// Why a subscription operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No subscription of that name.
    #[error("no subscription named {0:?}")]
    NotFound(String),
    /// The name is taken.
    #[error("a subscription named {0:?} already exists")]
    AlreadyExists(String),
    /// The subscription belongs to another client.
    #[error("subscription {0:?} belongs to another client; only its owner or an admin may use it")]
    NotOwner(String),
    /// The client has as many subscriptions as it may.
    #[error(
        "{owner} already has {limit} subscriptions, the most one client may keep; delete one first"
    )]
    TooMany {
        /// The client.
        owner: String,
        /// The limit.
        limit: usize,
    },
    /// The database failed.
    #[error("the database is unavailable")]
    Store(#[from] StoreError),
}

impl From<SubscriptionError> for tonic::Status {
    fn from(e: SubscriptionError) -> Self {
        let text = e.to_string();
        match e {
            SubscriptionError::Invalid(_) => tonic::Status::invalid_argument(text),
            SubscriptionError::NotFound(_) => tonic::Status::not_found(text),
            SubscriptionError::AlreadyExists(_) => tonic::Status::already_exists(text),
            SubscriptionError::NotOwner(_) => tonic::Status::permission_denied(text),
            SubscriptionError::TooMany { .. } => tonic::Status::resource_exhausted(text),
            SubscriptionError::Store(_) => tonic::Status::unavailable(text),
        }
    }
}

/// A subscription as reported to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInfo {
    /// Its name.
    pub name: String,
    /// Its filter.
    pub filter: FilterSpec,
    /// Last acknowledged position.
    pub position: u64,
    /// Newest event position.
    pub head: u64,
    /// Created (Unix ms).
    pub created_at_ms: i64,
    /// Last acknowledged (Unix ms).
    pub updated_at_ms: i64,
    /// Who created it (`cert:<identity>`, `token:<name>`, `local`; empty when
    /// made before roles existed).
    pub owner: String,
}

impl SubscriptionInfo {
    fn from_row(row: CursorRow, head: u64) -> Result<Self, SubscriptionError> {
        let filter: FilterSpec =
            serde_json::from_str(&row.filter).map_err(|e| StoreError::Corrupt {
                id: row.name.clone(),
                reason: format!("subscription filter: {e}"),
            })?;
        Ok(Self {
            name: row.name,
            filter,
            position: row.position,
            head,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            owner: row.owner,
        })
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Subscription {
        pb::Subscription {
            name: self.name.clone(),
            filter: Some(self.filter.to_proto()),
            position: self.position,
            head_position: self.head,
            created_at_unix_ms: self.created_at_ms,
            updated_at_unix_ms: self.updated_at_ms,
        }
    }

    /// JSON for the REST API (protobuf JSON names).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "filter": {
                "kinds": self.filter.kinds,
                "labelSelector": self.filter.label_selector,
                "namespaces": self.filter.namespaces,
                "transitions": self.filter.transitions,
            },
            "position": self.position.to_string(),
            "headPosition": self.head.to_string(),
            "createdAtUnixMs": self.created_at_ms.to_string(),
            "updatedAtUnixMs": self.updated_at_ms.to_string(),
            "owner": self.owner,
        })
    }
}

/// Checks a subscription name: 1-64 of letters, digits, `-`, `_`, `.`.
pub fn validate_name(name: &str) -> Result<(), SubscriptionError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SubscriptionError::Invalid(format!(
            "subscription name {name:?} must be 1-{MAX_NAME_LEN} characters of letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Most durable subscriptions one client (certificate identity or token) may keep.
pub const MAX_PER_OWNER: usize = 16;

/// The subscriptions of one aggregator database. A reader sees and changes only
/// the subscriptions it created; an admin, every one.
#[derive(Debug, Clone)]
pub struct Subscriptions {
    store: Store,
}

impl Subscriptions {
    /// Subscriptions kept in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Creates `name` with `filter` for `who`, starting at the newest event.
    pub async fn create(
        &self,
        log: &EventLog,
        who: &Principal,
        name: &str,
        filter: FilterSpec,
    ) -> Result<SubscriptionInfo, SubscriptionError> {
        validate_name(name)?;
        filter.compile().map_err(SubscriptionError::Invalid)?;
        let json = serde_json::to_string(&filter)
            .map_err(|e| SubscriptionError::Invalid(e.to_string()))?;
        let owner = who.owner_key();
        let owned = self.rows().await?.filter(|r| r.owner == owner).count();
        if owned >= MAX_PER_OWNER {
            refused(Refusal::Budget, &owner, "durable subscriptions per client");
            return Err(SubscriptionError::TooMany {
                owner,
                limit: MAX_PER_OWNER,
            });
        }
        let head = log.head();
        if !self
            .store
            .create_cursor(name, CursorKind::Subscription, &json, head, &owner)
            .await?
        {
            return Err(SubscriptionError::AlreadyExists(name.to_string()));
        }
        self.get(log, who, name).await
    }

    /// One subscription that `who` may use.
    pub async fn get(
        &self,
        log: &EventLog,
        who: &Principal,
        name: &str,
    ) -> Result<SubscriptionInfo, SubscriptionError> {
        validate_name(name)?;
        match self.store.cursor_row(name).await? {
            Some(row) if row.kind == CursorKind::Subscription => {
                if !who.may_manage(&row.owner) {
                    refused(
                        Refusal::Ownership,
                        &who.owner_key(),
                        "another client's subscription",
                    );
                    return Err(SubscriptionError::NotOwner(name.to_string()));
                }
                SubscriptionInfo::from_row(row, log.head())
            }
            _ => Err(SubscriptionError::NotFound(name.to_string())),
        }
    }

    /// The subscriptions `who` may see, by name.
    pub async fn list(
        &self,
        log: &EventLog,
        who: &Principal,
    ) -> Result<Vec<SubscriptionInfo>, SubscriptionError> {
        let head = log.head();
        self.rows()
            .await?
            .filter(|r| who.may_manage(&r.owner))
            .map(|r| SubscriptionInfo::from_row(r, head))
            .collect()
    }

    async fn rows(&self) -> Result<impl Iterator<Item = CursorRow>, SubscriptionError> {
        Ok(self
            .store
            .cursors()
            .await?
            .into_iter()
            .filter(|r| r.kind == CursorKind::Subscription))
    }

    /// Deletes `name`, if `who` may.
    pub async fn delete(
        &self,
        log: &EventLog,
        who: &Principal,
        name: &str,
    ) -> Result<(), SubscriptionError> {
        self.get(log, who, name).await?;
        if self
            .store
            .delete_cursor(name, CursorKind::Subscription)
            .await?
        {
            Ok(())
        } else {
            Err(SubscriptionError::NotFound(name.to_string()))
        }
    }

    /// Acknowledges everything up to `position`, if `who` may; the cursor never
    /// moves back.
    pub async fn ack(
        &self,
        log: &EventLog,
        who: &Principal,
        name: &str,
        position: u64,
    ) -> Result<SubscriptionInfo, SubscriptionError> {
        validate_name(name)?;
        let head = log.head();
        if position > head {
            return Err(SubscriptionError::Invalid(format!(
                "position {position} is beyond the newest event {head}"
            )));
        }
        let current = self.get(log, who, name).await?;
        if position <= current.position {
            return Ok(current);
        }
        match self.store.advance_cursor(name, position).await? {
            Some(row) => SubscriptionInfo::from_row(row, head),
            None => Err(SubscriptionError::NotFound(name.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("alerting-prod_1.v2").is_ok());
        for bad in ["", "a b", "sink:nats", &"x".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(SubscriptionError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
