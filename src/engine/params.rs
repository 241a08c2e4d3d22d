//! Typed kernel uniforms: one `#[repr(C)]` struct per kernel file, declared with
//! `kernel_params!` next to the launcher that fills it, so that a launch names its fields
//! instead of counting positions. The loader writes each file's WGSL `struct Params` from it
//! (`pipelines::params_struct`), so the layout is stated once; the tests below check that
//! every file has one and that WGSL lays it out as Rust does.

/// A kernel's uniform block, byte for byte the `struct Params` the loader writes into its
/// WGSL file(s).
pub trait KernelParams: bytemuck::Pod {
    /// The shader files (without `.wgsl`, variants' suffixes stripped) whose `Params` this is.
    const FILES: &'static [&'static str];
    /// (name, WGSL type) of every field in declaration order, as the WGSL struct spells them.
    const FIELDS: &'static [(&'static str, &'static str)];
}

/// The WGSL spelling of a params field's Rust type; any other type fails to compile.
macro_rules! wgsl_type {
    (u32) => {
        "u32"
    };
    (f32) => {
        "f32"
    };
    ([[u32; 4]; 2]) => {
        "array<vec4<u32>, 2>"
    };
}
pub(crate) use wgsl_type;

/// Declares a kernel's params struct (`pub` fields, `Default` zeroes padding) and its
/// [`KernelParams`] impl: `kernel_params! { /// doc \n pub struct Name in ["file"] { /// doc
/// \n field: u32, ... } }`. Field types are `u32`, `f32` or `[[u32; 4]; 2]`.
macro_rules! kernel_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in [$($file:literal),+ $(,)?] {
            $($(#[$fmeta:meta])* $field:ident: $ty:tt,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $crate::engine::params::KernelParams for $name {
            const FILES: &'static [&'static str] = &[$($file),+];
            const FIELDS: &'static [(&'static str, &'static str)] = &[
                $((stringify!($field), $crate::engine::params::wgsl_type!($ty)),)*
            ];
        }
    };
}
pub(crate) use kernel_params;

/// The file a kernel's params belong to: `file` less an f16 (`_f16`) or transpose
/// (`_nn`, `_nt`, `_tn`, `_tt`) variant suffix.
pub fn base_file(file: &str) -> &str {
    let file = match file.rsplit_once('_') {
        Some((base, "nn" | "nt" | "tn" | "tt")) => base,
        _ => file,
    };
    let file = file.strip_suffix(super::F16_SUFFIX).unwrap_or(file);
    let file = file.strip_suffix(super::WIDE_SUFFIX).unwrap_or(file);
    let file = file.strip_suffix(super::LANES_SUFFIX).unwrap_or(file);
    let file = file.strip_suffix(super::V4_SUFFIX).unwrap_or(file);
    file.strip_suffix(super::K16_SUFFIX).unwrap_or(file)
}

/// The fields of the params struct of a kernel file (`base_file` of it), for building shaders
/// outside a dispatch (the shader validation test).
#[cfg(test)]
pub(crate) fn fields_of(file: &str) -> Option<&'static [(&'static str, &'static str)]> {
    tests::all()
        .into_iter()
        .find(|p| p.files.contains(&file))
        .map(|p| p.fields)
}

#[cfg(test)]
mod tests {
    use super::KernelParams;
    use crate::engine::pipelines::SHADERS;
    use std::collections::BTreeSet;

    /// One params struct as the tests see it.
    pub(super) struct Entry {
        pub(super) name: &'static str,
        pub(super) files: &'static [&'static str],
        pub(super) fields: &'static [(&'static str, &'static str)],
        size: usize,
        align: usize,
    }

    fn entry<P: KernelParams>() -> Entry {
        Entry {
            name: std::any::type_name::<P>(),
            files: P::FILES,
            fields: P::FIELDS,
            size: std::mem::size_of::<P>(),
            align: std::mem::align_of::<P>(),
        }
    }

    /// Every params struct of the crate.
    pub(super) fn all() -> Vec<Entry> {
        use crate::ops::*;
        vec![
            entry::<activation::ActivationParams>(),
            entry::<attention::AttentionParams>(),
            entry::<cast::CastParams>(),
            entry::<conv::Conv1dParams>(),
            entry::<conv::Im2colParams>(),
            entry::<copy::CopyParams>(),
            entry::<ctc::CtcParams>(),
            entry::<dropout::DropoutParams>(),
            entry::<elementwise::ElementwiseParams>(),
            entry::<matmul::MatmulParams>(),
            entry::<norm::NormParams>(),
            entry::<reduce::ReduceParams>(),
            entry::<reduce::MultiTensorParams>(),
            entry::<softmax::SoftmaxParams>(),
            entry::<weight_norm::WeightNormParams>(),
            entry::<crate::optim::AdamwParams>(),
            entry::<crate::engine::transfer::WordsParams>(),
        ]
    }

    /// (size, alignment) of a WGSL uniform field type.
    fn wgsl_layout(ty: &str) -> (usize, usize) {
        match ty {
            "u32" | "f32" => (4, 4),
            "array<vec4<u32>, 2>" => (32, 16),
            _ => panic!("params field type {ty} not known to this test"),
        }
    }

    /// WGSL's uniform layout of every struct puts each field where the Rust struct (all 4-byte
    /// words, so packed) has it, and the sizes agree: the bytes a launch writes are the bytes
    /// the kernel reads.
    #[test]
    fn params_lay_out_in_wgsl_as_in_rust() {
        for p in all() {
            assert_eq!(p.align, 4, "{}", p.name);
            let (mut wgsl_at, mut rust_at, mut max_align) = (0usize, 0usize, 4usize);
            for (field, ty) in p.fields {
                let (size, align) = wgsl_layout(ty);
                wgsl_at = wgsl_at.next_multiple_of(align);
                assert_eq!(wgsl_at, rust_at, "{}.{field}: WGSL offset differs", p.name);
                wgsl_at += size;
                rust_at += size;
                max_align = max_align.max(align);
            }
            assert_eq!(
                p.size,
                wgsl_at.next_multiple_of(max_align),
                "{}: size",
                p.name
            );
        }
    }

    /// Every shader file gets its `struct Params` from exactly one Rust struct, and none
    /// declares one by hand (it would clash with the one the loader writes).
    #[test]
    fn every_shader_has_one_params_struct() {
        let mut covered = BTreeSet::new();
        for p in all() {
            for file in p.files {
                assert!(covered.insert(*file), "{file}.wgsl has two params structs");
            }
        }
        let files: BTreeSet<&str> = SHADERS
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != "common")
            .collect();
        assert_eq!(covered, files, "params structs against shader files");
        for (name, src) in SHADERS {
            assert!(
                !src.contains("struct Params {"),
                "{name}.wgsl declares Params"
            );
        }
    }

    #[test]
    fn base_files() {
        assert_eq!(super::base_file("matmul_coop_tn"), "matmul_coop");
        assert_eq!(super::base_file("matmul_coop128_wide_nt"), "matmul_coop128");
        assert_eq!(super::base_file("attention_f16"), "attention");
        assert_eq!(super::base_file("attention_lanes_f16"), "attention");
        assert_eq!(super::base_file("matmul_v4_f16"), "matmul");
        assert_eq!(super::base_file("matmul_k16_v4_f16"), "matmul");
        assert_eq!(super::base_file("multi_tensor"), "multi_tensor");
    }
}
