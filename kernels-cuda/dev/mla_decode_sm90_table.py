#!/usr/bin/env python3
"""Summarizes the TIME lines of mla_decode_sm90.sh: per shape, each variant's us / GB/s / TFLOPS,
and each sm90 FP8 variant's time over the best bf16 variant's (fp8/bf16 columns)."""
import re
import sys
from collections import defaultdict

pat = re.compile(r"TIME (\S+) b=(\d+) s_q=(\d+) h=(\d+) s_k=(\d+) page=\d+ splits=\d+: ([\d.]+) us (\d+) TFLOPS (\d+) GB/s")
rows = defaultdict(dict)
names = []
for line in open(sys.argv[1]):
    m = pat.search(line)
    if not m:
        continue
    name, b, sq, h, sk, us, tf, gbs = m.groups()
    if name not in names:
        names.append(name)
    rows[(int(h), int(b), int(sq), int(sk))][name] = (float(us), int(tf), int(gbs))
fp8_names = [n for n in names if "fp8" in n and n.startswith("sm90")]
print("h b s_q s_k | " + " | ".join(f"{n} us GB/s TF" for n in names) + " | "
      + " | ".join(f"{n}/bf16" for n in fp8_names))
for key in sorted(rows):
    r = rows[key]
    cells = [f"{r[n][0]:.0f} {r[n][2]} {r[n][1]}" if n in r else "-" for n in names]
    bf16 = [r[n][0] for n in r if "bf16" in n]
    ratios = [f"{r[n][0] / min(bf16):.2f}" if n in r and bf16 else "-" for n in fp8_names]
    print(f"{key[0]} {key[1]} {key[2]} {key[3]} | " + " | ".join(cells) + " | " + " | ".join(ratios))
