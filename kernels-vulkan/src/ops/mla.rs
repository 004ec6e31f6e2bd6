//! MLA: appending tokens to the paged latent cache and absorbed decode over it.
//!
//! Portable path (32-bit storage words, subgroup operations at most):
//! - `mla_append`: one workgroup of 128 per token writes the words of its record; the FP8
//!   format's group maxima go through shared-memory atomics, its scales and codes are computed on
//!   the bits (`shaders/common.glsl`), so the bytes equal the reference's on every device.
//! - The decode runs one of two pass-1 shaders ([`MlaDecodeKernel`], chosen per call by
//!   [`VulkanBackend::mla_decode_plan`]), then `mla_combine`:
//!   - `mla_decode_stream` ([`MlaDecodeKernel::Stream`], where the device has subgroup shuffles
//!     and a fixed subgroup size: NVIDIA, lavapipe): one workgroup per (request, group of up to
//!     32 query rows, key split) reads each key record once for all its rows (every `s_q` of
//!     `h_q <= 8`, `s_q <= 2` of `h_q = 16`, `h_q = 32`); the rows' query and output columns live
//!     in registers spread over the lanes of a subgroup, the key tile in shared memory (f32), and
//!     each score is summed over the lanes by a butterfly of shuffles (see `mla/stream.rs`).
//!   - `mla_decode` ([`MlaDecodeKernel::Tiled`], any device with subgroup arithmetic): one
//!     workgroup of 128 per (request, group of `ROWS` query rows, key split). It keeps the query
//!     rows in shared memory as f32 and, per tile of `KT` keys, decodes the keys into shared
//!     memory (f32), computes the `ROWS x KT` scores (one subgroup's strided dot product and
//!     `subgroupAdd` each), then updates the online softmax (f32) of each row and the
//!     invocation's own output columns. `ROWS` (8 where there are that many rows and 4 keys
//!     still fit, else 4, 2, 1) and `KT` (at most 16) are sized from the device's shared memory,
//!     `(ROWS + KT) · D · 4` bytes with `D = latent_dim + rope_dim`: DeepSeek-V3 gets 8 rows and
//!     6 keys on lavapipe's 32 KiB, 8 and 13 on NVIDIA's 48 KiB.
//!
//!   - `mla_decode_coopmat` ([`MlaDecodeKernel::Coopmat`], where the device has bf16
//!     cooperative matrices, a subgroup of 32 and shuffles: NVIDIA; bf16 records, and FP8 ones
//!     of a latent width that is a multiple of 512): one workgroup of 4 subgroups per (request,
//!     group of 16 query rows, key split); the 16 rows are the M dimension of bf16 x bf16 ->
//!     f32 16x16x16 products (scores over the records in shared memory as bf16, then `P · V`),
//!     see `mla/coopmat.rs`.
//!
//!   - `mla_decode_cm2` ([`MlaDecodeKernel::Cm2`], where the device has
//!     `VK_NV_cooperative_matrix2` with a workgroup-scope bf16 configuration that fits: NVIDIA;
//!     bf16 records): one workgroup per (request, group of 32 or 64 query rows, key split) of
//!     workgroup-scope products loaded straight from the cache, see `mla/cm2.rs`. The plan takes
//!     it where a request has at least 32 query rows (it is no faster than the coopmat shader
//!     with 16).
//!
//!   All write normalized partial outputs (f32) and log-sum-exps per key split to a workspace.
//! - `mla_combine`: one invocation per pair of output columns merges the splits by their
//!   log-sum-exps and rounds to bf16.

mod cm2;
mod coopmat;
mod stream;

pub use cm2::{MlaDecodeCm2Spec, MLA_DECODE_CM2};
pub use coopmat::{MlaDecodeCoopmatSpec, MLA_DECODE_COOPMAT};
pub use stream::{MlaDecodeStreamSpec, MLA_DECODE_STREAM, MLA_DECODE_STREAM_ROLLED};

use super::{bind_range, to_u32};
use crate::memory::{Buffer, BufferRange};
use crate::pipeline::{
    compute_barrier, linear_groups, Shader, ShaderResources, SpecConstant, Specialization,
};
use crate::plan::MlaDecodeClass;
use crate::VulkanBackend;
use ash::vk;
use half::bf16;
use std::marker::PhantomData;
use tessera_core::{
    BackendKind, Error, MlaAppend, MlaCache, MlaCacheFormat, MlaCacheLayout, MlaDecode,
    MlaDecodeOutput, Result, E4M3,
};

const APPEND: &str = "mla_append";
const DECODE: &str = "mla_decode";

/// Invocations per workgroup of `mla_append` and `mla_decode`.
const WORKGROUP: u32 = 128;
/// Invocations per workgroup of `mla_combine`.
const COMBINE_WORKGROUP: u32 = 64;
/// Query rows per decode workgroup (the shader's `ROWS`), largest first: 8 where there are
/// that many rows and the shared memory holds them with at least `MIN_KEY_TILE` keys.
const ROWS_CHOICES: [u32; 4] = [8, 4, 2, 1];
/// Fewest keys per tile for which more rows per workgroup are worth it.
const MIN_KEY_TILE: u32 = 4;
/// Most keys per decode tile.
const MAX_KEY_TILE: u32 = 16;
/// Decode workgroups aimed at when choosing the number of key splits.
const TARGET_WORKGROUPS: u64 = 256;

/// Cache append. Bindings: latent, rope, slots, cache. Specialization: [`MlaAppendSpec`].
pub const MLA_APPEND: Shader<MlaAppendSpec> = Shader {
    name: "mla_append",
    spirv: spirv!("mla_append"),
    storage_buffers: 4,
    push_constant_bytes: 24,
    specialization: PhantomData,
};

/// Decode pass 1 (split-KV partials). Bindings: cache, q, block_table, seq_lens, workspace.
/// Specialization: [`MlaDecodeSpec`].
pub const MLA_DECODE: Shader<MlaDecodeSpec> = Shader {
    name: "mla_decode",
    spirv: spirv!("mla_decode"),
    storage_buffers: 5,
    push_constant_bytes: 48,
    specialization: PhantomData,
};

/// Decode pass 2 (merging the splits). Bindings: workspace, o, lse. Specialization:
/// [`MlaCombineSpec`].
pub const MLA_COMBINE: Shader<MlaCombineSpec> = Shader {
    name: "mla_combine",
    spirv: spirv!("mla_combine"),
    storage_buffers: 3,
    push_constant_bytes: 20,
    specialization: PhantomData,
};

