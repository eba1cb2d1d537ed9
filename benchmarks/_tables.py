"""Renders the committed results/*.json as the markdown tables of benchmarks/README.md.

    python benchmarks/_tables.py
"""

import json
import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LABELS = ["jgd", "jgd.flat", "optax", "torch-forloop", "torch-foreach", "torch-fused"]


def load(name):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def update_step(data):
    rows = data["results"]["rows"]
    out = []
    for tree in dict.fromkeys(r["tree"] for r in rows):
        sub = [r for r in rows if r["tree"] == tree]
        first = sub[0]
        roof = first["roofline_gb_per_s"]
        roof = f"{roof:.0f} GB/s" if roof >= 1 else "dispatch-bound, not meaningful"
        out.append(f"\n**{tree}** — {first['params']:,} params in {first['leaves']} leaves; "
                   f"in-run roofline {roof}. "
                   "Cells: ms/step (speed vs optax); jgd's % of roofline last.\n")
        out.append("| variant | " + " | ".join(LABELS) + " | jgd % roofline |")
        out.append("|---" * (len(LABELS) + 2) + "|")
        for variant in dict.fromkeys(r["variant"] for r in sub):
            cells = []
            for label in LABELS:
                r = next((r for r in sub if r["variant"] == variant and r["contender"] == label), None)
                cells.append("–" if r is None else f"{r['us_per_step'] / 1e3:.2f} ({r['speedup_vs_optax']:.2f}×)")
            ours = next(r for r in sub if r["variant"] == variant and r["contender"] == "jgd")
            out.append(f"| {variant} | " + " | ".join(cells) + f" | {ours['pct_roofline']:.0f}% |")
    return "\n".join(out)


def compile_time(data):
    out = ["| contender | compile s (median of fresh processes) |", "|---|---|"]
    for name, r in data["results"]["results"].items():
        out.append(f"| {name} | {r['median_s']:.2f} |")
    return "\n".join(out)


