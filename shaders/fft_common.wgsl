// Shared by the FFT passes of the phase exchange (pasted in as {{ common }}): an in-place
// radix-2 Cooley–Tukey FFT over workgroup memory for power-of-two lengths up to 512.

const TAU: f32 = 6.283185307179586;
const MAX_N: u32 = 512u;

var<workgroup> a: array<vec2<f32>, MAX_N>;
var<workgroup> b: array<vec2<f32>, MAX_N>;
// The launch parameters [planes, h, w, w/2 + 1], made workgroup-uniform.
var<workgroup> params: array<u32, 4>;

fn cmul(x: vec2<f32>, y: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(x.x * y.x - x.y * y.y, x.x * y.y + x.y * y.x);
}

fn load_params(lid: u32) {
    if lid == 0u {
        params[0] = info[0];
        params[1] = info[1];
        params[2] = info[2];
        params[3] = info[3];
    }
}

// The index k with its log2(n) low bits reversed.
fn bit_reverse(k: u32, bits: u32) -> u32 {
    return reverseBits(k) >> (32u - bits);
}

// exp(sign·2πi·k/n).
fn twiddle(k: u32, n: u32, sign: f32) -> vec2<f32> {
    let t = f32(k) * (TAU / f32(n));
    return vec2<f32>(cos(t), sign * sin(t));
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
            let w = twiddle((t % half) * (n / len), n, sign);
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
            let w = twiddle((t % half) * (n / len), n, sign);
            let u = b[i0];
            let v = cmul(b[i1], w);
            b[i0] = u + v;
            b[i1] = u - v;
        }
    }
    workgroupBarrier();
}
