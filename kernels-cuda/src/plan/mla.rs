//! The MLA kernels' variants: append (`kernels/mla_append.cu`), absorbed decode
//! (`kernels/mla_decode.cu`, one CTA tiling per variant, and the Hopper kernels
//! `kernels/sm90/mla_decode.cu` for the bf16 cache with 64 rows per CTA, the transposed
//! `kernels/sm90/mla_decode_fp8.cu` for the FP8 cache and for the bf16 cache with 16 or 32 rows
//! per CTA, and `kernels/sm90/mla_decode_fp8_rs.cu` / `mla_decode_fp8_rs_pairs.cu` for the FP8
//! cache with 16 / 32 rows per CTA and the cache operand in registers) and the split combine
//! (`kernels/mla_combine.cu`).

use super::{check_resources, ArchSpec, KernelSpec};
use crate::compile::KernelSource;
use serde::{Deserialize, Serialize};
use tessera_core::{BackendKind, Error, MlaCacheFormat, MlaCacheLayout, MlaDecode, Result};

/// Threads per decode CTA of the `mma.sync` kernel (8 warps).
pub const MLA_DECODE_THREADS: u32 = 256;
/// Threads per decode CTA of the Hopper kernel (a producer and two math warpgroups).
pub const MLA_DECODE_SM90_THREADS: u32 = 384;
/// The Hopper kernel's tiling as (row slices of 16, key tile, stages): 64 rows, 64-key tiles,
/// two tiles in shared memory.
pub const MLA_DECODE_SM90_TILING: (u32, u32, u32) = (4, 64, 2);
/// The Hopper transposed kernel's tilings (`sm90/mla_decode_fp8.cu`, its `ROWS` = 16 x row
/// slices), for both cache formats: 16 or 32 query rows per CTA (the wgmma N of its transposed
/// products), 64-key tiles, two bf16 key tiles in shared memory.
pub const MLA_DECODE_SM90_TRANSPOSED_TILINGS: [(u32, u32, u32); 2] = [(1, 64, 2), (2, 64, 2)];
/// The Hopper FP8 kernels with the cache operand in registers, 64-key tiles, four raw FP8 tiles
/// in shared memory: 16 query rows per CTA (`sm90/mla_decode_fp8_rs.cu`), 32
/// (`sm90/mla_decode_fp8_rs_pairs.cu`).
pub const MLA_DECODE_SM90_FP8_REGISTERS_TILINGS: [(u32, u32, u32); 2] = [(1, 64, 4), (2, 64, 4)];
/// Threads per combine CTA: 4 warps, one row each.
pub const MLA_COMBINE_THREADS: u32 = 128;
/// Rows (of `s_q * heads`) each combine CTA merges at a time.
pub const MLA_COMBINE_ROWS_PER_CTA: u32 = 4;
/// Combine CTAs per SM at most: the combine's grid strides over its work, so that the CTAs of
/// a launch with few split requests (none, with equal lengths that need no split) are few.
pub const MLA_COMBINE_CTAS_PER_SM: u32 = 8;
/// Threads of the split-KV schedule's one CTA.
pub const MLA_SCHEDULE_THREADS: u32 = 512;
/// Tokens per append CTA (one warp each).
pub const MLA_APPEND_TOKENS_PER_CTA: u32 = 8;

/// How a token record is stored (the plan's copy of [`MlaCacheFormat`], serializable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheFormat {
    /// `[latent bf16 | rope bf16]`.
    Bf16,
    /// `[latent e4m3 | latent/128 f32 scales | rope bf16]`.
    Fp8,
}

impl From<MlaCacheFormat> for CacheFormat {
    fn from(f: MlaCacheFormat) -> Self {
        match f {
            MlaCacheFormat::Bf16 => CacheFormat::Bf16,
            MlaCacheFormat::Fp8 => CacheFormat::Fp8,
        }
    }
}

/// The append kernel: one warp per token, 8 tokens per CTA, every layout at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MlaAppendVariant;

impl MlaAppendVariant {
    /// The launch grid for `tokens` tokens.
    pub fn grid(&self, tokens: usize) -> (u32, u32, u32) {
        (
            tokens.div_ceil(MLA_APPEND_TOKENS_PER_CTA as usize) as u32,
            1,
            1,
        )
    }
}

impl KernelSpec for MlaAppendVariant {
    fn op(&self) -> &'static str {
        "mla_append"
    }
    fn source(&self) -> KernelSource {
        crate::kernels::MLA_APPEND
    }
    fn defines(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn entry(&self) -> &'static str {
        "mla_append"
    }
    fn threads(&self) -> u32 {
        32 * MLA_APPEND_TOKENS_PER_CTA
    }
    fn smem_bytes(&self) -> u32 {
        0
    }
    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        check_resources(self, arch)
    }
}

/// Renders a query layout as the kernels' `VARLEN` constant.
fn varlen_define(varlen: bool) -> (&'static str, String) {
    ("VARLEN", u32::from(varlen).to_string())
}

/// The split-KV schedule (`kernels/mla_schedule.cu`): one CTA of 512 threads that computes, from
/// the lengths on the device, each request's splits and the decode's units before the decode
/// (the rule of [`tessera_core::ops::mla::mla_kv_schedule`]), for the uniform or the
/// variable-length query layout (`varlen`, as the decode variant it precedes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MlaScheduleVariant {
    /// Queries located by `cu_seqlens_q` ([`tessera_core::MlaDecodeVarlen`]) rather than `s_q`
    /// per request.
    pub varlen: bool,
}