/// The specialization constants of `mla_append.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaAppendSpec {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
    /// FP8 records (else bf16).
    pub fp8: bool,
}

impl Default for MlaAppendSpec {
    fn default() -> Self {
        Self {
            workgroup_size: WORKGROUP,
            fp8: false,
        }
    }
}

impl Specialization for MlaAppendSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.workgroup_size),
            SpecConstant::new(1, "FP8", u32::from(self.fp8)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.workgroup_size,
            shared_memory_bytes: 64,
        }
    }
}

/// The specialization constants of `mla_decode.comp` (the shader's `D = latent_dim + rope_dim`
/// and `CPT = ceil(latent_dim / workgroup_size)` follow from the fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaDecodeSpec {
    /// Invocations per workgroup (`WG`).
    pub workgroup_size: u32,
    /// FP8 records (else bf16).
    pub fp8: bool,
    /// Keys per shared-memory tile (`KT`).
    pub key_tile: u32,
    /// The layout's latent width.
    pub latent_dim: u32,
    /// The layout's rope width.
    pub rope_dim: u32,
    /// Query rows per workgroup (`ROWS`).
    pub rows: u32,
}

impl Default for MlaDecodeSpec {
    fn default() -> Self {
        Self {
            workgroup_size: WORKGROUP,
            fp8: false,
            key_tile: 8,
            latent_dim: 512,
            rope_dim: 64,
            rows: 4,
        }
    }
}

impl MlaDecodeSpec {
    /// `latent_dim + rope_dim` (the shader's `D`).
    fn qk_dim(&self) -> u32 {
        self.latent_dim + self.rope_dim
    }
}

impl Specialization for MlaDecodeSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.workgroup_size),
            SpecConstant::new(1, "FP8", u32::from(self.fp8)),
            SpecConstant::new(2, "KT", self.key_tile),
            SpecConstant::new(3, "D", self.qk_dim()),
            SpecConstant::new(
                4,
                "CPT",
                self.latent_dim.div_ceil(self.workgroup_size.max(1)),
            ),
            SpecConstant::new(5, "ROWS", self.rows),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.workgroup_size,
            shared_memory_bytes: decode_shared_bytes(self.rows, self.key_tile, self.qk_dim()),
        }
    }
}

/// The specialization constants of `mla_combine.comp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaCombineSpec {
    /// Invocations per workgroup.
    pub workgroup_size: u32,
}

impl Default for MlaCombineSpec {
    fn default() -> Self {
        Self {
            workgroup_size: COMBINE_WORKGROUP,
        }
    }
}

impl Specialization for MlaCombineSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![SpecConstant::local_size_x(0, self.workgroup_size)]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.workgroup_size,
            shared_memory_bytes: 0,
        }
    }
}

/// [`Error::Unsupported`] for the decode, naming the pass-1 shader that cannot run and why.
fn shader_unsupported(shader: &str, reason: String) -> Error {
    Error::Unsupported {
        op: DECODE,
        backend: BackendKind::Vulkan,
        reason: format!("{shader}: {reason}"),
    }
}

/// Concurrent workgroups assumed where the device does not report its compute units.
const DEFAULT_SLOTS: u64 = 256;

/// Key splits per (request, row group) for the streaming and cooperative-matrix shaders:
/// [`tessera_core::ops::mla::mla_kv_splits`] (the rule the CUDA backend uses too) over the
/// workgroups that run at once, `resident` per compute unit where the device reports its
/// compute units.
fn key_splits(
    f: &crate::device::VulkanFeatures,
    op: &MlaDecode,
    row_groups: u64,
    key_tile: u32,
    resident: u64,
) -> u64 {
    let slots = f
        .compute_units
        .map_or(DEFAULT_SLOTS, |units| units as u64 * resident);
    let tiles = (op.capacity() as u64).div_ceil(key_tile as u64);
    tessera_core::ops::mla::mla_kv_splits(
        (op.batch as u64).saturating_mul(row_groups) as usize,
        tiles as usize,
        slots as usize,
    ) as u64
}

/// `Ok` where `value` is one of `choices`, else [`choice_error`]: the check of every shader's
/// tiling fields.
fn check_choice(arg: &str, value: u32, choices: &[u32]) -> Result<()> {
    if choices.contains(&value) {
        Ok(())
    } else {
        Err(choice_error(arg, value, choices))
    }
}

/// [`Error::InvalidArgument`] for a tiling field `arg` (`tiling.key_tile`...) that is not one of
/// `choices`.
fn choice_error(arg: &str, value: u32, choices: &[u32]) -> Error {
    Error::invalid(
        DECODE,
        arg,
        format!("one of {choices:?}"),
        value.to_string(),
    )
}

/// The push constants of the streaming and cooperative-matrix shaders (one layout): the op's
/// sizes, the page shift (32 where the page size is not a power of two), the row groups, the
/// key splits and `softmax_scale · log2(e)`.
fn row_group_push(
    op: &MlaDecode,
    num_pages: usize,
    row_groups: u64,
    rows_per_group: u64,
    splits: u64,
) -> Vec<u32> {
    let page_size = op.layout.page_size;
    vec![
        op.batch as u32,
        op.s_q as u32,
        op.heads as u32,
        op.max_pages as u32,
        page_size as u32,
        if page_size.is_power_of_two() {
            page_size.trailing_zeros()
        } else {
            32
        },
        num_pages as u32,
        row_groups as u32,
        rows_per_group as u32,
        splits as u32,
        (op.softmax_scale * std::f32::consts::LOG2_E).to_bits(),
    ]
}

/// Shared memory of `mla_decode`: `rows` query rows and `kt` keys of `d` f32, and the scores.
fn decode_shared_bytes(rows: u32, kt: u32, d: u32) -> u32 {
    4 * (rows * d + kt * d + rows * kt)
}

/// How the tiled shader runs a decode on this device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TiledPlan {
    rows_per_group: u32,
    key_tile: u32,
    row_groups: u64,
    splits: u64,
    split_keys: u64,
}

