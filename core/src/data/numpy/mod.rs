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

/// What numpy's shuffles share across its generators: masked rejection for bounded integers and
/// a Fisher–Yates shuffle from the last position down.
pub trait NumpyShuffle {
    /// The generator's next 32-bit output.
    fn next_u32(&mut self) -> u32;

    /// A uniform integer in `0..=max` (numpy's `random_interval`, which both the legacy
    /// `permutation` and `Generator.shuffle` use): draws are masked to the smallest all-ones bit
    /// pattern covering `max` and rejected above it.
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `permutation(n)`: `arange(n)` shuffled in place from the end.
    fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut values: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u32) as usize;
            values.swap(i, j);
        }
        values
    }
}

impl NumpyShuffle for LegacyRandomState {
    fn next_u32(&mut self) -> u32 {
        LegacyRandomState::next_u32(self)
    }
}

impl NumpyShuffle for Pcg64Generator {
    fn next_u32(&mut self) -> u32 {
        Pcg64Generator::next_u32(self)
    }
}
