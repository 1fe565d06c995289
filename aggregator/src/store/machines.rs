//! Agent machine bindings: which machine each agent certificate identity speaks
//! for (`agent_machines`), pinned on the identity's first stream.

use std::time::Instant;

use sqlx::Row;

use super::{Pool, Store, StoreError, observe};

/// The outcome of binding an identity to a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The identity speaks for the machine (bound now or before).
    Bound,
    /// The identity is bound to another machine.
    IdentityElsewhere {
        /// The machine it speaks for.
        machine_id: String,
    },
    /// Another identity speaks for the machine.
    MachineTaken {
        /// The identity that does.
        identity: String,
    },
}

impl Store {
    /// Binds `identity` to `machine_id` unless it is bound already, and says
    /// how they stand. With `exclusive`, a machine is spoken for by the
    /// identity bound to it first (earliest `bound_at_ms`, then the smaller
    /// identity): any other binding to it is removed, so two identities racing
    /// for one machine both see the same winner.
    pub async fn bind_machine(
        &self,
        identity: &str,
        machine_id: &str,
        exclusive: bool,
    ) -> Result<Binding, StoreError> {
        let started = Instant::now();
        let now = infrawatch_common::time::now_unix_ms();
        let result: Result<Vec<(String, String, i64)>, StoreError> = on_pool!(self, pool => {
            async {
                sqlx::query("INSERT INTO agent_machines (identity, machine_id, bound_at_ms) \
                    VALUES ($1, $2, $3) ON CONFLICT (identity) DO NOTHING")
                    .bind(identity).bind(machine_id).bind(now)
                    .execute(pool).await?;
                let rows = sqlx::query("SELECT identity, machine_id, bound_at_ms FROM agent_machines \
                    WHERE identity = $1 OR machine_id = $2")
                    .bind(identity).bind(machine_id)
                    .fetch_all(pool).await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("identity")?, r.try_get("machine_id")?, r.try_get("bound_at_ms")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(StoreError::from)
            }.await
        });
        observe("bind_machine", started, result.is_ok());
        let rows = result?;
        let Some((_, bound, _)) = rows.iter().find(|(i, _, _)| i == identity) else {
            // Released between the insert and the read; the next stream binds again.
            return Ok(Binding::MachineTaken {
                identity: String::new(),
            });
        };
        if bound != machine_id {
            return Ok(Binding::IdentityElsewhere {
                machine_id: bound.clone(),
            });
        }
        if !exclusive {
            return Ok(Binding::Bound);
        }
        let first = rows
            .iter()
            .filter(|(_, m, _)| m == machine_id)
            .min_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
        match first {
            Some((winner, _, _)) if winner != identity => {
                self.release_machine(identity).await?;
                Ok(Binding::MachineTaken {
                    identity: winner.clone(),
                })
            }
            _ => Ok(Binding::Bound),
        }
    }

    /// Releases the binding of `identity`; `false` if it had none.
    pub async fn release_machine(&self, identity: &str) -> Result<bool, StoreError> {
        on_pool!(self, pool => {
            let r = sqlx::query("DELETE FROM agent_machines WHERE identity = $1")
                .bind(identity).execute(pool).await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// The machine `identity` is bound to, if any.
    pub async fn machine_of(&self, identity: &str) -> Result<Option<String>, StoreError> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT machine_id FROM agent_machines WHERE identity = $1")
                .bind(identity).fetch_optional(pool).await?;
            match row {
                Some(r) => Ok(Some(r.try_get("machine_id")?)),
                None => Ok(None),
            }
        })
    }
}
