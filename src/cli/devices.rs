//! `xlsr devices`: every adapter wgpu sees, its limits and features, and the one chosen.

use anyhow::Result;

/// Lists the adapters and opens the one a run would use.
pub fn run() -> Result<()> {
    let list = crate::engine::adapters();
    if list.is_empty() {
        anyhow::bail!(crate::engine::Error::NoAdapter(String::new()));
    }
    for (i, a) in list.iter().enumerate() {
        let l = &a.limits;
        println!(
            "{i}: {} [{:?}, {:?}] driver {} {}",
            a.info.name, a.info.backend, a.info.device_type, a.info.driver, a.info.driver_info
        );
        println!(
            "   max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, invocations/workgroup {}, timestamps {}, f16 {}",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            a.features.contains(wgpu::Features::TIMESTAMP_QUERY),
            a.features.contains(wgpu::Features::SHADER_F16),
        );
        let coop: Vec<String> = a
            .coop
            .iter()
            .map(|c| {
                format!(
                    "{}x{}x{} {:?}->{:?}",
                    c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type
                )
            })
            .collect();
        println!(
            "   subgroup size {}..{}, subgroup operations {}, cooperative matrices: {}{}",
            a.info.subgroup_min_size,
            a.info.subgroup_max_size,
            a.features.contains(wgpu::Features::SUBGROUP),
            if coop.is_empty() {
                "none".to_string()
            } else {
                coop.join(", ")
            },
            match crate::engine::coop_shape(&a.info, &a.coop) {
                Some(s) => format!(
                    " (f16 GEMMs use {f}x{f}x{f} F16->F32 on {} lanes)",
                    s.lanes,
                    f = s.frag
                ),
                None => String::new(),
            }
        );
    }
    let gpu = crate::Gpu::new()?;
    println!(
        "selected: {} ({:?}), tensor-core GEMM {}, robust buffer access {}",
        gpu.info().name,
        gpu.info().backend,
        if gpu.has_coop() { "on" } else { "off" },
        if gpu.robust_buffers() {
            "on"
        } else {
            "off (XLSR_ROBUSTNESS=0)"
        }
    );
    Ok(())
}
