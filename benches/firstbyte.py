#!/usr/bin/env python3
"""benches/firstbyte.py: the first-byte benchmark's table (markdown), chart (SVG) and JSON,
from the raw records benches/firstbyte.sh collects (one loadgen `firstbyte` JSON per row and
round trip, with `row` and `rtt_ms` added)."""

import argparse
import datetime
import json
import platform
import subprocess

NAMES = {
    "det": "det-tls-proxy",
    "det-preconnect": "det-tls-proxy, upstream.preconnect: 2",
    "nginx": "nginx (stream)",
    "haproxy": "HAProxy",
}
COLORS = {"det": "#4878d0", "det-preconnect": "#1b3f8f", "nginx": "#6acc64", "haproxy": "#ee854a"}
ORDER = ["det-preconnect", "det", "nginx", "haproxy"]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def cell(rec):
    if rec is None or "p50_ms" not in rec:
        return "–"
    s = f"{rec['p50_ms']:.1f} / {rec['p99_ms']:.1f}"
    if rec["rtt_ms"] > 0:
        s += f" ({rec['p50_ms'] / rec['rtt_ms']:.2f} RTT)"
    return s


def markdown(recs, args):
    rtts = sorted({r["rtt_ms"] for r in recs})
    rows = [r for r in ORDER if any(x["row"] == r for x in recs)]
    by = {(r["row"], r["rtt_ms"]): r for r in recs}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# det-tls-proxy benchmark: connect to first response byte", ""]
    if args.quick == "1":
        out += ["**Quick mode: these figures prove the harness works and mean nothing.**", ""]
    out += [
        f"- Date: {now}; git {git_rev()}; {platform.machine()}, load average at the end {args.load}.",
        f"- Each cell: p50 / p99 milliseconds from the start of a client's connect to the first byte "
        f"of the answer, over {args.count} clients one after another (3 round trips + 20 ms apart, "
        f"after a few warm-up clients), and the p50 in round trips of the added delay.",
        "- The master is benches/tlssink.rs behind benches/delay.rs, a user-space relay adding the "
        "round trip (half each way) and one round trip before a new connection's first bytes, as "
        "TCP's handshake costs. The client sends 64 bytes; the sink echoes them.",
        f"- det-tls-proxy with `upstream.preconnect: {args.preconnect}` serves each client on a "
        "session made ahead; the other rows dial (TCP, then a resumed TLS 1.3 handshake) per client.",
        "",
        "| | " + " | ".join(f"RTT {r} ms" for r in rtts) + " |",
        "|---|" + "---|" * len(rtts),
    ]
    for row in rows:
        out.append(f"| **{NAMES[row]}** | " + " | ".join(cell(by.get((row, r))) for r in rtts) + " |")
    pre, det = by.get(("det-preconnect", 50)), by.get(("det", 50))
    if pre and det and "p50_ms" in pre and "p50_ms" in det:
        goal = pre["p50_ms"] / 50 <= 1.2
        out += ["", "## Goal", "",
                f"- With preconnect, a new client's first byte at 50 ms RTT within 1.2 round trips: "
                f"p50 {pre['p50_ms'] / 50:.2f} RTT ({'met' if goal else 'not met'}); "
                f"without preconnect {det['p50_ms'] / 50:.2f} RTT."]
    return "\n".join(out) + "\n"


def svg(recs):
    rtts = sorted({r["rtt_ms"] for r in recs})
    rows = [r for r in ORDER if any(x["row"] == r for x in recs)]
    by = {(r["row"], r["rtt_ms"]): r for r in recs}
    top = max([r.get("p99_ms", 0) for r in recs] + [1]) * 1.1
    w, h, left, bottom, topm = 720, 360, 60, 50, 40
    plot_w, plot_h = w - left - 20, h - bottom - topm
    group_w = plot_w / max(len(rtts), 1)
    bar_w = group_w * 0.8 / max(len(rows), 1)
    y = lambda v: topm + plot_h - v / top * plot_h  # noqa: E731
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">Connect to first response byte (ms; bar p50, tick p99)</text>',
         f'<line x1="{left}" y1="{topm + plot_h}" x2="{w - 20}" y2="{topm + plot_h}" stroke="#333"/>']
    for i in range(5):
        v = top * i / 4
        s.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        s.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{w - 20}" y2="{y(v):.1f}" stroke="#ddd"/>')
    for gi, rtt in enumerate(rtts):
        gx = left + gi * group_w + group_w * 0.1
        s.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{topm + plot_h + 18}" text-anchor="middle">RTT {rtt} ms</text>')
        for ri, row in enumerate(rows):
            rec = by.get((row, rtt))
            if not rec or "p50_ms" not in rec:
                continue
            x = gx + ri * bar_w
            s.append(f'<rect x="{x:.1f}" y="{y(rec["p50_ms"]):.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{topm + plot_h - y(rec["p50_ms"]):.1f}" fill="{COLORS[row]}"/>')
            s.append(f'<line x1="{x:.1f}" y1="{y(rec["p99_ms"]):.1f}" x2="{x + bar_w - 2:.1f}" '
                     f'y2="{y(rec["p99_ms"]):.1f}" stroke="#000" stroke-width="2"/>')
    for ri, row in enumerate(rows):
        lx = left + 10 + ri * 170
        s.append(f'<rect x="{lx}" y="{h - 18}" width="10" height="10" fill="{COLORS[row]}"/>')
        s.append(f'<text x="{lx + 14}" y="{h - 9}">{NAMES[row].replace("upstream.", "")}</text>')
    s.append("</svg>")
    return "\n".join(s) + "\n"


def main():
    p = argparse.ArgumentParser()
    for a in ("--raw", "--md", "--svg", "--json", "--count", "--preconnect", "--quick", "--load"):
        p.add_argument(a, required=True)
    args = p.parse_args()
    recs = load(args.raw)
    with open(args.md, "w") as f:
        f.write(markdown(recs, args))
    with open(args.svg, "w") as f:
        f.write(svg(recs))
    with open(args.json, "w") as f:
        json.dump({"records": recs, "count": int(args.count), "preconnect": int(args.preconnect)}, f, indent=1)


if __name__ == "__main__":
    main()
