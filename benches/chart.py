#!/usr/bin/env python3
"""Turns the raw records of benches/compare.sh into results.md, results.svg and results.json.

Standard library only. Input: --meta (machine description and run parameters, JSON) and
--raw (one JSON record per line: {"row", "rep", "variant", "data"}, data being a loadgen
result or a measurement made by the script). Every figure is the median of the repetitions,
with min-max beside it; ratios are "this row / det-tls-proxy".
"""

import argparse
import html
import json
import statistics
from collections import defaultdict

ROWS = [
    ("det", "det-tls-proxy"),
    ("det-id", "det-tls-proxy, every client identified (allowed_peers)"),
    ("det-log", "det-tls-proxy, access log on"),
    ("det-connect", "det-tls-proxy through squid (HTTP CONNECT egress)"),
    ("stunnel", "stunnel"),
    ("haproxy", "HAProxy"),
    ("nginx", "nginx (stream)"),
    ("socat", "socat"),
    ("direct", "direct TLS to the sink (ceiling)"),
    ("openssl", "openssl speed aes-128-gcm, 16 KiB, 1 core (ceiling)"),
]
PEERS = ["stunnel", "haproxy", "nginx", "socat"]

# key, column title, unit, higher is better, decimals
METRICS = [
    ("up", "1 conn upload", "MB/s", True, 0),
    ("down", "1 conn download", "MB/s", True, 0),
    ("multi", "32 conns", "MB/s", True, 0),
    ("conn_resume", "new conns, resumption", "conn/s", True, 0),
    ("conn_full", "new conns, full handshakes", "conn/s", True, 0),
    ("p50", "latency p50", "µs", False, 1),
    ("p99", "latency p99", "µs", False, 1),
    ("p999", "latency p99.9", "µs", False, 1),
    ("mem", "memory per idle conn", "KiB", False, 1),
    ("cpu", "CPU per GiB relayed", "s", False, 2),
]
METRIC = {m[0]: m for m in METRICS}


def collect(records):
    values = defaultdict(lambda: defaultdict(list))  # row -> metric -> [values]
    stats = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))  # row -> variant -> counter -> sum
    errors = defaultdict(list)
    loadavg = defaultdict(list)
    for rec in records:
        row, d, var = rec["row"], rec["data"], rec.get("variant") or ""
        w = d.get("workload")
        if d.get("error"):
            errors[row].append(f"{w or '?'} (rep {rec['rep']}): {d['error']}")
            continue
        if w in ("up", "down", "multi"):
            values[row][w].append(d["mb_per_s"])
        elif w == "connrate":
            values[row]["conn_resume" if var == "resume" else "conn_full"].append(d["conns_per_s"])
        elif w == "latency":
            values[row]["p50"].append(d["p50_us"])
            values[row]["p99"].append(d["p99_us"])
            values[row]["p999"].append(d["p999_us"])
        elif w == "memory":
            values[row]["mem"].append(d["kib_per_conn"])
        elif w in ("cpu", "machine_cpu") and d["bytes"] > 0:
            # CPU seconds per GiB: the proxy's own ("cpu") or the whole machine's, per workload.
            key = "cpu" if w == "cpu" else "machine_" + d["of"]
            values[row][key].append(d["ticks"] / d["clk_tck"] / (d["bytes"] / 2**30))
        elif w == "speed":
            for k in ("up", "down", "multi"):
                values[row][k].append(d["mb_per_s"])
        elif w == "sinkstats":
            for listener in d.get("stats", {}).values():
                for k, v in listener.items():
                    if k != "active":
                        stats[row][var][k] += v
        elif w == "quiet":
            loadavg[row].append((d["idle_pct"], d["waited_secs"]))
    return values, stats, errors, loadavg


def summary(vals):
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def fmt(x, decimals):
    if x is None:
        return "–"
    if decimals == 0 or abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{decimals}f}"


