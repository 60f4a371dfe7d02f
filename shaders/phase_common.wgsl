// Shared by every phase-exchange pass, DFT and FFT (pasted in as {{ common }}).

const TAU: f32 = 6.283185307179586;
// The DFT passes advance twiddles by one complex multiplication per term and recompute them
// exactly from the (exact, integer) angle index every RESYNC terms, so rounding cannot build up.
const RESYNC: u32 = 32u;

// The launch parameters [planes, h, w, w/2 + 1], made workgroup-uniform.
var<workgroup> params: array<u32, 4>;

fn cmul(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

// exp(2πi·k/n).
fn twiddle(k: u32, n: u32) -> vec2<f32> {
    let a = f32(k) * (TAU / f32(n));
    return vec2<f32>(cos(a), sin(a));
}

struct Params {
    planes: u32,
    rows: u32,
    w: u32,
    wf: u32,
}

// The parameters, workgroup-uniform (call first, from every invocation).
fn load_params(lid: u32) -> Params {
    if lid == 0u {
        params[0] = info[0];
        params[1] = info[1];
        params[2] = info[2];
        params[3] = info[3];
    }
    return Params(
        workgroupUniformLoad(&params[0]),
        workgroupUniformLoad(&params[1]),
        workgroupUniformLoad(&params[2]),
        workgroupUniformLoad(&params[3]),
    );
}

// The flat index of an invocation in a (min(groups, 65535), ceil(groups / 65535)) grid of
// 64-invocation workgroups, or of a workgroup when `lid` is 0 and `size` 1.
fn flat_index(wid: vec3<u32>, lid: u32, size: u32) -> u32 {
    return (wid.x + wid.y * 65535u) * size + lid;
}