impl KernelSpec for MlaScheduleVariant {
    fn op(&self) -> &'static str {
        "mla_decode"
    }
    fn source(&self) -> KernelSource {
        crate::kernels::MLA_SCHEDULE
    }
    fn defines(&self) -> Vec<(&'static str, String)> {
        vec![
            varlen_define(self.varlen),
            ("MAX_KV_SPLITS", tessera_core::MLA_MAX_KV_SPLITS.to_string()),
            (
                "SCHEDULE_BINS",
                tessera_core::ops::mla::MLA_SCHEDULE_BINS.to_string(),
            ),
        ]
    }
    fn entry(&self) -> &'static str {
        "mla_schedule"
    }
    fn threads(&self) -> u32 {
        MLA_SCHEDULE_THREADS
    }
    fn smem_bytes(&self) -> u32 {
        0
    }
    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        check_resources(self, arch)
    }
}

/// The split combine: CTAs of 128 threads striding over the (split request, 4 query rows) items,
/// one warp per row, for the uniform or the variable-length query layout (`varlen`, as the
/// decode variant it follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct MlaCombineVariant {
    /// Queries located by `cu_seqlens_q` ([`tessera_core::MlaDecodeVarlen`]) rather than `s_q`
    /// per request.
    pub varlen: bool,
}

impl KernelSpec for MlaCombineVariant {
    fn op(&self) -> &'static str {
        "mla_decode"
    }
    fn source(&self) -> KernelSource {
        crate::kernels::MLA_COMBINE
    }
    fn defines(&self) -> Vec<(&'static str, String)> {
        vec![varlen_define(self.varlen)]
    }
    fn entry(&self) -> &'static str {
        "mla_combine"
    }
    fn threads(&self) -> u32 {
        MLA_COMBINE_THREADS
    }
    fn smem_bytes(&self) -> u32 {
        0
    }
    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        check_resources(self, arch)
    }
}

/// Which decode kernel a variant runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlaDecodeKernel {
    /// `kernels/mla_decode.cu`: `mma.sync`, 8 warps; every layout, sm_80 and later.
    #[default]
    MmaSync,
    /// sm_90a, DeepSeek-V3's dims. bf16 records with [`MLA_DECODE_SM90_TILING`] (64 rows):
    /// `kernels/sm90/mla_decode.cu`, a cp.async producer warpgroup and two math warpgroups (or,
    /// with the seesaw, TMA refills; FP8 records too, their codes converted into the bf16 tiles
    /// by the producer warpgroup).
    /// [`MLA_DECODE_SM90_TRANSPOSED_TILINGS`] (16 or 32 rows, either format):
    /// `kernels/sm90/mla_decode_fp8.cu`, transposed products on one math warpgroup, two
    /// warpgroups filling its bf16 key tiles (FP8: dequantizing; bf16: cp.async copies).
    /// FP8 records with [`MLA_DECODE_SM90_FP8_REGISTERS_TILINGS`] (16 or 32 rows):
    /// `kernels/sm90/mla_decode_fp8_rs.cu` / `mla_decode_fp8_rs_pairs.cu`, raw records copied in
    /// bulk, two math warpgroups converting the codes straight into their wgmma operand
    /// registers.
    Wgmma,
}

/// A CTA tiling of the decode kernel for one cache layout: `16 * row_slices` query rows per CTA,
/// key tiles of `key_tile`, `stages` tiles in flight. DeepSeek-V3's dims (latent 512, rope 64)
/// are compile-time constants; other layouts share one compile per (format, tiling) with dims
/// at run time (their shared memory is sized at run time). `varlen` compiles the kernel for
/// queries located by `cu_seqlens_q` ([`tessera_core::MlaDecodeVarlen`]); plans choose the
/// tiling for the uniform shape ([`tessera_core::MlaDecodeVarlen::padded`]) and the varlen
/// launch sets the flag ([`MlaDecodeVariant::with_varlen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MlaDecodeVariant {
    /// Record format.
    pub format: CacheFormat,
    /// Latent width of the layout.
    pub latent_dim: u32,
    /// RoPE width of the layout.
    pub rope_dim: u32,
    /// 16-row query slices per CTA: 1, 2 or 4.
    pub row_slices: u32,
    /// Keys per shared-memory tile: 32 or 64.
    pub key_tile: u32,
    /// Key tiles in the cp.async pipeline: 2, 3 or 4.
    pub stages: u32,
    /// Variable query length per request (`VARLEN 1`); absent in plan files: false.
    #[serde(default)]
    pub varlen: bool,
    /// The kernel; absent in plan files: the `mma.sync` one.
    #[serde(default)]
    pub kernel: MlaDecodeKernel,
    /// The Hopper 64-row kernel with FlashMLA's schedule (`SEESAW 1` of
    /// `sm90/mla_decode.cu`): each math warpgroup computes S of every other key tile and the two
    /// exchange P; a stage part is refilled by TMA, issued by the warpgroup that read it last
    /// (FP8 records: the codes, which the producer warpgroup converts into the bf16 tile). It
    /// reads the cache through tensor maps, one box of 64 keys per column block of a tile, so it
    /// serves only the page sizes [`mla_seesaw_page_size_ok`] accepts. The only 64-row variant
    /// of FP8 records. Absent in plan files: false.
    #[serde(default)]
    pub seesaw: bool,
}

/// Whether the seesaw variant serves pages of `page_size` keys: multiples of 64, so that each
/// 64-key tile is one TMA box per column block. (Boxes of smaller pages, several per block,
/// made its refills slower than the default schedule: session 13.)
pub fn mla_seesaw_page_size_ok(page_size: usize) -> bool {
    page_size > 0 && page_size % 64 == 0
}

