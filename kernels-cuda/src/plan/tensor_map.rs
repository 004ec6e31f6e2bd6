//! Host-side TMA tensor maps (sm_90+): the 128-byte descriptor `cp.async.bulk.tensor` reads,
//! encoded by the driver's `cuTensorMapEncodeTiled` and passed to a kernel by value
//! ([`super::KernelArgs::value`]; the kernel declares it `const __grid_constant__ CUtensorMap`).

use cudarc::driver::sys;
use cudarc::driver::DeviceRepr;
use tessera_core::{BackendKind, Error, Result};

/// Element type of a tensor map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmaDtype {
    /// One byte (e4m3 codes, raw bytes).
    U8,
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
    /// f32.
    F32,
}

impl TmaDtype {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> u64 {
        match self {
            TmaDtype::U8 => 1,
            TmaDtype::BF16 | TmaDtype::F16 => 2,
            TmaDtype::F32 => 4,
        }
    }

    fn driver(self) -> sys::CUtensorMapDataType {
        match self {
            TmaDtype::U8 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            TmaDtype::BF16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            TmaDtype::F16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            TmaDtype::F32 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
        }
    }
}

/// The shared-memory swizzle a TMA copy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TmaSwizzle {
    /// Rows copied as they are.
    None,
    /// 32-byte swizzle.
    B32,
    /// 64-byte swizzle.
    B64,
    /// 128-byte swizzle (what wgmma's 128-byte layouts read).
    B128,
}

impl TmaSwizzle {
    /// The swizzle span in bytes: the most bytes the box's inner dimension may have (`None`:
    /// no limit beyond the box's).
    pub fn span_bytes(self) -> Option<u64> {
        match self {
            TmaSwizzle::None => None,
            TmaSwizzle::B32 => Some(32),
            TmaSwizzle::B64 => Some(64),
            TmaSwizzle::B128 => Some(128),
        }
    }

    fn driver(self) -> sys::CUtensorMapSwizzle {
        match self {
            TmaSwizzle::None => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            TmaSwizzle::B32 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
            TmaSwizzle::B64 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
            TmaSwizzle::B128 => sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        }
    }
}

/// A tiled TMA tensor map of rank 2 ([`TensorMap::tiled`]: a row-major `[outer, inner]` tensor
/// copied in boxes of `[box_outer, box_inner]` elements) or 3 ([`TensorMap::tiled_3d`]). 128
/// bytes, passed to kernels by value.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct TensorMap {
    map: sys::CUtensorMap,
}

// SAFETY: a tensor map is 128 bytes of plain data that the kernel receives by value as a
// `CUtensorMap` (the same layout, from the driver's own definition).
unsafe impl DeviceRepr for TensorMap {}

const OP: &str = "tensor_map";

impl TensorMap {
    /// Encodes a tiled map of the row-major tensor at device address `ptr`: `outer_elems` rows
    /// of `inner_elems` elements of `dtype`, rows `outer_stride_bytes` apart; boxes of
    /// `box_outer` rows of `box_inner` elements, stored in shared memory with `swizzle`.
    /// Out-of-bounds elements read as zeros; L2 promotion 256 bytes; no interleave.
    ///
    /// Checked first, each a typed error naming the argument: `ptr` 16-byte aligned and not 0;
    /// `inner_elems` and `outer_elems` in 1..=2^32; `outer_stride_bytes` a multiple of 16, below
    /// 2^40 and at least one row (`inner_elems` elements); `box_inner` and `box_outer` in
    /// 1..=256 (a box may reach past the tensor's edge: those elements read as zeros and are not
    /// written by stores); the box's inner bytes a multiple of 16 and at most the
    /// swizzle span. Then the driver encodes it (its refusal is an [`Error::Driver`] with the `CUresult`; no driver
    /// is [`Error::BackendUnavailable`]).
    #[allow(clippy::too_many_arguments)]
    pub fn tiled(
        ptr: u64,
        dtype: TmaDtype,
        inner_elems: u64,
        outer_elems: u64,
        outer_stride_bytes: u64,
        box_inner: u32,
        box_outer: u32,
        swizzle: TmaSwizzle,
    ) -> Result<Self> {
        Self::check(
            ptr,
            dtype,
            inner_elems,
            outer_elems,
            outer_stride_bytes,
            box_inner,
            box_outer,
            swizzle,
        )?;
        Self::encode(
            ptr,
            dtype,
            &[inner_elems, outer_elems],
            &[outer_stride_bytes],
            &[box_inner, box_outer],
            swizzle,
        )
    }

