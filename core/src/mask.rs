//! Block-sparse attention masks in BSR form. The radial mask generator, which builds them, is
//! [`crate::radial`].
//!
//! A [`BlockMask`] covers a square grid of `num_blocks x num_blocks` blocks of
//! `block_size x block_size` tokens, with `num_blocks = ceil(tokens / block_size)`. Block row `r`
//! (queries `r*B .. min((r+1)*B, tokens)`) attends the key blocks
//! `indices[indptr[r] .. indptr[r+1]]`, sorted ascending. When `tokens` is not a multiple of the
//! block size, the last block row and column are partial: kernels mask out the padded keys so
//! that they contribute nothing, and write no padded query rows.

use crate::error::{Error, Result};

const OP: &str = "block_mask";

/// A block-sparse mask in BSR (compressed sparse row) form, shared by every batch and head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMask {
    tokens: usize,
    block_size: usize,
    indptr: Vec<u32>,
    indices: Vec<u32>,
}

impl BlockMask {
    /// Builds a mask from BSR arrays, checking them: `indptr` has `num_blocks + 1`
    /// non-decreasing entries starting at 0 and ending at `indices.len()`, and each row's
    /// column indices are strictly increasing and below `num_blocks`.
    pub fn from_bsr(
        tokens: usize,
        block_size: usize,
        indptr: Vec<u32>,
        indices: Vec<u32>,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::invalid(
                OP,
                "block_size",
                "a positive block size",
                "0",
            ));
        }
        if tokens == 0 {
            return Err(Error::invalid(OP, "tokens", "at least one token", "0"));
        }
        let nb = tokens.div_ceil(block_size);
        if indptr.len().checked_sub(1) != Some(nb) {
            return Err(Error::invalid(
                OP,
                "indptr",
                format!("num_blocks + 1 = {nb} + 1 entries"),
                format!("{} entries", indptr.len()),
            ));
        }
        if indptr[0] != 0 || indptr[nb] as usize != indices.len() {
            return Err(Error::invalid(
                OP,
                "indptr",
                format!("to start at 0 and end at indices.len() = {}", indices.len()),
                format!("start {} end {}", indptr[0], indptr[nb]),
            ));
        }
        for r in 0..nb {
            let (s, e) = (indptr[r] as usize, indptr[r + 1] as usize);
            if s > e {
                return Err(Error::invalid(
                    OP,
                    format!("indptr[{}]", r + 1),
                    format!("non-decreasing (>= {s})"),
                    e.to_string(),
                ));
            }
            if e > indices.len() {
                return Err(Error::invalid(
                    OP,
                    format!("indptr[{}]", r + 1),
                    format!("at most indices.len() = {}", indices.len()),
                    e.to_string(),
                ));
            }
            let row = &indices[s..e];
            for (j, &c) in row.iter().enumerate() {
                if c as usize >= nb {
                    return Err(Error::invalid(
                        OP,
                        format!("indices[{}]", s + j),
                        format!("a block column below num_blocks = {nb}"),
                        c.to_string(),
                    ));
                }
                if j > 0 && row[j - 1] >= c {
                    return Err(Error::invalid(
                        OP,
                        format!("indices[{}]", s + j),
                        format!("strictly increasing columns within block row {r}"),
                        format!("{} after {}", c, row[j - 1]),
                    ));
                }
            }
        }
        Ok(Self {
            tokens,
            block_size,
            indptr,
            indices,
        })
    }

    /// The fully dense mask (every block on): plain attention. The `num_blocks^2` blocks must
    /// fit the u32 column indices ([`Error::InvalidArgument`] otherwise); memory that cannot be
    /// had is [`Error::OutOfMemory`].
    pub fn dense(tokens: usize, block_size: usize) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::invalid(
                OP,
                "block_size",
                "a positive block size",
                "0",
            ));
        }
        if tokens == 0 {
            return Err(Error::invalid(OP, "tokens", "at least one token", "0"));
        }
        let nb = tokens.div_ceil(block_size);
        let nnz = blocks_on_grid(nb)?;
        let mut indices = try_vec::<u32>(nnz, "the dense mask's column indices")?;
        let mut indptr = try_vec::<u32>(nb + 1, "the dense mask's row pointers")?;
        indptr.push(0);
        for _ in 0..nb {
            indices.extend(0..nb as u32);
            indptr.push(indices.len() as u32);
        }
        Self::from_bsr(tokens, block_size, indptr, indices)
    }

    /// Builds a mask from a row-major `num_blocks x num_blocks` bitmap.
    pub fn from_dense_bitmap(tokens: usize, block_size: usize, bitmap: &[bool]) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::invalid(
                OP,
                "block_size",
                "a positive block size",
                "0",
            ));
        }
        let nb = tokens.div_ceil(block_size);
        let cells = nb.checked_mul(nb);
        if cells != Some(bitmap.len()) {
            return Err(Error::invalid(
                OP,
                "bitmap",
                format!("num_blocks^2 = {nb}^2 entries"),
                format!("{} entries", bitmap.len()),
            ));
        }
        blocks_on_grid(nb)?;
        let mut indptr = Vec::with_capacity(nb + 1);
        let mut indices = Vec::new();
        indptr.push(0u32);
        for r in 0..nb {
            for c in 0..nb {
                if bitmap[r * nb + c] {
                    indices.push(c as u32);
                }
            }
            indptr.push(indices.len() as u32);
        }
        Self::from_bsr(tokens, block_size, indptr, indices)
    }

    /// Tokens covered (queries and keys).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Block edge in tokens.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks per side: `ceil(tokens / block_size)`.
    pub fn num_blocks(&self) -> usize {
        self.indptr.len() - 1
    }

    /// The BSR row pointer, `num_blocks + 1` entries.
    pub fn indptr(&self) -> &[u32] {
        &self.indptr
    }

    /// The BSR column indices, `nnz` entries, sorted within each row.
    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    /// The key blocks of block row `r`.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.indices[self.indptr[r] as usize..self.indptr[r + 1] as usize]
    }

    /// Number of blocks that are on.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Fraction of the `num_blocks^2` grid that is on.
    pub fn density(&self) -> f64 {
        let nb = self.num_blocks() as f64;
        self.nnz() as f64 / (nb * nb)
    }

    /// Whether block (r, c) is on.
    pub fn contains(&self, r: usize, c: usize) -> bool {
        self.row(r).binary_search(&(c as u32)).is_ok()
    }

    /// The row-major `num_blocks x num_blocks` bitmap.
    pub fn to_dense_bitmap(&self) -> Vec<bool> {
        let nb = self.num_blocks();
        let mut out = vec![false; nb * nb];
        for r in 0..nb {
            for &c in self.row(r) {
                out[r * nb + c as usize] = true;
            }
        }
        out
    }

    /// The transposed mask: block row `c` of the result lists, ascending, the block rows `r` of
    /// `self` that attend key block `c` (so a key block's gradients in the attention backward are
    /// accumulated over the query blocks of row `c`). Rows may be empty (a key block no query
    /// attends). `t.transpose() == self`.
    pub fn transpose(&self) -> BlockMask {
        let nb = self.num_blocks();
        let mut counts = vec![0u32; nb + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for c in 0..nb {
            counts[c + 1] += counts[c];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut indices = vec![0u32; self.indices.len()];
        // Rows are visited in increasing order, so each transposed row comes out sorted.
        for r in 0..nb {
            for &c in self.row(r) {
                let slot = &mut next[c as usize];
                indices[*slot as usize] = r as u32;
                *slot += 1;
            }
        }
        BlockMask {
            tokens: self.tokens,
            block_size: self.block_size,
            indptr,
            indices,
        }
    }

    /// The token-level mask, row-major `tokens x tokens` (query row, key column): true where
    /// the query may attend the key.
    pub fn to_token_mask(&self) -> Vec<bool> {
        let (n, b) = (self.tokens, self.block_size);
        let mut out = vec![false; n * n];
        for q in 0..n {
            for &c in self.row(q / b) {
                let k0 = c as usize * b;
                out[q * n + k0..q * n + (k0 + b).min(n)].fill(true);
            }
        }
        out
    }
}

/// Checks that a grid of `nb x nb` blocks (all on) fits the u32 BSR arrays, and returns the
/// block count.
fn blocks_on_grid(nb: usize) -> Result<usize> {
    nb.checked_mul(nb)
        .filter(|&n| n <= u32::MAX as usize)
        .ok_or_else(|| {
            Error::invalid(
                OP,
                "tokens",
                format!(
                    "at most {} blocks per side (num_blocks^2 must fit the u32 indices)",
                    u32::MAX.isqrt()
                ),
                format!("{nb} blocks per side"),
            )
        })
}

/// An empty vector with room for `len` elements, or [`Error::OutOfMemory`] (host memory)
/// instead of aborting when the allocation fails.
pub(crate) fn try_vec<T>(len: usize, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| Error::OutOfMemory {
        backend: crate::error::BackendKind::Cpu,
        requested_bytes: len.checked_mul(std::mem::size_of::<T>()).map(|b| b as u64),
        code: None,
        message: format!("host memory for {what} ({len} elements)"),
    })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsr_round_trip_and_errors() {
        let bitmap = [true, false, true, true, true, false, false, false, true];
        let m = BlockMask::from_dense_bitmap(5, 2, &bitmap).unwrap();
        assert_eq!(m.num_blocks(), 3);
        assert_eq!(m.indptr(), &[0, 2, 4, 5]);
        assert_eq!(m.indices(), &[0, 2, 0, 1, 2]);
        assert_eq!(m.to_dense_bitmap(), bitmap);
        assert!((m.density() - 5.0 / 9.0).abs() < 1e-12);
        let tm = m.to_token_mask();
        // Query 4 (block 2) sees only key 4 (block 2 is partial).
        assert_eq!(&tm[20..25], &[false, false, false, false, true]);
        let e = BlockMask::from_bsr(5, 2, vec![0, 1, 1, 2], vec![0, 3]).unwrap_err();
        assert_eq!(e.argument(), Some("indices[1]"));
        let e = BlockMask::from_bsr(5, 2, vec![0, 2, 2, 2], vec![1, 0]).unwrap_err();
        assert_eq!(e.argument(), Some("indices[1]"));
        let e = BlockMask::from_bsr(5, 2, vec![0, 1], vec![0]).unwrap_err();
        assert_eq!(e.argument(), Some("indptr"));
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let bitmap = [true, false, true, true, true, false, false, false, true];
        let m = BlockMask::from_dense_bitmap(5, 2, &bitmap).unwrap();
        let t = m.transpose();
        assert_eq!(t.indptr(), &[0, 2, 3, 5]);
        assert_eq!(t.indices(), &[0, 1, 1, 0, 2]);
        let nb = 3;
        let tb = t.to_dense_bitmap();
        for r in 0..nb {
            for c in 0..nb {
                assert_eq!(tb[r * nb + c], bitmap[c * nb + r]);
            }
        }
        assert_eq!(t.transpose(), m);
        // A key block no query attends is an empty row of the transpose.
        let lower = BlockMask::from_dense_bitmap(4, 2, &[true, false, true, false]).unwrap();
        assert_eq!(lower.transpose().row(1), &[] as &[u32]);
        assert_eq!(lower.transpose().row(0), &[0, 1]);
    }
}
