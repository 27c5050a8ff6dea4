#!/usr/bin/env python3
"""Write bench/RESULTS.md from the critest -benchmark outputs in bench/results/<runtime>/.

Each metric is the median over the samples of one benchmark spec, in milliseconds. A
metric whose spec did not pass is reported as n/a with the reason (the first line of the
failure), never as a number.
"""

import glob
import json
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "critest"))
import results  # noqa: E402  (critest/results.py: report parsing)

RUNTIMES = ("berth", "containerd")


def label(rt, meta):
    """The column name: berth, or containerd with the minor version that ran ("containerd 2.4")."""
    m = re.match(r"v?(\d+)\.(\d+)", (meta or {}).get("RuntimeVersion", ""))
    return f"{rt} {m.group(1)}.{m.group(2)}" if rt != "berth" and m else rt

SPEC_IMAGE = "benchmark about basic operations on Image"
SPEC_LIST = "benchmark about listing Image"
SPEC_POD = "benchmark about lifecycle of PodSandbox"
SPEC_CONTAINER = "benchmark about basic operations on Container"
SPEC_SCRATCH = "benchmark about start a container from scratch"

# metric, spec, data file, operation names summed per sample (None: the Ginkgo report entry)
METRICS = [
    ("PullImage", SPEC_IMAGE, "image_lifecycle_benchmark_data.json", ["PullImage"]),
    ("ListImages", SPEC_LIST, "image_listing_benchmark_data.json", ["ListImages"]),
    ("ImageStatus", SPEC_IMAGE, "image_lifecycle_benchmark_data.json", ["StatusImage"]),
    ("RemoveImage", SPEC_IMAGE, "image_lifecycle_benchmark_data.json", ["RemoveImage"]),
    ("RunPodSandbox", SPEC_POD, "pod_benchmark_data.json", ["CreatePod"]),
    ("StopPodSandbox", SPEC_POD, "pod_benchmark_data.json", ["StopPod"]),
    ("RemovePodSandbox", SPEC_POD, "pod_benchmark_data.json", ["RemovePod"]),
    ("PodSandboxStatus", SPEC_POD, "pod_benchmark_data.json", ["StatusPod"]),
    ("CreateContainer+StartContainer", SPEC_CONTAINER, "container_benchmark_data.json",
     ["CreateContainer", "StartContainer"]),
    ("StopContainer", SPEC_CONTAINER, "container_benchmark_data.json", ["StopContainer"]),
    ("RemoveContainer", SPEC_CONTAINER, "container_benchmark_data.json", ["RemoveContainer"]),
    ("start a container from scratch", SPEC_SCRATCH, None, None),
]

# Targets for berth (ms), from the project's issues.
TARGETS = {
    "PullImage": 15, "ListImages": 0.2, "RunPodSandbox": 25, "StopPodSandbox": 15,
    "CreateContainer+StartContainer": 10, "StopContainer": 5, "start a container from scratch": 50,
}


def load_json(path):
    with open(path) as f:
        return json.load(f)


def read_meta(d):
    meta = {}
    path = os.path.join(d, "meta.txt")
    if os.path.exists(path):
        for line in open(path):
            k, _, v = line.strip().partition("=")
            meta[k] = v
    return meta


def spec_states(report):
    """{leaf text: (state, reason, spec report)}"""
    out = {}
    for suite in report:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                continue
            msg = (spec.get("Failure") or {}).get("Message", "")
            out[spec["LeafNodeText"]] = (spec.get("State"), msg, spec)
    return out


def na_reason(state, message):
    if state == "skipped":
        return "n/a (skipped: " + (results.first_line(message, 120) or "not run") + ")"
    m = re.search(r"code = Unimplemented desc = ([^\"\n]*)", message or "")
    if m:
        return f"n/a (UNIMPLEMENTED: {m.group(1).strip()})"
    return "n/a (failed: " + results.first_line(message, 160).replace("|", "\\|") + ")"


def scratch_samples(spec):
    """The timed durations (ms) of one run of the scratch spec."""
    out = []
    for entry in spec.get("ReportEntries") or []:
        if entry.get("Name") != "start-container-benchmark":
            continue
        exp = json.loads((entry.get("Value") or {}).get("AsJSON") or "{}")
        for m in exp.get("Measurements") or []:
            out += [d / 1e6 for d in m.get("Durations") or []]
    return out


def scratch_ms(d, spec):
    """(median, runs) over the full run's sample and the focused re-runs' (run.sh)."""
    samples = scratch_samples(spec)
    for path in sorted(glob.glob(os.path.join(d, "scratch", "report-*.json"))):
        state, _, extra = spec_states(load_json(path)).get(SPEC_SCRATCH, (None, "", None))
        if state == "passed":
            samples += scratch_samples(extra)
    return (statistics.median(samples), len(samples)) if samples else (None, 0)


def metric_values(rt):
    """{metric: float ms or 'n/a (...)'} for one runtime, or None without results."""
    d = os.path.join(HERE, "results", rt)
    if os.path.exists(os.path.join(d, "start-failed.txt")):
        return {m[0]: "n/a (runtime did not start)" for m in METRICS}
    report_path = os.path.join(d, "report.json")
    if not os.path.exists(report_path):
        return None
    states = spec_states(load_json(report_path))
    values = {}
    for name, spec_text, data_file, ops in METRICS:
        state, message, spec = states.get(spec_text, ("absent", "spec not in report", None))
        if state != "passed":
            values[name] = na_reason(state, message)
            continue
        if data_file is None:
            v, runs = scratch_ms(d, spec)
            values[name] = v if v is not None else "n/a (no measurement in the report)"
            values[name + " runs"] = runs
            continue
        path = os.path.join(d, data_file)
        if not os.path.exists(path):
            values[name] = f"n/a (no {data_file})"
            continue
        data = load_json(path)
        idx = [data["operationsNames"].index(op) for op in ops]
        samples = [sum(p["operationsDurationsNs"][i] for i in idx)
                   for p in data.get("datapoints") or []
                   if len(p.get("operationsDurationsNs") or []) == len(data["operationsNames"])]
        values[name] = (statistics.median(samples) / 1e6 if samples
                        else "n/a (no complete samples)")
    return values


