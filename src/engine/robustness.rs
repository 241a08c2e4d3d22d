//! Opening a Vulkan device without robust buffer access (`XLSR_ROBUSTNESS=0`).
//!
//! wgpu turns on `robustBufferAccess` and `robustBufferAccess2` wherever a Vulkan driver offers
//! them, so the driver bounds-checks every storage-buffer load and store of every kernel, on
//! top of our own index guards (the shader modules are already created without naga's
//! checks: `Pipelines::module`). On NVIDIA those checks are integer instructions in the shader,
//! and a cooperative-matrix load under them cannot assume its whole fragment is in range.
//! llama.cpp's Vulkan backend turns them off for its matmul shaders for that reason. wgpu has
//! no switch for it, so this opens the device itself, through wgpu-hal, with the features wgpu
//! would ask for less those two, and hands it to wgpu.
//!
//! Off by default until a GPU's timings say it pays; the whole suite passes with it on lavapipe.

use super::error::{Error, Result};

/// Whether `XLSR_ROBUSTNESS=0` asks for a device without robust buffer access.
pub(super) fn unguarded_requested() -> bool {
    std::env::var("XLSR_ROBUSTNESS").is_ok_and(|v| v == "0")
}

/// Opens `adapter` as `desc` asks, but without robust buffer access; `None` where the adapter
/// is not a Vulkan one (Metal and DX12 have no such device feature to turn off).
#[cfg(not(any(target_vendor = "apple", target_arch = "wasm32")))]
pub(super) fn open_unguarded(
    adapter: &wgpu::Adapter,
    desc: &wgpu::DeviceDescriptor,
) -> Option<Result<(wgpu::Device, wgpu::Queue)>> {
    use wgpu::hal::api::Vulkan;
    let name = adapter.get_info().name;
    let fail = |what: &str, e: String| Error::Device {
        adapter: name.clone(),
        reason: format!("{what} (XLSR_ROBUSTNESS=0): {e}"),
    };
    // SAFETY: the hal adapter is only used here, while `adapter` is alive, to create a device
    // from it as wgpu-hal's own `open` does (same queue family 0, same extensions and features
    // but the two robustness flags); wgpu then owns the device.
    let opened = unsafe {
        let hal = adapter.as_hal::<Vulkan>()?;
        let extensions = hal.required_device_extensions(desc.required_features);
        let mut features = hal.physical_device_features(&extensions, desc.required_features);
        let names: Vec<_> = extensions.iter().map(|e| e.as_ptr()).collect();
        let queue = [ash::vk::DeviceQueueCreateInfo::default()
            .queue_family_index(0)
            .queue_priorities(&[1.0])];
        let info = ash::vk::DeviceCreateInfo::default()
            .queue_create_infos(&queue)
            .enabled_extension_names(&names);
        let mut info = features.add_to_device_create(info);
        let mut core = *info.p_enabled_features;
        core.robust_buffer_access = ash::vk::FALSE;
        info.p_enabled_features = &core;
        // robustBufferAccess2 needs robustBufferAccess, so it goes too. The chain's structs
        // belong to `features`, borrowed mutably by `info`, so writing through it is sound.
        let mut next = info.p_next as *mut ash::vk::BaseOutStructure;
        while !next.is_null() {
            if (*next).s_type == ash::vk::StructureType::PHYSICAL_DEVICE_ROBUSTNESS_2_FEATURES_EXT {
                let r2 = next as *mut ash::vk::PhysicalDeviceRobustness2FeaturesEXT;
                (*r2).robust_buffer_access2 = ash::vk::FALSE;
            }
            next = (*next).p_next;
        }
        let raw = hal
            .shared_instance()
            .raw_instance()
            .create_device(hal.raw_physical_device(), &info, None)
            .map_err(|e| fail("vkCreateDevice", e.to_string()));
        raw.and_then(|raw| {
            hal.device_from_raw(
                raw,
                None,
                &extensions,
                desc.required_features,
                &desc.required_limits,
                &desc.memory_hints,
                0,
                0,
            )
            .map_err(|e| fail("wgpu-hal", e.to_string()))
        })
    };
    Some(opened.and_then(|open| {
        // SAFETY: `open` was created from this adapter with `desc`'s features.
        unsafe { adapter.create_device_from_hal(open, desc) }
            .map_err(|e| fail("wgpu", e.to_string()))
    }))
}

/// Elsewhere there is nothing to turn off.
#[cfg(any(target_vendor = "apple", target_arch = "wasm32"))]
pub(super) fn open_unguarded(
    _adapter: &wgpu::Adapter,
    _desc: &wgpu::DeviceDescriptor,
) -> Option<Result<(wgpu::Device, wgpu::Queue)>> {
    None
}
