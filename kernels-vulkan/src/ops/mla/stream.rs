//! The streaming decode shader (`mla_decode_stream.comp`): its specialization constants, what
//! it needs from the device, and its tiling for a decode.
//!
//! One workgroup per (request, group of query rows, key split) reads each key record of its
//! split once, however many rows share it (all `s_q · heads` rows of a request up to
//! `MAX_TEAMS · rows_per_team`). The workgroup is `teams` subgroups; each owns `rows_per_team`
//! rows, and each lane a fixed set of columns of those rows (query and output accumulators in
//! registers, f32), so a key tile in shared memory (f32) is read by every lane once for the
//! scores and once for the values. A score is the sum of the lanes' partial dot products, summed
//! by a butterfly of `subgroupShuffleXor` (which needs subgroup shuffles and a known, fixed
//! subgroup size).

use super::MlaStreamTiling;
use crate::device::VulkanFeatures;
use crate::pipeline::{Shader, ShaderResources, SpecConstant, Specialization};
use std::marker::PhantomData;
use tessera_core::{Error, MlaCacheFormat, MlaCacheLayout, MlaDecode, Result};

/// Most subgroups ("teams") per workgroup: with 4 rows each, 32 rows share a pass over the
/// keys (`h_q = 16` with `s_q = 2`, or `h_q = 32`); more rows take more row groups.
pub(super) const MAX_TEAMS: u32 = 8;
/// Rows per team the shader can be built for.
pub(super) const ROWS_PER_TEAM: [u32; 3] = [1, 2, 4];
/// Keys per tile the shader can be built for, largest first.
pub(super) const KEY_TILES: [u32; 3] = [16, 8, 4];
/// Partial scores a lane sums per butterfly (`rows_per_team · score batch`): 16 registers (a
/// butterfly of 16 values over 32 lanes costs about one shuffle per value, as one of 32).
const PARTIAL_SCORES: u32 = 16;
/// Most registers of staged record units each invocation keeps for the next tile when
/// prefetching (a unit: its 2 words of bf16 or 1 word and the group scale of FP8, and a flag),
/// on top of the query and output columns of 4 rows (`2 · 4 · 16 · 4` for DeepSeek-V3's
/// latent of 512 on subgroups of 32). With more, the default tiling loads each tile when it is
/// needed.
const MAX_PREFETCH_REGISTERS: u32 = 36;
/// Most registers of staged record units when each tile is loaded when needed (not held while
/// the tile is computed): workgroups of one subgroup (few rows) stage a whole tile with 32
/// lanes.
const MAX_STAGED_REGISTERS: u32 = 64;
/// Workgroups that run at once per compute unit, by workgroup size (a guess that the split
/// count needs: one workgroup of 256 invocations with ~230 registers each fills an NVIDIA SM).
fn resident_per_compute_unit(invocations: u32) -> u64 {
    if invocations <= 128 {
        2
    } else {
        1
    }
}
/// The largest unrolled loops ([`MlaDecodeStreamSpec::unrolled_code`]) a device's compiler
/// gets: a GPU needs them unrolled to keep the lanes' arrays in registers (DeepSeek-V3's layout
/// on subgroups of 32 with 32 rows: 596), else [`MLA_DECODE_STREAM_ROLLED`] runs; lavapipe's
/// compiler takes up to a minute on such code (its subgroups of 8 give each lane 4x the
/// columns), so a CPU device unrolls only small shapes.
fn unrolled_code_limit(f: &VulkanFeatures) -> u32 {
    if f.is_cpu() {
        256
    } else {
        1024
    }
}

/// Pass 1 of the decode, streaming variant, every loop unrolled (GPUs). Bindings: cache, q,
/// block_table, seq_lens, workspace. Specialization: [`MlaDecodeStreamSpec`].
pub const MLA_DECODE_STREAM: Shader<MlaDecodeStreamSpec> = Shader {
    name: "mla_decode_stream",
    spirv: spirv!("mla_decode_stream"),
    storage_buffers: 5,
    push_constant_bytes: 44,
    specialization: PhantomData,
};

/// [`MLA_DECODE_STREAM`] with no loop unrolled (CPU devices, large layouts: see
/// [`unrolled_code_limit`]).
pub const MLA_DECODE_STREAM_ROLLED: Shader<MlaDecodeStreamSpec> = Shader {
    name: "mla_decode_stream_rolled",
    spirv: spirv!("mla_decode_stream_rolled"),
    ..MLA_DECODE_STREAM
};

