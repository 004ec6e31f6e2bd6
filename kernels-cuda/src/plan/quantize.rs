//! The FP8 quantizers' variants (`kernels/fp8_quantize.cu`).

use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use serde::{Deserialize, Serialize};
use tessera_core::{DType, Error, Fp8Granularity, Fp8Quantize, Result, ScaleRule};

/// Threads per quantizer CTA (8 warps).
pub const QUANTIZE_THREADS: u32 = 256;

/// How a quantizer is laid out and launched: the kernel's compile-time constants (see
/// `kernels/fp8_quantize.cu`), one per [`QuantizeVariant`] ([`QuantizeVariant::launch`]).
/// Measured on the H200 (kernels-cuda/dev/NOTES-fp8-quantize.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizeLaunch {
    /// Threads per 1x128 group of the per-token kernel's vector path, 16 or 8
    /// (`GROUP_THREADS`).
    pub group_threads: u32,
    /// Units (32 / `group_threads` consecutive groups) each warp of the per-token kernel loads
    /// before it reduces any, 1..=8 (`GROUP_BATCH`).
    pub group_batch: u32,
    /// CTAs per SM the kernel's registers are capped for (`MIN_CTAS_PER_SM`); the per-token
    /// kernel's persistent grid is at most this many CTAs per SM.
    pub min_ctas_per_sm: u32,
    /// The units each warp of the per-token kernel takes (`UNIT_ORDER`).
    pub unit_order: UnitOrder,
}

impl QuantizeLaunch {
    /// 1x128 groups per unit (one warp-wide step of the per-token kernel).
    pub fn unit_groups(&self) -> u32 {
        32 / self.group_threads
    }
}

/// The order in which the warps of the per-token kernel (W warps in its persistent grid, U units
/// of 32 / `group_threads` consecutive 1x128 groups, row-major) take the units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitOrder {
    /// Warp w takes the balanced contiguous range `[w U / W, (w + 1) U / W)` (`UNIT_ORDER` 0).
    Contiguous,
    /// Warp w takes units w, w + W, w + 2 W, ...: the grid reads one window of about W units at
    /// a time rather than W separate streams (`UNIT_ORDER` 1).
    Interleaved,
}

impl UnitOrder {
    /// Both orders.
    pub const ALL: [UnitOrder; 2] = [UnitOrder::Contiguous, UnitOrder::Interleaved];

    /// The kernel's `UNIT_ORDER`.
    pub fn define(self) -> u32 {
        match self {
            UnitOrder::Contiguous => 0,
            UnitOrder::Interleaved => 1,
        }
    }
}

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

/// A quantizer: input type, scale rule, granularity (two entry points of one compile unit) and,
/// per token, the order of the units ([`QuantizeVariant::launch`] derives the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QuantizeVariant {
    /// Input element type.
    pub input: QuantizeInput,
    /// Scales rounded up to powers of two.
    pub pow2: bool,
    /// Scale groups.
    pub granularity: QuantizeGranularity,
    /// The per-token kernel's unit order ([`UnitOrder::Contiguous`] for 128x128, which has no
    /// units).
    pub unit_order: UnitOrder,
}

impl QuantizeVariant {
    /// The candidates for `op` on input of `dtype` (f32, f16 or bf16) on `arch`, the default
    /// first: per token both unit orders, interleaved first for 16-bit inputs on sm_90 (the
    /// measured winner there: 77.5% of the copy ceiling at 4096 x 7168 bf16 on the H200, against
    /// 71.4% contiguous), contiguous first elsewhere (not measured); 128x128 one variant.
    pub fn candidates(op: &Fp8Quantize, dtype: DType, arch: &ArchSpec) -> Result<Vec<Self>> {
        let input = QuantizeInput::of(dtype).ok_or_else(|| {
            Error::invalid("fp8_quantize", "x", "dtype f32, f16 or bf16", dtype.name())
        })?;
        Ok(Self::candidates_of(
            input,
            op.scale_rule == ScaleRule::PowerOfTwo,
            op.granularity.into(),
            arch,
        ))
    }

    /// [`QuantizeVariant::candidates`] by input type, rule and granularity.
    pub fn candidates_of(
        input: QuantizeInput,
        pow2: bool,
        granularity: QuantizeGranularity,
        arch: &ArchSpec,
    ) -> Vec<Self> {
        let variant = |unit_order| Self {
            input,
            pow2,
            granularity,
            unit_order,
        };
        match granularity {
            QuantizeGranularity::Block128x128 => vec![variant(UnitOrder::Contiguous)],
            QuantizeGranularity::PerToken1x128 => {
                let interleaved_first =
                    arch.compute_capability == (9, 0) && input != QuantizeInput::F32;
                let mut orders = UnitOrder::ALL;
                if interleaved_first {
                    orders.reverse();
                }
                orders.into_iter().map(variant).collect()
            }
        }
    }

