//! The one pseudo-random generator: seeded by its owner, so a run can be replayed exactly.
//!
//! The core has no randomness of its own. Whoever drives it (the agent from the OS, a test or
//! the simulator from a fixed seed) creates an [`Rng`] and hands it in, which is what makes a
//! simulated swarm deterministic. xorshift64* is plenty for spreading choices; it is not a
//! source of secrets.

/// A seeded xorshift64* generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value; zero is mapped to a valid state).
    pub fn new(seed: u64) -> Rng {
        // xorshift never leaves zero, so a zero state would repeat it forever.
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0); the bias is negligible for the small `n` used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// `len` random bytes: test data and demo images that do not depend on a real file.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        self.fill(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_zero_is_a_valid_seed() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let xs: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        assert!(xs.iter().zip((0..100).map(|_| b.next_u64())).all(|(x, y)| *x == y));
        let mut z = Rng::new(0);
        assert!((0..100).map(|_| z.next_u64()).any(|x| x != 0));
    }

    #[test]
    fn below_and_unit_stay_in_range_and_cover_it() {
        let mut r = Rng::new(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[r.below(10) as usize] = true;
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        assert!(seen.iter().all(|&s| s), "every value of 0..10 comes up in 1000 draws");
    }

    #[test]
    fn fill_handles_lengths_that_are_not_multiples_of_eight() {
        let mut r = Rng::new(3);
        let b = r.bytes(13);
        assert_eq!(b.len(), 13);
        assert!(b.iter().any(|&x| x != 0));
    }
}
