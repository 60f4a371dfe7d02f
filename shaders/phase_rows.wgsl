// Phase exchange, pass 1 of 4: the real DFT of every row of F and of H.
// rf[p, y, u] = Σ_x f[p, y, x]·exp(−2πi·u·x/w), u < w/2 + 1 (and the same for H into rh).
// Any h and w: a direct sum with the twiddle index u·x reduced mod w exactly.
// One invocation per (plane, row, frequency); info = [planes, h, w, w/2 + 1].
// Workgroups: 64 invocations, (min(groups, 65535), ceil(groups / 65535)).

@group(0) @binding(0) var<storage, read_write> f: array<f32>;
@group(0) @binding(1) var<storage, read_write> h: array<f32>;
@group(0) @binding(2) var<storage, read_write> rf: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> rh: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

{{ common }}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pr = load_params(lid);
    let planes = pr.planes;
    let rows = pr.rows;
    let w = pr.w;
    let wf = pr.wf;
    let i = flat_index(wid, lid, 64u);
    if i < planes * rows * wf {
        let u = i % wf;
        let base = (i / wf) * w;
        var acc_f = vec2<f32>(0.0);
        var acc_h = vec2<f32>(0.0);
        // t = exp(−2πi·u·x/w), advanced by `rot` per column.
        let rot = twiddle(u, w) * vec2<f32>(1.0, -1.0);
        var t = vec2<f32>(1.0, 0.0);
        var idx = 0u;
        for (var x = 0u; x < w; x++) {
            if x % RESYNC == 0u {
                t = twiddle(idx, w) * vec2<f32>(1.0, -1.0);
            }
            acc_f += f[base + x] * t;
            acc_h += h[base + x] * t;
            t = cmul(t, rot);
            idx += u;
            if idx >= w {
                idx -= w;
            }
        }
        rf[i] = acc_f;
        rh[i] = acc_h;
    }
}
