//! A small seeded random stream for methods' own choices (which demonstrations, which parameter
//! groups), identical on every platform and independent of libtorch's generator.

/// SplitMix64 (Steele, Lea & Flood, 2014, the seeder of the xoshiro generators): the state
/// advances by the golden-ratio increment and each output is the state mixed by two
/// xor-shift-multiplies. Every seed, 0 included, gives a full-period stream of 2⁶⁴ outputs —
/// plenty for choosing demonstrations or parameter groups (not for cryptography).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The stream of input number `index` in a run seeded with `seed`. The index goes through
    /// one SplitMix step of its own first, so neighbouring indices get unrelated streams.
    pub fn for_input(seed: u64, index: u64) -> Self {
        Self::new(seed ^ Self::new(index).next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`) by Lemire's multiply-shift; the bias, at most `n / 2⁶⁴`, is
    /// immaterial for the small n methods draw from.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_outputs() {
        // The first outputs of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(1234567);
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [6457827717110365317, 3203168211198807973, 9817491932198370423]);
    }
}
