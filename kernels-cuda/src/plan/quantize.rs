//! The FP8 quantizers' variants (`kernels/fp8_quantize.cu`).

use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use serde::{Deserialize, Serialize};
use tessera_core::{DType, Error, Fp8Granularity, Fp8Quantize, Result, ScaleRule};

/// Threads per quantizer CTA (8 warps).
pub const QUANTIZE_THREADS: u32 = 256;

/// 1x128 groups each warp of the per-token quantizer handles for 16-bit inputs (its loads all in
/// flight before any group is reduced): the kernel's `GROUPS_PER_WARP`; f32 inputs, twice the
/// registers per group, take half. (16 measured slower on the H200: 51.7% of the copy ceiling
/// against 64.1% with 8, at 4096 x 7168 bf16.)
pub const QUANTIZE_GROUPS_PER_WARP: u32 = 8;

/// The quantizers' input element types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantizeInput {
    /// f32.
    F32,
    /// f16.
    F16,
    /// bf16.
    Bf16,
}

impl QuantizeInput {
    /// The input type of `dtype`, if the quantizers take it.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::F32 => Some(QuantizeInput::F32),
            DType::F16 => Some(QuantizeInput::F16),
            DType::BF16 => Some(QuantizeInput::Bf16),
            _ => None,
        }
    }
}

/// The scale groups (the plan's copy of [`Fp8Granularity`], serializable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantizeGranularity {
    /// One scale per 1x128 group of a row (one warp per group).
    PerToken1x128,
    /// One scale per 128x128 block (one CTA per block).
    Block128x128,
}

impl From<Fp8Granularity> for QuantizeGranularity {
    fn from(g: Fp8Granularity) -> Self {
        match g {
            Fp8Granularity::PerToken1x128 => QuantizeGranularity::PerToken1x128,
            Fp8Granularity::Block128x128 => QuantizeGranularity::Block128x128,
        }
    }
}

/// A quantizer: input type, scale rule and granularity (two entry points of one compile unit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantizeVariant {
    /// Input element type.
    pub input: QuantizeInput,
    /// Scales rounded up to powers of two.
    pub pow2: bool,
    /// Scale groups.
    pub granularity: QuantizeGranularity,
}

impl QuantizeVariant {
    /// The variant for `op` on input of `dtype` (f32, f16 or bf16).
    pub fn for_op(op: &Fp8Quantize, dtype: DType) -> Result<Self> {
        let input = QuantizeInput::of(dtype).ok_or_else(|| {
            Error::invalid("fp8_quantize", "x", "dtype f32, f16 or bf16", dtype.name())
        })?;
        Ok(Self {
            input,
            pow2: op.scale_rule == ScaleRule::PowerOfTwo,
            granularity: op.granularity.into(),
        })
    }

    /// 1x128 groups per warp of the per-token kernel (see [`QUANTIZE_GROUPS_PER_WARP`]).
    pub fn groups_per_warp(&self) -> u32 {
        match self.input {
            QuantizeInput::F32 => QUANTIZE_GROUPS_PER_WARP / 2,
            QuantizeInput::F16 | QuantizeInput::Bf16 => QUANTIZE_GROUPS_PER_WARP,
        }
    }

    /// The launch grid for `op`: one warp per [`QuantizeVariant::groups_per_warp`] 1x128
    /// groups (8 warps per CTA), or one CTA per 128x128 block (x: column blocks, y: row blocks).
    pub fn grid(&self, op: &Fp8Quantize) -> Result<(u32, u32, u32)> {
        let (sr, sc) = op.scales_shape();
        let too_large = |what: usize| {
            Error::invalid(
                "fp8_quantize",
                "rows",
                "fewer scale groups (the grid is limited to 2^31 - 1 CTAs)",
                what.to_string(),
            )
        };
        match self.granularity {
            QuantizeGranularity::PerToken1x128 => {
                let groups = op.rows.checked_mul(sc).ok_or_else(|| too_large(op.rows))?;
                let warps = groups.div_ceil(self.groups_per_warp() as usize);
                let ctas = warps.div_ceil((QUANTIZE_THREADS / 32) as usize);
                let x = u32::try_from(ctas)
                    .ok()
                    .filter(|&c| c <= i32::MAX as u32)
                    .ok_or_else(|| too_large(ctas))?;
                Ok((x, 1, 1))
            }
            QuantizeGranularity::Block128x128 => {
                if sr > 65535 {
                    return Err(too_large(sr));
                }
                Ok((u32::try_from(sc).map_err(|_| too_large(sc))?, sr as u32, 1))
            }
        }
    }
}

impl KernelSpec for QuantizeVariant {
    fn op(&self) -> &'static str {
        "fp8_quantize"
    }

    fn source(&self) -> KernelSource {
        crate::kernels::FP8_QUANTIZE
    }

    fn defines(&self) -> Vec<(&'static str, String)> {
        let kind = match self.input {
            QuantizeInput::F32 => 0,
            QuantizeInput::F16 => 1,
            QuantizeInput::Bf16 => 2,
        };
        vec![
            ("IN_KIND", kind.to_string()),
            ("POW2", u8::from(self.pow2).to_string()),
            ("GROUPS_PER_WARP", self.groups_per_warp().to_string()),
        ]
    }

    fn entry(&self) -> &'static str {
        match self.granularity {
            QuantizeGranularity::PerToken1x128 => "fp8_quantize_1x128",
            QuantizeGranularity::Block128x128 => "fp8_quantize_128x128",
        }
    }

    fn threads(&self) -> u32 {
        QUANTIZE_THREADS
    }

    fn smem_bytes(&self) -> u32 {
        0
    }

    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        check_resources(self, arch)
    }
}

/// The shape a quantizer plan is made for: the op and the input type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantizeShape {
    /// The op.
    pub op: Fp8Quantize,
    /// The input element type.
    pub input: DType,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines_and_entries() {
        let op = Fp8Quantize {
            rows: 300,
            cols: 200,
            granularity: Fp8Granularity::Block128x128,
            scale_rule: ScaleRule::PowerOfTwo,
        };
        let v = QuantizeVariant::for_op(&op, DType::BF16).unwrap();
        let d: Vec<(&str, String)> = v.kernel().defines;
        let d: Vec<(&str, &str)> = d.iter().map(|(a, b)| (*a, b.as_str())).collect();
        assert_eq!(
            d,
            [
                ("IN_KIND", "2"),
                ("POW2", "1"),
                ("GROUPS_PER_WARP", "8"),
                ("TESSERA_SMEM_BYTES", "0"),
                ("TESSERA_THREADS", "256"),
            ]
        );
        assert_eq!(v.entry(), "fp8_quantize_128x128");
        assert_eq!(v.grid(&op).unwrap(), (2, 3, 1));
        let row = Fp8Quantize {
            granularity: Fp8Granularity::PerToken1x128,
            scale_rule: ScaleRule::Float,
            ..op
        };
        let r = QuantizeVariant::for_op(&row, DType::F32).unwrap();
        assert_eq!(r.entry(), "fp8_quantize_1x128");
        assert_eq!(r.kernel().define_value("IN_KIND"), Some("0"));
        assert_eq!(
            r.grid(&row).unwrap(),
            ((300 * 2usize).div_ceil(4 * 8) as u32, 1, 1)
        );
        // Both granularities share one compile unit.
        let block = QuantizeVariant {
            granularity: QuantizeGranularity::Block128x128,
            ..r
        };
        assert_eq!(r.kernel(), block.kernel());
        assert_ne!(r.entry(), block.entry());
        assert!(QuantizeVariant::for_op(&op, DType::E4M3).is_err());
    }
}
