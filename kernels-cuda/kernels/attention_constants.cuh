// Tessera CUDA kernels: the compile-time constants every attention kernel takes (the forward,
// sparse_attention.cu and sm90/sparse_attention.cu, and the backward passes,
// sparse_attention_backward.cu), checked once here. Prepended after common.cuh; each kernel
// checks its own further constants (BLOCK, STAGES, PASS).
//   HEAD_DIM   64 or 128 (tessera_core::ops::attention::SUPPORTED_HEAD_DIMS)
//   ELEM_BF16  1 = bf16 q/k/v/o, 0 = f16 (not IS_BF16: common.cuh uses that name for template
//              parameters, which a macro of that name would break)

#ifndef HEAD_DIM
#error "HEAD_DIM is required (64 or 128)"
#endif
#ifndef ELEM_BF16
#error "ELEM_BF16 is required (1 = bf16, 0 = f16)"
#endif
#if HEAD_DIM != 64 && HEAD_DIM != 128
#error "HEAD_DIM must be 64 or 128"
#endif
#if ELEM_BF16 != 0 && ELEM_BF16 != 1
#error "ELEM_BF16 must be 0 or 1"
#endif