/// The tiling of the streaming decode shader ([`MlaDecodeKernel::Stream`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MlaStreamTiling {
    /// Query rows per subgroup: 1, 2 or 4. Each lane keeps its columns of these rows (query
    /// and output, f32) in registers and applies every key value it reads from shared memory to
    /// all of them; a workgroup holds up to 8 subgroups.
    pub rows_per_team: u32,
    /// Keys per shared-memory tile (f32 records): 4, 8 or 16.
    pub key_tile: u32,
    /// Load the next tile's records into registers while the current tile is computed (else
    /// each tile is loaded when it is needed).
    pub prefetch: bool,
    /// Run the build with every loop unrolled (`mla_decode_stream`: what a GPU needs to keep
    /// the lanes' arrays in registers), else the one without (`mla_decode_stream_rolled`:
    /// what CPU devices compile in seconds rather than minutes).
    pub unrolled: bool,
}

/// The tiling of the cooperative-matrix decode shader ([`MlaDecodeKernel::Coopmat`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MlaCoopmatTiling {
    /// Keys per shared-memory tile (records as bf16): 16 or 32.
    pub key_tile: u32,
    /// Load the next tile's records into registers while the current tile is computed (else
    /// each tile is loaded when it is needed).
    pub prefetch: bool,
}

/// The tiling of the cooperative-matrix-2 decode shader ([`MlaDecodeKernel::Cm2`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MlaCm2Tiling {
    /// Query rows per workgroup: 32 (128 invocations) or 64 (256).
    pub rows: u32,
    /// Keys per tile: 64, 32 or 16, dividing the page size.
    pub key_tile: u32,
}

/// The pass-1 shader of a decode (`mla_combine` merges the key splits of all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MlaDecodeKernel {
    /// `mla_decode.comp`: any device with subgroup arithmetic; a row group of at most 8 rows
    /// per workgroup, scores by `subgroupAdd`.
    Tiled,
    /// `mla_decode_stream.comp`: subgroup shuffles and a fixed subgroup size; each key record
    /// read once per workgroup of up to 32 rows.
    Stream(MlaStreamTiling),
    /// `mla_decode_coopmat.comp`: bf16 cooperative matrices (bf16 records, FP8 ones decoded to
    /// bf16); 16 rows per workgroup.
    Coopmat(MlaCoopmatTiling),
    /// `mla_decode_cm2.comp`: `VK_NV_cooperative_matrix2` workgroup-scope bf16 matrices (bf16
    /// records); 32 or 64 rows per workgroup.
    Cm2(MlaCm2Tiling),
}

impl MlaDecodeKernel {
    /// `tiled`, `stream`, `coopmat` or `cm2`.
    pub fn name(&self) -> &'static str {
        match self {
            MlaDecodeKernel::Tiled => "tiled",
            MlaDecodeKernel::Stream(_) => "stream",
            MlaDecodeKernel::Coopmat(_) => "coopmat",
            MlaDecodeKernel::Cm2(_) => "cm2",
        }
    }

    /// Reads [`crate::VulkanSettings::mla_decode`]: `tiled`, `stream`, `coopmat` or `cm2`
    /// (their default tilings, from `stream_tiling()`, `coopmat_tiling()` and `cm2_tiling()`),
    /// `stream:ROWS,KEYS,PREFETCH,UNROLLED` (e.g. `stream:4,8,1,1`), `coopmat:KEYS,PREFETCH`
    /// (e.g. `coopmat:32,1`) or `cm2:ROWS,KEYS` (e.g. `cm2:64,64`).
    fn parse_setting(
        value: &str,
        stream_tiling: impl FnOnce() -> Result<MlaStreamTiling>,
        coopmat_tiling: impl FnOnce() -> Result<MlaCoopmatTiling>,
        cm2_tiling: impl FnOnce() -> Result<MlaCm2Tiling>,
    ) -> Result<Self> {
        let invalid = || {
            Error::invalid(
                DECODE,
                MLA_DECODE_ENV,
                "tiled, stream, coopmat, cm2, stream:ROWS,KEYS,PREFETCH,UNROLLED (e.g. \
                 stream:4,8,1,1), coopmat:KEYS,PREFETCH (e.g. coopmat:32,1) or cm2:ROWS,KEYS \
                 (e.g. cm2:64,64)",
                value,
            )
        };
        let numbers = |list: &str| -> Result<Vec<u32>> {
            list.split(',')
                .map(|x| x.trim().parse::<u32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| invalid())
        };
        match value.trim() {
            "tiled" => Ok(MlaDecodeKernel::Tiled),
            "stream" => Ok(MlaDecodeKernel::Stream(stream_tiling()?)),
            "coopmat" => Ok(MlaDecodeKernel::Coopmat(coopmat_tiling()?)),
            "cm2" => Ok(MlaDecodeKernel::Cm2(cm2_tiling()?)),
            v => {
                if let Some(list) = v.strip_prefix("cm2:") {
                    return match numbers(list)?[..] {
                        [rows, key_tile] => {
                            Ok(MlaDecodeKernel::Cm2(MlaCm2Tiling { rows, key_tile }))
                        }
                        _ => Err(invalid()),
                    };
                }
                if let Some(list) = v.strip_prefix("coopmat:") {
                    return match numbers(list)?[..] {
                        [key_tile, prefetch @ (0 | 1)] => {
                            Ok(MlaDecodeKernel::Coopmat(MlaCoopmatTiling {
                                key_tile,
                                prefetch: prefetch == 1,
                            }))
                        }
                        _ => Err(invalid()),
                    };
                }
                let list = v.strip_prefix("stream:").ok_or_else(invalid)?;
                match numbers(list)?[..] {
                    [rows_per_team, key_tile, prefetch @ (0 | 1), unrolled @ (0 | 1)] => {
                        Ok(MlaDecodeKernel::Stream(MlaStreamTiling {
                            rows_per_team,
                            key_tile,
                            prefetch: prefetch == 1,
                            unrolled: unrolled == 1,
                        }))
                    }
                    _ => Err(invalid()),
                }
            }
        }
    }
}

impl std::fmt::Display for MlaDecodeKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MlaDecodeKernel::Tiled => write!(f, "tiled"),
            MlaDecodeKernel::Stream(t) => write!(
                f,
                "stream ({} rows per subgroup, {}-key tiles{}{})",
                t.rows_per_team,
                t.key_tile,
                if t.prefetch { ", prefetched" } else { "" },
                if t.unrolled {
                    ""
                } else {
                    ", loops not unrolled"
                }
            ),
            MlaDecodeKernel::Coopmat(t) => write!(
                f,
                "coopmat ({}-key tiles{})",
                t.key_tile,
                if t.prefetch { ", prefetched" } else { "" }
            ),
            MlaDecodeKernel::Cm2(t) => write!(f, "cm2 ({}-key tiles)", t.key_tile),
        }
    }
}

