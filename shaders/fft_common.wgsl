// Shared by the FFT passes of the phase exchange (pasted in as {{ fft }}, after {{ common }}):
// an in-place radix-2 Cooley–Tukey FFT over workgroup memory for power-of-two lengths up to 512.

const MAX_N: u32 = 512u;

// Two transforms' worth: the first at 0, the second at MAX_N.
var<workgroup> ab: array<vec2<f32>, 1024>;

// The index k with its log2(n) low bits reversed.
fn bit_reverse(k: u32, bits: u32) -> u32 {
    return reverseBits(k) >> (32u - bits);
}

// exp(sign·2πi·k/n), sign ±1.
fn signed_twiddle(k: u32, n: u32, sign: f32) -> vec2<f32> {
    return twiddle(k, n) * vec2<f32>(1.0, sign);
}

// In-place FFT of ab[base .. base + n] (input in bit-reversed order, output in natural order);
// n is workgroup-uniform, every invocation calls it. sign −1: forward, +1: inverse (unscaled).
fn fft(lid: u32, n: u32, sign: f32, base: u32) {
    for (var len = 2u; len <= n; len <<= 1u) {
        workgroupBarrier();
        let half = len >> 1u;
        for (var t = lid; t < n / 2u; t += 64u) {
            let i0 = base + (t / half) * len + t % half;
            let i1 = i0 + half;
            let w = signed_twiddle((t % half) * (n / len), n, sign);
            let u = ab[i0];
            let v = cmul(ab[i1], w);
            ab[i0] = u + v;
            ab[i1] = u - v;
        }
    }
    workgroupBarrier();
}