def cell(s, decimals):
    if s is None:
        return "–"
    text = fmt(s["median"], decimals)
    if s["n"] > 1 and s["min"] != s["max"]:
        text += f" ({fmt(s['min'], decimals)}–{fmt(s['max'], decimals)})"
    return text


def ratio(s, ref):
    if s is None or ref is None or not ref["median"]:
        return "–"
    return f"{s['median'] / ref['median']:.2f}×"


def best_peer(table, key):
    _, _, _, higher, _ = METRIC[key]
    cands = [(table[p][key]["median"], p) for p in PEERS if table.get(p, {}).get(key)]
    if not cands:
        return None, None
    v, p = (max if higher else min)(cands)
    return v, p


def goals(table):
    det = table.get("det", {})
    out = []

    def check(text, ok, detail):
        mark = "–" if ok is None else ("✅" if ok else "❌")
        out.append(f"| {mark} | {text} | {detail} |")

    for key in ("up", "down", "multi"):
        d = det.get(key)
        bv, bp = best_peer(table, key)
        direct = table.get("direct", {}).get(key)
        if d and bv:
            check(f"{METRIC[key][1]}: ≥ 1.2× the best peer", d["median"] >= 1.2 * bv,
                  f"{d['median'] / bv:.2f}× {dict(ROWS)[bp]} ({fmt(d['median'], 0)} vs {fmt(bv, 0)} MB/s)")
        else:
            check(f"{METRIC[key][1]}: ≥ 1.2× the best peer", None, "not measured")
        if d and direct:
            check(f"{METRIC[key][1]}: ≥ 90 % of direct TLS", d["median"] >= 0.9 * direct["median"],
                  f"{100 * d['median'] / direct['median']:.0f} % of {fmt(direct['median'], 0)} MB/s")
        else:
            check(f"{METRIC[key][1]}: ≥ 90 % of direct TLS", None, "not measured")
    d, (bv, bp) = det.get("conn_resume"), best_peer(table, "conn_resume")
    check("new connections/s with resumption: ≥ 1.5× the best peer",
          None if not (d and bv) else d["median"] >= 1.5 * bv,
          f"{d['median'] / bv:.2f}× {dict(ROWS)[bp]} ({fmt(d['median'], 0)} vs {fmt(bv, 0)}/s)" if d and bv else "not measured")
    for key in ("p99", "p999"):
        d, (bv, bp) = det.get(key), best_peer(table, key)
        check(f"{METRIC[key][1]} ≤ the best peer's", None if not (d and bv) else d["median"] <= bv,
              f"{fmt(d['median'], 1)} µs vs {fmt(bv, 1)} µs ({dict(ROWS)[bp]})" if d and bv else "not measured")
    d, (bv, bp) = det.get("cpu"), best_peer(table, "cpu")
    check("CPU per GiB relayed: ≤ 0.6× the best peer's", None if not (d and bv) else d["median"] <= 0.6 * bv,
          f"{d['median'] / bv:.2f}× {dict(ROWS)[bp]} ({fmt(d['median'], 2)} vs {fmt(bv, 2)} s)" if d and bv else "not measured")
    d, (bv, bp) = det.get("mem"), best_peer(table, "mem")
    check("memory per idle connection ≤ half the best peer's", None if not (d and bv) else d["median"] <= 0.5 * bv,
          f"{fmt(d['median'], 1)} KiB vs {fmt(bv, 1)} KiB ({dict(ROWS)[bp]})" if d and bv else "not measured")
    check("memory per idle connection ≤ 10.4 KiB (must not regress)", None if not d else d["median"] <= 10.4,
          f"{fmt(d['median'], 1)} KiB" if d else "not measured")
    # "Beat each of them on every figure."
    lost = []
    for key, title, unit, higher, dec in METRICS:
        d = det.get(key)
        if not d:
            continue
        for p in PEERS:
            s = table.get(p, {}).get(key)
            if s and ((s["median"] > d["median"]) if higher else (s["median"] < d["median"])):
                lost.append(f"{title}: {dict(ROWS)[p]} {fmt(s['median'], dec)} vs {fmt(d['median'], dec)} {unit}")
    check("beats every peer on every figure", not lost if det else None,
          "; ".join(lost) if lost else ("yes" if det else "not measured"))
    return out