/// Overrides the decode shader choice (a development aid, read once when the backend is
/// opened: [`crate::VulkanSettings::mla_decode`]): `tiled`, `stream`, `coopmat`, `cm2`,
/// `stream:ROWS,KEYS,PREFETCH,UNROLLED` ([`MlaStreamTiling`]'s fields, e.g. `stream:4,8,1,1`),
/// `coopmat:KEYS,PREFETCH` ([`MlaCoopmatTiling`]'s fields, e.g. `coopmat:32,1`) or
/// `cm2:ROWS,KEYS` ([`MlaCm2Tiling`]'s fields, e.g. `cm2:64,64`).
pub const MLA_DECODE_ENV: &str = "TESSERA_VULKAN_MLA_DECODE";

/// How a decode runs on this device ([`VulkanBackend::mla_decode_plan`]): the op, the pass-1
/// shader and its tiling, the query rows per workgroup and the key splits.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaDecodePlan {
    op: MlaDecode,
    kernel: MlaDecodeKernel,
    launch: Launch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launch {
    Tiled(TiledPlan),
    Stream(stream::StreamLaunch),
    Coopmat(coopmat::CoopmatLaunch),
    Cm2(cm2::Cm2Launch),
}

impl Launch {
    /// Keys per tile: a split's keys are rounded up to a multiple of it.
    fn key_tile(&self) -> u32 {
        match self {
            Launch::Tiled(t) => t.key_tile,
            Launch::Stream(s) => s.spec.key_tile,
            Launch::Coopmat(c) => c.spec.key_tile,
            Launch::Cm2(c) => c.spec.key_tile,
        }
    }
}

impl MlaDecodePlan {
    /// The op it was made for.
    pub fn op(&self) -> &MlaDecode {
        &self.op
    }

    /// The pass-1 shader and its tiling.
    pub fn kernel(&self) -> MlaDecodeKernel {
        self.kernel
    }

    /// Key splits of each request (workgroups per request and row group).
    pub fn splits(&self) -> u64 {
        match &self.launch {
            Launch::Tiled(t) => t.splits,
            Launch::Stream(s) => s.splits,
            Launch::Coopmat(c) => c.splits,
            Launch::Cm2(c) => c.splits,
        }
    }

    /// Query rows (of `s_q · heads`) per workgroup: each workgroup reads its split of the
    /// keys once for all of them.
    pub fn rows_per_workgroup(&self) -> u64 {
        match &self.launch {
            Launch::Tiled(t) => t.rows_per_group as u64,
            Launch::Stream(s) => s.rows_per_group,
            Launch::Coopmat(_) => coopmat::ROWS,
            Launch::Cm2(c) => c.spec.rows as u64,
        }
    }

    /// Workgroups of pass 1: `batch · row groups · splits`.
    pub fn workgroups(&self) -> u64 {
        let row_groups = match &self.launch {
            Launch::Tiled(t) => t.row_groups,
            Launch::Stream(s) => s.row_groups,
            Launch::Coopmat(c) => c.row_groups,
            Launch::Cm2(c) => c.row_groups,
        };
        self.op.batch as u64 * row_groups * self.splits()
    }

    /// Bytes of workspace: f32 partial outputs `[batch, splits, s_q · heads, latent_dim]`
    /// then f32 partial log-sum-exps `[batch, splits, s_q · heads]`.
    pub fn workspace_bytes(&self) -> u64 {
        let rows = (self.op.s_q * self.op.heads) as u64;
        4 * self.op.batch as u64 * self.splits() * rows * (self.op.layout.latent_dim as u64 + 1)
    }
}

impl std::fmt::Display for MlaDecodePlan {
    /// E.g. `stream (4 rows per subgroup, 8-key tiles, prefetched), 16 rows per workgroup,
    /// 4 splits`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}, {} rows per workgroup, {} splits",
            self.kernel,
            self.rows_per_workgroup(),
            self.splits()
        )
    }
}

/// The features of an H200 under NVIDIA's driver (what the plans read of them), for the
/// submodules' tests.
#[cfg(test)]
pub(super) fn h200_features() -> crate::device::VulkanFeatures {
    use crate::device::VulkanFeatures;
    VulkanFeatures {
        name: "NVIDIA H200".into(),
        device_type: "Discrete".into(),
        api_version: (1, 4, 0),
        driver: None,
        subgroup_size: 32,
        min_subgroup_size: 32,
        max_subgroup_size: 32,
        subgroup_arithmetic: true,
        subgroup_shuffle: true,
        subgroup_size_control: true,
        compute_units: Some(132),
        max_shared_memory_bytes: 48 * 1024,
        max_workgroup_invocations: 1024,
        max_workgroup_size: [1024, 1024, 64],
        max_workgroup_count: [u32::MAX, 65535, 65535],
        max_storage_buffer_range: u32::MAX,
        min_storage_buffer_offset_alignment: 16,
        shader_float16: true,
        shader_int8: true,
        shader_int16: true,
        shader_int64: true,
        storage_buffer_8bit: true,
        storage_buffer_16bit: true,
        integer_dot_product: true,
        bfloat16: false,
        cooperative_matrix: true,
        cooperative_matrix_shapes: Vec::new(),
        cooperative_matrix2_nv: true,
        cooperative_matrix_flexible: Vec::new(),
        pipeline_statistics: false,
        max_memory_allocation_size: u64::MAX,
        max_buffer_size: None,
        largest_heap_bytes: 141 << 30,
    }
}

/// Checks the descriptor of a decode: [`MlaDecode::validate`], the one definition of its
/// contract (this backend's 32-bit limits are checked where the dispatch is recorded).
fn check_decode_op(op: &MlaDecode) -> Result<()> {
    op.validate()
}

fn check_num_pages(op: &'static str, layout: &MlaCacheLayout, num_pages: usize) -> Result<()> {
    if num_pages == 0 || num_pages > i32::MAX as usize / layout.page_size {
        return Err(Error::invalid(
            op,
            "num_pages",
            format!("1..={}", i32::MAX as usize / layout.page_size),
            num_pages.to_string(),
        ));
    }
    Ok(())
}

