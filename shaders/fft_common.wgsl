// Shared by the FFT passes of the phase exchange (pasted in as {{ fft }}, after {{ common }}):
// an in-place radix-2 Cooley–Tukey FFT over workgroup memory for power-of-two lengths up to 512.

const MAX_N: u32 = 512u;

var<workgroup> a: array<vec2<f32>, MAX_N>;
var<workgroup> b: array<vec2<f32>, MAX_N>;

// The index k with its log2(n) low bits reversed.
fn bit_reverse(k: u32, bits: u32) -> u32 {
    return reverseBits(k) >> (32u - bits);
}

// exp(sign·2πi·k/n), sign ±1.
fn signed_twiddle(k: u32, n: u32, sign: f32) -> vec2<f32> {
    return twiddle(k, n) * vec2<f32>(1.0, sign);
}

// In-place FFT of `a` (input in bit-reversed order, output in natural order); n is
// workgroup-uniform, every invocation calls it. sign −1: forward, +1: inverse (unscaled).
fn fft_a(lid: u32, n: u32, sign: f32) {
    for (var len = 2u; len <= n; len <<= 1u) {
        workgroupBarrier();
        let half = len >> 1u;
        for (var t = lid; t < n / 2u; t += 64u) {
            let i0 = (t / half) * len + t % half;
            let i1 = i0 + half;
            let w = signed_twiddle((t % half) * (n / len), n, sign);
            let u = a[i0];
            let v = cmul(a[i1], w);
            a[i0] = u + v;
            a[i1] = u - v;
        }
    }
    workgroupBarrier();
}

// The same on `b`.
fn fft_b(lid: u32, n: u32, sign: f32) {
    for (var len = 2u; len <= n; len <<= 1u) {
        workgroupBarrier();
        let half = len >> 1u;
        for (var t = lid; t < n / 2u; t += 64u) {
            let i0 = (t / half) * len + t % half;
            let i1 = i0 + half;
            let w = signed_twiddle((t % half) * (n / len), n, sign);
            let u = b[i0];
            let v = cmul(b[i1], w);
            b[i0] = u + v;
            b[i1] = u - v;
        }
    }
    workgroupBarrier();
}
