#!/usr/bin/env python3
"""Summarize an ncu report's warp stalls (for the dev harness scripts of this folder, on the GPU
machine): the stall reasons of the kernel, most samples first; with --sass also the SASS lines
with the most stall samples and their top reasons.

    python3 ncu_stalls.py REPORT.ncu-rep [--sass] [--top N]
"""
import csv
import io
import subprocess
import sys


def ncu_csv(report, *page):
    out = subprocess.run(["ncu", "--import", report, *page, "--csv"], capture_output=True, text=True).stdout
    rows = list(csv.reader(io.StringIO(out)))
    # The source page starts with a "Kernel Name" line before its header.
    return rows[1:] if rows and rows[0] and rows[0][0] == "Kernel Name" else rows


def num(x):
    try:
        return float(x.replace(",", ""))
    except ValueError:
        return 0.0


def stall_reasons(report, top):
    rows = ncu_csv(report, "--page", "raw")
    if len(rows) < 2:
        return
    h, v = rows[0], rows[2] if len(rows) > 2 else rows[1]
    pre = "smsp__pcsamp_warps_issue_stalled_"
    found = [(num(x), k[len(pre):]) for k, x in zip(h, v) if k.startswith(pre) and not k.endswith("_not_issued")]
    for n, k in sorted(found, reverse=True)[:top]:
        if n > 0:
            print(k, int(n))


def sass_lines(report, top):
    rows = ncu_csv(report, "--page", "source", "--print-source", "sass")
    if not rows:
        return
    h = rows[0]
    col = {c.strip(): i for i, c in enumerate(h)}
    src, tot = col.get("Source"), col.get("Warp Stall Sampling (All Samples)")
    if src is None or tot is None:
        print("sass columns:", h[:40])
        return
    reasons = [i for i, c in enumerate(h) if c.startswith("stall_") and "Not Issued" not in c]
    body = [r for r in rows[1:] if len(r) == len(h)]
    total = sum(num(r[tot]) for r in body) or 1
    for r in sorted(body, key=lambda r: -num(r[tot]))[:top]:
        best = sorted(((num(r[i]), h[i]) for i in reasons), reverse=True)[:2]
        print(f"{100 * num(r[tot]) / total:5.1f}%  {r[src][:70]:70s} " + " ".join(f"{n}={v:.0f}" for v, n in best if v))


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    top = int(args[args.index("--top") + 1]) if "--top" in args else 14
    stall_reasons(args[0], top)
    if "--sass" in args:
        sass_lines(args[0], 2 * top)
