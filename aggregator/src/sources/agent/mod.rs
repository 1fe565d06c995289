//! Agents as a source: the `AgentService.Report` stream ([`stream`]), the checks
//! every batch passes ([`decode`]), the per-agent series budgets
//! ([`budgets`]), resource and relation budgets ([`footprint`]) and the data
//! gaps an agent may have stored per hour ([`gap_budget`]). An agent's samples go to its ledger on the sample path
//! (`crate::samples::ledger`); its resources, health and data gaps go to the
//! planner as a [`crate::sources::Report`] with the batch's position.

pub mod budgets;
pub mod decode;
pub mod footprint;
pub mod gap_budget;
pub mod stream;
