//! Reads fuzzer bytes as the values a descriptor takes: sizes biased toward 0, 1, small values
//! and the integer limits (where overflows hide), i32 slots and lengths, and floats.

// Each target uses a subset of these readers.
#![allow(dead_code)]

/// A cursor over the fuzzer's bytes; past the end every read is 0.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |v, _| (v << 8) | self.byte() as u64)
    }

    /// A size: small most of the time, else a limit or anything.
    pub fn size(&mut self) -> usize {
        match self.byte() % 16 {
            0..=7 => self.byte() as usize % 8,
            8..=10 => self.byte() as usize * 3,
            11 => i32::MAX as usize + (self.byte() % 3) as usize - 1,
            12 => u32::MAX as usize + (self.byte() % 3) as usize - 1,
            13 => usize::MAX - (self.byte() % 3) as usize,
            14 => usize::MAX / (1 + self.byte() as usize),
            _ => self.u64() as usize,
        }
    }

    pub fn i32(&mut self) -> i32 {
        match self.byte() % 8 {
            0..=5 => self.byte() as i32 - 2,
            6 => i32::MAX - (self.byte() % 2) as i32,
            _ => i32::MIN + (self.byte() % 2) as i32,
        }
    }

    pub fn f32(&mut self) -> f32 {
        match self.byte() % 8 {
            0..=4 => self.byte() as f32 / 16.0,
            5 => f32::NAN,
            6 => f32::INFINITY,
            _ => f32::from_bits(self.u64() as u32),
        }
    }

    pub fn f64(&mut self) -> f64 {
        match self.byte() % 8 {
            0..=4 => self.byte() as f64 / 64.0,
            5 => f64::NAN,
            6 => -1.0,
            _ => f64::from_bits(self.u64()),
        }
    }

    pub fn bool(&mut self) -> bool {
        self.byte() % 2 == 1
    }

    /// A short list (at most 16 items).
    pub fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.byte() % 17;
        (0..n).map(|_| item(self)).collect()
    }
}