def budget(table, cores):
    """The whole machine's CPU per GiB moved (load generator, sink and proxy together), and the
    throughput that CPU allows on this machine's cores: what a proxy can reach relative to direct
    TLS when the three share the same cores."""
    keys = [("up", "machine_up"), ("down", "machine_down"), ("multi", "machine_multi")]
    rows = [(k, n) for k, n in ROWS if any(table.get(k, {}).get(m) for _, m in keys)]
    if not rows:
        return []
    L = ["## CPU budget: the whole machine's CPU per GiB moved", "",
         "Every process on the machine (load generator, sink, proxy) in CPU seconds per GiB, and "
         f"what that allows on {cores} cores: ({cores} s ÷ CPU s per GiB) GiB/s, in MB/s. A proxy adds a "
         "second TCP hop and its own cipher work to the same cores, so its ceiling here is direct TLS's "
         "times the ratio of the two CPU figures, whatever the proxy does with its own share.", ""]
    L.append("| | " + " | ".join(f"{METRIC[k][1]}: CPU s/GiB → bound MB/s (measured)" for k, _ in keys) + " |")
    L.append("|" + "---|" * (len(keys) + 1))
    for key, name in rows:
        cells = []
        for k, m in keys:
            c, t = table[key].get(m), table[key].get(k)
            if not c or not c["median"]:
                cells.append("–")
                continue
            bound = cores / c["median"] * 2**30 / 1e6
            cells.append(f"{c['median']:.2f} → {fmt(bound, 0)} ({fmt(t['median'], 0) if t else '–'})")
        L.append(f"| **{name}** | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Where the proxy's own share goes (profiles, system calls, what was tried): "
             "[docs/performance.md](../docs/performance.md#the-data-path-near-the-limit).")
    L.append("")
    return L


