//! Rendering: procedural backgrounds plus objects drawn from signed distances with 2×2
//! supersampling. Only IEEE-exact float operations are used (no sin/cos), so images are
//! identical on every platform.

use super::{Orientation, SCENE_SIZE, Scene, SceneObject, Setting, Shape, Zoom, font, layout};

const N: usize = SCENE_SIZE as usize;
type Rgb = [f32; 3];

/// Width of the contrast contour in pixels.
const HALO: f32 = 0.9;

const TRIANGLE: [[f32; 2]; 3] = [[0.0, -0.5], [0.44, 0.42], [-0.44, 0.42]];
const SQUARE: [[f32; 2]; 4] = [[-0.42, -0.42], [0.42, -0.42], [0.42, 0.42], [-0.42, 0.42]];
const STAR: [[f32; 2]; 10] = [
    [0.0, -0.5],
    [0.117_557, -0.161_803],
    [0.475_528, -0.154_508],
    [0.190_211, 0.061_803],
    [0.293_893, 0.404_508],
    [0.0, 0.2],
    [-0.293_893, 0.404_508],
    [-0.190_211, 0.061_803],
    [-0.475_528, -0.154_508],
    [-0.117_557, -0.161_803],
];
const HEXAGON: [[f32; 2]; 6] = [
    [0.0, -0.5],
    [0.433_013, -0.25],
    [0.433_013, 0.25],
    [0.0, 0.5],
    [-0.433_013, 0.25],
    [-0.433_013, -0.25],
];
const DIAMOND: [[f32; 2]; 4] = [[0.0, -0.5], [0.36, 0.0], [0.0, 0.5], [-0.36, 0.0]];
const ARROW: [[f32; 2]; 7] = [
    [0.0, -0.5],
    [0.42, -0.04],
    [0.17, -0.04],
    [0.17, 0.5],
    [-0.17, 0.5],
    [-0.17, -0.04],
    [-0.42, -0.04],
];
const CROSS: [[f32; 2]; 12] = [
    [-0.16, -0.46],
    [0.16, -0.46],
    [0.16, -0.16],
    [0.46, -0.16],
    [0.46, 0.16],
    [0.16, 0.16],
    [0.16, 0.46],
    [-0.16, 0.46],
    [-0.16, 0.16],
    [-0.46, 0.16],
    [-0.46, -0.16],
    [-0.16, -0.16],
];

/// Rotates an "up" point to `o` (image coordinates, y down).
fn orient(p: [f32; 2], o: Orientation) -> [f32; 2] {
    let [x, y] = p;
    match o {
        Orientation::Up => [x, y],
        Orientation::Right => [-y, x],
        Orientation::Down => [-x, -y],
        Orientation::Left => [y, -x],
    }
}

/// Polygon of a shape in unit coordinates (`None` for the circle).
fn polygon(shape: Shape) -> Option<&'static [[f32; 2]]> {
    match shape {
        Shape::Circle => None,
        Shape::Square => Some(&SQUARE),
        Shape::Triangle => Some(&TRIANGLE),
        Shape::Star => Some(&STAR),
        Shape::Hexagon => Some(&HEXAGON),
        Shape::Diamond => Some(&DIAMOND),
        Shape::Arrow => Some(&ARROW),
        Shape::Cross => Some(&CROSS),
    }
}

/// Extent `[x0, y0, x1, y1]` of a shape in unit coordinates (diameter 1, centred on 0).
pub fn unit_extent(shape: Shape, o: Orientation) -> [f32; 4] {
    match polygon(shape) {
        None => [-0.5, -0.5, 0.5, 0.5],
        Some(poly) => poly
            .iter()
            .map(|&p| orient(p, o))
            .fold([f32::MAX, f32::MAX, f32::MIN, f32::MIN], |e, [x, y]| {
                [e[0].min(x), e[1].min(y), e[2].max(x), e[3].max(y)]
            }),
    }
}

/// Signed distance (negative inside) from `p` to a polygon whose vertices are rotated to `o`.
fn polygon_sdf(poly: &[[f32; 2]], o: Orientation, p: [f32; 2]) -> f32 {
    // Rotate the point back instead of the polygon.
    let q = match o {
        Orientation::Up => p,
        Orientation::Right => [p[1], -p[0]],
        Orientation::Down => [-p[0], -p[1]],
        Orientation::Left => [-p[1], p[0]],
    };
    let mut d2 = f32::MAX;
    let mut inside = false;
    let n = poly.len();
    for i in 0..n {
        let a = poly[i];
        let b = poly[(i + 1) % n];
        let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
        let (wx, wy) = (q[0] - a[0], q[1] - a[1]);
        let t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
        let (dx, dy) = (wx - ex * t, wy - ey * t);
        d2 = d2.min(dx * dx + dy * dy);
        if (a[1] > q[1]) != (b[1] > q[1]) {
            let xi = a[0] + (q[1] - a[1]) * ex / ey;
            if q[0] < xi {
                inside = !inside;
            }
        }
    }
    let d = d2.sqrt();
    if inside { -d } else { d }
}