def scratch_runs(vals):
    runs = {(v or {}).get("start a container from scratch runs") for v in vals.values()} - {None}
    return "/".join(str(r) for r in sorted(runs)) or "?"


def cni_floor_lines():
    """The CNI plugins alone (bench/cni_floor.py), beside the pod calls that run them."""
    path = os.path.join(HERE, "results", "cni", "floor.json")
    if not os.path.exists(path):
        return []
    f = load_json(path)
    chain = "+".join(f["plugins"])
    later = f.get("netns_deleted_later") or {}
    text = (f"The CNI plugins alone, no runtime (`bench/cni_floor.py`, same config "
            f"`{f['conflist']}`, {f['runs']} pods one after the other, same run; medians): ADD of "
            f"{chain} {f['add_median_ms']:.2f} ms, DEL of {'+'.join(reversed(f['plugins']))} "
            f"{f['del_median_ms']:.2f} ms with each pod's network namespace deleted right after "
            "its DEL (containerd's order)")
    if later:
        text += (f"; {later['add_median_ms']:.2f} and {later['del_median_ms']:.2f} ms with the "
                 "namespaces deleted at the end (berth releases removed pods' namespaces in "
                 "batches when pod networks are quiet)")
    text += (". RunPodSandbox and StopPodSandbox run exactly these plugin calls. Most of the DEL "
             "is the kernel deleting the pod's veth, which waits for an RCU barrier, and longer "
             "while earlier pods' namespaces are being torn down.")
    return ["", text]


def fmt(v):
    return f"{v:.2f}" if isinstance(v, float) else v


def main():
    vals = {rt: metric_values(rt) for rt in RUNTIMES}
    metas = {rt: read_meta(os.path.join(HERE, "results", rt)) for rt in RUNTIMES}
    names = {rt: label(rt, metas[rt]) for rt in RUNTIMES}
    lines = [f"# Benchmarks: berth vs {names['containerd']} (critest v{results.CRITEST_VERSION} -benchmark)", ""]
    any_meta = next((m for m in metas.values() if m), {})
    lines.append(f"- Machine: {any_meta.get('nproc', '?')} CPUs, kernel {any_meta.get('kernel', '?')}, "
                 "Debian 12, cgroup v1, overlayfs; loopback registry 127.0.0.1:5000 (stand-in images).")
    for rt in RUNTIMES:
        m = metas[rt]
        if vals[rt] is None:
            lines.append(f"- {names[rt]}: not run yet (`bench/run.sh --runtimes {rt}`)")
            continue
        version = " ".join(x for x in (m.get("RuntimeName"), m.get("RuntimeVersion")) if x)
        load = f", load average before the run {m['loadavg']}" if m.get("loadavg") else ""
        lines.append(f"- {names[rt]}: run {m.get('date', '?')}" + (f" ({version})" if version else "") + load)
    lines.append("- Command: `bench/run.sh` (both runtimes, one after the other), which runs per runtime:")
    lines.append("")
    lines.append("```")
    for rt in RUNTIMES:
        path = os.path.join(HERE, "results", rt, "command.txt")
        if os.path.exists(path):
            lines.append(f"# {names[rt]}")
            lines.append(open(path).read().strip())
    lines.append("```")
    lines.append("")
    lines.append("Parameters: `bench/params.yaml` (30 pods, 30 containers, 10 images, parallelism 1). "
                 "Medians in ms over the samples. \"start a container from scratch\" is one timed run "
                 "(after one warm-up) of RunPodSandbox + CreateContainer + StartContainer + "
                 "StopPodSandbox + RemovePodSandbox per critest run; `bench/run.sh` gets "
                 f"{scratch_runs(vals)} samples per runtime (the full run, then critest runs of that "
                 "spec alone) and reports their median. CreateContainer "
                 "includes critest's ImageStatus check. This is a 2-core VM shared with other work: "
                 "treat the numbers as rough.")
    lines.append("")
    lines.append(f"| metric | berth | {names['containerd']} | berth/{names['containerd']} |")
    lines.append("|---|---|---|---|")
    for name, *_ in METRICS:
        b = (vals["berth"] or {}).get(name, "n/a (not run)")
        c = (vals["containerd"] or {}).get(name, "n/a (not run)")
        ratio = f"{b / c:.2f}" if isinstance(b, float) and isinstance(c, float) and c > 0 else "n/a"
        lines.append(f"| {name} median (ms) | {fmt(b)} | {fmt(c)} | {ratio} |"
                     if name != "start a container from scratch" else
                     f"| {name} (ms) | {fmt(b)} | {fmt(c)} | {ratio} |")
    lines += cni_floor_lines()
    lines.append("")
    lines.append("## Targets for berth")
    lines.append("")
    lines.append("| metric | target (ms) | berth (ms) | met |")
    lines.append("|---|---|---|---|")
    for name, *_ in METRICS:
        if name not in TARGETS:
            continue
        b = (vals["berth"] or {}).get(name, "n/a (not run)")
        met = ("yes" if b <= TARGETS[name] else "no") if isinstance(b, float) else "n/a"
        lines.append(f"| {name} | ≤ {TARGETS[name]:g} | {fmt(b)} | {met} |")
    out = os.path.join(HERE, "RESULTS.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"report.py: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