/// The specialization constants of `mla_decode_stream.comp` (both builds). The shader's
/// `LOG2_SG` and `LOG2_V` (`log2(rows_per_team · score_batch)`) follow from the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlaDecodeStreamSpec {
    /// Subgroups per workgroup.
    pub teams: u32,
    /// The subgroup size the shader is built for (a power of two).
    pub subgroup: u32,
    /// Query rows per team.
    pub rows_per_team: u32,
    /// Keys per shared-memory tile.
    pub key_tile: u32,
    /// Keys per score butterfly.
    pub score_batch: u32,
    /// The layout's latent width.
    pub latent: u32,
    /// The layout's rope width.
    pub rope: u32,
    /// FP8 records (else bf16).
    pub fp8: bool,
    /// Record units each invocation stages per tile.
    pub staged_units: u32,
    /// Fetch the next tile while computing the current one.
    pub prefetch: bool,
}

impl Default for MlaDecodeStreamSpec {
    /// The defaults of the shader source: DeepSeek-V3's bf16 layout, 4 subgroups of 32 with 4
    /// rows each, 8-key tiles, prefetched.
    fn default() -> Self {
        Self {
            teams: 4,
            subgroup: 32,
            rows_per_team: 4,
            key_tile: 8,
            score_batch: 8,
            latent: 512,
            rope: 64,
            fp8: false,
            staged_units: 5,
            prefetch: true,
        }
    }
}

impl Specialization for MlaDecodeStreamSpec {
    fn constants(&self) -> Vec<SpecConstant> {
        vec![
            SpecConstant::local_size_x(0, self.invocations()),
            SpecConstant::new(1, "SG", self.subgroup),
            SpecConstant::new(2, "LOG2_SG", self.subgroup.trailing_zeros()),
            SpecConstant::new(3, "TR", self.rows_per_team),
            SpecConstant::new(4, "KT", self.key_tile),
            SpecConstant::new(5, "KB", self.score_batch),
            SpecConstant::new(
                6,
                "LOG2_V",
                (self.rows_per_team * self.score_batch).trailing_zeros(),
            ),
            SpecConstant::new(7, "LATENT", self.latent),
            SpecConstant::new(8, "ROPE", self.rope),
            SpecConstant::new(9, "FP8", u32::from(self.fp8)),
            SpecConstant::new(10, "PF", self.staged_units),
            SpecConstant::new(11, "PREFETCH", u32::from(self.prefetch)),
        ]
    }

    fn resources(&self) -> ShaderResources {
        ShaderResources {
            invocations: self.invocations(),
            shared_memory_bytes: self.shared_memory_bytes(),
        }
    }
}

impl MlaDecodeStreamSpec {
    /// The size of the unrolled loops, in vector operations: a lane's dot products and value
    /// updates per tile (`rows · keys · (2 · latent chunks + rope chunks)`) and the words it
    /// stages.
    pub(crate) fn unrolled_code(&self) -> u32 {
        let latent_chunks = (self.latent / 4).div_ceil(self.subgroup);
        let rope_chunks = (self.rope / 2).div_ceil(self.subgroup);
        self.rows_per_team * self.key_tile * (2 * latent_chunks + rope_chunks)
            + self.staged_units * self.unit_words()
    }

    /// 32-bit words of a staged record unit: 2 for bf16 records (4 values, one 16-byte store
    /// into the tile), 1 for FP8 (4 codes, or 2 rope values).
    pub(crate) fn unit_words(&self) -> u32 {
        if self.fp8 {
            1
        } else {
            2
        }
    }

    /// Registers an invocation holds for its staged units: the words, an FP8 scale, a flag.
    fn staged_registers(&self) -> u32 {
        self.staged_units * (self.unit_words() + u32::from(self.fp8) + 1)
    }

    /// Invocations per workgroup.
    pub(crate) fn invocations(&self) -> u32 {
        self.teams * self.subgroup
    }

    /// The shader's shared memory: the f32 key tile, the teams' score tiles and the tile's
    /// bad-key flags.
    pub(crate) fn shared_memory_bytes(&self) -> u32 {
        let tile = 4 * self.key_tile * (self.latent + self.rope);
        tile + 4 * self.teams * self.rows_per_team * self.key_tile + 4 * self.key_tile
    }
}

/// How the streaming shader runs a decode: its specialization, the row groups and the key
/// splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StreamLaunch {
    pub spec: MlaDecodeStreamSpec,
    /// Run the build without unrolled loops ([`MLA_DECODE_STREAM_ROLLED`]).
    pub rolled: bool,
    pub rows_per_group: u64,
    pub row_groups: u64,
    pub splits: u64,
}

