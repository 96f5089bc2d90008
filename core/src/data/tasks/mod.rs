//! The registered tasks and eval sets, one file each (a file may register a family, e.g.
//! `mnli`, `mnli-original` and `mnli-mm`). A new task is a new file here with an
//! `inventory::submit!` of a [`crate::data::task::TaskDef`], plus its `mod` line.

pub mod cola;
pub mod cola_ood;
pub mod glue;
pub mod hans;
pub mod mnli;
pub mod paws_qqp;
pub mod qqp;
pub mod rte;
pub mod synthetic;
pub mod text;

#[cfg(test)]
mod tests;