def minimize_vs_loop(data):
    out = ["| model | params (leaves) | examples | Python loop | minimize | minimize, flat(adam) | "
           "fori_loop floor | speed-up | flat speed-up | bound |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    extra = []
    for name, r in data["results"].items():
        s = r["seconds"]
        if "overhead" in r:
            extra = ["", f"{name} ({r['steps']} mini-batch steps of the digits MLP): plain {1e3 * s['plain']:.0f} ms, "
                     f"with_key + model_state {1e3 * s['with_key_and_state']:.0f} ms → {r['overhead']:.2f}×"]
            continue
        out.append(f"| {name} | {r['params']:,} ({r['leaves']}) | {r['examples']} | {1e3 * s['python_loop']:.0f} ms | "
                   f"{1e3 * s['minimize']:.0f} ms | {1e3 * s['minimize_flat']:.0f} ms | {1e3 * s['fori_floor']:.0f} ms | "
                   f"{r['speedup']:.1f}× | {r['speedup_flat']:.1f}× | {r['speedup_bound']:.1f}× |")
    return "\n".join(out + extra)


def sweep_vs_sequential(data):
    out = ["| problem | sweep | 64 sequential minimize | Python-loop user code | vs sequential | vs Python loop |",
           "|---|---|---|---|---|---|"]
    probe = main_job = growth = None
    for name, r in data["results"].items():
        s = r["seconds"]
        if "chunk-probe" in name:
            probe = s
            continue
        if name == "main-job":
            main_job = r
            continue
        if name == "sampler-growth":
            growth = r
            continue
        out.append(f"| {name} | {s['sweep']:.2f} s | {s['sequential']:.2f} s | {s['python_loop']:.2f} s | "
                   f"{r['speedup_vs_sequential']:.1f}× | {r['speedup_vs_python_loop']:.1f}× |")
    if probe:
        out += ["", "| MLP sweep, chunk size | " + " | ".join(probe) + " |",
                "|---" * (len(probe) + 1) + "|",
                "| seconds | " + " | ".join(f"{v:.2f}" for v in probe.values()) + " |"]
    if main_job:
        s = main_job["seconds"]
        out += ["", f"Main job ({main_job['runs']} runs × {main_job['steps']} mini-batch steps, batch 32):", "",
                "| sweep | loop of minimize | sweep, eval every 50 | sweep, saved every 50 | sweep vs loop | "
                "eval overhead | save overhead |",
                "|---|---|---|---|---|---|---|",
                f"| {s['sweep']:.2f} s | {s['minimize_loop']:.2f} s | {s['sweep_eval']:.2f} s | {s['sweep_saved']:.2f} s | "
                f"{main_job['speedup_vs_loop']:.1f}× | {main_job['eval_overhead']:.2f}× | {main_job['save_overhead']:.2f}× |"]
    if growth:
        s = growth["seconds"]
        out += ["", f"Sampler growth ({growth['runs']}-run sweep, {growth['steps']} steps): "
                + ", ".join(f"{k}: {v:.3f} s" for k, v in s.items()) + f" → {growth['growth']:.2f}×"]
    return "\n".join(out)


def halving_vs_grid(data):
    r = data["results"]
    out = [f"{r['configs']} sampled configurations (digits MLP, momentum + weight decay, 432 steps at most):", "",
           "| search | best val accuracy | run-steps | wall s (compiled) | wall s (compile included) |",
           "|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        out.append(f"| {name} | {row['accuracy']:.4f} | {row['spent']} | {row['wall']:.2f} | {row['cold']:.2f} |")
    out += ["", f"halving vs grid: accuracy gap {100 * r['accuracy_gap']:+.2f} points, run-steps "
            f"{r['steps_ratio']:.2f}×, wall {r['wall_ratio']:.2f}× compiled, {r['wall_ratio_with_compile']:.2f}× "
            "with compilation"]
    return "\n".join(out)


def hypergradient(data):
    r = data["results"]
    out = [f"{r['params']:,}-parameter MLP, adam, {r['steps']} full-batch steps on the digits:", "",
           "| | hypergradient temporary memory |", "|---|---|"]
    out += [f"| {name} | {value / 2**20:,.1f} MiB |" for name, value in r["temp_bytes"].items()]
    out += ["", f"{r['memory_ratio']:.1f}× smaller with checkpoint_every={r['checkpoint_every']}", "",
            "| | ms per run | × normal loop |", "|---|---|---|"]
    out += [f"| {name} | {1e3 * s:,.1f} | {r['ratios'][name]:.2f} |" for name, s in r["seconds"].items()]
    return "\n".join(out)


def cold_start(data):
    r = data["results"]
    out = ["The main job (384 runs × 400 steps) in fresh processes, medians:", "",
           "| contender | process s | search s | compile s |", "|---|---|---|---|"]
    for name, row in r["results"].items():
        out.append(f"| {name} | {row['process_s']:.2f} | {row['search_s']:.2f} | {row['compile_s']:.2f} |")
    out += ["", ", ".join(f"{name} {value:.2f}" for name, value in r["ratios"].items())]
    return "\n".join(out)


def host_loop(data):
    r = data["results"]
    out = ["Conv nets on CPU, ms a step (× a Python loop of the same jitted step):", "",
           "| model | " + " | ".join(r["digits-2conv"]["ms_per_step"]) + " |",
           "|---|" + "---|" * len(r["digits-2conv"]["ms_per_step"])]
    for model in ("digits-2conv", "flax-mnist-cnn"):
        if model in r:
            row = r[model]
            out.append(f"| {model} | " + " | ".join(
                f"{row['ms_per_step'][k]:.2f} ({row['ratio_to_python_loop'][k]:.2f}×)" if k in row["ms_per_step"]
                else "—" for k in r["digits-2conv"]["ms_per_step"]) + " |")
    sweep = r.get("digits-2conv-sweep")
    if sweep:
        out += ["", f"A sweep of {sweep['runs']} learning rates × {sweep['steps']} steps of the digits CNN, "
                "warm (first call, compile included):", "",
                "| contender | s | × Python loop over the runs | first call s |", "|---|---|---|---|"]
        out += [f"| {k} | {v:.2f} | {sweep['ratio_to_python_loop'][k]:.2f} | "
                f"{sweep['first_call_seconds_compile_included'][k]:.1f} |" for k, v in sweep["seconds"].items()]
    return "\n".join(out)


if __name__ == "__main__":
    for name, render in (("update_step", update_step), ("compile_time", compile_time),
                         ("minimize_vs_loop", minimize_vs_loop), ("sweep_vs_sequential", sweep_vs_sequential),
                         ("halving_vs_grid", halving_vs_grid), ("hypergradient", hypergradient),
                         ("cold_start", cold_start), ("host_loop", host_loop)):
        data = load(name)
        if data:
            print(f"\n### {name} ({data['machine']['date']}, {data['machine']['cpu_count']} cores, "
                  f"{data['machine']['backend']}, jax {data['machine']['jax']})\n")
            print(render(data))
