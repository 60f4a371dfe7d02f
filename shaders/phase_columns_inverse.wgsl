// Phase exchange, pass 3 of 4: the inverse DFT of every column of the exchanged spectrum
// (unnormalised; pass 4 divides by h·w). c[p, y, u] = Σ_v z[p, v, u]·exp(+2πi·v·y/h).
// One invocation per (plane, y, u); info = [planes, h, w, w/2 + 1].

@group(0) @binding(0) var<storage, read_write> z: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> c: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> info: array<u32>;

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
        let y = (i / wf) % rows;
        let p = i / (wf * rows);
        var acc = vec2<f32>(0.0);
        let rot = twiddle(y, rows);
        var t = vec2<f32>(1.0, 0.0);
        var idx = 0u;
        for (var v = 0u; v < rows; v++) {
            if v % RESYNC == 0u {
                t = twiddle(idx, rows);
            }
            acc += cmul(z[(p * rows + v) * wf + u], t);
            t = cmul(t, rot);
            idx += y;
            if idx >= rows {
                idx -= rows;
            }
        }
        c[i] = acc;
    }
}