    /// Encodes a tiled map of a 3-D tensor at `ptr`: `[outer, middle, inner]` elements of
    /// `dtype` (`dims` = `[inner, middle, outer]`), the middle and outer dimensions
    /// `strides_bytes` = `[middle_stride, outer_stride]` bytes apart; boxes of `boxes` =
    /// `[box_inner, box_middle, box_outer]` elements, stored in shared memory as
    /// `[box_outer][box_middle][box_inner]` with `swizzle`. Out-of-bounds elements, in any
    /// dimension, read as zeros; L2 promotion 256 bytes.
    ///
    /// Checked first as [`TensorMap::tiled`] checks each dimension (the inner one as its
    /// `inner_elems` / `box_inner`, each stride as its `outer_stride_bytes`, each outer box as
    /// its `box_outer`); the outer stride must hold the middle dimension's rows.
    pub fn tiled_3d(
        ptr: u64,
        dtype: TmaDtype,
        dims: [u64; 3],
        strides_bytes: [u64; 2],
        boxes: [u32; 3],
        swizzle: TmaSwizzle,
    ) -> Result<Self> {
        Self::check(
            ptr,
            dtype,
            dims[0],
            dims[1],
            strides_bytes[0],
            boxes[0],
            boxes[1],
            swizzle,
        )?;
        // The outer dimension: rows of `dims[1]` middle rows, `strides_bytes[1]` apart.
        if !(1..=1u64 << 32).contains(&dims[2]) {
            return Err(Error::invalid(
                OP,
                "outer_elems",
                "1..=2^32",
                dims[2].to_string(),
            ));
        }
        let plane_bytes = dims[1].saturating_mul(strides_bytes[0]);
        if strides_bytes[1] % 16 != 0
            || strides_bytes[1] >= 1u64 << 40
            || strides_bytes[1] < plane_bytes
        {
            return Err(Error::invalid(
                OP,
                "outer_stride_bytes",
                format!("a multiple of 16 below 2^40 and at least one plane ({plane_bytes} bytes)"),
                strides_bytes[1].to_string(),
            ));
        }
        if !(1..=256).contains(&boxes[2]) {
            return Err(Error::invalid(
                OP,
                "box_outer",
                "1..=256",
                boxes[2].to_string(),
            ));
        }
        Self::encode(ptr, dtype, &dims, &strides_bytes, &boxes, swizzle)
    }

    /// `cuTensorMapEncodeTiled` of rank `dims.len()` (strides: one fewer; element strides 1),
    /// after the checks of the public constructors.
    fn encode(
        ptr: u64,
        dtype: TmaDtype,
        dims: &[u64],
        strides_bytes: &[u64],
        boxes: &[u32],
        swizzle: TmaSwizzle,
    ) -> Result<Self> {
        debug_assert!(strides_bytes.len() + 1 == dims.len() && boxes.len() == dims.len());
        if !crate::probe::driver_library_present() {
            return Err(Error::BackendUnavailable {
                backend: BackendKind::Cuda,
                reason: "no CUDA driver to encode a tensor map".into(),
            });
        }
        let element_strides = [1u32; 5];
        // SAFETY: a zeroed tensor map is valid plain data; the driver overwrites it.
        let mut map: sys::CUtensorMap = unsafe { std::mem::zeroed() };
        // SAFETY: `dims` and `boxes` hold `rank` entries, `strides_bytes` rank - 1 and
        // `element_strides` at least rank (rank is 2 or 3 from the constructors); the arguments
        // were checked against the driver's documented preconditions; the address is only
        // recorded, not dereferenced, by the driver.
        let rc = unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                dtype.driver(),
                dims.len() as u32,
                ptr as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides_bytes.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle.driver(),
                sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        rc.result()
            .map_err(|e| crate::runtime::driver_error("cuTensorMapEncodeTiled", e))?;
        Ok(Self { map })
    }