impl VulkanBackend {
    /// The tiled shader's tiling for `op` on this device.
    fn mla_decode_tiled_plan(&self, op: &MlaDecode) -> Result<TiledPlan> {
        check_decode_op(op)?;
        let f = self.features();
        let d = op.layout.qk_dim() as u32;
        let rows = (op.s_q * op.heads) as u64;
        let key_tile_for = |r: u32| {
            let fixed = decode_shared_bytes(r, 0, d);
            (f.max_shared_memory_bytes.saturating_sub(fixed) / (4 * (d + r))).min(MAX_KEY_TILE)
        };
        let rows_per_group = ROWS_CHOICES
            .into_iter()
            .find(|&r| (r as u64) <= rows.max(4) && key_tile_for(r) >= MIN_KEY_TILE)
            .or_else(|| ROWS_CHOICES.into_iter().find(|&r| key_tile_for(r) >= 1))
            .unwrap_or(1);
        let key_tile = key_tile_for(rows_per_group);
        if key_tile == 0 || f.max_workgroup_invocations < WORKGROUP {
            return Err(Error::Unsupported {
                op: DECODE,
                backend: BackendKind::Vulkan,
                reason: format!(
                    "latent_dim + rope_dim = {d} needs more than the device's {} bytes of shared \
                     memory ({} invocations per workgroup)",
                    f.max_shared_memory_bytes, f.max_workgroup_invocations
                ),
            });
        }
        let row_groups = rows.div_ceil(rows_per_group as u64);
        let capacity = (op.max_pages as u64) * op.layout.page_size as u64;
        let base = op.batch as u64 * row_groups;
        let tiles = capacity.div_ceil(key_tile as u64);
        let splits = TARGET_WORKGROUPS
            .div_ceil(base)
            .clamp(1, tessera_core::MLA_MAX_KV_SPLITS as u64)
            .min(tiles.max(1));
        let split_keys = capacity.div_ceil(splits).div_ceil(key_tile as u64) * key_tile as u64;
        let splits = capacity.div_ceil(split_keys).max(1);
        Ok(TiledPlan {
            rows_per_group,
            key_tile,
            row_groups,
            splits,
            split_keys,
        })
    }

    /// Plans a decode: the pass-1 shader this device runs `op` with and its tiling (see
    /// [`MlaDecodePlan`]). The cooperative-matrix shader wherever the device can run it
    /// ([`VulkanBackend::mla_decode_coopmat_unsupported`] is `None`) and its default tiling
    /// fits the layout; else the cooperative-matrix-2 shader for bf16 records where a request
    /// has at least 32 query rows, the device can run it
    /// ([`VulkanBackend::mla_decode_cm2_unsupported`] is `None`) and its default tiling fits;
    /// else the streaming shader wherever the device can run it
    /// ([`VulkanBackend::mla_decode_stream_unsupported`] is `None`), with
    /// [`MlaStreamTiling`]'s default for the shape; else the tiled one. On the H200 the
    /// cooperative-matrix shader beats the cooperative-matrix-2 one at 32 rows (1345-1504
    /// against 890-1109 GB/s at h_q 16 s_q 2) and at 128 (88-95 against 75-84 TFLOPS at h_q
    /// 128 s_q 1; bench/results/2026-12-02-h200-check-25).
    /// [`crate::VulkanSettings::mla_decode`] (`TESSERA_VULKAN_MLA_DECODE`) overrides the choice.
    ///
    /// Between the two: a plan stored for the op's shape class ([`crate::plan::VulkanPlans`],
    /// `tessera tune --backend vulkan`), where the device can run it for `op`.
    pub fn mla_decode_plan(&self, op: &MlaDecode) -> Result<MlaDecodePlan> {
        check_decode_op(op)?;
        let f = self.features();
        if let Some(choice) = self.context().settings().mla_decode.as_deref() {
            let kernel = MlaDecodeKernel::parse_setting(
                choice,
                || stream::default_tiling(f, op),
                || coopmat::default_tiling(f, op),
                || cm2::default_tiling(f, op),
            )?;
            return self.mla_decode_plan_with(op, kernel);
        }
        if let Some(kernel) = self.plans().mla_decode(&MlaDecodeClass::of(op)) {
            match self.mla_decode_plan_with(op, kernel) {
                Ok(plan) => return Ok(plan),
                Err(e) => {
                    log::info!("the stored MLA decode plan {kernel:?} does not run here: {e}")
                }
            }
        }
        self.mla_decode_plan_with(op, self.mla_decode_heuristic(op)?)
    }

    /// The shader and tiling [`VulkanBackend::mla_decode_plan`] takes for `op` without a
    /// setting or a stored plan (see there).
    fn mla_decode_heuristic(&self, op: &MlaDecode) -> Result<MlaDecodeKernel> {
        let f = self.features();
        let cm2_wanted = op.s_q * op.heads >= 32 && self.mla_decode_cm2_unsupported().is_none();
        Ok(
            match (
                coopmat::default_tiling(f, op),
                cm2_wanted.then(|| cm2::default_tiling(f, op)),
            ) {
                (Ok(tiling), _) if self.mla_decode_coopmat_unsupported().is_none() => {
                    MlaDecodeKernel::Coopmat(tiling)
                }
                (_, Some(Ok(tiling))) => MlaDecodeKernel::Cm2(tiling),
                (_, _) if stream::unsupported(f).is_none() => {
                    MlaDecodeKernel::Stream(stream::default_tiling(f, op)?)
                }
                _ => MlaDecodeKernel::Tiled,
            },
        )
    }

    /// Every pass-1 shader and tiling this device runs `op` with
    /// ([`VulkanBackend::mla_decode_plan_with`] accepts it): the heuristic's pick first (see
    /// [`VulkanBackend::mla_decode_plan`]), then the cooperative-matrix-2 tilings, the
    /// cooperative-matrix ones, the streaming ones and the tiled shader. On CPU devices the
    /// streaming shader's unrolled builds are left out (they compile for minutes there), unless
    /// the heuristic picks one (it does for small layouts). What `tessera tune --backend vulkan`
    /// times.
    pub fn mla_decode_candidates(&self, op: &MlaDecode) -> Result<Vec<MlaDecodeKernel>> {
        check_decode_op(op)?;
        let first = self.mla_decode_heuristic(op)?;
        let others = cm2::tilings()
            .map(MlaDecodeKernel::Cm2)
            .chain(coopmat::tilings().map(MlaDecodeKernel::Coopmat))
            .chain(stream::tilings(self.features()).map(MlaDecodeKernel::Stream))
            .chain([MlaDecodeKernel::Tiled])
            .filter(|&k| k != first && self.mla_decode_plan_with(op, k).is_ok());
        Ok(std::iter::once(first).chain(others).collect())
    }

