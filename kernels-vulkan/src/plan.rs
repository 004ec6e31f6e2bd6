//! Tuned plans: which pass-1 shader and tiling an MLA decode shape class runs on this device, and
//! which shader an FP8 GEMM or attention shape class runs.
//!
//! Without a stored plan, [`crate::VulkanBackend::mla_decode_plan`],
//! [`crate::VulkanBackend::fp8_gemm_plan`] and [`crate::VulkanBackend::attention_plan`] take their
//! heuristic picks. `tessera tune --backend vulkan` times every candidate
//! ([`crate::VulkanBackend::mla_decode_candidates`], [`crate::VulkanBackend::fp8_gemm_candidates`],
//! [`crate::VulkanBackend::attention_candidates`]) of the standard shapes, stores the fastest per
//! shape class here ([`VulkanPlans::set_mla_decode`], [`VulkanPlans::set_fp8_gemm`],
//! [`VulkanPlans::set_attention`]) and writes them as JSON
//! ([`VulkanPlans::save`]: `plans-<device>.json` in [`crate::VulkanSettings::plan_dir`],
//! written to a temporary file and renamed over the old one), which backends read when they are
//! created. A file that cannot be read or parsed, or whose format or device differ, is ignored,
//! and so is a stored plan that the device cannot run for the op at hand (the heuristic then
//! applies). `TESSERA_VULKAN_MLA_DECODE` ([`crate::VulkanSettings::mla_decode`]) overrides both.
//!
//! An MLA decode's shape class ([`MlaDecodeClass`]): the layout and the rows per request
//! (`s_q * heads`) exact, the batch and the cache capacity per request (`max_pages *
//! page_size`) rounded up to powers of two. An FP8 GEMM's ([`Fp8GemmClass`]): m rounded up to a
//! power of two, n and k exact. An attention's ([`AttentionClass`]): head_dim, element type and
//! block size exact, tokens and batch x heads rounded up to powers of two, the mask's density
//! rounded up to eighths.

use crate::ops::attention::AttentionKernel;
use crate::ops::fp8_gemm::Fp8GemmKernel;
use crate::ops::mla::MlaDecodeKernel;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use tessera_core::ops::size_bucket;
use tessera_core::{
    BackendKind, BlockMask, DType, Error, Fp8Gemm, MlaCacheFormat, MlaDecode, Result,
    SparseAttention,
};

/// The version of the plan file's format; a file of another version is ignored.
pub const VULKAN_PLAN_FORMAT: u32 = 1;

/// The shape class of an MLA decode (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MlaDecodeClass {
    /// `bf16` or `fp8`.
    pub fp8: bool,
    /// Latent width.
    pub latent_dim: u32,
    /// RoPE width.
    pub rope_dim: u32,
    /// Keys per page.
    pub page_size: u32,
    /// Query rows per request, `s_q * heads`.
    pub rows: u64,
    /// The batch rounded up to a power of two.
    pub batch_bucket: u64,
    /// `max_pages * page_size` rounded up to a power of two.
    pub capacity_bucket: u64,
}

impl MlaDecodeClass {
    /// The class of `op`.
    pub fn of(op: &MlaDecode) -> Self {
        let l = &op.layout;
        Self {
            fp8: l.format == MlaCacheFormat::Fp8,
            latent_dim: l.latent_dim as u32,
            rope_dim: l.rope_dim as u32,
            page_size: l.page_size as u32,
            rows: op.s_q.saturating_mul(op.heads) as u64,
            batch_bucket: size_bucket(op.batch),
            capacity_bucket: size_bucket(op.max_pages.saturating_mul(l.page_size)),
        }
    }
}

/// The shape class of an FP8 GEMM (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fp8GemmClass {
    /// m rounded up to a power of two.
    pub m_bucket: u64,
    /// n.
    pub n: u64,
    /// k.
    pub k: u64,
}

impl Fp8GemmClass {
    /// The class of `op`.
    pub fn of(op: &Fp8Gemm) -> Self {
        Self {
            m_bucket: size_bucket(op.m),
            n: op.n as u64,
            k: op.k as u64,
        }
    }
}

