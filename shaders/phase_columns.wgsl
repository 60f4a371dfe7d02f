// Phase exchange, pass 2 of 4: the DFT of every column of the row spectra, then the exchange
// z = |X_H|·exp(i·angle(X_F)) (angle(0) = 0, as torch: a zero X_F gives |X_H|).
// X[p, v, u] = Σ_y r[p, y, u]·exp(−2πi·v·y/h). One invocation per (plane, v, u);
// info = [planes, h, w, w/2 + 1].

@group(0) @binding(0) var<storage, read_write> rf: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> rh: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> z: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

{{ common }}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pr = load_params(lid);
    let planes = pr.planes;
    let rows = pr.rows;
    let wf = pr.wf;
    let i = flat_index(wid, lid, 64u);
    if i < planes * rows * wf {
        let u = i % wf;
        let v = (i / wf) % rows;
        let p = i / (wf * rows);
        var xf = vec2<f32>(0.0);
        var xh = vec2<f32>(0.0);
        let rot = twiddle(v, rows) * vec2<f32>(1.0, -1.0);
        var t = vec2<f32>(1.0, 0.0);
        var idx = 0u;
        for (var y = 0u; y < rows; y++) {
            if y % RESYNC == 0u {
                t = twiddle(idx, rows) * vec2<f32>(1.0, -1.0);
            }
            let src = (p * rows + y) * wf + u;
            xf += cmul(rf[src], t);
            xh += cmul(rh[src], t);
            t = cmul(t, rot);
            idx += v;
            if idx >= rows {
                idx -= rows;
            }
        }
        let amp = length(xh);
        let mag = length(xf);
        if mag > 0.0 {
            z[i] = xf * (amp / mag);
        } else {
            z[i] = vec2<f32>(amp, 0.0);
        }
    }
}