/// Why the device cannot run the streaming shader at all, if it cannot.
pub(super) fn unsupported(f: &VulkanFeatures) -> Option<String> {
    let sg = f.subgroup_size;
    if !f.subgroup_shuffle {
        return Some("no subgroup shuffles in compute shaders".into());
    }
    if f.min_subgroup_size != f.max_subgroup_size || f.min_subgroup_size != sg {
        return Some(format!(
            "the subgroup size varies ({}..{}): the shader needs a fixed one",
            f.min_subgroup_size, f.max_subgroup_size
        ));
    }
    if !sg.is_power_of_two() || !(4..=128).contains(&sg) {
        return Some(format!(
            "subgroup size {sg}: the shader needs a power of two in 4..=128"
        ));
    }
    if f.max_workgroup_invocations < sg {
        return Some(format!(
            "{} invocations per workgroup, fewer than a subgroup of {sg}",
            f.max_workgroup_invocations
        ));
    }
    None
}

fn unsupported_error(reason: String) -> Error {
    super::shader_unsupported("the streaming decode shader", reason)
}

/// 32-bit words of a record.
fn token_words(layout: &MlaCacheLayout) -> u32 {
    (layout.token_bytes() / 4) as u32
}

/// Builds the specialization for `op` with `tiling` (teams from the rows), checking it against
/// the device.
fn spec_for(
    f: &VulkanFeatures,
    op: &MlaDecode,
    tiling: &MlaStreamTiling,
    teams: u32,
) -> Result<MlaDecodeStreamSpec> {
    let l = &op.layout;
    let fp8 = l.format == MlaCacheFormat::Fp8;
    let units_per_record = token_words(l) / if fp8 { 1 } else { 2 };
    let invocations = teams * f.subgroup_size;
    let spec = MlaDecodeStreamSpec {
        teams,
        subgroup: f.subgroup_size,
        rows_per_team: tiling.rows_per_team,
        key_tile: tiling.key_tile,
        score_batch: (PARTIAL_SCORES / tiling.rows_per_team).min(tiling.key_tile),
        latent: l.latent_dim as u32,
        rope: l.rope_dim as u32,
        fp8,
        staged_units: (tiling.key_tile * units_per_record).div_ceil(invocations),
        prefetch: tiling.prefetch,
    };
    if spec.invocations() > f.max_workgroup_invocations {
        return Err(unsupported_error(format!(
            "{} invocations per workgroup, the device allows {}",
            spec.invocations(),
            f.max_workgroup_invocations
        )));
    }
    if spec.shared_memory_bytes() > f.max_shared_memory_bytes {
        return Err(unsupported_error(format!(
            "{tiling:?} needs {} bytes of shared memory for latent_dim + rope_dim = {}, the \
             device has {}",
            spec.shared_memory_bytes(),
            l.qk_dim(),
            f.max_shared_memory_bytes
        )));
    }
    Ok(spec)
}

/// Rows per team for `rows` query rows: 4, or fewer when there are fewer rows.
fn default_rows_per_team(rows: u64) -> u32 {
    if rows >= 4 {
        4
    } else if rows >= 2 {
        2
    } else {
        1
    }
}

/// The row groups of `rows` rows with `rows_per_team` rows per team: as few groups as the teams
/// of a workgroup allow, the rows spread evenly over them (whole teams).
fn row_groups(f: &VulkanFeatures, rows: u64, rows_per_team: u32) -> (u64, u64, u32) {
    let teams_max = (f.max_workgroup_invocations / f.subgroup_size).clamp(1, MAX_TEAMS) as u64;
    let per_team = rows_per_team as u64;
    let groups = rows.div_ceil(teams_max * per_team).max(1);
    let teams = rows.div_ceil(groups).div_ceil(per_team);
    (teams * per_team, groups, teams as u32)
}

