//! The inspector's heatmap overlay on the GPU: an egui-wgpu paint callback that draws the
//! image with the score grid coloured by a colour map and blended over it
//! (`shaders/heatmap.wgsl`). Without a wgpu renderer the app falls back to the CPU overlay
//! of [`crate::explain::Heatmap::overlay`], which computes the same picture.

use std::collections::HashMap;
use std::sync::Arc;

use egui_wgpu::wgpu;
use wgpu::util::DeviceExt as _;

use crate::explain::ColorMap;

/// What one overlay shows. `version` changes whenever the image or the grid does, so the
/// GPU textures are rebuilt only then.
#[derive(Debug)]
pub struct OverlayData {
    /// Identity of the image and grid: a new value rebuilds the GPU textures.
    pub version: u64,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// RGBA8, `width × height` (shared by the overlays of one image).
    pub rgba: Arc<Vec<u8>>,
    /// Rows of the score grid.
    pub rows: u32,
    /// Columns of the score grid.
    pub cols: u32,
    /// Row-major raw grid values (normalised min–max in the shader).
    pub grid: Vec<f32>,
}

impl OverlayData {
    fn range(&self) -> (f32, f32) {
        self.grid
            .iter()
            .filter(|v| v.is_finite())
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            })
    }
}

/// One frame's draw: the data plus the live controls.
pub struct OverlayCallback {
    /// Which overlay slot (the inspector's main view, the runner-up view…).
    pub slot: u64,
    /// The image and the grid.
    pub data: Arc<OverlayData>,
    /// The colour map the grid is drawn with.
    pub colormap: ColorMap,
    /// Opacity of the map over the image, 0 to 1.
    pub opacity: f32,
    /// False: the image alone.
    pub show_map: bool,
}

struct Slot {
    version: u64,
    colormap: ColorMap,
    bind_group: wgpu::BindGroup,
    uniform: wgpu::Buffer,
    cmap: wgpu::Texture,
}

/// Pipeline and per-slot GPU state, kept in egui-wgpu's callback resources.
pub struct OverlayRenderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    slots: HashMap<u64, Slot>,
}

const SHADER: &str = include_str!("../../shaders/heatmap.wgsl");

impl OverlayRenderer {
    /// Registers the pipeline with a wgpu render state (call once at start-up).
    pub fn install(render_state: &egui_wgpu::RenderState) {
        let renderer = Self::new(&render_state.device, render_state.target_format);
        render_state
            .renderer
            .write()
            .callback_resources
            .insert(renderer);
    }

