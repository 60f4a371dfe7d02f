// Phase exchange (FFT path), pass 3 of 3: the inverse real FFT of every row (torch's irfft:
// the full Hermitian spectrum from the half, imaginary parts of the DC and Nyquist bins
// ignored), divided by h·w. One workgroup per (plane, row).

@group(0) @binding(0) var<storage, read_write> c: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> info: array<u32>;

{{ common }}

{{ fft }}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pr = load_params(lid);
    let planes = pr.planes;
    let rows = pr.rows;
    let n = pr.w;
    let wf = pr.wf;
    let row = flat_index(wid, 0u, 1u);
    let live = row < planes * rows;
    let src = min(row, planes * rows - 1u) * wf;
    let bits = countTrailingZeros(n);
    for (var k = lid; k < n; k += 64u) {
        var x: vec2<f32>;
        if k < wf {
            x = c[src + k];
        } else {
            let m = c[src + n - k];
            x = vec2<f32>(m.x, -m.y);
        }
        if k == 0u || 2u * k == n {
            x.y = 0.0;
        }
        ab[bit_reverse(k, bits)] = x;
    }
    fft(lid, n, 1.0, 0u);
    if live {
        let scale = 1.0 / f32(rows * n);
        for (var x = lid; x < n; x += 64u) {
            out[row * n + x] = ab[x].x * scale;
        }
    }
}
