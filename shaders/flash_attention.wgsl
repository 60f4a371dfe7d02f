// Flash attention for every (batch, head) in one dispatch, with workgroup memory only (no
// subgroup builtins): softmax(q·kᵀ·scale)·v without materialising the score matrix.
//
// One invocation owns one query row: its scaled query and its output accumulator live in
// vec4 registers (q0.., a0..), the online-softmax state (running max m, running sum l) in f32.
// The workgroup streams keys and values through workgroup memory, TILE_K at a time (the K and
// V tiles together stay within WebGPU's default 16 KiB of workgroup storage). Inputs and output
// may be f16 (`elem`, with `enable f16;`); everything is accumulated in f32.
//
// The per-dimension work is unrolled by the host (the {{ ... }} blocks are generated for the
// head dims), so each key costs no loop iterations: besides being faster, this keeps every
// invocation far below llvmpipe/lavapipe's limit of 65535 loop iterations per invocation,
// past which that driver silently leaves loops early.
//
// Template values: enable_f16, elem, d, dv (head dims of q/k and v), d4, dv4 (the same in
// vec4s, rounded up), tile_q (invocations per workgroup = query rows), tile_k (keys per tile),
// tile_k_d4, tile_k_dv4 (tile sizes in vec4s) and the generated blocks q_init, acc_init,
// score, acc_update, store. Bindings: q [BH, S, D], k [BH, Skv, D], v [BH, Skv, DV], out
// [BH, S, DV], contiguous, and info = [BH, S, Skv, causal, bits of the f32 scale].
// Workgroups: (ceil(S / tile_q), min(BH, 65535), ceil(BH / 65535)).
{{ enable_f16 }}

@group(0) @binding(0) var<storage, read_write> q: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> k: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> v: array<{{ elem }}>;
@group(0) @binding(3) var<storage, read_write> out: array<{{ elem }}>;
@group(0) @binding(4) var<storage, read_write> info: array<u32>;

const D: u32 = {{ d }}u;
const DV: u32 = {{ dv }}u;
const D4: u32 = {{ d4 }}u;
const DV4: u32 = {{ dv4 }}u;
const TILE_Q: u32 = {{ tile_q }}u;
const TILE_K: u32 = {{ tile_k }}u;

var<workgroup> k_tile: array<vec4<f32>, {{ tile_k_d4 }}>;
var<workgroup> v_tile: array<vec4<f32>, {{ tile_k_dv4 }}>;
// The launch parameters, made workgroup-uniform so that the tile loop (with its barriers) is
// in uniform control flow.
var<workgroup> params: array<u32, 4>;

// Four consecutive values of a row of `width` starting at column 4·c4, zero past the row.
fn load_q(row: u32, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let c = c4 * 4u;
    let base = row * D + c;
    if c < D { r.x = f32(q[base]); }
    if c + 1u < D { r.y = f32(q[base + 1u]); }
    if c + 2u < D { r.z = f32(q[base + 2u]); }
    if c + 3u < D { r.w = f32(q[base + 3u]); }
    return r;
}

fn load_k(row: u32, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let c = c4 * 4u;
    let base = row * D + c;
    if c < D { r.x = f32(k[base]); }
    if c + 1u < D { r.y = f32(k[base + 1u]); }
    if c + 2u < D { r.z = f32(k[base + 2u]); }
    if c + 3u < D { r.w = f32(k[base + 3u]); }
    return r;
}

fn load_v(row: u32, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    let c = c4 * 4u;
    let base = row * DV + c;
    if c < DV { r.x = f32(v[base]); }
    if c + 1u < DV { r.y = f32(v[base + 1u]); }
    if c + 2u < DV { r.z = f32(v[base + 2u]); }
    if c + 3u < DV { r.w = f32(v[base + 3u]); }
    return r;
}

fn store4(row: u32, c4: u32, x: vec4<f32>) {
    let c = c4 * 4u;
    let base = row * DV + c;
    if c < DV { out[base] = {{ elem }}(x.x); }
    if c + 1u < DV { out[base + 1u] = {{ elem }}(x.y); }
    if c + 2u < DV { out[base + 2u] = {{ elem }}(x.z); }
    if c + 3u < DV { out[base + 3u] = {{ elem }}(x.w); }
}

@compute @workgroup_size({{ tile_q }}, 1, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    if lid == 0u {
        params[0] = info[0];
        params[1] = info[1];
        params[2] = info[2];
        params[3] = info[3];
    }
    let bh_count = workgroupUniformLoad(&params[0]);
    let s = workgroupUniformLoad(&params[1]);
    let skv = workgroupUniformLoad(&params[2]);
    let causal = workgroupUniformLoad(&params[3]) != 0u;
    let scale = bitcast<f32>(info[4]);

    let bh = wid.y + wid.z * 65535u;
    let row = wid.x * TILE_Q + lid;
    let live = bh < bh_count && row < s;
    // Rows past the end read a valid row and never write.
    let q_row = min(bh, bh_count - 1u) * s + min(row, s - 1u);
{{ q_init }}
{{ acc_init }}
    var m = -3.0e38;
    var l = 0.0;

    // With a causal mask no row of this workgroup looks past its last row.
    var kv_end = skv;
    if causal {
        kv_end = min(skv, wid.x * TILE_Q + TILE_Q);
    }
    let kv_base = min(bh, bh_count - 1u) * skv;
    for (var t0 = 0u; t0 < kv_end; t0 += TILE_K) {
        let n = min(TILE_K, kv_end - t0);
        for (var i = lid; i < n * D4; i += TILE_Q) {
            k_tile[i] = load_k(kv_base + t0 + i / D4, i % D4);
        }
        for (var i = lid; i < n * DV4; i += TILE_Q) {
            v_tile[i] = load_v(kv_base + t0 + i / DV4, i % DV4);
        }
        workgroupBarrier();
        if live {
            var j_end = n;
            if causal {
                j_end = min(n, row + 1u - min(row + 1u, t0));
            }
            for (var j = 0u; j < j_end; j++) {
                let kb = j * D4;
                let score = {{ score }};
                let m_new = max(m, score);
                let correction = exp(m - m_new);
                let p = exp(score - m_new);
                l = l * correction + p;
                let vb = j * DV4;
{{ acc_update }}
                m = m_new;
            }
        }
        workgroupBarrier();
    }
    if live {
        let inv = 1.0 / l;
{{ store }}
    }
}
