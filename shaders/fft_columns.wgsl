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
    load_params(lid);
    let planes = workgroupUniformLoad(&params[0]);
    let n = workgroupUniformLoad(&params[1]);
    let wf = workgroupUniformLoad(&params[3]);
    let column = wid.x + wid.y * 65535u;
    let live = column < planes * wf;
    let col = min(column, planes * wf - 1u);
    let p = col / wf;
    let u = col % wf;
    let bits = countTrailingZeros(n);
    for (var y = lid; y < n; y += 64u) {
        let src = (p * n + y) * wf + u;
        a[bit_reverse(y, bits)] = rf[src];
        b[bit_reverse(y, bits)] = rh[src];
    }
    fft_a(lid, n, -1.0);
    fft_b(lid, n, -1.0);
    // The exchange, in place in `a` (each invocation its own indices).
    for (var v = lid; v < n; v += 64u) {
        let amp = length(b[v]);
        let mag = length(a[v]);
        if mag > 0.0 {
            a[v] = a[v] * (amp / mag);
        } else {
            a[v] = vec2<f32>(amp, 0.0);
        }
    }
    workgroupBarrier();
    for (var v = lid; v < n; v += 64u) {
        b[bit_reverse(v, bits)] = a[v];
    }
    fft_b(lid, n, 1.0);
    if live {
        for (var y = lid; y < n; y += 64u) {
            c[(p * n + y) * wf + u] = b[y];
        }
    }
}