/// The shape class of a block-sparse attention forward (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttentionClass {
    /// head_dim.
    pub head_dim: u64,
    /// bf16 (else f16).
    pub bf16: bool,
    /// The mask's block size.
    pub block: u64,
    /// Tokens rounded up to a power of two.
    pub tokens_bucket: u64,
    /// batch x heads rounded up to a power of two.
    pub batch_heads_bucket: u64,
    /// The mask's density (blocks on over all blocks) rounded up to eighths, 0..=8.
    pub density_eighths: u8,
}

impl AttentionClass {
    /// The class of `op` over `mask`.
    pub fn of(op: &SparseAttention, mask: &BlockMask) -> Self {
        let blocks = (mask.num_blocks() as u64).pow(2).max(1);
        Self {
            head_dim: op.head_dim as u64,
            bf16: op.dtype == DType::BF16,
            block: mask.block_size() as u64,
            tokens_bucket: size_bucket(op.tokens),
            batch_heads_bucket: size_bucket(op.batch.saturating_mul(op.heads)),
            density_eighths: ((mask.nnz() as u64 * 8).div_ceil(blocks)).min(8) as u8,
        }
    }
}

/// One stored plan of the file.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry<C, K> {
    class: C,
    kernel: K,
}

/// The plan file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct PlanFile {
    format: u32,
    device: String,
    #[serde(default)]
    mla_decode: Vec<Entry<MlaDecodeClass, MlaDecodeKernel>>,
    #[serde(default)]
    fp8_gemm: Vec<Entry<Fp8GemmClass, Fp8GemmKernel>>,
    #[serde(default)]
    attention: Vec<Entry<AttentionClass, AttentionKernel>>,
}

/// One op's stored plans.
type Plans<C, K> = RwLock<HashMap<C, K>>;

fn get<C: Eq + std::hash::Hash, K: Copy>(plans: &Plans<C, K>, class: &C) -> Option<K> {
    plans
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(class)
        .copied()
}

fn set<C: Eq + std::hash::Hash, K>(plans: &Plans<C, K>, class: C, kernel: K) {
    plans
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(class, kernel);
}

fn count<C, K>(plans: &Plans<C, K>) -> usize {
    plans.read().unwrap_or_else(|e| e.into_inner()).len()
}

/// The stored plans as file entries, sorted by their JSON (a stable order).
fn entries<C: Copy + Serialize, K: Copy>(plans: &Plans<C, K>) -> Vec<Entry<C, K>> {
    let mut v: Vec<Entry<C, K>> = plans
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(class, kernel)| Entry {
            class: *class,
            kernel: *kernel,
        })
        .collect();
    v.sort_by_cached_key(|e| serde_json::to_string(&e.class).unwrap_or_default());
    v
}

/// The tuned plans of one device (see the module doc).
#[derive(Debug)]
pub struct VulkanPlans {
    device: String,
    path: Option<PathBuf>,
    mla_decode: Plans<MlaDecodeClass, MlaDecodeKernel>,
    fp8_gemm: Plans<Fp8GemmClass, Fp8GemmKernel>,
    attention: Plans<AttentionClass, AttentionKernel>,
}