    /// The default variant for `op` on input of `dtype` on `arch` (the first candidate).
    pub fn for_op(op: &Fp8Quantize, dtype: DType, arch: &ArchSpec) -> Result<Self> {
        Ok(Self::candidates(op, dtype, arch)?[0])
    }

    /// The kernel's layout and register cap (measured on the H200: see
    /// kernels-cuda/dev/NOTES-fp8-quantize.md). 16-bit inputs, per token: 8 threads per group
    /// and 4 CTAs per SM; interleaved, 1 unit per batch (77.5% of the 1 GiB copy ceiling at
    /// 4096 x 7168 bf16; 2 units: 73.3%); contiguous, 2 units per batch (71.4%; 1 unit per batch
    /// per warp without the persistent grid: 62%). 128x128: 3 CTAs per SM (89% at 7168 x 7168,
    /// against 79% at 4 and 82% at 2). f32 inputs (twice the registers per element, not timed):
    /// 16 threads per group and 3 CTAs per SM per token, 2 CTAs per SM per block, the largest
    /// that ptxas fits without spilling.
    pub fn launch(&self) -> QuantizeLaunch {
        let f32_input = self.input == QuantizeInput::F32;
        let group_threads = if f32_input { 16 } else { 8 };
        let group_batch = match self.unit_order {
            UnitOrder::Contiguous => 2,
            UnitOrder::Interleaved => 1,
        };
        let min_ctas_per_sm = match (self.granularity, f32_input) {
            (QuantizeGranularity::PerToken1x128, false) => 4,
            (QuantizeGranularity::PerToken1x128, true) => 3,
            (QuantizeGranularity::Block128x128, false) => 3,
            (QuantizeGranularity::Block128x128, true) => 2,
        };
        QuantizeLaunch {
            group_threads,
            group_batch,
            min_ctas_per_sm,
            unit_order: self.unit_order,
        }
    }