    /// The checks of [`TensorMap::tiled`], without the driver.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        ptr: u64,
        dtype: TmaDtype,
        inner_elems: u64,
        outer_elems: u64,
        outer_stride_bytes: u64,
        box_inner: u32,
        box_outer: u32,
        swizzle: TmaSwizzle,
    ) -> Result<()> {
        if ptr == 0 || ptr % 16 != 0 {
            return Err(Error::invalid(
                OP,
                "ptr",
                "a non-null device address aligned to 16 bytes",
                format!("{ptr:#x}"),
            ));
        }
        for (arg, n) in [("inner_elems", inner_elems), ("outer_elems", outer_elems)] {
            if !(1..=1u64 << 32).contains(&n) {
                return Err(Error::invalid(OP, arg, "1..=2^32", n.to_string()));
            }
        }
        let row_bytes = inner_elems * dtype.size_in_bytes();
        if outer_stride_bytes % 16 != 0
            || outer_stride_bytes >= 1u64 << 40
            || outer_stride_bytes < row_bytes
        {
            return Err(Error::invalid(
                OP,
                "outer_stride_bytes",
                format!("a multiple of 16 below 2^40 and at least one row ({row_bytes} bytes)"),
                outer_stride_bytes.to_string(),
            ));
        }
        for (arg, b) in [("box_inner", box_inner), ("box_outer", box_outer)] {
            if !(1..=256).contains(&b) {
                return Err(Error::invalid(OP, arg, "1..=256", b.to_string()));
            }
        }
        let box_bytes = box_inner as u64 * dtype.size_in_bytes();
        if box_bytes % 16 != 0 {
            return Err(Error::invalid(
                OP,
                "box_inner",
                "a box row of a multiple of 16 bytes",
                format!("{box_inner} elements = {box_bytes} bytes"),
            ));
        }
        if let Some(span) = swizzle.span_bytes() {
            if box_bytes > span {
                return Err(Error::invalid(
                    OP,
                    "box_inner",
                    format!("at most the {span}-byte swizzle span in bytes"),
                    format!("{box_inner} elements = {box_bytes} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// A map no copy reads: all zeros, for a kernel parameter that the launched variant ignores
    /// (the decode kernels share one parameter list; only one of them reads its map).
    pub fn unused() -> Self {
        // SAFETY: a zeroed CUtensorMap is valid plain data (128 zero bytes).
        Self {
            map: unsafe { std::mem::zeroed() },
        }
    }

    /// The encoded descriptor.
    pub fn as_raw(&self) -> &sys::CUtensorMap {
        &self.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg_of(e: Error) -> String {
        e.argument()
            .unwrap_or("(not an argument error)")
            .to_string()
    }

    #[test]
    fn layout_is_the_driver_descriptor() {
        assert_eq!(std::mem::size_of::<TensorMap>(), 128);
        assert!(std::mem::align_of::<TensorMap>() >= 64);
        assert_eq!(
            std::mem::size_of::<TensorMap>(),
            std::mem::size_of::<sys::CUtensorMap>()
        );
    }

    #[test]
    fn preconditions_name_the_argument() {
        use TmaDtype::*;
        use TmaSwizzle::*;
        // A 4096 x 7168 e4m3 operand in 128 x 128 boxes with the 128-byte swizzle.
        let ok = (
            0x1000_0000u64,
            U8,
            7168u64,
            4096u64,
            7168u64,
            128u32,
            128u32,
            B128,
        );
        let check = |t: (u64, TmaDtype, u64, u64, u64, u32, u32, TmaSwizzle)| {
            TensorMap::check(t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7)
        };
        check(ok).unwrap();
        check((0x1000_0000, BF16, 64, 3, 128, 64, 3, B128)).unwrap();
        check((0x1000_0000, F32, 4, 1, 16, 4, 1, None)).unwrap();
        let cases = [
            ((0x1000_0008, U8, 7168, 4096, 7168, 128, 128, B128), "ptr"),
            ((0, U8, 7168, 4096, 7168, 128, 128, B128), "ptr"),
            (
                (0x1000_0000, U8, 0, 4096, 7168, 128, 128, B128),
                "inner_elems",
            ),
            (
                (0x1000_0000, U8, 7168, (1 << 32) + 1, 7168, 128, 128, B128),
                "outer_elems",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 7160, 128, 128, B128),
                "outer_stride_bytes",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 7176, 128, 128, B128),
                "outer_stride_bytes",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 1 << 40, 128, 128, B128),
                "outer_stride_bytes",
            ),
            (
                (0x1000_0000, BF16, 7168, 4096, 7168, 64, 128, B128),
                "outer_stride_bytes",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 7168, 0, 128, B128),
                "box_inner",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 7168, 128, 257, B128),
                "box_outer",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 7168, 24, 128, B128),
                "box_inner",
            ),
            (
                (0x1000_0000, BF16, 7168, 4096, 14336, 128, 64, B128),
                "box_inner",
            ),
            (
                (0x1000_0000, U8, 7168, 4096, 7168, 128, 64, B64),
                "box_inner",
            ),
        ];
        for (t, arg) in cases {
            let e = check(t).unwrap_err();
            assert_eq!(arg_of(e), arg, "{t:?}");
        }
        // Rank 3 (q [batch 2, tokens 300, heads 3 x 64] in boxes of 128 tokens x 64): the outer
        // stride must hold the middle dimension's rows, the outer box 1..=256.
        let t3 = |strides: [u64; 2], boxes: [u32; 3]| {
            TensorMap::tiled_3d(0x1000_0008, F16, [192, 300, 2], strides, boxes, B128)
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(arg_of(t3([384, 300 * 384], [64, 128, 1])), "ptr");
        let t3 = |strides: [u64; 2], boxes: [u32; 3]| {
            TensorMap::tiled_3d(0x1000_0000, F16, [192, 300, 2], strides, boxes, B128).map(|_| ())
        };
        for (strides, boxes, arg) in [
            ([384, 299 * 384], [64, 128, 1], "outer_stride_bytes"),
            ([384, 300 * 384 + 8], [64, 128, 1], "outer_stride_bytes"),
            ([376, 300 * 384], [64, 128, 1], "outer_stride_bytes"),
            ([384, 300 * 384], [64, 128, 0], "box_outer"),
            ([384, 300 * 384], [64, 300, 1], "box_outer"),
            ([384, 300 * 384], [72, 128, 1], "box_inner"),
        ] {
            let e = t3(strides, boxes).unwrap_err();
            assert_eq!(arg_of(e), arg, "{strides:?} {boxes:?}");
        }
        // A plane of 2^32 rows 2^39 bytes apart (2^71 bytes) is an error, not an overflow.
        let e = TensorMap::tiled_3d(
            0x1000_0000,
            F16,
            [192, 1 << 32, 2],
            [1 << 39, (1 << 40) - 16],
            [64, 128, 1],
            B128,
        )
        .unwrap_err();
        assert_eq!(arg_of(e), "outer_stride_bytes");
        // A box may reach past the tensor (a 64-row operand in 128-row boxes): zeros are read.
        check((0x1000_0000, U8, 7168, 64, 7168, 128, 128, B128)).unwrap();
        // Bad arguments are rejected before the driver is touched (no GPU needed).
        let e = TensorMap::tiled(0x1000_0008, U8, 7168, 4096, 7168, 128, 128, B128).unwrap_err();
        assert_eq!(arg_of(e), "ptr");
    }
}