impl VulkanPlans {
    /// The plans of `device` (a device's name and driver: [`crate::VulkanFeatures::plan_key`]),
    /// read from `dir` where its file is valid; empty otherwise, and with `dir` `None`.
    pub fn load(device: &str, dir: Option<&Path>) -> Self {
        let path = dir.map(|d| d.join(plan_file_name(device)));
        let mut mla_decode = HashMap::new();
        let mut fp8_gemm = HashMap::new();
        let mut attention = HashMap::new();
        if let Some(file) = path.as_deref().and_then(|p| std::fs::read(p).ok()) {
            match serde_json::from_slice::<PlanFile>(&file) {
                Ok(f) if f.format == VULKAN_PLAN_FORMAT && f.device == device => {
                    mla_decode.extend(f.mla_decode.into_iter().map(|e| (e.class, e.kernel)));
                    fp8_gemm.extend(f.fp8_gemm.into_iter().map(|e| (e.class, e.kernel)));
                    attention.extend(f.attention.into_iter().map(|e| (e.class, e.kernel)));
                }
                Ok(_) => log::info!(
                    "ignoring {}: another format or device",
                    path.as_deref().unwrap_or(Path::new("")).display()
                ),
                Err(e) => log::warn!(
                    "ignoring {}: {e}",
                    path.as_deref().unwrap_or(Path::new("")).display()
                ),
            }
        }
        Self {
            device: device.to_string(),
            path,
            mla_decode: RwLock::new(mla_decode),
            fp8_gemm: RwLock::new(fp8_gemm),
            attention: RwLock::new(attention),
        }
    }

    /// The stored MLA decode plan of `class`, if any.
    pub fn mla_decode(&self, class: &MlaDecodeClass) -> Option<MlaDecodeKernel> {
        get(&self.mla_decode, class)
    }

    /// Stores `kernel` as the MLA decode plan of `class` (in memory; [`VulkanPlans::save`]
    /// writes them).
    pub fn set_mla_decode(&self, class: MlaDecodeClass, kernel: MlaDecodeKernel) {
        set(&self.mla_decode, class, kernel);
    }

    /// The stored FP8 GEMM plan of `class`, if any.
    pub fn fp8_gemm(&self, class: &Fp8GemmClass) -> Option<Fp8GemmKernel> {
        get(&self.fp8_gemm, class)
    }

    /// Stores `kernel` as the FP8 GEMM plan of `class` (in memory).
    pub fn set_fp8_gemm(&self, class: Fp8GemmClass, kernel: Fp8GemmKernel) {
        set(&self.fp8_gemm, class, kernel);
    }

    /// The stored attention plan of `class`, if any.
    pub fn attention(&self, class: &AttentionClass) -> Option<AttentionKernel> {
        get(&self.attention, class)
    }

    /// Stores `kernel` as the attention plan of `class` (in memory).
    pub fn set_attention(&self, class: AttentionClass, kernel: AttentionKernel) {
        set(&self.attention, class, kernel);
    }

    /// How many plans are stored (all ops).
    pub fn len(&self) -> usize {
        count(&self.mla_decode) + count(&self.fp8_gemm) + count(&self.attention)
    }

    /// Whether no plan is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the stored plans to the plan file (a temporary file renamed over it); returns its
    /// path, or `None` when there is no plan folder or nothing is stored. An error names the
    /// file that could not be written.
    pub fn save(&self) -> Result<Option<PathBuf>> {
        let Some(path) = self.path.clone() else {
            return Ok(None);
        };
        if self.is_empty() {
            return Ok(None);
        }
        let file = PlanFile {
            format: VULKAN_PLAN_FORMAT,
            device: self.device.clone(),
            mla_decode: entries(&self.mla_decode),
            fp8_gemm: entries(&self.fp8_gemm),
            attention: entries(&self.attention),
        };
        let failed = |what: &str, e: &dyn std::fmt::Display| Error::Device {
            backend: BackendKind::Vulkan,
            message: format!("{what} the plan file {}: {e}", path.display()),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| failed("serializing", &e))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| failed("creating the folder of", &e))?;
        }
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        std::fs::write(&tmp, json).map_err(|e| failed("writing", &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| failed("renaming the new", &e))?;
        Ok(Some(path))
    }
}