fn luminance(c: [u8; 3]) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

/// The contour and text colour that contrasts with an object colour.
pub fn contrast(c: [u8; 3]) -> [u8; 3] {
    if luminance(c) < 110.0 {
        [240, 240, 240]
    } else {
        [22, 22, 22]
    }
}

fn to_f(c: [u8; 3]) -> Rgb {
    [f32::from(c[0]), f32::from(c[1]), f32::from(c[2])]
}

fn lerp(a: Rgb, b: Rgb, t: f32) -> Rgb {
    let t = t.clamp(0.0, 1.0);
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

fn add(a: Rgb, v: f32) -> Rgb {
    [a[0] + v, a[1] + v, a[2] + v]
}

fn hash(x: i32, y: i32, s: u32) -> u32 {
    let mut h = (x as u32).wrapping_mul(0x8DA6_B343)
        ^ (y as u32).wrapping_mul(0xD816_3841)
        ^ s.wrapping_mul(0xCB1A_B31F);
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^= h >> 12;
    h = h.wrapping_mul(0x297A_2D39);
    h ^ (h >> 15)
}

/// Hash of a lattice point in `[0, 1)`.
fn h01(x: i32, y: i32, s: u32) -> f32 {
    (hash(x, y, s) >> 8) as f32 / 16_777_216.0
}

/// Smooth value noise in `[0, 1)`.
fn vnoise(x: f32, y: f32, s: u32) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ix, iy) = (fx as i32, fy as i32);
    let (tx, ty) = (x - fx, y - fy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = h01(ix, iy, s);
    let b = h01(ix + 1, iy, s);
    let c = h01(ix, iy + 1, s);
    let d = h01(ix + 1, iy + 1, s);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Triangle wave in `[0, 1]` with period 1.
fn tri(x: f32) -> f32 {
    let f = x - x.floor();
    1.0 - (2.0 * f - 1.0).abs()
}

/// Background colour of pixel `(x, y)` (pixel centre coordinates).
fn background(setting: Setting, zoom: Zoom, s: u32, x: f32, y: f32) -> Rgb {
    let far = zoom == Zoom::Far;
    match setting {
        Setting::Beach => {
            let sand = add(
                [226.0, 202.0, 150.0],
                (h01(x as i32, y as i32, s) - 0.5) * 16.0,
            );
            if far {
                if y < 12.0 {
                    lerp([140.0, 195.0, 240.0], [190.0, 222.0, 245.0], y / 12.0)
                } else if y < 26.0 {
                    let foam = vnoise(x * 0.3, y * 1.1, s) > 0.74;
                    if foam {
                        [150.0, 200.0, 230.0]
                    } else {
                        lerp([25.0, 95.0, 170.0], [45.0, 135.0, 195.0], (y - 12.0) / 14.0)
                    }
                } else if y < 28.0 {
                    [200.0, 180.0, 135.0]
                } else {
                    sand
                }
            } else {
                let ripple = tri(y / 14.0 + vnoise(x / 20.0, y / 20.0, s) * 1.2);
                add(sand, ripple * 26.0 - 13.0)
            }
        }
        Setting::Night => {
            if far {
                if y < 26.0 {
                    if h01(x as i32, y as i32, s) > 0.975 {
                        [235.0, 235.0, 205.0]
                    } else {
                        lerp([8.0, 12.0, 40.0], [32.0, 42.0, 95.0], y / 26.0)
                    }
                } else {
                    add([24.0, 30.0, 38.0], vnoise(x * 0.3, y * 0.6, s) * 12.0)
                }
            } else {
                let (cx, cy) = ((x / 4.0).floor() as i32, (y / 4.0).floor() as i32);
                if h01(cx, cy, s) > 0.95 && h01(cx, cy, s ^ 7) > 0.4 {
                    [235.0, 235.0, 205.0]
                } else {
                    add([14.0, 20.0, 58.0], vnoise(x / 16.0, y / 16.0, s) * 26.0)
                }
            }
        }
        Setting::Grass => {
            if far && y < 24.0 {
                lerp([150.0, 200.0, 240.0], [205.0, 228.0, 246.0], y / 24.0)
            } else if far {
                let haze = 1.0 - smoothstep(24.0, 60.0, y);
                let g = add(
                    [72.0, 150.0, 58.0],
                    vnoise(x * 0.6, y * 0.9, s) * 22.0 - 11.0,
                );
                lerp(g, [130.0, 175.0, 120.0], haze * 0.6)
            } else {
                let blades = vnoise(x * 0.4, y * 0.05, s) * 56.0 - 28.0;
                add([62.0, 140.0, 50.0], blades)
            }
        }
        Setting::Snow => {
            if far && y < 24.0 {
                let ridge = 14.0 + vnoise(x / 12.0, 0.0, s) * 8.0;
                if y > ridge {
                    [150.0, 160.0, 185.0]
                } else {
                    lerp([180.0, 192.0, 215.0], [215.0, 222.0, 236.0], y / 24.0)
                }
            } else {
                let shade = if far {
                    vnoise(x * 0.2, y * 0.45, s) * 26.0
                } else {
                    vnoise(x / 18.0, y / 18.0, s) * 40.0
                };
                [240.0 - shade, 243.0 - shade * 0.8, 252.0 - shade * 0.3]
            }
        }
        Setting::Indoor => {
            if far && y < 28.0 {
                let stripe = if (x as i32).rem_euclid(8) == 0 {
                    -10.0
                } else {
                    0.0
                };
                add([222.0, 206.0, 180.0], stripe)
            } else if far && y < 31.0 {
                [95.0, 72.0, 52.0]
            } else if far {
                let plank = ((y - 31.0) / 7.0).floor() as i32;
                let line = if (y - 31.0).rem_euclid(7.0) < 1.0 {
                    -35.0
                } else {
                    0.0
                };
                let tone = h01(plank, 3, s) * 20.0 - 10.0;
                let grain = vnoise(x * 0.15, y * 0.9, s) * 14.0;
                add([160.0, 110.0, 66.0], tone + grain + line)
            } else {
                let board = (x / 24.0).floor() as i32;
                let line = if x.rem_euclid(24.0) < 1.5 { -45.0 } else { 0.0 };
                let tone = h01(board, 5, s) * 24.0 - 12.0;
                let grain = tri(x / 6.0 + vnoise(x / 10.0, y / 30.0, s) * 2.0) * 18.0;
                add([165.0, 112.0, 66.0], tone + grain + line)
            }
        }
        Setting::Sky => {
            let sky = lerp([65.0, 125.0, 220.0], [170.0, 205.0, 242.0], y / 96.0);
            let (cloud, hills) = if far {
                let c = vnoise(x / 7.0, y / 4.0, s);
                let top = 86.0 + vnoise(x / 14.0, 1.0, s) * 6.0;
                (smoothstep(0.62, 0.75, c), y > top)
            } else {
                let c = vnoise(x / 26.0, y / 18.0, s);
                (smoothstep(0.5, 0.62, c), false)
            };
            if hills {
                [70.0, 130.0, 75.0]
            } else {
                lerp(sky, [248.0, 250.0, 252.0], cloud * 0.9)
            }
        }
    }
}

/// Geometry of an object for drawing: centre and diameter in pixels.
fn placement(obj: &SceneObject, zoom: Zoom) -> ([f32; 2], f32) {
    let d = layout::object_px(obj.size, zoom);
    let e = unit_extent(obj.shape, obj.orientation);
    ([obj.bbox[0] - e[0] * d, obj.bbox[1] - e[1] * d], d)
}

/// Signed distance in pixels from `p` to the object of diameter `d` centred at `c`.
fn object_sdf(obj: &SceneObject, c: [f32; 2], d: f32, p: [f32; 2]) -> f32 {
    let u = [(p[0] - c[0]) / d, (p[1] - c[1]) / d];
    let du = match polygon(obj.shape) {
        None => (u[0] * u[0] + u[1] * u[1]).sqrt() - 0.5,
        Some(poly) => polygon_sdf(poly, obj.orientation, u),
    };
    du * d
}

const SUBSAMPLES: [[f32; 2]; 4] = [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]];