/// The default tiling on this device: 4 rows per team (fewer with fewer rows) and, on a GPU,
/// the largest key tile whose staged records fit [`MAX_PREFETCH_REGISTERS`] per invocation,
/// prefetched; else (small workgroups) the largest whose records fit
/// [`MAX_STAGED_REGISTERS`], loaded when needed; else 4 keys. On a CPU device (lavapipe)
/// registers cost nothing: the largest tile that fits the shared memory, loaded when needed.
/// Unrolled where the code stays within [`unrolled_code_limit`].
pub(super) fn default_tiling(f: &VulkanFeatures, op: &MlaDecode) -> Result<MlaStreamTiling> {
    let rows = (op.s_q * op.heads) as u64;
    let rows_per_team = default_rows_per_team(rows);
    let (_, _, teams) = row_groups(f, rows, rows_per_team);
    let fits = |key_tile: u32, prefetch: bool| {
        let tiling = MlaStreamTiling {
            rows_per_team,
            key_tile,
            prefetch,
            unrolled: true,
        };
        spec_for(f, op, &tiling, teams).ok().map(|s| {
            let unrolled = s.unrolled_code() <= unrolled_code_limit(f);
            (MlaStreamTiling { unrolled, ..tiling }, s)
        })
    };
    let largest = |prefetch: bool, registers: u32| {
        KEY_TILES
            .iter()
            .filter_map(|&kt| fits(kt, prefetch))
            .find(|(_, s)| s.staged_registers() <= registers)
            .map(|(tiling, _)| tiling)
    };
    let smallest = KEY_TILES[KEY_TILES.len() - 1];
    let chosen = if f.is_cpu() {
        largest(false, u32::MAX)
    } else {
        largest(true, MAX_PREFETCH_REGISTERS)
            .or_else(|| largest(false, MAX_STAGED_REGISTERS))
            .or_else(|| fits(smallest, false).map(|(tiling, _)| tiling))
    };
    chosen.map_or_else(
        || {
            let tiling = MlaStreamTiling {
                rows_per_team,
                key_tile: smallest,
                prefetch: false,
                unrolled: false,
            };
            Err(spec_for(f, op, &tiling, teams)
                .err()
                .unwrap_or_else(|| unsupported_error("no tiling fits".into())))
        },
        Ok,
    )
}

/// Every tiling the shader can be built with, in order (rows per team, then key tiles, then
/// prefetched and unrolled first); on a CPU device only the builds without unrolled loops (the
/// unrolled ones of most layouts compile there for minutes; [`default_tiling`] takes them
/// only within [`unrolled_code_limit`]).
pub(super) fn tilings(f: &VulkanFeatures) -> impl Iterator<Item = MlaStreamTiling> {
    let builds: &[(bool, bool)] = if f.is_cpu() {
        &[(true, false), (false, false)]
    } else {
        &[(true, true), (false, true), (true, false), (false, false)]
    };
    ROWS_PER_TEAM.into_iter().flat_map(move |rows_per_team| {
        KEY_TILES.into_iter().flat_map(move |key_tile| {
            builds
                .iter()
                .map(move |&(prefetch, unrolled)| MlaStreamTiling {
                    rows_per_team,
                    key_tile,
                    prefetch,
                    unrolled,
                })
        })
    })
}