/// The decode tilings as (row slices, key tile, stages), in order of preference for many rows;
/// fewer rows start further down ([`super::heuristics::pick_mla_decode`]).
pub const MLA_DECODE_TILINGS: [(u32, u32, u32); 7] = [
    (4, 32, 3),
    (4, 32, 2),
    (2, 32, 4),
    (2, 32, 2),
    (1, 64, 3),
    (1, 64, 2),
    (1, 32, 2),
];

impl MlaDecodeVariant {
    /// The variant of `layout` with tiling `(row_slices, key_tile, stages)`.
    pub fn new(layout: &MlaCacheLayout, (row_slices, key_tile, stages): (u32, u32, u32)) -> Self {
        Self {
            format: layout.format.into(),
            latent_dim: layout.latent_dim as u32,
            rope_dim: layout.rope_dim as u32,
            row_slices,
            key_tile,
            stages,
            varlen: false,
            kernel: MlaDecodeKernel::MmaSync,
            seesaw: false,
        }
    }

    /// The Hopper bf16 kernel's variant for `layout` (valid only for bf16 records of
    /// DeepSeek-V3's dims on sm_90a: see [`KernelSpec::valid_on`]).
    pub fn sm90(layout: &MlaCacheLayout) -> Self {
        Self::wgmma(layout, MLA_DECODE_SM90_TILING)
    }

    /// The Hopper kernel's variant for `layout` with `tiling` (valid only for the tilings of the
    /// layout's format: [`MLA_DECODE_SM90_TRANSPOSED_TILINGS`], and for bf16 also
    /// [`MLA_DECODE_SM90_TILING`]).
    pub fn wgmma(layout: &MlaCacheLayout, tiling: (u32, u32, u32)) -> Self {
        Self {
            kernel: MlaDecodeKernel::Wgmma,
            ..Self::new(layout, tiling)
        }
    }

    /// The Hopper variants of `layout`'s format: for bf16 the 64-row kernel's tiling first (the
    /// seesaw, where the page size allows it, then the default schedule), for FP8 the
    /// register-operand kernels (16, 32 rows) first, then the 64-row seesaw where the page size
    /// allows it; then the transposed kernel's 16- and 32-row tilings (both formats; whether
    /// they are valid on an architecture and for the dims is [`KernelSpec::valid_on`]'s call).
    pub fn sm90_variants(layout: &MlaCacheLayout) -> Vec<Self> {
        let mut v = Vec::new();
        if CacheFormat::from(layout.format) == CacheFormat::Fp8 {
            v.extend(
                MLA_DECODE_SM90_FP8_REGISTERS_TILINGS
                    .iter()
                    .map(|&t| Self::wgmma(layout, t)),
            );
            if mla_seesaw_page_size_ok(layout.page_size) {
                v.push(Self {
                    seesaw: true,
                    ..Self::wgmma(layout, MLA_DECODE_SM90_TILING)
                });
            }
        }
        if CacheFormat::from(layout.format) == CacheFormat::Bf16 {
            let sixty_four_rows = Self::wgmma(layout, MLA_DECODE_SM90_TILING);
            if mla_seesaw_page_size_ok(layout.page_size) {
                v.push(Self {
                    seesaw: true,
                    ..sixty_four_rows
                });
            }
            v.push(sixty_four_rows);
        }
        v.extend(
            MLA_DECODE_SM90_TRANSPOSED_TILINGS
                .iter()
                .map(|&t| Self::wgmma(layout, t)),
        );
        v
    }

    /// Whether this Hopper variant runs the transposed kernel (`sm90/mla_decode_fp8.cu`): every
    /// tiling but the 64-row kernel's and the FP8 register-operand kernel's.
    pub fn is_transposed(&self) -> bool {
        self.kernel == MlaDecodeKernel::Wgmma
            && !self.is_sixty_four_rows()
            && !self.is_fp8_registers()
    }

    /// Whether this Hopper variant runs the 64-row kernel (`sm90/mla_decode.cu`): bf16 records
    /// with [`MLA_DECODE_SM90_TILING`], or FP8 records with that tiling and the seesaw.
    pub fn is_sixty_four_rows(&self) -> bool {
        self.kernel == MlaDecodeKernel::Wgmma
            && self.tiling() == MLA_DECODE_SM90_TILING
            && (self.format == CacheFormat::Bf16 || self.seesaw)
    }

    /// Whether this Hopper variant runs an FP8 register-operand kernel
    /// (`sm90/mla_decode_fp8_rs.cu`, or with 32 rows `sm90/mla_decode_fp8_rs_pairs.cu`).
    pub fn is_fp8_registers(&self) -> bool {
        self.kernel == MlaDecodeKernel::Wgmma
            && self.format == CacheFormat::Fp8
            && MLA_DECODE_SM90_FP8_REGISTERS_TILINGS.contains(&self.tiling())
    }

    /// Whether the tiling is one a Hopper kernel of this variant's format is built for (asked of
    /// `Wgmma` variants).
    fn is_wgmma_tiling(&self) -> bool {
        MLA_DECODE_SM90_TRANSPOSED_TILINGS.contains(&self.tiling())
            || self.is_sixty_four_rows()
            || self.is_fp8_registers()
    }

    /// The same tiling for the uniform (`false`) or variable-length (`true`) query layout.
    pub fn with_varlen(self, varlen: bool) -> Self {
        Self { varlen, ..self }
    }

