//! The kernel sources and every variant the library can ask for.

use crate::compile::{KernelSource, KernelVariant};
use tessera_core::{DType, ScaleRule};

/// `fp8_quantize.cu`: the two FP8 quantizers.
pub const FP8_QUANTIZE: KernelSource = KernelSource {
    file: "fp8_quantize.cu",
    code: include_str!("../kernels/fp8_quantize.cu"),
};

/// The quantizer for an input type and scale rule.
pub fn fp8_quantize(input: DType, rule: ScaleRule) -> KernelVariant {
    let kind = match input {
        DType::F16 => 1,
        DType::BF16 => 2,
        _ => 0,
    };
    KernelVariant::new(FP8_QUANTIZE)
        .define("IN_KIND", kind)
        .define("POW2", u8::from(rule == ScaleRule::PowerOfTwo))
}

/// Every variant the library can compile: CI compiles them all (for sm_90a and sm_80) so that a
/// kernel that does not compile fails there, GPU or not.
pub fn all_variants() -> Vec<KernelVariant> {
    let mut v = Vec::new();
    for input in [DType::F32, DType::F16, DType::BF16] {
        for rule in [ScaleRule::Float, ScaleRule::PowerOfTwo] {
            v.push(fp8_quantize(input, rule));
        }
    }
    v
}