def markdown(meta, table, stats, errors, loadavg):
    L = []
    v = meta.get("versions", {})
    L.append("# det-tls-proxy benchmark: side by side with stunnel, HAProxy, nginx and socat")
    L.append("")
    L.append("First byte through a far master (connect to first response byte at 0, 10 and 50 ms round trip, "
             "with and without `upstream.preconnect`): [firstbyte.md](firstbyte.md), written by `benches/firstbyte.sh`.")
    L.append("")
    if meta.get("quick"):
        L.append("**Quick (CI) run: tiny sizes, one repetition — these figures only prove the harness works.**")
        L.append("")
    L.append(f"- Date: {meta.get('date')}; `benches/compare.sh{' --quick' if meta.get('quick') else ''}` "
             f"took {meta.get('elapsed_secs', '?')} s with {meta.get('failures', '?')} failure(s).")
    L.append(f"- Machine: {meta.get('cpu_model')}, {meta.get('cpus')} CPUs "
             f"(AES-NI {'yes' if meta.get('cpu_flags_aes') else 'no'}, VAES {'yes' if meta.get('cpu_flags_vaes') else 'no'}), "
             f"{meta.get('mem_gib')} GiB; {meta.get('os')}; kernel {meta.get('kernel')}. "
             f"Load average at start {' '.join(meta.get('loadavg_start', []))}, at end {' '.join(meta.get('loadavg_end', []))}.")
    q = [x for v in loadavg.values() for x in v]
    if q:
        idle = [i for i, _ in q]
        busy = sum(1 for i in idle if i < 90)
        L.append(f"- The machine is shared: before each proxy's repetition the harness waits (up to "
                 f"{meta.get('quiet_wait', 0)} s) for the CPUs to be ≥ 90 % idle. Idle seen: {min(idle)}–{max(idle)} %; "
                 f"{busy} of {len(idle)} repetitions started on a busier machine; {sum(w for _, w in q)} s spent waiting.")
    L.append(f"- Software: {v.get('det-tls-proxy')}; {v.get('stunnel')}; {v.get('haproxy')}; {v.get('nginx')}; "
             f"{v.get('socat')}; {v.get('openssl')}; {v.get('rustc')}.")
    b = meta.get("bytes", 0)
    conn = (f"{meta.get('conn_count')} connections" if meta.get("conn_count") else f"{meta.get('conn_secs')} s")
    L.append(f"- Workloads, each repeated {meta.get('reps')}× (median, min–max in brackets): one connection moving "
             f"{b / 2**20:,.0f} MiB up, then down; {meta.get('multi_conns')} concurrent connections moving "
             f"{b / 2**20:,.0f} MiB in total (half upload, half download); new connections (connect, 100 bytes, "
             f"echo, close) for {conn} at concurrency {meta.get('concurrency')}, with the sink's session "
             f"resumption on, then off; {meta.get('lat_count'):,} 64-byte echo round-trips over one connection; "
             f"marginal PSS per idle connection (hold {meta.get('hold')}, measure, hold {meta.get('hold')} more, "
             f"measure, divide); CPU seconds (user+system, all processes) per GiB relayed over the three throughput workloads.")
    L.append("- Every proxy verifies the sink's certificate (own CA, DNS name `bench-master`) and gets "
             "TLS13_AES_128_GCM_SHA256 (the sink offers no other TLS 1.3 suite) with X25519 (the sink also accepts "
             "P-256, which socat 1.7.4 insists on); access logging off, "
             "idle timeout 1 h, half-close timeout 60 s, TCP_NODELAY on. MB = 10⁶ bytes. "
             "Load generator, sink and proxy share the same 2 cores.")
    L.append("")
    cols = [k for k, *_ in METRICS]
    head = "| | " + " | ".join(f"{METRIC[k][1]} ({METRIC[k][2]}) {'↑' if METRIC[k][3] else '↓'}" for k in cols) + " |"
    L.append("## Results")
    L.append("")
    L.append(head)
    L.append("|" + "---|" * (len(cols) + 1))
    for key, name in ROWS:
        if key not in table:
            continue
        L.append(f"| **{name}** | " + " | ".join(cell(table[key].get(k), METRIC[k][4]) for k in cols) + " |")
    L.append("")
    L.append("## Ratios to det-tls-proxy (row ÷ det-tls-proxy; ↑ columns: below 1 means det-tls-proxy is ahead, ↓ columns: above 1 means it is)")
    L.append("")
    L.append(head)
    L.append("|" + "---|" * (len(cols) + 1))
    ref = table.get("det", {})
    for key, name in ROWS:
        if key not in table:
            continue
        L.append(f"| **{name}** | " + " | ".join(ratio(table[key].get(k), ref.get(k)) for k in cols) + " |")
    L.append("")
    L.append("## Goals, figure by figure (det-tls-proxy against the best peer and against direct TLS)")
    L.append("")
    L.append("| | goal | measured |")
    L.append("|---|---|---|")
    L.extend(goals(table))
    L.append("")
    # The run's own core count: a re-render elsewhere must not use the renderer's.
    L.extend(budget(table, meta.get("cpus") or 1))
    L.append("## What the sink saw during the new-connection workloads")
    L.append("")
    L.append("\"FIN without close_notify\": the proxy half-closed towards the master with a bare TCP FIN, "
             "which TLS does not distinguish from a truncation attack.")
    L.append("")
    L.append("| | resumption on: handshakes resumed | resumption off: handshakes resumed | HelloRetryRequests | TLS versions | key exchange | cipher suite | FIN without close_notify |")
    L.append("|---|---|---|---|---|---|---|---|")
    for key, name in ROWS:
        s = stats.get(key)
        if not s:
            continue
        def pct(var):
            h = s.get(var, {}).get("handshakes", 0)
            return f"{100 * s[var].get('resumed', 0) / h:.0f} % of {h:,}" if h else "–"
        allv = defaultdict(int)
        for var in s.values():
            for k, n in var.items():
                allv[k] += n
        vers = ", ".join(f"{n:,} × {name_}" for name_, n in (("TLS 1.3", allv["tls13"]), ("TLS 1.2", allv["tls12"])) if n)
        groups = ", ".join(f"{n:,} × {g}" for g, n in (("X25519", allv["x25519"]), ("P-256", allv["p256"]),
                                                          ("other", allv["other_group"])) if n)
        suites = ", ".join(f"{n:,} × {c}" for c, n in (("AES_128_GCM", allv["aes128gcm"]), ("other", allv["other_suite"])) if n)
        L.append(f"| {name} | {pct('resume')} | {pct('no_resume')} | {allv['full_hrr']:,} | {vers or '–'} | "
                 f"{groups or '–'} | {suites or '–'} | {allv['eof_without_close_notify']:,} |")
    L.append("")
    if any(errors.values()):
        L.append("## Failures")
        L.append("")
        for key, name in ROWS:
            for e in errors.get(key, []):
                L.append(f"- {name}: {e}")
        L.append("")
    L.append("Reproduce with `benches/compare.sh` (full) or `benches/compare.sh --quick` (CI). Every record of the "
             "run is in `results.json` beside this file; `python3 benches/chart.py --from results.json --md … --svg …` "
             "re-renders this page and the chart from it.")
    L.append("")
    return "\n".join(L)


