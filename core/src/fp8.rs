//! FP8 storage types with OCP semantics and GPU-exact conversion.
//!
//! Both formats are one byte: sign, exponent, mantissa.
//!
//! | format | bias | max finite | min normal | min subnormal | infinity | NaN codes |
//! |---|---|---|---|---|---|---|
//! | [`E4M3`] (E4M3FN) | 7 | 448 | 2^-6 | 2^-9 | none | `S.1111.111` |
//! | [`E5M2`] | 15 | 57344 | 2^-14 | 2^-16 | `S.11111.00` | `S.11111.{01,10,11}` |
//!
//! Conversion from `f32` is the one the GPU performs with PTX `cvt.rn.satfinite`: round to
//! nearest, ties to even; any finite or infinite value beyond the largest finite value
//! saturates to ±max; NaN becomes the canonical NaN (`0x7F`). Conversion to `f32` is exact.
//!
//! The `float8` crate is not used: its E4M3 constants do not follow OCP (its `INFINITY` is 448),
//! and every conversion here must match the GPU bit for bit, which the tests check on all codes.

use bytemuck::{Pod, Zeroable};
use std::fmt;

/// Rounds `a` (finite, non-negative, at most the format's max) to the nearest code of a
/// format with `mant_bits` mantissa bits and exponent bias `bias`, ties to even.
/// Returns the magnitude bits (exponent and mantissa, no sign).
fn encode_magnitude(a: f32, mant_bits: i32, bias: i32) -> u8 {
    let min_normal_exp = 1 - bias;
    let exp = if a == 0.0 {
        min_normal_exp - 1
    } else {
        // floor(log2(a)) exactly, from the f32 bits (f32 subnormals are far below any fp8 code).
        ((a.to_bits() >> 23) & 0xff) as i32 - 127
    };
    if exp < min_normal_exp {
        // Subnormal range: code = round(a / 2^(min_normal_exp - mant_bits)).
        // Scaling by a power of two is exact; q may reach 2^mant_bits = the smallest normal.
        let q = (a * pow2(mant_bits - min_normal_exp)).round_ties_even();
        q as u8
    } else {
        // Normal range: r in [2^m, 2^(m+1)), rounded; a carry to 2^(m+1) bumps the exponent,
        // which the addition below performs on its own.
        let r = (a * pow2(mant_bits - exp)).round_ties_even() as i32;
        (((exp + bias) << mant_bits) + (r - (1 << mant_bits))) as u8
    }
}

/// 2^e as f32, exact for |e| < 127.
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// Decodes the magnitude bits of a finite code.
fn decode_magnitude(bits: u8, mant_bits: i32, bias: i32) -> f32 {
    let e = (bits >> mant_bits) as i32;
    let m = (bits & ((1 << mant_bits) - 1)) as f32;
    if e == 0 {
        m * pow2(1 - bias - mant_bits)
    } else {
        (1.0 + m * pow2(-mant_bits)) * pow2(e - bias)
    }
}

macro_rules! fp8_common {
    ($name:ident) => {
        impl $name {
            /// Wraps a raw byte.
            pub const fn from_bits(bits: u8) -> Self {
                Self(bits)
            }
            /// The raw byte.
            pub const fn to_bits(self) -> u8 {
                self.0
            }
            /// Converts with round-to-nearest-even and saturation, as PTX `cvt.rn.satfinite`.
            pub fn from_f32_slice(values: &[f32]) -> Vec<Self> {
                values.iter().map(|&v| Self::from_f32(v)).collect()
            }
            /// Decodes every element exactly.
            pub fn to_f32_slice(values: &[Self]) -> Vec<f32> {
                values.iter().map(|v| v.to_f32()).collect()
            }
            /// Whether this code is a NaN.
            pub fn is_nan(self) -> bool {
                self.to_f32().is_nan()
            }
            /// The sign bit.
            pub fn is_sign_negative(self) -> bool {
                self.0 & 0x80 != 0
            }
        }

        impl std::ops::Neg for $name {
            type Output = Self;
            /// Flips the sign bit (NaN stays NaN).
            fn neg(self) -> Self {
                Self(self.0 ^ 0x80)
            }
        }

        impl From<$name> for f32 {
            fn from(v: $name) -> f32 {
                v.to_f32()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}({:#04x} = {})",
                    stringify!($name),
                    self.0,
                    self.to_f32()
                )
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.to_f32(), f)
            }
        }
    };
}