    fn new(device: &wgpu::Device, target: wgpu::TextureFormat) -> Self {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("agff heatmap"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let texture_entry = |binding: u32, filterable: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("agff heatmap"),
            entries: &[
                texture_entry(0, true),
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
                texture_entry(2, false),
                texture_entry(3, false),
                wgpu::BindGroupLayoutEntry {
                    binding: 4,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("agff heatmap"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("agff heatmap"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: target,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor {
            label: Some("agff heatmap image"),
            mag_filter: wgpu::FilterMode::Linear,
            min_filter: wgpu::FilterMode::Linear,
            ..Default::default()
        });
        Self {
            pipeline,
            layout,
            sampler,
            slots: HashMap::new(),
        }
    }

    fn build_slot(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        data: &OverlayData,
        colormap: ColorMap,
    ) -> Slot {
        let texture = |label: &str, format, w: u32, h: u32, bytes: &[u8], bpp: u32| {
            device.create_texture_with_data(
                queue,
                &wgpu::TextureDescriptor {
                    label: Some(label),
                    size: wgpu::Extent3d {
                        width: w.max(1),
                        height: h.max(1),
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                },
                wgpu::util::TextureDataOrder::LayerMajor,
                &bytes[..(w.max(1) * h.max(1) * bpp) as usize],
            )
        };
        // A malformed picture or grid draws as one blank texel rather than failing.
        let blank = [0u8; 4];
        let image_ok = data.width > 0
            && data.height > 0
            && data.rgba.len() >= (data.width * data.height * 4) as usize;
        let (iw, ih, image_bytes): (u32, u32, &[u8]) = if image_ok {
            (data.width, data.height, &data.rgba)
        } else {
            (1, 1, &blank)
        };
        let image = texture(
            "agff heatmap image",
            wgpu::TextureFormat::Rgba8UnormSrgb,
            iw,
            ih,
            image_bytes,
            4,
        );
        let cells = (data.rows * data.cols) as usize;
        let (gr, gc, grid_values): (u32, u32, &[f32]) = if cells > 0 && data.grid.len() >= cells {
            (data.rows, data.cols, &data.grid[..cells])
        } else {
            (1, 1, &[0.0])
        };
        let grid_bytes: Vec<u8> = grid_values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let grid = texture(
            "agff heatmap grid",
            wgpu::TextureFormat::R32Float,
            gc,
            gr,
            &grid_bytes,
            4,
        );
        let table: Vec<u8> = colormap.table().into_iter().flatten().collect();
        let cmap = texture(
            "agff heatmap colour map",
            wgpu::TextureFormat::Rgba8Unorm,
            256,
            1,
            &table,
            4,
        );
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("agff heatmap params"),
            size: 32,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let view = |t: &wgpu::Texture| t.create_view(&wgpu::TextureViewDescriptor::default());
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("agff heatmap"),
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::TextureView(&view(&image)),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::Sampler(&self.sampler),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(&view(&grid)),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: wgpu::BindingResource::TextureView(&view(&cmap)),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: uniform.as_entire_binding(),
                },
            ],
        });
        Slot {
            version: data.version,
            colormap,
            bind_group,
            uniform,
            cmap,
        }
    }
}

impl egui_wgpu::CallbackTrait for OverlayCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &egui_wgpu::ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut egui_wgpu::CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(renderer) = resources.get_mut::<OverlayRenderer>() else {
            return Vec::new();
        };
        let stale = renderer
            .slots
            .get(&self.slot)
            .is_none_or(|s| s.version != self.data.version);
        if stale {
            let slot = renderer.build_slot(device, queue, &self.data, self.colormap);
            renderer.slots.insert(self.slot, slot);
        }
        if let Some(slot) = renderer.slots.get_mut(&self.slot) {
            if slot.colormap != self.colormap {
                let table: Vec<u8> = self.colormap.table().into_iter().flatten().collect();
                queue.write_texture(
                    wgpu::TexelCopyTextureInfo {
                        texture: &slot.cmap,
                        mip_level: 0,
                        origin: wgpu::Origin3d::ZERO,
                        aspect: wgpu::TextureAspect::All,
                    },
                    &table,
                    wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(256 * 4),
                        rows_per_image: Some(1),
                    },
                    wgpu::Extent3d {
                        width: 256,
                        height: 1,
                        depth_or_array_layers: 1,
                    },
                );
                slot.colormap = self.colormap;
            }
            let (lo, hi) = self.data.range();
            let (lo, hi) = if lo.is_finite() && hi.is_finite() {
                (lo, hi)
            } else {
                (0.0, 1.0)
            };
            let params: [f32; 8] = [
                self.opacity.clamp(0.0, 1.0),
                self.data.rows.max(1) as f32,
                self.data.cols.max(1) as f32,
                if self.show_map { 1.0 } else { 0.0 },
                lo,
                hi,
                0.0,
                0.0,
            ];
            let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
            queue.write_buffer(&slot.uniform, 0, &bytes);
        }
        Vec::new()
    }

    fn paint(
        &self,
        _info: egui::PaintCallbackInfo,
        pass: &mut wgpu::RenderPass<'static>,
        resources: &egui_wgpu::CallbackResources,
    ) {
        let Some(renderer) = resources.get::<OverlayRenderer>() else {
            return;
        };
        let Some(slot) = renderer.slots.get(&self.slot) else {
            return;
        };
        pass.set_pipeline(&renderer.pipeline);
        pass.set_bind_group(0, &slot.bind_group, &[]);
        pass.draw(0..6, 0..1);
    }
}
