// Phase exchange (FFT path, power-of-two sizes), pass 1 of 3: the real FFT of every row of F
// and H at once, as one complex FFT of F + iH: X_F[u] = (Z[u] + conj(Z[n−u]))/2,
// X_H[u] = (Z[u] − conj(Z[n−u]))/(2i). One workgroup per (plane, row); info = [planes, h, w,
// w/2 + 1]. Workgroups: (min(rows, 65535), ceil(rows / 65535)).

@group(0) @binding(0) var<storage, read_write> f: array<f32>;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> rf: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> rh: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

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
    let src = min(row, planes * rows - 1u) * n;
    let bits = countTrailingZeros(n);
    for (var k = lid; k < n; k += 64u) {
        ab[bit_reverse(k, bits)] = vec2<f32>(f[src + k], h[src + k]);
    }
    fft(lid, n, -1.0, 0u);
    if live {
        for (var u = lid; u < wf; u += 64u) {
            let z = ab[u];
            let zc = ab[(n - u) % n];
            let s = z + vec2<f32>(zc.x, -zc.y);
            let d = z - vec2<f32>(zc.x, -zc.y);
            rf[row * wf + u] = 0.5 * s;
            rh[row * wf + u] = vec2<f32>(0.5 * d.y, -0.5 * d.x);
        }
    }
}
