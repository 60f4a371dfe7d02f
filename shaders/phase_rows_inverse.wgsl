// Phase exchange, pass 4 of 4: the inverse real DFT of every row (torch's irfft: the
// imaginary parts of the DC and, for even w, Nyquist bins are ignored), divided by h·w.
// out[p, y, x] = (Re c0 + Σ_{0<u<w/2} 2·Re(c_u·e^{+2πi·u·x/w}) + [w even] Re(c_{w/2}·(−1)^x)) / (h·w).
// One invocation per output value; info = [planes, h, w, w/2 + 1].

@group(0) @binding(0) var<storage, read_write> c: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> info: array<u32>;

{{ common }}

@compute @workgroup_size(64, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pr = load_params(lid);
    let planes = pr.planes;
    let rows = pr.rows;
    let w = pr.w;
    let wf = pr.wf;
    let i = flat_index(wid, lid, 64u);
    if i < planes * rows * w {
        let x = i % w;
        let base = (i / w) * wf;
        var acc = c[base].x;
        let rot = twiddle(x, w);
        var t = rot;
        var idx = x;
        for (var u = 1u; u < wf; u++) {
            if u % RESYNC == 0u {
                t = twiddle(idx, w);
            }
            let cu = c[base + u];
            let re = cu.x * t.x - cu.y * t.y;
            if 2u * u == w {
                acc += re;
            } else {
                acc += 2.0 * re;
            }
            t = cmul(t, rot);
            idx += x;
            if idx >= w {
                idx -= w;
            }
        }
        out[i] = acc / f32(rows * w);
    }
}
