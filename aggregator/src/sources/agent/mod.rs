//! Agents as a source: the `AgentService.Report` stream ([`stream`]), the checks
//! every batch passes ([`decode`]) and the per-agent series budgets
//! ([`budgets`]). An agent's samples go to its ledger on the sample path
//! (`crate::samples::ledger`); its resources, health and data gaps go to the
//! planner as a [`crate::sources::Report`] with the batch's position.

pub mod budgets;
pub mod decode;
pub mod stream;
