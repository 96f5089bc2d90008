//! numpy's `np.random.default_rng(seed).permutation(n)`: PCG64 seeded through `SeedSequence`,
//! reimplemented bit for bit.
//!
//! It matters because Hugging Face `datasets.Dataset.shuffle(seed)` is
//! `select(default_rng(seed).permutation(len))`, and llmft shuffles its in-context
//! demonstrations that way. PCG64 is O'Neill's 128-bit LCG with the XSL-RR output
//! (<https://www.pcg-random.org/paper.html>); `SeedSequence` is numpy's entropy mixer
//! (`numpy/random/bit_generator.pyx`), whose 4-word pool yields the 128-bit state and increment.
//! 32-bit draws use each 64-bit output twice, low half first, as numpy's `pcg64_next32` does.

/// PCG's default 128-bit multiplier.
const MULTIPLIER: u128 = 0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645;

/// `SeedSequence` hash constants (`bit_generator.pyx`).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const POOL_SIZE: usize = 4;

/// numpy's `Generator(PCG64(seed))` as far as permutations need it.
#[derive(Debug, Clone)]
pub struct Pcg64Generator {
    state: u128,
    increment: u128,
    buffered_u32: Option<u32>,
}

impl Pcg64Generator {
    /// `np.random.default_rng(seed)` for a non-negative integer seed.
    pub fn seed(seed: u64) -> Self {
        let words = seed_sequence_state(seed);
        let initial_state = (u128::from(words[0]) << 64) | u128::from(words[1]);
        let sequence = (u128::from(words[2]) << 64) | u128::from(words[3]);
        let mut rng = Self { state: 0, increment: (sequence << 1) | 1, buffered_u32: None };
        rng.step();
        rng.state = rng.state.wrapping_add(initial_state);
        rng.step();
        rng
    }

    fn step(&mut self) {
        self.state = self.state.wrapping_mul(MULTIPLIER).wrapping_add(self.increment);
    }

    /// The next 64-bit output: advance, then XOR the halves and rotate by the top 6 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.step();
        let folded = ((self.state >> 64) as u64) ^ (self.state as u64);
        folded.rotate_right((self.state >> 122) as u32)
    }

    /// The next 32-bit output: the low half of a fresh 64-bit draw, then its high half.
    pub fn next_u32(&mut self) -> u32 {
        if let Some(high) = self.buffered_u32.take() {
            return high;
        }
        let next = self.next_u64();
        self.buffered_u32 = Some((next >> 32) as u32);
        next as u32
    }
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> 16)
}

fn mix(x: u32, y: u32) -> u32 {
    let result = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    result ^ (result >> 16)
}

/// `SeedSequence(seed).generate_state(4, np.uint64)`.
fn seed_sequence_state(seed: u64) -> [u64; 4] {
    // The integer's 32-bit words, least significant first (0 is one zero word).
    let entropy: Vec<u32> = if seed >> 32 == 0 { vec![seed as u32] } else { vec![seed as u32, (seed >> 32) as u32] };
    let mut hash_const = INIT_A;
    let mut pool = [0u32; POOL_SIZE];
    for (i, word) in pool.iter_mut().enumerate() {
        *word = hashmix(entropy.get(i).copied().unwrap_or(0), &mut hash_const);
    }
    for source in 0..POOL_SIZE {
        for target in 0..POOL_SIZE {
            if source != target {
                let hashed = hashmix(pool[source], &mut hash_const);
                pool[target] = mix(pool[target], hashed);
            }
        }
    }
    // At most two entropy words for a u64 seed, so none are left over past the pool.
    let mut hash_const = INIT_B;
    let mut words = [0u32; 2 * POOL_SIZE];
    for (i, word) in words.iter_mut().enumerate() {
        let mut value = pool[i % POOL_SIZE] ^ hash_const;
        hash_const = hash_const.wrapping_mul(MULT_B);
        value = value.wrapping_mul(hash_const);
        *word = value ^ (value >> 16);
    }
    std::array::from_fn(|i| u64::from(words[2 * i]) | (u64::from(words[2 * i + 1]) << 32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `np.random.PCG64(0).random_raw(2)` (numpy 2.4.6).
    #[test]
    fn raw_stream_matches_numpy() {
        let mut rng = Pcg64Generator::seed(0);
        assert_eq!([rng.next_u64(), rng.next_u64()], [11_749_869_230_777_074_271, 4_976_686_463_289_251_617]);
    }
}