/// OCP FP8 E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits; max 448; no infinity;
/// NaN is `S.1111.111` only. The DeepSeek-V3 recipe stores activations and weights in it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
#[repr(transparent)]
pub struct E4M3(pub u8);

impl E4M3 {
    /// Largest finite value, 448.
    pub const MAX: f32 = 448.0;
    /// Smallest positive normal value, 2^-6.
    pub const MIN_POSITIVE_NORMAL: f32 = 0.015625;
    /// Smallest positive subnormal value, 2^-9.
    pub const MIN_POSITIVE_SUBNORMAL: f32 = 0.001953125;
    /// The canonical NaN code produced by conversion.
    pub const NAN: E4M3 = E4M3(0x7f);
    /// +448.
    pub const MAX_CODE: E4M3 = E4M3(0x7e);
    /// +0.
    pub const ZERO: E4M3 = E4M3(0);

    /// Converts as PTX `cvt.rn.satfinite.e4m3x2.f32`: ties to even, ±inf and |x| > 448 to ±448,
    /// NaN to the canonical NaN.
    pub fn from_f32(x: f32) -> Self {
        if x.is_nan() {
            return Self::NAN;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        if a >= Self::MAX {
            return Self(sign | Self::MAX_CODE.0);
        }
        Self(sign | encode_magnitude(a, 3, 7))
    }

    /// Exact value of this code.
    pub fn to_f32(self) -> f32 {
        let mag = self.0 & 0x7f;
        if mag == 0x7f {
            return f32::NAN;
        }
        let v = decode_magnitude(mag, 3, 7);
        if self.is_sign_negative() {
            -v
        } else {
            v
        }
    }
}
fp8_common!(E4M3);

/// OCP FP8 E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; max 57344; IEEE-like
/// infinities (`S.11111.00`) and NaNs (`S.11111.{01,10,11}`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
#[repr(transparent)]
pub struct E5M2(pub u8);

impl E5M2 {
    /// Largest finite value, 57344.
    pub const MAX: f32 = 57344.0;
    /// Smallest positive normal value, 2^-14.
    pub const MIN_POSITIVE_NORMAL: f32 = 6.103_515_6e-5;
    /// Smallest positive subnormal value, 2^-16.
    pub const MIN_POSITIVE_SUBNORMAL: f32 = 1.525_878_9e-5;
    /// The canonical NaN code produced by conversion.
    pub const NAN: E5M2 = E5M2(0x7f);
    /// +infinity (never produced by the saturating conversion).
    pub const INFINITY: E5M2 = E5M2(0x7c);
    /// +57344.
    pub const MAX_CODE: E5M2 = E5M2(0x7b);
    /// +0.
    pub const ZERO: E5M2 = E5M2(0);