SHORT = {"det-id": "det-tls-proxy + peer identity", "det-log": "det-tls-proxy + access log", "det-connect": "det-tls-proxy via squid CONNECT", "direct": "direct TLS (ceiling)"}


def svg(meta, table):
    # openssl speed is one core's AES-GCM: a bar of it would flatten the rest; it goes in the title.
    speed = table.get("openssl", {}).get("up")
    rows = [(k, SHORT.get(k, n)) for k, n in ROWS if k in table and k != "openssl"]
    panels = [m for m in METRICS if any(table[k].get(m[0]) for k, _ in rows)]
    label_w, bar_w, pad = 190, 390, 14
    bar_h, gap = 16, 5
    panel_w = label_w + bar_w + 110
    ncols = 2
    heights = []
    for key, *_ in panels:
        n = sum(1 for k, _ in rows if table[k].get(key))
        heights.append(34 + n * (bar_h + gap) + 8)
    row_h = [max(heights[i:i + ncols]) for i in range(0, len(heights), ncols)]
    width = ncols * panel_w + (ncols + 1) * pad
    top = 58
    height = top + sum(row_h) + pad * (len(row_h) + 1)
    colors = {"det": "#1f6feb", "det-id": "#3d8bfd", "det-log": "#6ea8fe", "det-connect": "#9ec5fe", "direct": "#9a9a9a", "openssl": "#c8c8c8"}
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
         f'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
         f'<text x="{pad}" y="24" font-size="17" font-weight="bold">det-tls-proxy vs stunnel, HAProxy, nginx, socat'
         f'{" — QUICK run, not representative" if meta.get("quick") else ""}</text>',
         f'<text x="{pad}" y="44" fill="#555">{html.escape(str(meta.get("cpu_model")))}, {meta.get("cpus")} CPUs, '
         f'kernel {html.escape(str(meta.get("kernel")))}, {html.escape(str(meta.get("date")))}; median of {meta.get("reps")} runs, '
         f'whiskers min–max</text>']
    y0 = top
    for r, rh in enumerate(row_h):
        y0 += pad
        for c in range(ncols):
            i = r * ncols + c
            if i >= len(panels):
                break
            key, title, unit, higher, dec = panels[i]
            x0 = pad + c * (panel_w + pad)
            o.append(f'<rect x="{x0}" y="{y0}" width="{panel_w}" height="{rh}" fill="#f6f8fa" stroke="#d0d7de"/>')
            note = "higher is better" if higher else "lower is better"
            if key in ("up", "down", "multi") and speed:
                note += f"; openssl speed, 1 core: {fmt(speed['median'], 0)}"
            o.append(f'<text x="{x0 + 10}" y="{y0 + 21}" font-weight="bold">{html.escape(title)} ({html.escape(unit)}) '
                     f'<tspan fill="#555" font-weight="normal">{html.escape(note)}</tspan></text>')
            present = [(k, n, table[k][key]) for k, n in rows if table[k].get(key)]
            vmax = max(s["max"] for _, _, s in present) or 1
            y = y0 + 34
            for k, n, s in present:
                w = bar_w * s["median"] / vmax
                color = colors.get(k, "#e36209" if k in PEERS else "#888")
                o.append(f'<text x="{x0 + label_w - 6}" y="{y + bar_h - 4}" text-anchor="end">{html.escape(n)}</text>')
                o.append(f'<rect x="{x0 + label_w}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{color}"/>')
                if s["n"] > 1 and s["max"] > s["min"]:
                    x1 = x0 + label_w + bar_w * s["min"] / vmax
                    x2 = x0 + label_w + bar_w * s["max"] / vmax
                    ym = y + bar_h / 2
                    o.append(f'<path d="M{x1:.1f},{ym:.1f}H{x2:.1f}M{x1:.1f},{ym - 4:.1f}V{ym + 4:.1f}'
                             f'M{x2:.1f},{ym - 4:.1f}V{ym + 4:.1f}" stroke="#222" stroke-width="1"/>')
                tx = x0 + label_w + max(w, bar_w * s["max"] / vmax) + 6
                o.append(f'<text x="{tx:.1f}" y="{y + bar_h - 4}">{fmt(s["median"], dec)}</text>')
                y += bar_h + gap
        y0 += rh
    o.append("</svg>")
    return "\n".join(o) + "\n"


