//! Typed kernel uniforms: one `#[repr(C)]` struct per WGSL `struct Params`, declared with
//! `kernel_params!` next to the launcher that fills it, so that a launch names its fields
//! instead of counting positions. The test below holds each struct to its WGSL original.

/// A kernel's uniform block, byte for byte the `struct Params` of its WGSL file(s).
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
    file.strip_suffix(super::F16_SUFFIX).unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use super::KernelParams;
    use crate::engine::pipelines::SHADERS;
    use std::collections::BTreeSet;

    /// The fields of the `struct Params` in `src`, as (name, type) with comments stripped.
    fn wgsl_params(src: &str) -> Option<Vec<(String, String)>> {
        let body = src.split("struct Params {").nth(1)?;
        let body = &body[..body.find('}').expect("struct Params is closed")];
        let text: String = body
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" ");
        // Split at top-level commas only: `array<vec4<u32>, 2>` has one inside.
        let (mut fields, mut depth, mut cur) = (vec![], 0, String::new());
        for ch in text.chars() {
            match ch {
                '<' => depth += 1,
                '>' => depth -= 1,
                ',' if depth == 0 => {
                    fields.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        fields.push(cur);
        Some(
            fields
                .iter()
                .filter(|f| !f.trim().is_empty())
                .map(|f| {
                    let (name, ty) = f.split_once(':').expect("field is `name: type`");
                    let ty = ty.split_whitespace().collect::<Vec<_>>().join(" ");
                    (name.trim().to_string(), ty.replace("< ", "<"))
                })
                .collect(),
        )
    }

    /// (size, alignment) of a WGSL uniform field type.
    fn wgsl_layout(ty: &str) -> (usize, usize) {
        match ty {
            "u32" | "f32" => (4, 4),
            "array<vec4<u32>, 2>" => (32, 16),
            _ => panic!("params field type {ty} not known to this test"),
        }
    }

    /// Holds `P` to each of its WGSL files: same names, types and order, and every WGSL field
    /// at the offset the Rust struct (all 4-byte words, so packed) gives it, the same size.
    fn check<P: KernelParams>(covered: &mut BTreeSet<&'static str>) {
        let name = std::any::type_name::<P>();
        assert_eq!(std::mem::align_of::<P>(), 4, "{name}");
        for &file in P::FILES {
            let src = SHADERS
                .iter()
                .find(|(n, _)| *n == file)
                .unwrap_or_else(|| panic!("{name}: no shader file {file}"))
                .1;
            let wgsl = wgsl_params(src).unwrap_or_else(|| panic!("{file}.wgsl has no Params"));
            let rust: Vec<(String, String)> = P::FIELDS
                .iter()
                .map(|&(n, t)| (n.to_string(), t.to_string()))
                .collect();
            assert_eq!(rust, wgsl, "{name} against {file}.wgsl");
            let (mut wgsl_at, mut rust_at, mut max_align) = (0usize, 0usize, 4usize);
            for (field, ty) in &wgsl {
                let (size, align) = wgsl_layout(ty);
                wgsl_at = wgsl_at.next_multiple_of(align);
                assert_eq!(wgsl_at, rust_at, "{name}.{field}: WGSL offset differs");
                wgsl_at += size;
                rust_at += size;
                max_align = max_align.max(align);
            }
            let wgsl_size = wgsl_at.next_multiple_of(max_align);
            assert_eq!(std::mem::size_of::<P>(), wgsl_size, "{name}: size");
            assert!(covered.insert(file), "{file}.wgsl mirrored twice");
        }
    }

    #[test]
    fn params_mirror_wgsl() {
        use crate::ops::*;
        let mut covered = BTreeSet::new();
        check::<activation::ActivationParams>(&mut covered);
        check::<attention::AttentionParams>(&mut covered);
        check::<cast::CastParams>(&mut covered);
        check::<conv::Conv1dParams>(&mut covered);
        check::<copy::CopyParams>(&mut covered);
        check::<ctc::CtcParams>(&mut covered);
        check::<dropout::DropoutParams>(&mut covered);
        check::<elementwise::ElementwiseParams>(&mut covered);
        check::<matmul::MatmulParams>(&mut covered);
        check::<norm::NormParams>(&mut covered);
        check::<reduce::ReduceParams>(&mut covered);
        check::<reduce::MultiTensorParams>(&mut covered);
        check::<softmax::SoftmaxParams>(&mut covered);
        check::<weight_norm::WeightNormParams>(&mut covered);
        check::<crate::optim::AdamwParams>(&mut covered);
        check::<crate::engine::transfer::WordsParams>(&mut covered);
        let with_params: BTreeSet<&str> = SHADERS
            .iter()
            .filter(|(_, src)| src.contains("struct Params"))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(
            covered, with_params,
            "every shader's Params has a Rust mirror"
        );
    }

    #[test]
    fn parser_sees_through_comments_and_arrays() {
        let src = "struct Params {\n    n: u32,   // a, b: c\n    s: array<vec4<u32>, 2>,\n}";
        let want = [("n", "u32"), ("s", "array<vec4<u32>, 2>")];
        let got = wgsl_params(src).unwrap();
        assert_eq!(got.len(), 2);
        for ((gn, gt), (wn, wt)) in got.iter().zip(want) {
            assert_eq!((gn.as_str(), gt.as_str()), (wn, wt));
        }
    }

    #[test]
    fn base_files() {
        assert_eq!(super::base_file("matmul_coop_tn"), "matmul_coop");
        assert_eq!(super::base_file("attention_f16"), "attention");
        assert_eq!(super::base_file("multi_tensor"), "multi_tensor");
    }
}