    /// Converts as PTX `cvt.rn.satfinite.e5m2x2.f32`: ties to even, ±inf and |x| > 57344 to
    /// ±57344, NaN to the canonical NaN.
    pub fn from_f32(x: f32) -> Self {
        if x.is_nan() {
            return Self::NAN;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = x.abs();
        if a >= Self::MAX {
            return Self(sign | Self::MAX_CODE.0);
        }
        Self(sign | encode_magnitude(a, 2, 15))
    }

    /// Exact value of this code.
    pub fn to_f32(self) -> f32 {
        let mag = self.0 & 0x7f;
        let v = match mag {
            0x7c => f32::INFINITY,
            0x7d..=0x7f => return f32::NAN,
            _ => decode_magnitude(mag, 2, 15),
        };
        if self.is_sign_negative() {
            -v
        } else {
            v
        }
    }

    /// Whether this code is ±infinity.
    pub fn is_infinite(self) -> bool {
        self.0 & 0x7f == 0x7c
    }
}
fp8_common!(E5M2);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code decodes to the value its bit fields define, computed independently in f64.
    fn expected_value(code: u8, mant_bits: u32, bias: i32) -> f64 {
        let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = ((code & 0x7f) >> mant_bits) as i32;
        let m = (code & ((1u8 << mant_bits) - 1)) as f64;
        let scale = (1u32 << mant_bits) as f64;
        let mag = if e == 0 {
            m / scale * 2f64.powi(1 - bias)
        } else {
            (1.0 + m / scale) * 2f64.powi(e - bias)
        };
        sign * mag
    }

    #[test]
    fn e4m3_all_codes_decode_and_round_trip() {
        let mut nans = 0;
        for code in 0..=255u8 {
            let v = E4M3(code).to_f32();
            if code & 0x7f == 0x7f {
                assert!(v.is_nan(), "code {code:#x} must be NaN");
                assert_eq!(E4M3::from_f32(v), E4M3::NAN);
                nans += 1;
                continue;
            }
            assert_eq!(v as f64, expected_value(code, 3, 7), "code {code:#x}");
            assert_eq!(
                E4M3::from_f32(v).0,
                code,
                "round trip of {v} (code {code:#x})"
            );
        }
        assert_eq!(nans, 2);
        assert_eq!(E4M3(0x7e).to_f32(), 448.0);
        assert_eq!(E4M3(0x08).to_f32(), E4M3::MIN_POSITIVE_NORMAL);
        assert_eq!(E4M3(0x01).to_f32(), E4M3::MIN_POSITIVE_SUBNORMAL);
    }

    #[test]
    fn e5m2_all_codes_decode_and_round_trip() {
        let (mut nans, mut infs) = (0, 0);
        for code in 0..=255u8 {
            let v = E5M2(code).to_f32();
            match code & 0x7f {
                0x7c => {
                    assert!(v.is_infinite() && (v < 0.0) == (code & 0x80 != 0));
                    // Saturating conversion never produces infinity.
                    assert_eq!(E5M2::from_f32(v).0, (code & 0x80) | 0x7b);
                    infs += 1;
                }
                0x7d..=0x7f => {
                    assert!(v.is_nan());
                    assert_eq!(E5M2::from_f32(v), E5M2::NAN);
                    nans += 1;
                }
                _ => {
                    assert_eq!(v as f64, expected_value(code, 2, 15), "code {code:#x}");
                    assert_eq!(E5M2::from_f32(v).0, code, "round trip of {v}");
                }
            }
        }
        assert_eq!((nans, infs), (6, 2));
        assert_eq!(E5M2(0x7b).to_f32(), 57344.0);
        assert_eq!(E5M2(0x04).to_f32(), E5M2::MIN_POSITIVE_NORMAL);
        assert_eq!(E5M2(0x01).to_f32(), E5M2::MIN_POSITIVE_SUBNORMAL);
    }

    /// The midpoint between two neighbouring codes rounds to the one with the even mantissa;
    /// anything a hair above or below goes to the nearer code.
    fn check_midpoints(decode: fn(u8) -> f32, encode: fn(f32) -> u8, max_code: u8) {
        for sign in [0u8, 0x80] {
            for lo in 0..max_code {
                let (a, b) = (decode(sign | lo), decode(sign | (lo + 1)));
                let mid = (a as f64 + b as f64) / 2.0;
                let mid32 = mid as f32;
                assert_eq!(mid32 as f64, mid, "midpoint must be exact in f32");
                let even = if lo % 2 == 0 { lo } else { lo + 1 };
                assert_eq!(
                    encode(mid32),
                    sign | even,
                    "tie between codes {lo:#x} and {:#x}",
                    lo + 1
                );
                let toward_a = if sign == 0 {
                    mid32.next_down()
                } else {
                    mid32.next_up()
                };
                let toward_b = if sign == 0 {
                    mid32.next_up()
                } else {
                    mid32.next_down()
                };
                assert_eq!(encode(toward_a), sign | lo, "just inside {lo:#x}");
                assert_eq!(
                    encode(toward_b),
                    sign | (lo + 1),
                    "just inside {:#x}",
                    lo + 1
                );
            }
        }
    }

