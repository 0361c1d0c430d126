// Heatmap overlay: a grid of scores (one per visual token), bilinearly upsampled with cell
// centres at (i + 0.5) cells, coloured through a 256-entry colour-map table and blended
// over the image. The same maths as `Heatmap::overlay` on the CPU (PNG export).

struct Params {
    // x: opacity 0..1, y: rows, z: cols, w: 1 to draw the map, 0 for the image alone
    v: vec4<f32>,
    // value range of the grid: x min, y max (the map is min–max normalised)
    range: vec4<f32>,
};

@group(0) @binding(0) var image_tex: texture_2d<f32>;
@group(0) @binding(1) var image_sampler: sampler;
@group(0) @binding(2) var grid_tex: texture_2d<f32>;
@group(0) @binding(3) var cmap_tex: texture_2d<f32>;
@group(0) @binding(4) var<uniform> params: Params;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

// Two triangles covering the callback's viewport (egui sets it to the widget's rect).
@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    var corners = array<vec2<f32>, 6>(
        vec2<f32>(0.0, 0.0), vec2<f32>(1.0, 0.0), vec2<f32>(0.0, 1.0),
        vec2<f32>(0.0, 1.0), vec2<f32>(1.0, 0.0), vec2<f32>(1.0, 1.0),
    );
    let uv = corners[i];
    var out: VsOut;
    out.pos = vec4<f32>(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
    out.uv = uv;
    return out;
}

fn cell(r: i32, c: i32) -> f32 {
    let span = max(params.range.y - params.range.x, 1e-20);
    let raw = textureLoad(grid_tex, vec2<i32>(c, r), 0).r;
    return clamp((raw - params.range.x) / span, 0.0, 1.0);
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let base = textureSample(image_tex, image_sampler, in.uv);
    if (params.v.w < 0.5) {
        return vec4<f32>(base.rgb, 1.0);
    }
    let rows = params.v.y;
    let cols = params.v.z;
    let gx = clamp(in.uv.x * cols - 0.5, 0.0, cols - 1.0);
    let gy = clamp(in.uv.y * rows - 0.5, 0.0, rows - 1.0);
    let x0 = i32(floor(gx));
    let y0 = i32(floor(gy));
    let x1 = min(x0 + 1, i32(cols) - 1);
    let y1 = min(y0 + 1, i32(rows) - 1);
    let fx = gx - f32(x0);
    let fy = gy - f32(y0);
    let v = cell(y0, x0) * (1.0 - fx) * (1.0 - fy) + cell(y0, x1) * fx * (1.0 - fy)
        + cell(y1, x0) * (1.0 - fx) * fy + cell(y1, x1) * fx * fy;
    // Linear interpolation between the table's 256 entries.
    let x = v * 255.0;
    let i0 = i32(floor(x));
    let i1 = min(i0 + 1, 255);
    let color = mix(textureLoad(cmap_tex, vec2<i32>(i0, 0), 0), textureLoad(cmap_tex, vec2<i32>(i1, 0), 0), x - f32(i0));
    return vec4<f32>(mix(base.rgb, color.rgb, params.v.x), 1.0);
}
