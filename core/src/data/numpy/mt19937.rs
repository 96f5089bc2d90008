//! numpy's legacy global RNG, `np.random.seed(s)` + `np.random.choice(n, k, replace=False)`,
//! reimplemented bit for bit so ftlab draws the same few-shot sets as llmft.
//!
//! `RandomState` is a 32-bit Mersenne Twister (Matsumoto & Nishimura, 1998,
//! <https://doi.org/10.1145/272991.272995>) seeded by `init_genrand` for an integer seed.
//! `choice(n, k, replace=False)` without weights takes the first `k` entries of
//! `permutation(n)`, which is a Fisher–Yates shuffle of `arange(n)` from the last position down,
//! drawing each swap partner with numpy's `random_interval`: masked rejection sampling on
//! 32-bit outputs (`numpy/random/src/distributions/distributions.c`).

use super::NumpyShuffle;

const N: usize = 624;
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// numpy's `RandomState` (MT19937) as far as sampling indices needs it.
#[derive(Clone)]
pub struct LegacyRandomState {
    state: [u32; N],
    position: usize,
}

impl std::fmt::Debug for LegacyRandomState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyRandomState").field("position", &self.position).finish_non_exhaustive()
    }
}

impl LegacyRandomState {
    /// `np.random.seed(seed)` for an integer seed (numpy accepts 0 ≤ seed < 2³²).
    pub fn seed(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let previous = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(previous ^ (previous >> 30)).wrapping_add(i as u32);
        }
        Self { state, position: N }
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.position >= N {
            self.twist();
        }
        let mut y = self.state[self.position];
        self.position += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform double in [0, 1) from two outputs (`random_sample`, numpy's `rk_double`).
    pub fn random_sample(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    fn twist(&mut self) {
        let mix = |upper: u32, lower: u32, far: u32| {
            let y = (upper & UPPER_MASK) | (lower & LOWER_MASK);
            far ^ (y >> 1) ^ if y & 1 == 1 { MATRIX_A } else { 0 }
        };
        for i in 0..N {
            self.state[i] = mix(self.state[i], self.state[(i + 1) % N], self.state[(i + M) % N]);
        }
        self.position = 0;
    }

    /// `np.random.choice(n, k, replace=False)`: the first `k` entries of a full permutation
    /// (numpy draws all `n - 1` swaps even when `k` is small). `None` when `k > n`.
    pub fn choice_without_replacement(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if k > n || n > u32::MAX as usize {
            return None;
        }
        let mut values = self.permutation(n);
        values.truncate(k);
        Some(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference outputs of `mt19937ar.c` for `init_genrand(5489)` (the default seed).
    #[test]
    fn matches_the_reference_mersenne_twister() {
        let mut rng = LegacyRandomState::seed(5489);
        let first: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
        assert_eq!(first, [3_499_211_612, 581_869_302, 3_890_346_734]);
    }

    #[test]
    fn choice_refuses_more_than_the_population() {
        assert!(LegacyRandomState::seed(0).choice_without_replacement(3, 4).is_none());
        assert_eq!(LegacyRandomState::seed(0).choice_without_replacement(0, 0), Some(vec![]));
    }
}