fn draw_object(buf: &mut [Rgb], obj: &SceneObject, zoom: Zoom) {
    let (c, d) = placement(obj, zoom);
    let body = to_f(obj.colour.rgb());
    let halo = to_f(contrast(obj.colour.rgb()));
    let line = (0.1 * d).clamp(1.6, 3.2);
    let x0 = obj.bbox[0].floor().max(0.0) as usize;
    let y0 = obj.bbox[1].floor().max(0.0) as usize;
    let x1 = (obj.bbox[2].ceil().max(0.0) as usize).min(N);
    let y1 = (obj.bbox[3].ceil().max(0.0) as usize).min(N);
    for py in y0..y1 {
        for px in x0..x1 {
            let (mut nb, mut nh) = (0u32, 0u32);
            for [sx, sy] in SUBSAMPLES {
                let dist = object_sdf(obj, c, d, [px as f32 + sx, py as f32 + sy]);
                if dist >= 0.0 {
                    continue;
                }
                let depth = -dist;
                let is_body = if obj.filled {
                    depth > HALO
                } else {
                    depth > HALO && depth <= HALO + line
                };
                let is_halo = depth <= HALO || (!obj.filled && depth <= 2.0 * HALO + line);
                if is_body {
                    nb += 1;
                } else if is_halo {
                    nh += 1;
                }
            }
            if nb + nh == 0 {
                continue;
            }
            let px_ref = &mut buf[py * N + px];
            let bg = *px_ref;
            let total = SUBSAMPLES.len() as f32;
            let (wb, wh) = (nb as f32 / total, nh as f32 / total);
            let wg = 1.0 - wb - wh;
            for k in 0..3 {
                px_ref[k] = bg[k] * wg + body[k] * wb + halo[k] * wh;
            }
        }
    }
    if let Some(ch) = obj.label {
        let scale = if d >= 34.0 { 3 } else { 2 };
        let w = (font::GLYPH_W * scale) as f32;
        let h = (font::GLYPH_H * scale) as f32;
        let tx = (c[0] - w / 2.0).round() as i64;
        let ty = (c[1] - h / 2.0).round() as i64;
        for gy in 0..font::GLYPH_H * scale {
            for gx in 0..font::GLYPH_W * scale {
                if !font::pixel(ch, gx / scale, gy / scale) {
                    continue;
                }
                let (x, y) = (tx + gx as i64, ty + gy as i64);
                if (0..N as i64).contains(&x) && (0..N as i64).contains(&y) {
                    buf[y as usize * N + x as usize] = halo;
                }
            }
        }
    }
}