    #[test]
    fn e4m3_midpoints_round_to_even() {
        check_midpoints(|c| E4M3(c).to_f32(), |x| E4M3::from_f32(x).0, 0x7e);
    }

    #[test]
    fn e5m2_midpoints_round_to_even() {
        check_midpoints(|c| E5M2(c).to_f32(), |x| E5M2::from_f32(x).0, 0x7b);
    }

    #[test]
    fn saturation_and_specials() {
        for x in [
            448.0f32,
            448.0001,
            464.0,
            480.0,
            1e9,
            f32::MAX,
            f32::INFINITY,
        ] {
            assert_eq!(E4M3::from_f32(x), E4M3(0x7e), "{x}");
            assert_eq!(E4M3::from_f32(-x), E4M3(0xfe), "{x}");
        }
        for x in [57344.0f32, 61440.0, 65536.0, 1e30, f32::INFINITY] {
            assert_eq!(E5M2::from_f32(x), E5M2(0x7b), "{x}");
            assert_eq!(E5M2::from_f32(-x), E5M2(0xfb), "{x}");
        }
        assert_eq!(E4M3::from_f32(f32::NAN), E4M3::NAN);
        assert_eq!(E5M2::from_f32(-f32::NAN), E5M2::NAN);
        assert_eq!(E4M3::from_f32(-0.0), E4M3(0x80));
        assert_eq!(E5M2::from_f32(-0.0), E5M2(0x80));
        // Below half the smallest subnormal: zero; exactly half: tie to even (zero); above: 1.
        let s = E4M3::MIN_POSITIVE_SUBNORMAL;
        assert_eq!(E4M3::from_f32(s * 0.5), E4M3(0));
        assert_eq!(E4M3::from_f32((s * 0.5).next_up()), E4M3(1));
        assert_eq!(E4M3::from_f32(-(s * 0.5)), E4M3(0x80));
        assert_eq!(E4M3::from_f32(f32::from_bits(1)), E4M3(0));
        let s = E5M2::MIN_POSITIVE_SUBNORMAL;
        assert_eq!(E5M2::from_f32(s * 0.5), E5M2(0));
        assert_eq!(E5M2::from_f32(s * 1.5), E5M2(2));
    }

    proptest::proptest! {
        /// Any f32 converts to the nearest code (ties to even), checked against a brute-force
        /// search over all codes.
        #[test]
        fn conversion_is_nearest(bits in proptest::prelude::any::<u32>()) {
            let x = f32::from_bits(bits);
            proptest::prop_assume!(x.is_finite());
            for (max, decode, got) in [
                (448.0f64, (|c: u8| E4M3(c).to_f32()) as fn(u8) -> f32, E4M3::from_f32(x).0),
                (57344.0, |c: u8| E5M2(c).to_f32(), E5M2::from_f32(x).0),
            ] {
                let xc = (x as f64).clamp(-max, max);
                let best = (0..=255u8)
                    .filter(|&c| decode(c).is_finite() && (decode(c) < 0.0) == (xc < 0.0) )
                    .map(|c| ((decode(c) as f64 - xc).abs(), c))
                    .fold((f64::INFINITY, 0u8), |b, c| if c.0 < b.0 { c } else { b });
                let err = (decode(got) as f64 - xc).abs();
                proptest::prop_assert!(err <= best.0, "x={x} got {got:#x} err {err} best {:#x} err {}", best.1, best.0);
            }
        }
    }
}
