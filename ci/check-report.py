#!/usr/bin/env python3
"""Joins the JSON of `tessera check --backend X --json` runs into one Markdown table.

Usage: ci/check-report.py --device "NVIDIA H200" --commit abc123 OUT.md check-cuda.json check-cpu.json
For each op: the largest error per metric over all cases of the first file (with its tolerance),
and, per case, the time on each backend (the same seed gives the same cases on every backend).
"""
import argparse
import datetime
import json


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("out")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    runs = [load(p) for p in a.runs]
    first = runs[0]
    lines = [
        f"# tessera check: {', '.join(r['backend'] for r in runs)}",
        "",
        f"Device: {a.device}. Date: {datetime.date.today().isoformat()}. Commit: {a.commit}. "
        f"Seed {first['seed']}, {'quick' if first['quick'] else 'full'} suite.",
        "",
        f"## Largest error per op and metric ({first['backend']})",
        "",
        "| op | metric | largest error | tolerance | cases | failed |",
        "|---|---|---|---|---|---|",
    ]
    worst = {}
    for case in first["cases"]:
        op = case.get("op", "error")
        for m in case.get("metrics", []):
            key = (op, m["name"])
            err = m["error"] if isinstance(m["error"], (int, float)) else float("nan")
            w = worst.setdefault(key, {"err": 0.0, "tol": m["tolerance"], "n": 0, "fail": 0})
            w["n"] += 1
            w["err"] = max(w["err"], err) if err == err else float("nan")
            if not (err <= m["tolerance"]):
                w["fail"] += 1
    for (op, name), w in worst.items():
        lines.append(f"| {op} | {name} | {w['err']:.3e} | {w['tol']:.1e} | {w['n']} | {w['fail']} |")
    errors = [c for c in first["cases"] if "error" in c and "metrics" not in c]
    if errors:
        lines += ["", f"{len(errors)} case(s) returned an error:", ""]
        lines += [f"- {c['error']}" for c in errors]
    lines += ["", "## Time per case (host API, transfers included), ms", ""]
    header = "| op | shape | " + " | ".join(r["backend"] for r in runs) + " |"
    lines += [header, "|---|---|" + "---|" * len(runs)]
    for i, case in enumerate(first["cases"]):
        if "shape" not in case:
            continue
        cells = []
        for r in runs:
            c = r["cases"][i] if i < len(r["cases"]) else {}
            cells.append(f"{c['seconds'] * 1e3:.2f}" if "seconds" in c else "-")
        lines.append(f"| {case['op']} | {case['shape']} | " + " | ".join(cells) + " |")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