/// Draws a scene.
pub fn render(scene: &Scene) -> image::RgbImage {
    let s = (scene.seed ^ (scene.seed >> 32)) as u32;
    let mut buf: Vec<Rgb> = Vec::with_capacity(N * N);
    for y in 0..N {
        for x in 0..N {
            buf.push(background(
                scene.setting,
                scene.zoom,
                s,
                x as f32 + 0.5,
                y as f32 + 0.5,
            ));
        }
    }
    for obj in &scene.objects {
        draw_object(&mut buf, obj, scene.zoom);
    }
    let mut raw = Vec::with_capacity(N * N * 3);
    for p in &buf {
        for v in p {
            raw.push((v.clamp(0.0, 255.0) + 0.5) as u8);
        }
    }
    image::RgbImage::from_raw(SCENE_SIZE, SCENE_SIZE, raw)
        .unwrap_or_else(|| image::RgbImage::new(SCENE_SIZE, SCENE_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdf_sign_and_orientation() {
        // Inside near the centre, outside far away, for every shape and orientation.
        for shape in Shape::ALL {
            for o in Orientation::ALL {
                let inside = match polygon(shape) {
                    None => -0.5,
                    Some(p) => polygon_sdf(p, o, [0.0, 0.1]),
                };
                assert!(inside < 0.0, "{shape:?} {o:?}");
                if let Some(p) = polygon(shape) {
                    assert!(polygon_sdf(p, o, [2.0, 2.0]) > 1.0);
                }
            }
        }
        // An up arrow's tip is at the top, a right arrow's at the right.
        assert_eq!(unit_extent(Shape::Arrow, Orientation::Up)[1], -0.5);
        assert_eq!(unit_extent(Shape::Arrow, Orientation::Right)[2], 0.5);
        assert!(polygon_sdf(&ARROW, Orientation::Right, [0.45, 0.0]) < 0.0);
        assert!(polygon_sdf(&ARROW, Orientation::Right, [-0.45, 0.35]) > 0.0);
        assert!(polygon_sdf(&ARROW, Orientation::Left, [0.45, 0.35]) > 0.0);
        assert!(polygon_sdf(&ARROW, Orientation::Left, [-0.45, 0.0]) < 0.0);
    }
}