    /// Whether the dims are compile-time constants (DeepSeek-V3: latent 512, rope 64).
    pub fn compile_time_dims(&self) -> bool {
        self.latent_dim == 512 && self.rope_dim == 64
    }

    /// Query rows per CTA: 16, 32 or 64.
    pub fn rows_per_cta(&self) -> u32 {
        16 * self.row_slices
    }

    /// Output columns each CTA computes: the whole latent for DeepSeek's 512, else 256 (larger
    /// latents are split over CTAs that each recompute the scores).
    pub fn dv_chunk(&self) -> u32 {
        if self.compile_time_dims() {
            512
        } else {
            256
        }
    }

    /// Bytes of a token record.
    pub fn token_bytes(&self) -> u32 {
        match self.format {
            CacheFormat::Bf16 => 2 * (self.latent_dim + self.rope_dim),
            CacheFormat::Fp8 => self.latent_dim + 4 * (self.latent_dim / 128) + 2 * self.rope_dim,
        }
    }

    /// The tiling, as in [`MLA_DECODE_TILINGS`].
    pub fn tiling(&self) -> (u32, u32, u32) {
        (self.row_slices, self.key_tile, self.stages)
    }

    /// Whether this variant is for `layout` (same format and dims; the seesaw also needs a page
    /// size its TMA boxes tile).
    pub fn fits_layout(&self, layout: &MlaCacheLayout) -> bool {
        CacheFormat::from(layout.format) == self.format
            && self.latent_dim as usize == layout.latent_dim
            && self.rope_dim as usize == layout.rope_dim
            && (!self.seesaw || mla_seesaw_page_size_ok(layout.page_size))
    }
}