/// The launch of `op` with `tiling` on this device.
pub(super) fn launch(
    f: &VulkanFeatures,
    op: &MlaDecode,
    tiling: &MlaStreamTiling,
) -> Result<StreamLaunch> {
    if let Some(reason) = unsupported(f) {
        return Err(unsupported_error(reason));
    }
    super::check_choice("tiling.rows_per_team", tiling.rows_per_team, &ROWS_PER_TEAM)?;
    super::check_choice("tiling.key_tile", tiling.key_tile, &KEY_TILES)?;
    let rows = (op.s_q * op.heads) as u64;
    let (rows_per_group, groups, teams) = row_groups(f, rows, tiling.rows_per_team);
    let spec = spec_for(f, op, tiling, teams)?;
    let resident = resident_per_compute_unit(spec.invocations());
    let splits = super::key_splits(f, op, groups, spec.key_tile, resident);
    Ok(StreamLaunch {
        spec,
        rolled: !tiling.unrolled,
        rows_per_group,
        row_groups: groups,
        splits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::mla::h200_features as h200;

    #[test]
    fn constants_and_resources() {
        let spec = MlaDecodeStreamSpec {
            teams: 4,
            subgroup: 32,
            rows_per_team: 4,
            key_tile: 8,
            score_batch: 8,
            latent: 512,
            rope: 64,
            fp8: true,
            staged_units: 3,
            prefetch: true,
        };
        let v: Vec<(u32, u32)> = spec.constants().iter().map(|c| (c.id, c.value)).collect();
        assert_eq!(v[0], (0, 128));
        assert_eq!(v[2], (2, 5));
        assert_eq!(v[6], (6, 5));
        assert_eq!(v[10], (10, 3));
        assert_eq!(v.len(), 12);
        // DeepSeek-V3, 8 keys: the f32 tile, 4 teams x 4 rows x 8 scores, 8 flags.
        assert_eq!(
            spec.shared_memory_bytes(),
            8 * 576 * 4 + 4 * 4 * 8 * 4 + 8 * 4
        );
        let resources = spec.resources();
        assert_eq!(resources.invocations, 128);
        assert_eq!(resources.shared_memory_bytes, spec.shared_memory_bytes());
    }

    fn deepseek(batch: usize, heads: usize, s_q: usize, format: MlaCacheFormat) -> MlaDecode {
        MlaDecode {
            batch,
            s_q,
            heads,
            max_pages: 4096 / 64,
            softmax_scale: 0.1,
            layout: MlaCacheLayout {
                format,
                ..MlaCacheLayout::default()
            },
        }
    }

    #[test]
    fn h200_plans_of_the_benchmark_shapes() {
        let f = h200();
        let plan = |batch, heads, s_q, format| {
            let op = deepseek(batch, heads, s_q, format);
            let tiling = default_tiling(&f, &op).unwrap();
            (tiling, launch(&f, &op, &tiling).unwrap())
        };
        for format in [MlaCacheFormat::Bf16, MlaCacheFormat::Fp8] {
            // h_q 16, s_q 1: 4 subgroups of 4 rows, 8-key tiles prefetched, 4 splits of 64
            // requests fill 2 workgroups on each of 132 SMs.
            let (t, l) = plan(64, 16, 1, format);
            assert_eq!(
                (t.rows_per_team, t.key_tile, t.prefetch, t.unrolled),
                (4, 8, true, true)
            );
            assert_eq!((l.spec.teams, l.row_groups, l.splits), (4, 1, 4));
            // s_q 2 (and h_q 32): all 32 rows in one workgroup of 8 subgroups, 16-key tiles.
            let (t, l) = plan(64, 16, 2, format);
            assert_eq!((t.key_tile, t.prefetch, t.unrolled), (16, true, true));
            assert_eq!((l.spec.teams, l.rows_per_group, l.row_groups), (8, 32, 1));
            assert_eq!(plan(128, 32, 1, format).1.row_groups, 1);
            // h_q 128: row groups of 32.
            let (_, l) = plan(64, 128, 1, format);
            assert_eq!((l.rows_per_group, l.row_groups, l.splits), (32, 4, 1));
            // One row: one subgroup stages 4-key tiles without prefetching.
            let (t, l) = plan(64, 1, 1, format);
            assert_eq!((t.rows_per_team, t.key_tile, t.prefetch), (1, 4, false));
            assert!(l.spec.staged_registers() <= MAX_STAGED_REGISTERS);
            for (b, h, q) in [(64, 16, 1), (64, 16, 2), (128, 128, 2), (4, 3, 3)] {
                let (_, l) = plan(b, h, q, format);
                assert!(l.spec.shared_memory_bytes() <= f.max_shared_memory_bytes);
                assert!(l.spec.unrolled_code() <= unrolled_code_limit(&f));
            }
        }
    }

    #[test]
    fn cpu_devices_get_the_rolled_build_for_large_layouts() {
        let f = VulkanFeatures {
            device_type: "Cpu".into(),
            subgroup_size: 8,
            min_subgroup_size: 8,
            max_subgroup_size: 8,
            compute_units: None,
            max_shared_memory_bytes: 32 * 1024,
            ..h200()
        };
        let op = deepseek(4, 16, 1, MlaCacheFormat::Bf16);
        let tiling = default_tiling(&f, &op).unwrap();
        assert!(!tiling.unrolled && !tiling.prefetch, "{tiling:?}");
        assert_eq!(tiling.key_tile, 8);
        let small = MlaDecode {
            layout: MlaCacheLayout {
                latent_dim: 64,
                rope_dim: 0,
                ..MlaCacheLayout::default()
            },
            ..deepseek(4, 2, 1, MlaCacheFormat::Bf16)
        };
        assert!(default_tiling(&f, &small).unwrap().unrolled);
        // Subgroups that vary in size, or no shuffles: the shader cannot run.
        let varying = VulkanFeatures {
            min_subgroup_size: 8,
            max_subgroup_size: 32,
            ..h200()
        };
        assert!(unsupported(&varying).is_some());
        let no_shuffle = VulkanFeatures {
            subgroup_shuffle: false,
            ..h200()
        };
        assert!(unsupported(&no_shuffle).is_some());
        assert!(unsupported(&h200()).is_none());
    }
}
