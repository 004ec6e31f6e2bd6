//! Element types and host tensors.
//!
//! Every tensor in Tessera is a dense, row-major (C-order) array; each op documents the order of
//! its dimensions, e.g. `[batch, tokens, heads, head_dim]` means `head_dim` is contiguous.

use crate::fp8::{E4M3, E5M2};
use half::{bf16, f16};
use std::fmt;

/// The element types Tessera stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    BF16,
    /// OCP FP8 E4M3FN, see [`E4M3`].
    E4M3,
    /// OCP FP8 E5M2, see [`E5M2`].
    E5M2,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::E4M3 | DType::E5M2 => 1,
        }
    }

    /// Short lower-case name (`f32`, `f16`, `bf16`, `e4m3`, `e5m2`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::E4M3 => "e4m3",
            DType::E5M2 => "e5m2",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed host tensor: the elements of one dense row-major array, of any [`DType`].
///
/// The shape is not stored: each op's descriptor says what it must be, and validation checks
/// the length against it.
#[derive(Clone, Copy, Debug)]
pub enum TensorRef<'a> {
    /// f32 elements.
    F32(&'a [f32]),
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
    /// E4M3 elements.
    E4M3(&'a [E4M3]),
    /// E5M2 elements.
    E5M2(&'a [E5M2]),
}

impl TensorRef<'_> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            TensorRef::F32(_) => DType::F32,
            TensorRef::F16(_) => DType::F16,
            TensorRef::BF16(_) => DType::BF16,
            TensorRef::E4M3(_) => DType::E4M3,
            TensorRef::E5M2(_) => DType::E5M2,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            TensorRef::F32(s) => s.len(),
            TensorRef::F16(s) => s.len(),
            TensorRef::BF16(s) => s.len(),
            TensorRef::E4M3(s) => s.len(),
            TensorRef::E5M2(s) => s.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f32 (exact for every type). Panics if `i` is out of range.
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            TensorRef::F32(s) => s[i],
            TensorRef::F16(s) => s[i].to_f32(),
            TensorRef::BF16(s) => s[i].to_f32(),
            TensorRef::E4M3(s) => s[i].to_f32(),
            TensorRef::E5M2(s) => s[i].to_f32(),
        }
    }

    /// All elements widened to f32 (exact).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get_f32(i)).collect()
    }

    /// The raw bytes, little-endian as in memory (what is uploaded to a device).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            TensorRef::F32(s) => bytemuck::cast_slice(s),
            TensorRef::F16(s) => bytemuck::cast_slice(s),
            TensorRef::BF16(s) => bytemuck::cast_slice(s),
            TensorRef::E4M3(s) => bytemuck::cast_slice(s),
            TensorRef::E5M2(s) => bytemuck::cast_slice(s),
        }
    }

    /// The index of the first element that is NaN or infinite, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        (0..self.len()).find(|&i| !self.get_f32(i).is_finite())
    }
}

impl<'a> From<&'a [f32]> for TensorRef<'a> {
    fn from(s: &'a [f32]) -> Self {
        TensorRef::F32(s)
    }
}
impl<'a> From<&'a [f16]> for TensorRef<'a> {
    fn from(s: &'a [f16]) -> Self {
        TensorRef::F16(s)
    }
}
impl<'a> From<&'a [bf16]> for TensorRef<'a> {
    fn from(s: &'a [bf16]) -> Self {
        TensorRef::BF16(s)
    }
}
impl<'a> From<&'a [E4M3]> for TensorRef<'a> {
    fn from(s: &'a [E4M3]) -> Self {
        TensorRef::E4M3(s)
    }
}
impl<'a> From<&'a [E5M2]> for TensorRef<'a> {
    fn from(s: &'a [E5M2]) -> Self {
        TensorRef::E5M2(s)
    }
}

/// An owned host tensor (elements of one dense row-major array), the output counterpart of
/// [`TensorRef`].
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// E4M3 elements.
    E4M3(Vec<E4M3>),
    /// E5M2 elements.
    E5M2(Vec<E5M2>),
}

impl Tensor {
    /// Rounds f32 values (round to nearest even) into a tensor of `dtype`
    /// (saturating for the FP8 types, as the GPU does).
    pub fn from_f32(dtype: DType, values: &[f32]) -> Self {
        match dtype {
            DType::F32 => Tensor::F32(values.to_vec()),
            DType::F16 => Tensor::F16(values.iter().map(|&v| f16::from_f32(v)).collect()),
            DType::BF16 => Tensor::BF16(values.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::E4M3 => Tensor::E4M3(E4M3::from_f32_slice(values)),
            DType::E5M2 => Tensor::E5M2(E5M2::from_f32_slice(values)),
        }
    }

    /// Rounds f64 values once (round to nearest even) into a tensor of `dtype`; f16 and bf16 are
    /// rounded directly from f64, avoiding the double rounding of going through f32.
    pub fn from_f64(dtype: DType, values: &[f64]) -> Self {
        match dtype {
            DType::F16 => Tensor::F16(values.iter().map(|&v| f16::from_f64(v)).collect()),
            DType::BF16 => Tensor::BF16(values.iter().map(|&v| bf16::from_f64(v)).collect()),
            _ => {
                let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Self::from_f32(dtype, &v)
            }
        }
    }

    /// Borrows it.
    pub fn as_ref(&self) -> TensorRef<'_> {
        match self {
            Tensor::F32(v) => TensorRef::F32(v),
            Tensor::F16(v) => TensorRef::F16(v),
            Tensor::BF16(v) => TensorRef::BF16(v),
            Tensor::E4M3(v) => TensorRef::E4M3(v),
            Tensor::E5M2(v) => TensorRef::E5M2(v),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.as_ref().dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_ref().len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All elements widened to f32 (exact).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.as_ref().to_f32_vec()
    }
}