impl KernelSpec for MlaDecodeVariant {
    fn op(&self) -> &'static str {
        "mla_decode"
    }

    fn source(&self) -> KernelSource {
        match self.kernel {
            MlaDecodeKernel::MmaSync => crate::kernels::MLA_DECODE,
            MlaDecodeKernel::Wgmma if self.is_fp8_registers() && self.row_slices == 1 => {
                crate::kernels::MLA_DECODE_SM90_FP8_RS
            }
            MlaDecodeKernel::Wgmma if self.is_fp8_registers() => {
                crate::kernels::MLA_DECODE_SM90_FP8_RS_PAIRS
            }
            MlaDecodeKernel::Wgmma if self.is_transposed() => crate::kernels::MLA_DECODE_SM90_FP8,
            MlaDecodeKernel::Wgmma => crate::kernels::MLA_DECODE_SM90,
        }
    }

    fn defines(&self) -> Vec<(&'static str, String)> {
        let fmt = match self.format {
            CacheFormat::Bf16 => 0,
            CacheFormat::Fp8 => 1,
        };
        if self.is_fp8_registers() {
            return vec![
                ("LATENT", self.latent_dim.to_string()),
                ("ROPE", self.rope_dim.to_string()),
                ("ROWS", self.rows_per_cta().to_string()),
                varlen_define(self.varlen),
            ];
        }
        if self.kernel == MlaDecodeKernel::Wgmma {
            let mut d = vec![
                ("FMT", fmt.to_string()),
                ("LATENT", self.latent_dim.to_string()),
                ("ROPE", self.rope_dim.to_string()),
            ];
            if self.is_transposed() {
                d.push(("ROWS", self.rows_per_cta().to_string()));
            } else {
                d.push(("SEESAW", u32::from(self.seesaw).to_string()));
            }
            d.push(varlen_define(self.varlen));
            return d;
        }
        let (latent, rope) = if self.compile_time_dims() {
            (self.latent_dim, self.rope_dim)
        } else {
            (0, 0)
        };
        vec![
            ("FMT", fmt.to_string()),
            ("LATENT", latent.to_string()),
            ("ROPE", rope.to_string()),
            ("DV_CHUNK", self.dv_chunk().to_string()),
            ("ROW_SLICES", self.row_slices.to_string()),
            ("KEY_TILE", self.key_tile.to_string()),
            ("STAGES", self.stages.to_string()),
            varlen_define(self.varlen),
        ]
    }

    fn entry(&self) -> &'static str {
        "mla_decode"
    }

    fn threads(&self) -> u32 {
        match self.kernel {
            MlaDecodeKernel::MmaSync => MLA_DECODE_THREADS,
            MlaDecodeKernel::Wgmma => MLA_DECODE_SM90_THREADS,
        }
    }

    /// The `mma.sync` kernel's layout (`mla_smem_layout` in `mla_decode.cu`): Q `[M][qk+8]` bf16 (none for
    /// the compile-time dims with 16 rows, which keep Q in registers and stage it in a key
    /// buffer), key tiles `[N][qk+8]` bf16 (`stages` of them for bf16 records, one for FP8), FP8
    /// raw records `stages x [N][token_bytes rounded up to 16]`, P `[M][N+8]` bf16, the exchange
    /// `[8 / row_slices][M]` f32.
    /// The Hopper 64-row kernel's (`MlaSm90Smem` in `sm90/mla_decode.cu`): Q and `stages` key
    /// tiles as 128-byte-swizzled blocks of 64 rows x 64 dims, P (one such block), row maxima
    /// and sums `[2][64]` f32 each, a full barrier per (stage, column block), an empty barrier
    /// per stage, 16 bytes of flags; the seesaw's three `[64]` f32 exchanges and two `landed`
    /// barriers. FP8 (seesaw only): the tiles' scales `[stages][64][4]` f32 in place of the row
    /// maxima and sums, raw barriers `[stages][2]` in place of the empty ones, no `landed`.
    /// The Hopper transposed kernel's (`MlaSm90Fp8Smem` in `sm90/mla_decode_fp8.cu`), for R
    /// rows: Q as blocks of R rows x 64 dims, `stages` bf16 key tiles of 64-key x 64-dim blocks,
    /// P `[R][64]` bf16, column maxima and sums `[4][R]` f32 each, full barriers (per stage for
    /// FP8, per (stage, column block) for bf16), an empty barrier per stage, 16 bytes of flags.
    /// The FP8 register-operand kernels' (`MlaSm90Fp8RsSmem` in `sm90/mla_decode_fp8_rs.cu` and
    /// `sm90/mla_decode_fp8_rs_pairs.cu`), for R rows: `stages` raw tiles of 64 records, Q as
    /// blocks of R rows x 64 dims, then with 16 rows P' (per math warpgroup, 4 copies of
    /// `[R][64]` bf16), column maxima `[2][R][4]` and sums `[2][4][R]` f32, the row exponents
    /// `[R]` i32, the merge `[4][R]` f32; with 32 rows P (per tile of a pair, `[R][64]` bf16),
    /// column maxima `[2][R][4]` f32, the pair's tile maxima `[2][2][R]` f32, column sums
    /// `[2][4][R]` f32, the row exponents; then a full and an empty barrier per stage, 16 bytes
    /// of flags.
    fn smem_bytes(&self) -> u32 {
        if self.is_fp8_registers() {
            let rows = self.rows_per_cta();
            let blocks = (self.latent_dim + self.rope_dim) / 64;
            let common = self.stages * self.key_tile * self.token_bytes()
                + blocks * rows * 128
                + rows * 4
                + 2 * self.stages * 8
                + 16;
            return if self.row_slices == 1 {
                common + 2 * 4 * rows * 128 + 2 * (2 * 4 * rows * 4) + 4 * rows * 4
            } else {
                common + 2 * rows * 128 + 2 * rows * 4 * 4 + 2 * 2 * rows * 4 + 2 * 4 * rows * 4
            };
        }
        if self.is_transposed() {
            let rows = self.rows_per_cta();
            let blocks = (self.latent_dim + self.rope_dim) / 64;
            let full_barriers = match self.format {
                CacheFormat::Bf16 => self.stages * blocks,
                CacheFormat::Fp8 => self.stages,
            };
            return blocks * rows * 128
                + self.stages * blocks * self.key_tile * 128
                + rows * 128
                + 2 * 4 * rows * 4
                + full_barriers * 8
                + self.stages * 8
                + 16;
        }
        if self.kernel == MlaDecodeKernel::Wgmma {
            let block = 64 * 128;
            let blocks = (self.latent_dim + self.rope_dim) / 64;
            let rows = self.rows_per_cta();
            if self.format == CacheFormat::Fp8 {
                return blocks * block
                    + self.stages * blocks * block
                    + block
                    + self.stages * self.key_tile * 16
                    + self.stages * blocks * 8
                    + self.stages * 2 * 8
                    + 16
                    + 3 * rows * 4;
            }
            // The seesaw adds the running maximum and the two warpgroups' factors, [64] f32 each,
            // and the partial tile's two `landed` barriers.
            let seesaw = if self.seesaw { 3 * rows * 4 + 2 * 8 } else { 0 };
            return blocks * block
                + self.stages * blocks * block
                + block
                + 2 * 2 * rows * 4
                + self.stages * blocks * 8
                + self.stages * 8
                + 16
                + seesaw;
        }
        let rows = self.rows_per_cta();
        let keys = self.key_tile;
        let pitch = 2 * (self.latent_dim + self.rope_dim + 8);
        let (key_tiles, raw) = match self.format {
            CacheFormat::Bf16 => (self.stages, 0),
            CacheFormat::Fp8 => (1, self.stages * keys * self.token_bytes().div_ceil(16) * 16),
        };
        let q_in_registers = self.compile_time_dims() && self.row_slices == 1;
        let q = if q_in_registers { 0 } else { rows * pitch };
        let col_warps = 8 / self.row_slices.max(1);
        q + key_tiles * keys * pitch + raw + rows * (keys + 8) * 2 + col_warps * rows * 4
    }

    fn compiled_smem_bytes(&self) -> u32 {
        if self.compile_time_dims() {
            self.smem_bytes()
        } else {
            0
        }
    }

    fn valid_on(&self, arch: &ArchSpec) -> Result<()> {
        if self.seesaw && !self.is_sixty_four_rows() {
            return Err(Error::invalid(
                "mla_decode",
                "variant",
                "the seesaw only on the Hopper kernel's 64-row tiling",
                format!("{self:?}"),
            ));
        }
        if self.kernel == MlaDecodeKernel::Wgmma {
            if !self.is_wgmma_tiling() || !self.compile_time_dims() {
                return Err(Error::invalid(
                    "mla_decode",
                    "variant",
                    format!(
                        "a Hopper kernel's tiling over records of latent 512 + rope 64 \
                         (one of {MLA_DECODE_SM90_TRANSPOSED_TILINGS:?}, for bf16 also \
                         {MLA_DECODE_SM90_TILING:?}, for FP8 also \
                         {MLA_DECODE_SM90_FP8_REGISTERS_TILINGS:?} and {MLA_DECODE_SM90_TILING:?} \
                         with the seesaw)"
                    ),
                    format!("{self:?}"),
                ));
            }
            if !arch.wgmma {
                return Err(Error::Unsupported {
                    op: "mla_decode",
                    backend: BackendKind::Cuda,
                    reason: format!(
                        "{} needs wgmma (sm_90a), which {} lacks",
                        self.label(),
                        arch.nvrtc_target()
                    ),
                });
            }
            return check_resources(self, arch);
        }
        if !MLA_DECODE_TILINGS.contains(&self.tiling()) {
            return Err(tessera_core::Error::invalid(
                "mla_decode",
                "variant",
                format!("a tiling of {MLA_DECODE_TILINGS:?}"),
                format!("{:?}", self.tiling()),
            ));
        }
        check_resources(self, arch)
    }
}