def first_byte_section(md_path):
    """The first-byte table of benches/firstbyte.sh (firstbyte.md beside results.md), shown
    beside the figures above; empty when that benchmark has not been run into this folder."""
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(md_path)), "firstbyte.md")
    if not os.path.exists(path):
        return ""
    lines = open(path).read().splitlines()
    date = next((l for l in lines if l.startswith("- Date:")), "")
    table = [l for l in lines if l.startswith("|")]
    if not table:
        return ""
    out = ["", "", "## First byte through a far master", "",
           "Connect to first response byte at an added round trip of 0, 10 and 50 ms, with and without "
           "`upstream.preconnect`; p50 / p99 ms, and the p50 in round trips. Measured by "
           "`benches/firstbyte.sh`, a separate run: " + date.removeprefix("- ") + " Details: [firstbyte.md](firstbyte.md).",
           "", "![connect to first response byte](firstbyte.svg)", ""]
    return "\n".join(out + table) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meta", help="run description written by compare.sh")
    ap.add_argument("--raw", help="raw records written by compare.sh, one JSON object a line")
    ap.add_argument("--from", dest="from_json", metavar="RESULTS_JSON",
                    help="re-render from an earlier results.json instead of --meta/--raw")
    ap.add_argument("--md", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.from_json:
        earlier = json.load(open(a.from_json))
        meta, records = earlier["meta"], earlier["records"]
    elif a.meta and a.raw:
        meta = json.load(open(a.meta))
        records = [json.loads(line) for line in open(a.raw) if line.strip()]
    else:
        ap.error("give --meta and --raw, or --from")
    values, stats, errors, loadavg = collect(records)
    table = {row: {k: summary(v) for k, v in ms.items() if v} for row, ms in values.items()}
    for row in list(errors) + list(stats):
        table.setdefault(row, {})
    with open(a.md, "w") as f:
        f.write(markdown(meta, table, stats, errors, loadavg))
        f.write(first_byte_section(a.md))
    with open(a.svg, "w") as f:
        f.write(svg(meta, table))
    if a.json:
        with open(a.json, "w") as f:
            # Compact: the records are many; "summary" holds what the tables show.
            json.dump({"meta": meta, "summary": table, "sink": stats, "errors": errors, "records": records}, f,
                      separators=(",", ":"))
            f.write("\n")


if __name__ == "__main__":
    main()
