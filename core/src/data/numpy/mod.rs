//! numpy's random number generators, reimplemented so index draws equal numpy's exactly.
//!
//! llmft (the paper's code) samples few-shot training sets with the legacy global RNG
//! ([`LegacyRandomState`]) and shuffles in-context demonstrations with Hugging Face
//! `datasets`' `shuffle`, which uses the modern `Generator` ([`Pcg64Generator`]). Matching both
//! lets a run be compared with a published llmft run index for index. The parity fixtures are
//! written by `core/tests/fixtures/make_sampling_fixtures.py`.

pub mod mt19937;
pub mod pcg64;

pub use mt19937::LegacyRandomState;
pub use pcg64::Pcg64Generator;