    /// [`VulkanBackend::mla_decode_plan`] with the shader (and tiling) given: for tests and
    /// measurements. [`Error::Unsupported`] where the device cannot run it (or its tiling does
    /// not fit), [`Error::InvalidArgument`] for a tiling outside the shader's choices.
    pub fn mla_decode_plan_with(
        &self,
        op: &MlaDecode,
        kernel: MlaDecodeKernel,
    ) -> Result<MlaDecodePlan> {
        check_decode_op(op)?;
        let launch = match &kernel {
            MlaDecodeKernel::Tiled => Launch::Tiled(self.mla_decode_tiled_plan(op)?),
            MlaDecodeKernel::Stream(tiling) => {
                Launch::Stream(stream::launch(self.features(), op, tiling)?)
            }
            MlaDecodeKernel::Coopmat(tiling) => Launch::Coopmat(coopmat::launch(
                self.features(),
                self.context().settings().portable,
                op,
                tiling,
            )?),
            MlaDecodeKernel::Cm2(tiling) => Launch::Cm2(cm2::launch(
                self.features(),
                self.context().settings().portable,
                op,
                tiling,
            )?),
        };
        Ok(MlaDecodePlan {
            op: op.clone(),
            kernel,
            launch,
        })
    }

    /// Why this device cannot run the streaming decode shader ([`MlaDecodeKernel::Stream`]), or
    /// `None` when it can: it needs subgroup shuffles and a fixed subgroup size (a power of two
    /// in 4..=128).
    pub fn mla_decode_stream_unsupported(&self) -> Option<String> {
        stream::unsupported(self.features())
    }

    /// Why this device cannot run the cooperative-matrix decode shader
    /// ([`MlaDecodeKernel::Coopmat`]), or `None` when it can: bf16 x bf16 ->
    /// f32 16x16x16 cooperative matrices in subgroup scope, subgroup shuffles, a subgroup size
    /// fixed at 32, buffer offsets aligned to 16 bytes, and the context not opened with
    /// [`crate::VulkanSettings::portable`].
    pub fn mla_decode_coopmat_unsupported(&self) -> Option<String> {
        coopmat::unsupported(self.features(), self.context().settings().portable)
    }

    /// Why this device cannot run the cooperative-matrix-2 decode shader
    /// ([`MlaDecodeKernel::Cm2`]), or `None` when it can: `VK_NV_cooperative_matrix2` enabled,
    /// bf16 matrices, Vulkan 1.3, a workgroup-scope bf16 x bf16 -> f32 configuration for 128 or
    /// 256 invocations, and the context not opened with [`crate::VulkanSettings::portable`].
    pub fn mla_decode_cm2_unsupported(&self) -> Option<String> {
        cm2::unsupported(self.features(), self.context().settings().portable)
    }

    /// Bytes of the workspace [`VulkanBackend::record_mla_decode`] needs for `op` on this
    /// device: [`MlaDecodePlan::workspace_bytes`] of [`VulkanBackend::mla_decode_plan`].
    pub fn mla_decode_workspace_bytes(&self, op: &MlaDecode) -> Result<u64> {
        Ok(self.mla_decode_plan(op)?.workspace_bytes())
    }

