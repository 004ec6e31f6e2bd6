#!/usr/bin/env python3
"""Runs kernels-vulkan/dev/cm2_probe.comp (compiled to SPIR-V 1.6) through the spirv_run example
for every MODE at several workgroup sizes and matrix shapes, and prints one line per case: the
largest error against numpy, or what failed.

    cm2_probe.py SPIRV_RUN CM2_PROBE.spv WORKDIR
"""
import os
import subprocess
import sys

import numpy as np

run, spv, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
rng = np.random.default_rng(1)


def bf16(shape):
    """Random values exactly representable in bf16: (uint16 codes, float32 values)."""
    x = rng.standard_normal(shape).astype(np.float32)
    codes = (x.view(np.uint32) >> 16).astype(np.uint16)
    return codes, (codes.astype(np.uint32) << 16).view(np.float32)


def bf16_round(x):
    u = x.astype(np.float32).view(np.uint32)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.view(np.float32)


OFF = 40  # elements of b before the matrix
failures = 0
for local in (32, 128, 256):
    for m, n, k in ((16, 32, 64), (16, 32, 576), (32, 64, 576), (64, 64, 128)):
        a_c, a = bf16((m, k))
        b_c, b = bf16((k, n))
        bt_c, bt = bf16((n, k))
        rows = m - 3
        paths = {}
        for name, data in (("a", a_c), ("b", np.concatenate([np.zeros(OFF, np.uint16), b_c.ravel()])), ("bt", bt_c)):
            paths[name] = f"{work}/{name}.bin"
            data.tofile(paths[name])
        s_b = a.astype(np.float64) @ b
        s_bt = a.astype(np.float64) @ bt.T
        for mode in range(8):
            out = f"{work}/out.bin"
            cols = max(n, k)
            cmd = [run, "--spv", spv, "--local", str(local), "--spec", f"1={m}", "--spec", f"2={n}",
                   "--spec", f"3={k}", "--spec", f"4={mode}", "--push", f"{OFF},{rows}",
                   "--in", paths["a"], "--in", paths["b"], "--in", paths["bt"],
                   "--out", f"{m * cols * 4}:{out}", "--groups", "1"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            tag = f"local {local:3} M {m:2} N {n:2} K {k:3} mode {mode}"
            if r.returncode != 0:
                print(f"{tag}: FAILED to run: {r.stderr.strip()[-300:]}")
                failures += 1
                continue
            o = np.fromfile(out, np.float32)
            if mode == 0:
                want, got = a, o[: m * k].reshape(m, k)
            elif mode == 7:
                want = a.copy()
                want[rows:] = 0
                got = o[: m * k].reshape(m, k)
            elif mode == 1:
                want, got = s_b, o[: m * n].reshape(m, n)
            elif mode == 2:
                want, got = s_bt, o[: m * n].reshape(m, n)
            elif mode == 3:
                want, got = np.repeat(s_bt.max(1, keepdims=True), n, 1), o[: m * n].reshape(m, n)
            elif mode == 4:
                rr, cc = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
                want, got = s_bt * 2 + 1000 * rr + cc, o[: m * n].reshape(m, n)
            elif mode == 5:
                sb = bf16_round(s_bt.astype(np.float32)).astype(np.float64)
                want, got = np.repeat(sb.sum(1, keepdims=True), n, 1), o[: m * n].reshape(m, n)
            else:
                want = np.zeros(m)
                want[:rows] = s_bt[:rows, 0]
                got = o[:m]
            err = np.abs(got - want).max() / (np.abs(want).max() + 1e-30)
            bad = not np.isfinite(got).all() or err > 2e-2
            failures += bad
            print(f"{tag}: rel err {err:.2e}{'  WRONG' if bad else ''}"
                  + (f"  got[0,:4] {np.ravel(got)[:4]} want {np.ravel(want)[:4]}" if bad else ""))
print(f"cm2_probe: {failures} failing cases")
