//! Kubernetes Warning events (`k8s_warnings`): written by the leader's
//! watches, read by any replica for `GET /api/v1/kubernetes/events`.

use std::time::Instant;

use serde::Serialize;
use sqlx::{QueryBuilder, Row};

use super::{BeginWrite, Pool, Store, StoreError, observe};

/// One Warning event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WarningRow {
    /// The cluster.
    pub cluster: String,
    /// The event's namespace.
    pub namespace: String,
    /// The event object's name.
    pub name: String,
    /// The resource it is about.
    pub resource_id: String,
    /// Why (`BackOff`, `FailedMount`, `FailedScheduling`, ...).
    pub reason: String,
    /// What happened, as the reporting controller wrote it.
    pub note: String,
    /// How many times it happened.
    pub count: i64,
    /// When it last happened (Unix ms).
    pub last_seen_ms: i64,
}

/// What to select.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarningFilter {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Only these clusters (empty: all), from the caller's scope.
    pub clusters: Vec<String>,
    /// Only about this resource.
    pub resource_id: Option<String>,
    /// Only with this reason.
    pub reason: Option<String>,
    /// Only those last seen after this time.
    pub since_ms: Option<i64>,
    /// At most this many, newest first.
    pub limit: u32,
}

impl Store {
    /// Writes `upserts` and removes `deletes` (namespace, name) of `cluster`;
    /// with `replace`, every other row of the cluster goes first (a new leader's
    /// complete list).
    pub async fn write_warnings(
        &self,
        cluster: &str,
        upserts: &[WarningRow],
        deletes: &[(String, String)],
        replace: bool,
    ) -> Result<(), StoreError> {
        if upserts.is_empty() && deletes.is_empty() && !replace {
            return Ok(());
        }
        let started = Instant::now();
        let result: Result<(), StoreError> = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin_write().await?;
                if replace {
                    sqlx::query("DELETE FROM k8s_warnings WHERE cluster = $1")
                        .bind(cluster).execute(&mut *tx).await?;
                }
                for (namespace, name) in deletes {
                    sqlx::query("DELETE FROM k8s_warnings WHERE cluster = $1 AND namespace = $2 AND name = $3")
                        .bind(cluster).bind(namespace).bind(name).execute(&mut *tx).await?;
                }
                for w in upserts {
                    sqlx::query("INSERT INTO k8s_warnings \
                        (cluster, namespace, name, resource_id, reason, note, count, last_seen_ms) \
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                        ON CONFLICT (cluster, namespace, name) DO UPDATE SET resource_id = excluded.resource_id, \
                        reason = excluded.reason, note = excluded.note, count = excluded.count, \
                        last_seen_ms = excluded.last_seen_ms")
                        .bind(&w.cluster).bind(&w.namespace).bind(&w.name).bind(&w.resource_id)
                        .bind(&w.reason).bind(&w.note).bind(w.count).bind(w.last_seen_ms)
                        .execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }.await
        });
        observe("write_warnings", started, result.is_ok());
        result
    }

    /// Warning events matching `filter`, newest first.
    pub async fn warnings(&self, filter: &WarningFilter) -> Result<Vec<WarningRow>, StoreError> {
        let started = Instant::now();
        let result: Result<Vec<WarningRow>, StoreError> = on_pool!(self, pool => {
            async {
                let mut qb: QueryBuilder<Db> = QueryBuilder::new(
                    "SELECT cluster, namespace, name, resource_id, reason, note, count, last_seen_ms \
                     FROM k8s_warnings WHERE 1 = 1");
                if let Some(c) = &filter.cluster {
                    qb.push(" AND cluster = ").push_bind(c.clone());
                }
                for (column, values) in [("cluster", &filter.clusters), ("namespace", &filter.namespaces)] {
                    if !values.is_empty() {
                        qb.push(format!(" AND {column} IN ("));
                        let mut list = qb.separated(", ");
                        for v in values {
                            list.push_bind(v.clone());
                        }
                        qb.push(")");
                    }
                }
                if let Some(r) = &filter.resource_id {
                    qb.push(" AND resource_id = ").push_bind(r.clone());
                }
                if let Some(r) = &filter.reason {
                    qb.push(" AND reason = ").push_bind(r.clone());
                }
                if let Some(t) = filter.since_ms {
                    qb.push(" AND last_seen_ms > ").push_bind(t);
                }
                qb.push(" ORDER BY last_seen_ms DESC, cluster, namespace, name LIMIT ")
                    .push_bind(i64::from(filter.limit));
                let rows = qb.build().fetch_all(pool).await?;
                rows.iter()
                    .map(|r| {
                        Ok(WarningRow {
                            cluster: r.try_get("cluster")?,
                            namespace: r.try_get("namespace")?,
                            name: r.try_get("name")?,
                            resource_id: r.try_get("resource_id")?,
                            reason: r.try_get("reason")?,
                            note: r.try_get("note")?,
                            count: r.try_get("count")?,
                            last_seen_ms: r.try_get("last_seen_ms")?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(StoreError::from)
            }.await
        });
        observe("warnings", started, result.is_ok());
        result
    }
}