/// The shape an MLA decode plan is made for: the op and the longest sequence it is used with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MlaDecodeShape<'a> {
    /// The op.
    pub op: &'a MlaDecode,
    /// The longest `seq_lens` entry the plan is used with (guides the splits).
    pub max_seq_len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_tiling(layout: &MlaCacheLayout, t: (u32, u32, u32)) -> MlaDecodeVariant {
        MlaDecodeVariant::new(layout, t)
    }

    #[test]
    fn shared_memory_matches_the_kernel_layout() {
        let ds = MlaCacheLayout::default();
        // Q 64 x 584 bf16, three key tiles 32 x 584, P 64 x 40, exchange 2 x 64 f32.
        assert_eq!(
            by_tiling(&ds, (4, 32, 3)).smem_bytes(),
            64 * 1168 + 3 * 32 * 1168 + 64 * 80 + 2 * 64 * 4
        );
        // 16 rows: Q in registers, staged in a key buffer.
        assert_eq!(
            by_tiling(&ds, (1, 64, 3)).smem_bytes(),
            3 * 64 * 1168 + 16 * 144 + 8 * 16 * 4
        );
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..ds
        };
        assert_eq!(fp8.token_bytes(), 656);
        assert_eq!(by_tiling(&fp8, (1, 64, 3)).token_bytes(), 656);
        assert_eq!(
            by_tiling(&fp8, (1, 64, 3)).smem_bytes(),
            64 * 1168 + 3 * 64 * 656 + 16 * 144 + 8 * 16 * 4
        );
        let generic = MlaCacheLayout {
            latent_dim: 256,
            rope_dim: 32,
            ..fp8
        };
        assert_eq!(generic.token_bytes(), 328);
        assert_eq!(
            by_tiling(&generic, (1, 64, 2)).smem_bytes(),
            16 * 592 + 64 * 592 + 2 * 64 * 336 + 16 * 144 + 8 * 16 * 4
        );
        // Run-time dims compile with 0 (sized at run time); DeepSeek's with the exact size.
        assert_eq!(by_tiling(&generic, (1, 64, 2)).compiled_smem_bytes(), 0);
        let v = by_tiling(&ds, (4, 32, 3));
        assert_eq!(v.compiled_smem_bytes(), v.smem_bytes());
    }

    #[test]
    fn defines_render_the_tiling_and_dims() {
        let v = by_tiling(&MlaCacheLayout::default(), (2, 32, 4));
        let d: Vec<(&str, String)> = v.kernel().defines;
        let d: Vec<(&str, &str)> = d.iter().map(|(a, b)| (*a, b.as_str())).collect();
        let smem = v.smem_bytes().to_string();
        assert_eq!(
            d,
            [
                ("FMT", "0"),
                ("LATENT", "512"),
                ("ROPE", "64"),
                ("DV_CHUNK", "512"),
                ("ROW_SLICES", "2"),
                ("KEY_TILE", "32"),
                ("STAGES", "4"),
                ("VARLEN", "0"),
                ("TESSERA_SMEM_BYTES", smem.as_str()),
                ("TESSERA_THREADS", "256"),
            ]
        );
        // Every generic layout of a format and tiling shares one compile unit.
        let a = MlaCacheLayout {
            latent_dim: 128,
            rope_dim: 0,
            format: MlaCacheFormat::Fp8,
            page_size: 16,
        };
        let b = MlaCacheLayout {
            latent_dim: 1024,
            rope_dim: 256,
            ..a
        };
        assert_eq!(
            by_tiling(&a, (1, 32, 2)).kernel(),
            by_tiling(&b, (1, 32, 2)).kernel()
        );
        assert_eq!(
            by_tiling(&a, (1, 32, 2)).kernel().define_value("FMT"),
            Some("1")
        );
        assert_eq!(MlaAppendVariant.kernel().defines.len(), 2);
        assert_eq!(MlaCombineVariant::default().entry(), "mla_combine");
        assert_eq!(MlaScheduleVariant::default().entry(), "mla_schedule");
        assert_eq!(
            MlaScheduleVariant { varlen: true }
                .kernel()
                .define_value("TESSERA_THREADS"),
            Some("512")
        );
        let varlen = v.with_varlen(true);
        assert_eq!(varlen.kernel().define_value("VARLEN"), Some("1"));
        assert_eq!(varlen.smem_bytes(), v.smem_bytes());
        assert_eq!(
            MlaCombineVariant { varlen: true }
                .kernel()
                .define_value("VARLEN"),
            Some("1")
        );
    }

    #[test]
    fn the_hopper_variant_matches_its_kernel() {
        let ds = MlaCacheLayout::default();
        let v = MlaDecodeVariant::sm90(&ds);
        // Q 9 blocks, two stages of 9 blocks, P, maxima + sums, 18 + 2 barriers, flags: the
        // kernel's MlaSm90Smem::END.
        assert_eq!(v.smem_bytes(), 230_576);
        assert_eq!(v.threads(), 384);
        assert_eq!(v.rows_per_cta(), 64);
        let k = v.with_varlen(true).kernel();
        assert_eq!(k.define_value("VARLEN"), Some("1"));
        assert_eq!(k.define_value("TESSERA_THREADS"), Some("384"));
        assert_eq!(k.define_value("ROW_SLICES"), None);
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        v.valid_on(&h200).unwrap();
        // Not before Hopper, not with the other format's tilings or other dims.
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        assert!(v.valid_on(&a100).is_err());
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..ds
        };
        assert!(MlaDecodeVariant::sm90(&fp8).valid_on(&h200).is_err());
        assert!(MlaDecodeVariant::wgmma(&ds, (2, 64, 3))
            .valid_on(&h200)
            .is_err());
        let small = MlaCacheLayout {
            latent_dim: 256,
            ..ds
        };
        assert!(MlaDecodeVariant::sm90(&small).valid_on(&h200).is_err());
        assert!(MlaDecodeVariant::sm90_variants(&MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..small
        })
        .iter()
        .all(|v| v.valid_on(&h200).is_err()));
    }

    #[test]
    fn the_hopper_fp8_variants_match_their_kernel() {
        let fp8 = MlaCacheLayout {
            format: MlaCacheFormat::Fp8,
            ..MlaCacheLayout::default()
        };
        let all = MlaDecodeVariant::sm90_variants(&fp8);
        assert_eq!(all.len(), 5);
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        // The register-operand kernels first: 16 rows (alternating tiles), 32 (tile pairs).
        for (rs, rows, file) in [
            (all[0], 16u32, "sm90/mla_decode_fp8_rs.cu"),
            (all[1], 32, "sm90/mla_decode_fp8_rs_pairs.cu"),
        ] {
            assert!(rs.is_fp8_registers() && !rs.is_transposed());
            rs.valid_on(&h200).unwrap();
            assert!(rs.valid_on(&a100).is_err());
            assert_eq!((rs.rows_per_cta(), rs.threads()), (rows, 384));
            let k = rs.with_varlen(true).kernel();
            assert_eq!(k.source.file, file);
            assert_eq!(k.define_value("FMT"), None);
            assert_eq!(k.define_value("ROWS"), Some(rows.to_string().as_str()));
            assert_eq!(k.define_value("VARLEN"), Some("1"));
            assert_eq!(k.define_value("TESSERA_THREADS"), Some("384"));
        }
        // 4 raw tiles of 64 x 656 bytes, Q 9 blocks of R rows, then (16 rows) P' 2 x 4 x [16][64]
        // bf16, maxima and sums [2][4][16] f32 each, exponents [16], merge [4][16]; (32 rows) P
        // 2 x [32][64] bf16, maxima [2][32][4], tile maxima [2][2][32], sums [2][4][32] f32,
        // exponents [32]; 8 barriers, flags: the kernels' MlaSm90Fp8RsSmem::END.
        assert_eq!(
            all[0].smem_bytes(),
            4 * 64 * 656
                + 9 * 16 * 128
                + 8 * 16 * 128
                + 2 * 2 * 4 * 16 * 4
                + 16 * 4
                + 4 * 16 * 4
                + 64
                + 16
        );
        assert_eq!(all[0].smem_bytes(), 204_176);
        assert_eq!(
            all[1].smem_bytes(),
            4 * 64 * 656
                + 9 * 32 * 128
                + 2 * 32 * 128
                + 2 * 32 * 4 * 4
                + 2 * 2 * 32 * 4
                + 2 * 4 * 32 * 4
                + 32 * 4
                + 64
                + 16
        );
        assert_eq!(all[1].smem_bytes(), 215_760);
        // Not bf16 tilings.
        for t in MLA_DECODE_SM90_FP8_REGISTERS_TILINGS {
            assert!(MlaDecodeVariant::wgmma(&MlaCacheLayout::default(), t)
                .valid_on(&h200)
                .is_err());
        }
        // Then the 64-row seesaw: the bf16 kernel's file with FMT 1; Q, two bf16 tiles of 9 x 8 KB,
        // P, scales [2][64][4] f32, 18 full and 4 raw barriers, flags, the seesaw's three [64]
        // f32: the kernel's MlaSm90Smem::END with FMT 1.
        let seesaw = all[2];
        assert!(seesaw.seesaw && seesaw.is_sixty_four_rows() && !seesaw.is_transposed());
        seesaw.valid_on(&h200).unwrap();
        assert!(seesaw.valid_on(&a100).is_err());
        assert_eq!(
            seesaw.smem_bytes(),
            9 * 8192 + 2 * 9 * 8192 + 8192 + 2 * 64 * 16 + 18 * 8 + 4 * 8 + 16 + 3 * 64 * 4
        );
        assert_eq!(seesaw.smem_bytes(), 232_384);
        assert!(seesaw.smem_bytes() <= h200.max_smem_per_block);
        let k = seesaw.kernel();
        assert_eq!(k.source.file, "sm90/mla_decode.cu");
        assert_eq!(k.define_value("FMT"), Some("1"));
        assert_eq!(k.define_value("SEESAW"), Some("1"));
        // Pages not of 64s: no seesaw.
        assert_eq!(
            MlaDecodeVariant::sm90_variants(&MlaCacheLayout {
                page_size: 16,
                ..fp8
            })
            .len(),
            4
        );
        let vs = &all[3..];
        for (v, rows) in vs.iter().zip([16u32, 32]) {
            v.valid_on(&h200).unwrap();
            assert!(v.valid_on(&a100).is_err());
            assert_eq!(v.rows_per_cta(), rows);
            assert_eq!(v.threads(), 384);
            // Q 9 blocks of R rows, two bf16 tiles of 9 x 8 KB, P [R][64], maxima + sums
            // [4][R] f32, 4 barriers, flags: the kernel's MlaSm90Fp8Smem::END.
            assert_eq!(
                v.smem_bytes(),
                9 * rows * 128 + 2 * 9 * 8192 + rows * 128 + 2 * 4 * rows * 4 + 32 + 16
            );
            let k = v.with_varlen(true).kernel();
            assert_eq!(k.source.file, "sm90/mla_decode_fp8.cu");
            assert_eq!(k.define_value("FMT"), Some("1"));
            assert_eq!(k.define_value("ROWS"), Some(rows.to_string().as_str()));
            assert_eq!(k.define_value("VARLEN"), Some("1"));
            assert_eq!(k.define_value("TESSERA_THREADS"), Some("384"));
        }
        assert_eq!(vs[0].smem_bytes(), 168_496);
        assert_eq!(vs[1].smem_bytes(), 189_488);
        // Other FP8 tilings are not the kernel's, nor the 64-row tiling without the seesaw.
        assert!(MlaDecodeVariant::wgmma(&fp8, (4, 64, 2))
            .valid_on(&h200)
            .is_err());
    }

    #[test]
    fn the_hopper_transposed_bf16_variants_match_their_kernel() {
        let ds = MlaCacheLayout::default();
        // The seesaw, the default 64-row schedule, the transposed 16 and 32 rows.
        let all = MlaDecodeVariant::sm90_variants(&ds);
        assert_eq!(all.len(), 4);
        assert!(all[0].seesaw && !all[1].seesaw);
        let vs = &all[1..];
        assert!(!vs[0].is_transposed());
        assert_eq!(vs[0].tiling(), MLA_DECODE_SM90_TILING);
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let a100 = ArchSpec::from_compute_capability(8, 0, 108).unwrap();
        for (v, rows) in vs[1..].iter().zip([16u32, 32]) {
            assert!(v.is_transposed());
            v.valid_on(&h200).unwrap();
            assert!(v.valid_on(&a100).is_err());
            assert_eq!(v.rows_per_cta(), rows);
            assert_eq!(v.threads(), 384);
            // As the FP8 variant's, with a full barrier per (stage, column block): 18 + 2
            // barriers (the kernel's MlaSm90Fp8Smem::END with FMT 0).
            assert_eq!(
                v.smem_bytes(),
                9 * rows * 128 + 2 * 9 * 8192 + rows * 128 + 2 * 4 * rows * 4 + 20 * 8 + 16
            );
            let k = v.kernel();
            assert_eq!(k.source.file, "sm90/mla_decode_fp8.cu");
            assert_eq!(k.define_value("FMT"), Some("0"));
            assert_eq!(k.define_value("ROWS"), Some(rows.to_string().as_str()));
            assert_eq!(k.define_value("VARLEN"), Some("0"));
        }
        assert_eq!(vs[1].smem_bytes(), 168_624);
        assert_eq!(vs[2].smem_bytes(), 189_616);
        assert_eq!(vs[0].kernel().source.file, "sm90/mla_decode.cu");
        assert_eq!(vs[0].kernel().define_value("SEESAW"), Some("0"));
    }

    #[test]
    fn the_seesaw_variant_matches_its_kernel_and_page_sizes() {
        let ds = MlaCacheLayout::default();
        let h200 = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let v = MlaDecodeVariant::sm90_variants(&ds)[0];
        assert!(v.seesaw && !v.is_transposed());
        v.valid_on(&h200).unwrap();
        let k = v.kernel();
        assert_eq!(k.source.file, "sm90/mla_decode.cu");
        assert_eq!(k.define_value("SEESAW"), Some("1"));
        // The default layout plus the running maximum and two factors, [64] f32 each, and the
        // two `landed` barriers (the kernel's MlaSm90Smem::END with SEESAW 1).
        let default = MlaDecodeVariant { seesaw: false, ..v };
        assert_eq!(v.smem_bytes(), default.smem_bytes() + 3 * 64 * 4 + 2 * 8);
        // Page sizes of whole 64-key boxes: multiples of 64.
        for (page, ok) in [
            (64, true),
            (128, true),
            (256, true),
            (32, false),
            (16, false),
            (8, false),
            (4, false),
            (1, false),
            (48, false),
            (96, false),
        ] {
            assert_eq!(mla_seesaw_page_size_ok(page), ok, "page {page}");
            let layout = MlaCacheLayout {
                page_size: page,
                ..ds
            };
            assert_eq!(v.fits_layout(&layout), ok, "page {page}");
            assert_eq!(
                MlaDecodeVariant::sm90_variants(&layout)[0].seesaw,
                ok,
                "page {page}"
            );
        }
        // Only the 64-row bf16 kernel has it.
        let transposed = MlaDecodeVariant {
            seesaw: true,
            ..MlaDecodeVariant::sm90_variants(&ds)[2]
        };
        assert!(transposed.valid_on(&h200).is_err());
    }

    #[test]
    fn unknown_tilings_are_rejected() {
        let h = ArchSpec::from_compute_capability(9, 0, 132).unwrap();
        let v = by_tiling(&MlaCacheLayout::default(), (4, 64, 3));
        assert!(v.valid_on(&h).is_err());
    }
}