    /// Records an append into the paged cache into `cmd`: token `t` is written to slot
    /// `slots[t]` of `cache` (see [`MlaAppend`] and [`MlaCacheLayout`] for the record formats);
    /// a negative slot, or one at or past `num_pages · page_size`, skips the token (the shader
    /// never writes outside the cache). Only the words of the written records change.
    ///
    /// Buffer ranges (see [`BufferRange`]), little-endian: `latent` bf16
    /// `[tokens, latent_dim]`, `rope` bf16 `[tokens, rope_dim]` (at least 4 bytes even when
    /// empty), `slots` i32 `[tokens]`, `cache` `[num_pages, page_size, token_bytes]` bytes
    /// (read and written). Sizes are rounded up to whole 32-bit words. Values are not checked:
    /// slots must be distinct, and for the FP8 format the latent must be finite (the host API
    /// checks both).
    ///
    /// Synchronization: a barrier making the inputs' writes (and earlier accesses of the cache)
    /// visible to compute-shader reads and writes before this, and one from compute-shader
    /// writes to whatever reads the cache after; the caller submits and keeps the buffers alive
    /// until the work completes.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_mla_append(
        &self,
        cmd: vk::CommandBuffer,
        layout: &MlaCacheLayout,
        num_pages: usize,
        op: &MlaAppend,
        latent: BufferRange,
        rope: BufferRange,
        slots: BufferRange,
        cache: BufferRange,
    ) -> Result<()> {
        layout.validate()?;
        check_num_pages(APPEND, layout, num_pages)?;
        let f = self.features();
        let tokens = op.tokens as u64;
        let tb = layout.token_bytes() as u64;
        debug_assert_eq!(tb % 4, 0);
        let cache_bytes = num_pages as u64 * layout.page_size as u64 * tb;
        let latent = bind_range(
            APPEND,
            "latent",
            &latent,
            (2 * tokens * layout.latent_dim as u64).max(4),
            f,
        )?;
        let rope = bind_range(
            APPEND,
            "rope",
            &rope,
            (2 * tokens * layout.rope_dim as u64).max(4),
            f,
        )?;
        let slots = bind_range(APPEND, "slots", &slots, (4 * tokens).max(4), f)?;
        let cache = bind_range(APPEND, "cache", &cache, cache_bytes, f)?;
        if tokens == 0 {
            return Ok(());
        }
        to_u32(APPEND, "cache words", cache_bytes / 4)?;
        to_u32(
            APPEND,
            "tokens * latent_dim",
            tokens * layout.latent_dim as u64,
        )?;
        let spec = MlaAppendSpec {
            workgroup_size: WORKGROUP,
            fp8: layout.format == MlaCacheFormat::Fp8,
        };
        let pipeline = self.pipelines().get(&MLA_APPEND, &spec)?;
        let groups = linear_groups(tokens, f.max_workgroup_count)?;
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; the ranges were checked to hold what the shader accesses.
        unsafe {
            pipeline.record(
                cmd,
                &[latent, rope, slots, cache],
                &[
                    tokens as u32,
                    layout.latent_dim as u32,
                    layout.rope_dim as u32,
                    (tb / 4) as u32,
                    (num_pages * layout.page_size) as u32,
                    E4M3::MAX.to_bits(),
                ],
                groups,
            )
        }
    }

    /// Records an absorbed MLA decode into `cmd` (see [`MlaDecode`]) with the shader
    /// [`VulkanBackend::mla_decode_plan`] picks: two dispatches (split-KV partials into
    /// `workspace`, then their combination) with a barrier between them.
    ///
    /// Buffer ranges (see [`BufferRange`]), little-endian: `cache`
    /// `[num_pages, page_size, token_bytes]` bytes in `op.layout`; `q` bf16
    /// `[batch, s_q, heads, latent_dim + rope_dim]`; `block_table` i32 `[batch, max_pages]`;
    /// `seq_lens` i32 `[batch]`; outputs `o` bf16 `[batch, s_q, heads, latent_dim]` and `lse`
    /// f32 `[batch, heads, s_q]` (natural log; `o = 0`, `lse = -inf` for a query that sees no
    /// key); `workspace` at least [`VulkanBackend::mla_decode_workspace_bytes`] bytes (scratch).
    /// Sizes are rounded up to whole 32-bit words.
    ///
    /// Values are not checked, but nothing outside the buffers is ever read: lengths are clamped
    /// to `0 ..= max_pages · page_size`, and a block-table entry outside `0 .. num_pages` that
    /// covers a visible key is not dereferenced: every query that sees such a key gets NaN in
    /// `o` and `lse`.
    ///
    /// Synchronization: a barrier making the inputs' writes visible to compute-shader reads
    /// before this, and one from compute-shader writes to whatever reads `o` and `lse` after;
    /// the caller submits and keeps the buffers alive until the work completes. The workspace
    /// must not be used by other work in flight.
    ///
    /// # Safety
    /// `cmd` must be a command buffer of this backend's device ([`VulkanBackend::context`]) in
    /// the recording state, and the ranges must lie in live buffers of that device created with
    /// `STORAGE_BUFFER` usage.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_mla_decode(
        &self,
        cmd: vk::CommandBuffer,
        op: &MlaDecode,
        num_pages: usize,
        cache: BufferRange,
        q: BufferRange,
        block_table: BufferRange,
        seq_lens: BufferRange,
        o: BufferRange,
        lse: BufferRange,
        workspace: BufferRange,
    ) -> Result<()> {
        let plan = self.mla_decode_plan(op)?;
        // SAFETY: forwarded from the caller (same contract).
        unsafe {
            self.record_mla_decode_planned(
                cmd,
                &plan,
                num_pages,
                cache,
                q,
                block_table,
                seq_lens,
                o,
                lse,
                workspace,
            )
        }
    }

    /// [`VulkanBackend::record_mla_decode`] of `plan`'s op with `plan`'s shader (a plan of this
    /// backend: [`VulkanBackend::mla_decode_plan`] or [`VulkanBackend::mla_decode_plan_with`]);
    /// `workspace` holds at least [`MlaDecodePlan::workspace_bytes`].
    ///
    /// # Safety
    /// As [`VulkanBackend::record_mla_decode`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn record_mla_decode_planned(
        &self,
        cmd: vk::CommandBuffer,
        plan: &MlaDecodePlan,
        num_pages: usize,
        cache: BufferRange,
        q: BufferRange,
        block_table: BufferRange,
        seq_lens: BufferRange,
        o: BufferRange,
        lse: BufferRange,
        workspace: BufferRange,
    ) -> Result<()> {
        let op = &plan.op;
        let l = op.layout;
        check_num_pages(DECODE, &l, num_pages)?;
        let f = self.features();
        let (batch, max_pages) = (op.batch as u64, op.max_pages as u64);
        let cache_bytes = num_pages as u64 * l.page_size as u64 * l.token_bytes() as u64;
        let cache = bind_range(DECODE, "cache", &cache, cache_bytes, f)?;
        let q = bind_range(DECODE, "q", &q, 2 * op.q_len() as u64, f)?;
        let block_table = bind_range(
            DECODE,
            "block_table",
            &block_table,
            4 * batch * max_pages,
            f,
        )?;
        let seq_lens = bind_range(DECODE, "seq_lens", &seq_lens, 4 * batch, f)?;
        let o = bind_range(DECODE, "o", &o, 2 * op.o_len() as u64, f)?;
        let lse = bind_range(DECODE, "lse", &lse, 4 * op.lse_len() as u64, f)?;
        let work_bytes = plan.workspace_bytes();
        let workspace = bind_range(DECODE, "workspace", &workspace, work_bytes, f)?;
        to_u32(DECODE, "cache words", cache_bytes / 4)?;
        to_u32(DECODE, "q elements", op.q_len() as u64 + 2)?;
        to_u32(DECODE, "batch * max_pages", batch * max_pages)?;
        // Key indices up to the capacity, plus a split's rounding to whole key tiles.
        to_u32(
            DECODE,
            "max_pages * page_size + splits * key_tile",
            max_pages * l.page_size as u64 + plan.splits() * plan.launch.key_tile() as u64,
        )?;
        to_u32(DECODE, "workspace elements", work_bytes / 4)?;
        let splits = plan.splits();
        let (decode, push, groups) = match &plan.launch {
            Launch::Tiled(tiled) => {
                let spec = MlaDecodeSpec {
                    workgroup_size: WORKGROUP,
                    fp8: l.format == MlaCacheFormat::Fp8,
                    key_tile: tiled.key_tile,
                    latent_dim: l.latent_dim as u32,
                    rope_dim: l.rope_dim as u32,
                    rows: tiled.rows_per_group,
                };
                let pipeline = self.pipelines().get(&MLA_DECODE, &spec)?;
                let push = vec![
                    op.batch as u32,
                    op.s_q as u32,
                    op.heads as u32,
                    op.max_pages as u32,
                    l.page_size as u32,
                    num_pages as u32,
                    l.latent_dim as u32,
                    (l.token_bytes() / 4) as u32,
                    tiled.row_groups as u32,
                    tiled.splits as u32,
                    tiled.split_keys as u32,
                    op.softmax_scale.to_bits(),
                ];
                (pipeline, push, batch * tiled.row_groups * tiled.splits)
            }
            Launch::Stream(launch) => {
                let shader = if launch.rolled {
                    &MLA_DECODE_STREAM_ROLLED
                } else {
                    &MLA_DECODE_STREAM
                };
                let pipeline = self.pipelines().get(shader, &launch.spec)?;
                let push = row_group_push(
                    op,
                    num_pages,
                    launch.row_groups,
                    launch.rows_per_group,
                    launch.splits,
                );
                (pipeline, push, batch * launch.row_groups * launch.splits)
            }
            Launch::Coopmat(launch) => {
                let pipeline = self.pipelines().get(&MLA_DECODE_COOPMAT, &launch.spec)?;
                let push = row_group_push(
                    op,
                    num_pages,
                    launch.row_groups,
                    coopmat::ROWS,
                    launch.splits,
                );
                (pipeline, push, batch * launch.row_groups * launch.splits)
            }
            Launch::Cm2(launch) => {
                let pipeline = self.pipelines().get(&MLA_DECODE_CM2, &launch.spec)?;
                let push = row_group_push(
                    op,
                    num_pages,
                    launch.row_groups,
                    launch.spec.rows as u64,
                    launch.splits,
                );
                (pipeline, push, batch * launch.row_groups * launch.splits)
            }
        };
        let combine_spec = MlaCombineSpec {
            workgroup_size: COMBINE_WORKGROUP,
        };
        let combine = self.pipelines().get(&MLA_COMBINE, &combine_spec)?;
        let decode_groups = linear_groups(groups, f.max_workgroup_count)?;
        let words = op.o_len() as u64 / 2;
        let combine_groups = linear_groups(
            words.div_ceil(COMBINE_WORKGROUP as u64),
            f.max_workgroup_count,
        )?;
        // SAFETY: the caller guarantees that `cmd` records on this device and that the ranges
        // are valid storage buffers; the ranges were checked to hold what the shaders access.
        unsafe {
            decode.record(
                cmd,
                &[cache, q, block_table, seq_lens, workspace],
                &push,
                decode_groups,
            )?;
            compute_barrier(self.context().device(), cmd);
            combine.record(
                cmd,
                &[workspace, o, lse],
                &[
                    op.batch as u32,
                    op.s_q as u32,
                    op.heads as u32,
                    l.latent_dim as u32,
                    splits as u32,
                ],
                combine_groups,
            )
        }
    }

    /// The host API of the append: validates, uploads the cache and the tokens, runs,
    /// downloads the cache.
    pub(crate) fn mla_append_host(
        &self,
        op: &MlaAppend,
        cache: &mut MlaCache,
        latent: &[bf16],
        rope: &[bf16],
        slots: &[i32],
    ) -> Result<()> {
        op.validate_args(cache, latent, rope, slots)?;
        if op.tokens == 0 {
            return Ok(());
        }
        let ctx = self.context();
        let layout = *cache.layout();
        let num_pages = cache.num_pages();
        let cache_buf = Buffer::from_bytes(ctx, cache.as_bytes())?;
        let latent_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(latent))?;
        // An empty rope still gets one word: a descriptor cannot be empty.
        let rope_buf = Buffer::filled(ctx, (2 * rope.len()).max(4), &[0])?;
        let mut rope_buf = rope_buf;
        rope_buf.write(0, bytemuck::cast_slice(rope))?;
        let slots_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(slots))?;
        self.one_shot().run(|cmd| {
            // SAFETY: `cmd` is the backend's own command buffer, recording; the buffers are
            // live storage buffers of this device, kept until `run` has waited.
            unsafe {
                self.record_mla_append(
                    cmd,
                    &layout,
                    num_pages,
                    op,
                    latent_buf.range(),
                    rope_buf.range(),
                    slots_buf.range(),
                    cache_buf.range(),
                )
            }
        })?;
        let bytes = cache_buf.read(0, cache.as_bytes().len())?;
        cache.as_bytes_mut().copy_from_slice(&bytes);
        Ok(())
    }

    /// The host API of the decode: validates, uploads, runs, downloads.
    pub(crate) fn mla_decode_host(
        &self,
        op: &MlaDecode,
        cache: &MlaCache,
        q: &[bf16],
        block_table: &[i32],
        seq_lens: &[i32],
    ) -> Result<MlaDecodeOutput> {
        op.validate_args(cache, q, block_table, seq_lens)?;
        let ctx = self.context();
        let cache_buf = Buffer::from_bytes(ctx, cache.as_bytes())?;
        let q_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(q))?;
        let bt_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(block_table))?;
        let lens_buf = Buffer::from_bytes(ctx, bytemuck::cast_slice(seq_lens))?;
        // Outputs start as NaN so that an element the shaders fail to write shows up.
        let o_buf = Buffer::filled(ctx, 2 * op.o_len(), &bf16::NAN.to_bits().to_le_bytes())?;
        let lse_buf = Buffer::filled(ctx, 4 * op.lse_len(), &f32::NAN.to_le_bytes())?;
        let plan = self.mla_decode_plan(op)?;
        let work_buf = Buffer::filled(
            ctx,
            plan.workspace_bytes() as usize,
            &f32::NAN.to_le_bytes(),
        )?;
        self.one_shot().run(|cmd| {
            // SAFETY: `cmd` is the backend's own command buffer, recording; the buffers are
            // live storage buffers of this device, kept until `run` has waited.
            unsafe {
                self.record_mla_decode_planned(
                    cmd,
                    &plan,
                    cache.num_pages(),
                    cache_buf.range(),
                    q_buf.range(),
                    bt_buf.range(),
                    lens_buf.range(),
                    o_buf.range(),
                    lse_buf.range(),
                    work_buf.range(),
                )
            }
        })?;
        let o = o_buf.read(0, 2 * op.o_len())?;
        let lse = lse_buf.read(0, 4 * op.lse_len())?;
        Ok(MlaDecodeOutput {
            o: o.chunks_exact(2)
                .map(|h| bf16::from_bits(u16::from_le_bytes([h[0], h[1]])))
                .collect(),
            lse: lse
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}