    /// The launch grid for `op` on `arch`: per token, a persistent grid of at most
    /// [`QuantizeLaunch::min_ctas_per_sm`] CTAs per SM and no more CTAs than there are units for
    /// their 8 warps (each warp takes its units in [`QuantizeLaunch::unit_order`]); 128x128, one
    /// CTA per block (x: column blocks, y: row blocks).
    pub fn grid(&self, op: &Fp8Quantize, arch: &ArchSpec) -> Result<(u32, u32, u32)> {
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
                let launch = self.launch();
                let groups = op.rows.checked_mul(sc).ok_or_else(|| too_large(op.rows))?;
                let units = groups.div_ceil(launch.unit_groups() as usize);
                let warps_per_cta = (QUANTIZE_THREADS / 32) as usize;
                let ctas = units
                    .div_ceil(warps_per_cta)
                    .min(arch.sm_count as usize * launch.min_ctas_per_sm as usize)
                    .max(1);
                // The fewest CTAs that keep the same rounds (units per warp): every warp then
                // has as many units as the division allows, not 14 on some and 13 on others
                // (4096 x 7168 bf16 on the H200: 512 CTAs instead of 528, 0.8 % faster;
                // dev/NOTES-fp8-quantize.md, session 20).
                let rounds = units.div_ceil(warps_per_cta * ctas).max(1);
                let ctas = units.div_ceil(warps_per_cta * rounds).max(1);
                Ok((u32::try_from(ctas).map_err(|_| too_large(ctas))?, 1, 1))
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
        let launch = self.launch();
        vec![
            ("IN_KIND", kind.to_string()),
            ("POW2", u8::from(self.pow2).to_string()),
            ("GROUP_THREADS", launch.group_threads.to_string()),
            ("GROUP_BATCH", launch.group_batch.to_string()),
            ("MIN_CTAS_PER_SM", launch.min_ctas_per_sm.to_string()),
            ("UNIT_ORDER", launch.unit_order.define().to_string()),
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
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let v = QuantizeVariant::for_op(&op, DType::BF16, &h200).unwrap();
        let d: Vec<(&str, String)> = v.kernel().defines;
        let d: Vec<(&str, &str)> = d.iter().map(|(a, b)| (*a, b.as_str())).collect();
        assert_eq!(
            d,
            [
                ("IN_KIND", "2"),
                ("POW2", "1"),
                ("GROUP_THREADS", "8"),
                ("GROUP_BATCH", "2"),
                ("MIN_CTAS_PER_SM", "3"),
                ("UNIT_ORDER", "0"),
                ("TESSERA_SMEM_BYTES", "0"),
                ("TESSERA_THREADS", "256"),
            ]
        );
        assert_eq!(v.entry(), "fp8_quantize_128x128");
        assert_eq!(v.grid(&op, &h200).unwrap(), (2, 3, 1));
        let row = Fp8Quantize {
            granularity: Fp8Granularity::PerToken1x128,
            scale_rule: ScaleRule::Float,
            ..op
        };
        let r = QuantizeVariant::for_op(&row, DType::F32, &h200).unwrap();
        assert_eq!(r.entry(), "fp8_quantize_1x128");
        assert_eq!(r.kernel().define_value("IN_KIND"), Some("0"));
        assert_eq!(r.kernel().define_value("GROUP_THREADS"), Some("16"));
        assert_eq!(r.kernel().define_value("UNIT_ORDER"), Some("0"));
        // 600 groups in units of 2, 8 warps per CTA: fewer CTAs than the persistent grid.
        assert_eq!(
            r.grid(&row, &h200).unwrap(),
            (300usize.div_ceil(8) as u32, 1, 1)
        );
        // 4096 x 7168 bf16: 57344 units of 4 groups; 4 CTAs on each of 132 SMs would give
        // 4224 warps 13 or 14 units each; 512 CTAs give every warp 14.
        let big = Fp8Quantize {
            rows: 4096,
            cols: 7168,
            ..row
        };
        let b = QuantizeVariant::for_op(&big, DType::BF16, &h200).unwrap();
        assert_eq!(b.grid(&big, &h200).unwrap(), (512, 1, 1));
        // 4097 rows: 57358 units, 14 rounds on 528 CTAs, and 513 CTAs hold them in 14 rounds.
        let odd = Fp8Quantize { rows: 4097, ..big };
        assert_eq!(b.grid(&odd, &h200).unwrap(), (513, 1, 1));
        // Never more rounds than the capped grid's, never more CTAs than the cap.
        for rows in [1, 7, 131, 1000, 4096, 4097, 8191, 16384, 100_000] {
            let op = Fp8Quantize { rows, ..big };
            let units = (rows * 56).div_ceil(4);
            let cap = (132 * 4).min(units.div_ceil(8));
            let (ctas, _, _) = b.grid(&op, &h200).unwrap();
            let ctas = ctas as usize;
            assert!(
                (1..=cap).contains(&ctas),
                "rows {rows}: {ctas} CTAs, cap {cap}"
            );
            assert_eq!(
                units.div_ceil(8 * ctas),
                units.div_ceil(8 * cap),
                "rows {rows}"
            );
        }
        // ... interleaved, 8 threads per group, 1 unit per batch (the H200's measured winner).
        let d = b.kernel();
        for (name, value) in [
            ("GROUP_THREADS", "8"),
            ("GROUP_BATCH", "1"),
            ("MIN_CTAS_PER_SM", "4"),
            ("UNIT_ORDER", "1"),
        ] {
            assert_eq!(d.define_value(name), Some(value), "{name}");
        }
        // The two granularities are entry points of one source, each with its register cap.
        let block = QuantizeVariant {
            granularity: QuantizeGranularity::Block128x128,
            ..r
        };
        assert_eq!(r.kernel().source, block.kernel().source);
        assert_ne!(r.entry(), block.entry());
        assert!(QuantizeVariant::for_op(&op, DType::E4M3, &h200).is_err());
    }

    #[test]
    fn candidates_put_the_measured_order_first() {
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        let orders = |input, granularity, arch: &ArchSpec| -> Vec<UnitOrder> {
            QuantizeVariant::candidates_of(input, false, granularity, arch)
                .iter()
                .map(|v| v.unit_order)
                .collect()
        };
        use QuantizeGranularity::{Block128x128, PerToken1x128};
        use UnitOrder::{Contiguous, Interleaved};
        for input in [QuantizeInput::F16, QuantizeInput::Bf16] {
            assert_eq!(
                orders(input, PerToken1x128, &h200),
                [Interleaved, Contiguous]
            );
            assert_eq!(
                orders(input, PerToken1x128, &a100),
                [Contiguous, Interleaved]
            );
        }
        for arch in [&h200, &a100] {
            assert_eq!(
                orders(QuantizeInput::F32, PerToken1x128, arch),
                [Contiguous, Interleaved]
            );
            for input in [QuantizeInput::F32, QuantizeInput::F16, QuantizeInput::Bf16] {
                assert_eq!(orders(input, Block128x128, arch), [Contiguous]);
            }
        }
        // The contiguous order keeps the layout measured before the interleaved one.
        let contiguous = QuantizeVariant {
            input: QuantizeInput::Bf16,
            pow2: false,
            granularity: PerToken1x128,
            unit_order: Contiguous,
        };
        let l = contiguous.launch();
        assert_eq!(
            (l.group_threads, l.group_batch, l.min_ctas_per_sm),
            (8, 2, 4)
        );
    }
}
