//! Adapter choice: list what wgpu sees, rank it, open the best (or the one asked for) with
//! the optional features we use.

use super::error::{Error, Result};

/// One adapter as `xlsr devices` lists it.
pub struct AdapterSummary {
    /// Adapter info (name, backend, type, driver).
    pub info: wgpu::AdapterInfo,
    /// The adapter's limits.
    pub limits: wgpu::Limits,
    /// The adapter's features.
    pub features: wgpu::Features,
    /// The cooperative-matrix configurations it offers (tensor cores; empty on most).
    pub coop: Vec<wgpu::CooperativeMatrixProperties>,
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12;
    wgpu::Instance::new(desc)
}

fn rank(info: &wgpu::AdapterInfo) -> u32 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// The cooperative-matrix shape the tensor-core kernels are built for (`matmul_coop*.wgsl`,
/// `attention_coop.wgsl`):
/// F x F x F fragments of f16 x f16 -> f32 on subgroups of a fixed number of lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopShape {
    /// Fragment size F: 16 (NVIDIA) or 8 (lavapipe; Apple's simdgroup matrices, where wgpu
    /// reports one subgroup size).
    pub frag: u32,
    /// Lanes per subgroup (32 on NVIDIA, 8 on lavapipe with AVX2).
    pub lanes: u32,
}

/// The shape the tensor-core kernels run in on an adapter, if any: it offers F x F x F
/// f16 x f16 -> f32 matrices (16 preferred to 8), and its subgroups have one size, which the
/// kernels size their workgroups by (an adapter whose subgroup size varies gets none).
pub fn coop_shape(
    info: &wgpu::AdapterInfo,
    props: &[wgpu::CooperativeMatrixProperties],
) -> Option<CoopShape> {
    use wgpu::CooperativeScalarType as S;
    let lanes = info.subgroup_min_size;
    if lanes != info.subgroup_max_size || !lanes.is_power_of_two() || !(4..=64).contains(&lanes) {
        return None;
    }
    [16, 8]
        .into_iter()
        .find(|&f| {
            props.iter().any(|p| {
                (p.m_size, p.n_size, p.k_size) == (f, f, f)
                    && p.ab_type == S::F16
                    && p.cr_type == S::F32
            })
        })
        .map(|frag| CoopShape { frag, lanes })
}

/// `shape` with `XLSR_COOP_LANES` lanes where that is set to a multiple of its own: the
/// kernels then treat that many lanes as one subgroup, whose real subgroups each repeat the
/// same matrix work. For tests only: lavapipe (8 lanes) can so run the lane arithmetic of a
/// 32-lane GPU's builds.
fn wider_lanes(shape: CoopShape) -> CoopShape {
    let lanes = std::env::var("XLSR_COOP_LANES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    match lanes {
        Some(n) if n > shape.lanes && n.is_multiple_of(shape.lanes) && n <= 64 => {
            CoopShape { lanes: n, ..shape }
        }
        _ => shape,
    }
}

/// Lists every adapter wgpu can see, best first.
pub fn adapters() -> Vec<AdapterSummary> {
    let mut list: Vec<AdapterSummary> =
        pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
            .into_iter()
            .map(|a| AdapterSummary {
                info: a.get_info(),
                limits: a.limits(),
                features: a.features(),
                coop: a.cooperative_matrix_properties(),
            })
            .collect();
    list.sort_by_key(|a| rank(&a.info));
    list
}

/// A device opened on the chosen adapter, with what it was opened with.
pub(super) struct Opened {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    /// Whether the driver bounds-checks buffer accesses (off only with `XLSR_ROBUSTNESS=0`).
    pub robust: bool,
    pub coop: Option<CoopShape>,
}

/// Opens the best adapter (discrete > integrated > CPU) or the one whose name contains
/// `XLSR_ADAPTER` (case-insensitive), with timestamps, f16 and cooperative matrices where
/// offered (`XLSR_NO_F16=1` / `XLSR_NO_COOP=1` leave them off; `XLSR_ROBUSTNESS=0` opens a
/// Vulkan device without robust buffer access: [`super::robustness`]).
/// With several adapters of the best kind (a machine's GPUs), the `nth` of them modulo their
/// number: each data-parallel process on a machine takes its own.
pub(super) fn open(nth: usize) -> Result<Opened> {
    let wanted = std::env::var("XLSR_ADAPTER").ok().filter(|s| !s.is_empty());
    let mut all = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()));
    all.sort_by_key(|a| rank(&a.get_info()));
    if wanted.is_none() {
        let best = all.first().map(|a| rank(&a.get_info()));
        let peers = all
            .iter()
            .filter(|a| Some(rank(&a.get_info())) == best)
            .count();
        if peers > 1 {
            all.rotate_left(nth % peers);
        }
    }
    let adapter = match &wanted {
        Some(w) => {
            let w = w.to_lowercase();
            all.into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&w))
                .ok_or_else(|| Error::NoAdapter(format!(" matching XLSR_ADAPTER={w:?}")))?
        }
        None => all
            .into_iter()
            .next()
            .ok_or_else(|| Error::NoAdapter(String::new()))?,
    };
    let info = adapter.get_info();
    let mut limits = adapter.limits();
    // XLSR_WORKGROUP_BYTES=N runs as if the adapter offered at most N bytes of workgroup
    // memory (16384 is WebGPU's minimum), so the fallbacks for small adapters can be tested.
    if let Some(n) = std::env::var("XLSR_WORKGROUP_BYTES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        limits.max_compute_workgroup_storage_size =
            limits.max_compute_workgroup_storage_size.min(n);
    }
    let mut optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16;
    // XLSR_NO_F16=1 runs as if the adapter had no f16 (to test or rule out the f16 path).
    if std::env::var("XLSR_NO_F16").is_ok_and(|v| v == "1") {
        optional.remove(wgpu::Features::SHADER_F16);
    }
    if !std::env::var("XLSR_NO_SUBGROUPS").is_ok_and(|v| v == "1") {
        optional |= wgpu::Features::SUBGROUP;
    }
    let shape = coop_shape(&info, &adapter.cooperative_matrix_properties()).map(wider_lanes);
    if shape.is_some() && !std::env::var("XLSR_NO_COOP").is_ok_and(|v| v == "1") {
        optional |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    }
    let features = adapter.features() & optional;
    let coop = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    let desc = wgpu::DeviceDescriptor {
        label: Some("xlsr"),
        required_features: features,
        required_limits: limits.clone(),
        // SAFETY: cooperative matrices are wgpu's one experimental feature we use; only
        // the f16 -> f32 configuration that `coop_shape` found is ever run.
        experimental_features: if coop {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        ..Default::default()
    };
    let unguarded = super::robustness::unguarded_requested()
        .then(|| super::robustness::open_unguarded(&adapter, &desc))
        .flatten();
    let robust = unguarded.is_none();
    let (device, queue) = match unguarded {
        Some(opened) => opened?,
        None => pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::Device {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?,
    };
    Ok(Opened {
        device,
        queue,
        info,
        limits,
        features,
        robust,
        coop: shape.filter(|_| coop && features.contains(wgpu::Features::SHADER_F16)),
    })
}
