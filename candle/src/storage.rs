//! Reading candle's CPU storage: the contiguous elements of an argument, or an error naming it;
//! the errors and shape checks both devices share; the outputs beyond candle's one.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};
use half::{bf16, f16};
use std::sync::Mutex;

/// Tessera's error as candle's.
pub(crate) fn candle_error(e: tessera_core::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// An invalid-argument error in Tessera's words.
pub(crate) fn invalid(
    op: &'static str,
    arg: &str,
    expected: impl Into<String>,
    got: impl Into<String>,
) -> candle_core::Error {
    candle_error(tessera_core::Error::invalid(op, arg, expected, got))
}

/// The element range `start..end` of a contiguous tensor argument, or an error naming it.
pub(crate) fn contiguous_range(
    op: &'static str,
    arg: &str,
    layout: &Layout,
) -> candle_core::Result<(usize, usize)> {
    layout.contiguous_offsets().ok_or_else(|| {
        invalid(
            op,
            arg,
            "a contiguous tensor (call .contiguous())",
            format!(
                "strides {:?} for shape {:?}",
                layout.stride(),
                layout.shape().dims()
            ),
        )
    })
}

/// The elements of a contiguous tensor argument.
fn contiguous<'a, T>(
    op: &'static str,
    arg: &str,
    values: &'a [T],
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = contiguous_range(op, arg, layout)?;
    Ok(&values[start..end])
}

/// The name of a storage's element type, for messages.
fn dtype_name(s: &CpuStorage) -> String {
    format!("dtype {:?}", s.dtype())
}

macro_rules! typed {
    ($name:ident, $variant:ident, $t:ty, $what:literal) => {
        /// The contiguous elements of a tensor argument of this element type.
        pub(crate) fn $name<'a>(
            op: &'static str,
            arg: &str,
            s: &'a CpuStorage,
            layout: &Layout,
        ) -> candle_core::Result<&'a [$t]> {
            match s {
                CpuStorage::$variant(v) => contiguous(op, arg, v, layout),
                other => Err(invalid(op, arg, $what, dtype_name(other))),
            }
        }
    };
}

typed!(u8s, U8, u8, "dtype u8");
typed!(f32s, F32, f32, "dtype f32");
typed!(bf16s, BF16, bf16, "dtype bf16");

/// An index argument (slots, block table, lengths) as i32: an i32 tensor as it is, an i64
/// tensor converted, naming the argument if a value does not fit i32.
pub(crate) fn indices(
    op: &'static str,
    arg: &str,
    s: &CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Vec<i32>> {
    match s {
        CpuStorage::I32(v) => Ok(contiguous(op, arg, v, layout)?.to_vec()),
        CpuStorage::I64(v) => contiguous(op, arg, v, layout)?
            .iter()
            .map(|&x| {
                i32::try_from(x).map_err(|_| invalid(op, arg, "values that fit i32", x.to_string()))
            })
            .collect(),
        other => Err(invalid(op, arg, "dtype i32 or i64", dtype_name(other))),
    }
}

/// A 16-bit float argument: f16 or bf16.
pub(crate) enum Half<'a> {
    /// f16 elements.
    F16(&'a [f16]),
    /// bf16 elements.
    BF16(&'a [bf16]),
}

impl<'a> Half<'a> {
    /// As Tessera's borrowed tensor.
    pub(crate) fn tensor_ref(&self) -> tessera_core::TensorRef<'a> {
        match *self {
            Half::F16(x) => tessera_core::TensorRef::F16(x),
            Half::BF16(x) => tessera_core::TensorRef::BF16(x),
        }
    }
}

/// The element type of a storage, for messages.
pub(crate) fn storage_dtype(s: &CpuStorage) -> String {
    format!("{:?}", s.dtype())
}

pub(crate) fn halfs<'a>(
    op: &'static str,
    arg: &str,
    s: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<Half<'a>> {
    match s {
        CpuStorage::F16(v) => contiguous(op, arg, v, layout).map(Half::F16),
        CpuStorage::BF16(v) => contiguous(op, arg, v, layout).map(Half::BF16),
        other => Err(invalid(op, arg, "dtype f16 or bf16", dtype_name(other))),
    }
}

/// Checks the number of dimensions and returns the dimensions.
pub(crate) fn dims<'a>(
    op: &'static str,
    arg: &str,
    layout: &'a Layout,
    ndim: usize,
    names: &str,
) -> candle_core::Result<&'a [usize]> {
    let d = layout.shape().dims();
    if d.len() != ndim {
        return Err(invalid(
            op,
            arg,
            format!("{ndim} dimensions ({names})"),
            format!("shape {d:?}"),
        ));
    }
    Ok(d)
}

/// Checks a shape.
pub(crate) fn check_shape(
    op: &'static str,
    arg: &str,
    layout: &Layout,
    expected: &[usize],
    names: &str,
) -> candle_core::Result<()> {
    let d = layout.shape().dims();
    if d != expected {
        return Err(invalid(
            op,
            arg,
            format!("shape {expected:?} ({names})"),
            format!("shape {d:?}"),
        ));
    }
    Ok(())
}

/// An output beyond candle's one output of a custom op (the quantizer's scales, the attention's
/// and the decode's lse): the forward leaves its storage here, on the op's device, and the
/// caller takes it as a tensor once the op has run.
pub(crate) struct SideOutput(Mutex<Option<(Storage, Shape)>>);

impl SideOutput {
    /// Nothing yet.
    pub(crate) fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Keeps the output of a forward.
    pub(crate) fn set(&self, storage: Storage, shape: impl Into<Shape>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((storage, shape.into()));
    }

    /// The output of the last forward as a (contiguous) tensor; an error before any forward.
    pub(crate) fn take(&self) -> candle_core::Result<Tensor> {
        let taken = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (storage, shape) =
            taken.ok_or_else(|| candle_core::Error::Msg("no forward has run".into()))?;
        Ok(Tensor::from_storage(
            storage,
            shape,
            BackpropOp::none(),
            false,
        ))
    }
}