/// `plans-<device>.json`, the device's name and driver with every character other than ASCII
/// letters, digits, `.` and `-` as `_`.
fn plan_file_name(device: &str) -> String {
    let safe: String = device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("plans-{safe}.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::mla::{MlaCm2Tiling, MlaStreamTiling};
    use tessera_core::MlaCacheLayout;

    fn op(batch: usize, s_q: usize, heads: usize, max_pages: usize) -> MlaDecode {
        MlaDecode {
            batch,
            s_q,
            heads,
            max_pages,
            softmax_scale: 0.1,
            layout: MlaCacheLayout::default(),
        }
    }

    #[test]
    fn classes_bucket_batch_and_capacity_and_keep_rows_exact() {
        let a = MlaDecodeClass::of(&op(64, 1, 16, 64));
        assert_eq!(a, MlaDecodeClass::of(&op(40, 1, 16, 50)));
        assert_ne!(a, MlaDecodeClass::of(&op(64, 2, 16, 64)));
        assert_ne!(a, MlaDecodeClass::of(&op(65, 1, 16, 64)));
        assert_eq!((a.batch_bucket, a.capacity_bucket, a.rows), (64, 4096, 16));
        assert_eq!(MlaDecodeClass::of(&op(0, 1, 1, 0)).batch_bucket, 1);
    }

    #[test]
    fn plans_round_trip_through_their_file_and_other_devices_files_are_ignored() {
        let dir = std::env::temp_dir().join(format!("tessera-vk-plans-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let class = MlaDecodeClass::of(&op(64, 2, 16, 128));
        let cm2 = MlaDecodeKernel::Cm2(MlaCm2Tiling {
            rows: 32,
            key_tile: 32,
        });
        let stream = MlaDecodeKernel::Stream(MlaStreamTiling {
            rows_per_team: 2,
            key_tile: 8,
            prefetch: true,
            unrolled: false,
        });
        let plans = VulkanPlans::load("GPU A (driver 1.0)", Some(&dir));
        assert!(plans.is_empty());
        assert_eq!(
            plans.save().unwrap(),
            None,
            "nothing stored, nothing written"
        );
        plans.set_mla_decode(class, cm2);
        let other = MlaDecodeClass::of(&op(1, 1, 128, 16));
        plans.set_mla_decode(other, stream);
        let gemm = Fp8GemmClass::of(&Fp8Gemm::new(100, 7168, 2048));
        assert_eq!(gemm.m_bucket, 128);
        plans.set_fp8_gemm(gemm, Fp8GemmKernel::CoopmatLarge);
        let mask = BlockMask::dense(1000, 64).unwrap();
        let attention =
            AttentionClass::of(&SparseAttention::new(1, 1000, 3, 128, DType::BF16), &mask);
        assert_eq!(
            (
                attention.tokens_bucket,
                attention.batch_heads_bucket,
                attention.density_eighths
            ),
            (1024, 4, 8)
        );
        plans.set_attention(attention, AttentionKernel::Portable);
        let path = plans.save().unwrap().expect("a file");
        assert_eq!(path.file_name().unwrap(), "plans-GPU_A__driver_1.0_.json");

        let again = VulkanPlans::load("GPU A (driver 1.0)", Some(&dir));
        assert_eq!(again.len(), 4);
        assert_eq!(again.attention(&attention), Some(AttentionKernel::Portable));
        assert_eq!(again.fp8_gemm(&gemm), Some(Fp8GemmKernel::CoopmatLarge));
        assert_eq!(again.mla_decode(&class), Some(cm2));
        assert_eq!(again.mla_decode(&other), Some(stream));
        // Another device's name: another file, nothing read.
        assert!(VulkanPlans::load("GPU B", Some(&dir)).is_empty());
        // A file naming another device, or of another format, or not JSON: ignored.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("GPU A (driver 1.0)", "GPU C")).unwrap();
        assert!(VulkanPlans::load("GPU A (driver 1.0)", Some(&dir)).is_empty());
        std::fs::write(&path, text.replace("\"format\": 1", "\"format\": 99")).unwrap();
        assert!(VulkanPlans::load("GPU A (driver 1.0)", Some(&dir)).is_empty());
        std::fs::write(&path, b"not json").unwrap();
        assert!(VulkanPlans::load("GPU A (driver 1.0)", Some(&dir)).is_empty());
        // No folder: memory only.
        let memory = VulkanPlans::load("GPU A (driver 1.0)", None);
        memory.set_mla_decode(class, cm2);
        assert_eq!(memory.save().unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
