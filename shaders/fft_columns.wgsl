// Phase exchange (FFT path), pass 2 of 3: per column of the row spectra, the forward FFTs of
// F's and H's columns, the exchange z = |X_H|·exp(i·angle(X_F)) (angle(0) = 0), and the
// inverse FFT of z (unnormalised), all in workgroup memory. One workgroup per (plane, u).

@group(0) @binding(0) var<storage, read_write> rf: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> rh: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> c: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

{{ common }}

{{ fft }}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pr = load_params(lid);
    let planes = pr.planes;
    let n = pr.rows;
    let wf = pr.wf;
    let column = flat_index(wid, 0u, 1u);
    let live = column < planes * wf;
    let col = min(column, planes * wf - 1u);
    let p = col / wf;
    let u = col % wf;
    let bits = countTrailingZeros(n);
    for (var y = lid; y < n; y += 64u) {
        let src = (p * n + y) * wf + u;
        ab[bit_reverse(y, bits)] = rf[src];
        ab[MAX_N + bit_reverse(y, bits)] = rh[src];
    }
    fft(lid, n, -1.0, 0u);
    fft(lid, n, -1.0, MAX_N);
    // The exchange, in place in the first buffer (each invocation its own indices).
    for (var v = lid; v < n; v += 64u) {
        let amp = length(ab[MAX_N + v]);
        let mag = length(ab[v]);
        if mag > 0.0 {
            ab[v] = ab[v] * (amp / mag);
        } else {
            ab[v] = vec2<f32>(amp, 0.0);
        }
    }
    workgroupBarrier();
    for (var v = lid; v < n; v += 64u) {
        ab[MAX_N + bit_reverse(v, bits)] = ab[v];
    }
    fft(lid, n, 1.0, MAX_N);
    if live {
        for (var y = lid; y < n; y += 64u) {
            c[(p * n + y) * wf + u] = ab[MAX_N + y];
        }
    }
}
