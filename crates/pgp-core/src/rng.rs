//! The pipeline's noise: a seeded PRNG on the host, so one seed gives the same noise on every
//! device (burn's device RNGs differ between the CPU backend, each wgpu adapter and the browser).
//!
//! The generator, fixed so other implementations can reproduce it:
//! - SplitMix64 (Steele, Lea, Flood 2014) from `state = seed`: `state += 0x9E3779B97F4A7C15`,
//!   `z = state; z = (z ^ (z >> 30)) · 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) ·
//!   0x94D049BB133111EB; z ^ (z >> 31)` (wrapping arithmetic);
//! - a uniform `u = (next >> 11) · 2⁻⁵³` in `[0, 1)`;
//! - one standard normal per two uniforms by Box–Muller's cosine branch, in f64:
//!   `sqrt(−2 ln(1 − u₁)) · cos(2π u₂)`, rounded to f32.
//!
//! The pipeline draws the start latent's ε first, then the VAE posterior's ε, each in NCHW order
//! (`[1, 4, H/8, W/8]` of the padded image), both even where a mode uses only one of them.

/// SplitMix64.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal value (Box–Muller, cosine branch).
    pub fn next_normal(&mut self) -> f32 {
        let (u1, u2) = (self.next_f64(), self.next_f64());
        ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `n` standard normal values.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_normal()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // The reference outputs of SplitMix64 seeded with 1234567 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn normals_have_unit_moments_and_repeat_per_seed() {
        let v = SplitMix64::new(7).normals(200_000);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert_eq!(SplitMix64::new(7).normals(5), v[..5]);
        assert_ne!(SplitMix64::new(8).normals(5), v[..5]);
    }
}
