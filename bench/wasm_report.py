#!/usr/bin/env python3
"""Writes the "Wasm and monitor" section of bench/RESULTS.md from bench/results/wasm/*.json
(bench/wasm.sh). The section sits between two marker comments and replaces an earlier one;
bench/run.sh calls this after report.py so a critest benchmark run keeps the section.
A metric that was not measured is n/a with the reason, never a number.
"""

import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "wasm")
BEGIN = "<!-- wasm-bench: begin (bench/wasm.sh, bench/wasm_report.py) -->"
END = "<!-- wasm-bench: end -->"


def load(rt):
    p = os.path.join(RESULTS, rt + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def label(rt, d):
    """The column name: berth, or containerd with the minor version that ran ("containerd 2.4")."""
    m = re.match(r"v?(\d+)\.(\d+)", (d or {}).get("version", ""))
    return f"{rt} {m.group(1)}.{m.group(2)}" if rt != "berth" and m else rt


def get(d, key, field, scale=1.0):
    """A number, or 'n/a (reason)'."""
    if d is None:
        return "n/a (not run)"
    if d.get("start_failed"):
        return "n/a (runtime did not start)"
    if key in d.get("errors", {}):
        return "n/a (failed: " + d["errors"][key].replace("|", "\\|") + ")"
    r = d.get("results", {}).get(key)
    if r is None:
        return "n/a (not measured)"
    v = r.get(field)
    return v * scale if isinstance(v, (int, float)) else "n/a (not measured)"


def fmt(v, digits=2):
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else v


def ratio(b, c):
    return f"{b / c:.2f}" if isinstance(b, (int, float)) and isinstance(c, (int, float)) and c else "n/a"


def met(v, target):
    return ("yes" if v <= target else "no") if isinstance(v, (int, float)) else "n/a"


KIB = 1 / 1024.0  # kB -> MiB


def runs_table():
    """Key figures of every kept run (results/wasm/runs/), to show the spread on this shared VM."""
    files = sorted(glob.glob(os.path.join(RESULTS, "runs", "*.json")))
    if not files:
        return []
    out = ["", "Every kept run (`bench/results/wasm/runs/`), key figures; the load average moves them:", "",
           "| run | runtime | load average at start | first log line warm / cold / native (ms) | "
           "PSS per wasm container (MiB) | monitor VmRSS (MiB) | ListContainers at N (ms) | create+start N (s) |",
           "|---|---|---|---|---|---|---|---|"]
    for f in files:
        d = json.load(open(f))
        rt = d.get("runtime", "?")
        warm = fmt(get(d, "first-line-wasm-warm", "total_ms")) if rt == "berth" else "-"
        cold = fmt(get(d, "first-line-wasm-cold", "total_ms")) if rt == "berth" else "-"
        native = fmt(get(d, "first-line-native", "total_ms"))
        mem = fmt(get(d, "memory-wasm", "per_container_pss_kb", KIB)) if rt == "berth" else "-"
        mon = fmt(get(d, "memory-native", "monitor_rss_kb_avg" if rt == "berth" else "shim_rss_kb", KIB))
        sc = d.get("results", {}).get("scale") or {}
        lst = f"{sc['list_ms_median']:.2f} at {sc['running']}" if sc else "n/a"
        cr = f"{sc['create_s']:.1f} for {sc['created']}" if sc else "n/a"
        out.append(f"| {d.get('date', '?')} | {rt} {d.get('version', '')} | {d.get('loadavg_start', '?')} | "
                   f"{warm} / {cold} / {native} | {mem} | {mon} | {lst} | {cr} |")
    return out


def section(b, c):
    lines = [BEGIN, "", "## Wasm and monitor (bench/wasm.sh)", ""]
    cname = label("containerd", c)
    for rt, d in (("berth", b), ("containerd", c)):
        name = label(rt, d)
        if d is None:
            lines.append(f"- {name}: not run yet (`bench/wasm.sh --runtimes {rt}`)")
        elif d.get("start_failed"):
            lines.append(f"- {name}: the runtime did not start")
        else:
            lines.append(f"- {rt} {d.get('version', '')}: run {d['date']}, nproc {d['nproc']}, kernel "
                         f"{d['kernel']}, load average at start {d['loadavg_start']}, at end {d.get('loadavg_end', '?')}")
    lines += ["- Command: `bench/wasm.sh` (both runtimes, one after the other), which runs per runtime:", "", "```"]
    for name, d in (("berth", b), ("containerd", c)):
        if d and d.get("command"):
            lines.append(d["command"].replace(os.path.dirname(HERE) + "/", ""))
    lines += ["```", ""]
    lines.append(
        "A CRI client in the benchmark process (Python grpcio over the runtime's unix socket), so no "
        "crictl start-up is timed. \"to first log line\": CreateContainer + StartContainer, then polling "
        "(every 0.2 ms) until the container's CRI log file holds a complete line; medians, after 2 "
        "warm-ups (none for cold). Host-network pods: RunPodSandbox, StopPodSandbox and "
        "RemovePodSandbox of an empty pod with network NODE and its own PID namespace (berth's pod "
        "init, containerd's pause container), medians after 2 warm-ups. "
        "Warm: `wasm-hello:compat-smart` with its module in the compile "
        "cache; cold: `<root>/wasm-cache/{index,objects}` emptied before each run, so CreateContainer "
        "compiles the module. containerd column: busybox `/bin/echo` (native; no compile step, the same "
        "series in both rows). Memory: PSS from `/proc/<pid>/smaps_rollup` of idle containers, all in one "
        "pod, averaged; berth's monitor is the container process's parent (`berth __monitor create`, from "
        "a memfd), one per container; containerd's is one containerd-shim-runc-v2 per pod, shared by its "
        "containers (its share = shim PSS / containers; the pod's pause container is not counted). "
        "Scale: berth runs `wasm-loop:compat-smart`, containerd busybox `sleep 3600`, in 10 pods; "
        "ListContainers is the median of 20 calls with all containers idle; memory is `free -m` "
        "\"used\" before and after, which also moves with other work on this shared machine.")
    lines += ["", f"| metric | berth | {cname} | berth/{cname} |", "|---|---|---|---|"]
    rows = []

    def row(name, bv, cv, digits=2):
        rows.append((name, bv, cv))
        lines.append(f"| {name} | {fmt(bv, digits)} | {fmt(cv, digits)} | {ratio(bv, cv)} |")

    c_native = get(c, "first-line-native", "total_ms")
    warm = get(b, "first-line-wasm-warm", "total_ms")
    cold = get(b, "first-line-wasm-cold", "total_ms")
    row("wasm create+start to first log line, warm cache, median (ms) [containerd: native busybox echo]",
        warm, c_native)
    row("wasm create+start to first log line, cold cache, median (ms) [containerd: native busybox echo]",
        cold, c_native)
    row("  of which CreateContainer, warm / cold (ms) [containerd: native]",
        f"{fmt(get(b, 'first-line-wasm-warm', 'create_ms'))} / {fmt(get(b, 'first-line-wasm-cold', 'create_ms'))}",
        get(c, "first-line-native", "create_ms"))
    row("native busybox echo create+start to first log line, median (ms)",
        get(b, "first-line-native", "total_ms"), c_native)
    wasm_mem = get(b, "memory-wasm", "per_container_pss_kb", KIB)
    c_mem = get(c, "memory-native", "per_container_pss_kb", KIB)
    row("wasm memory per container: PSS container + monitor (MiB) [containerd: busybox sleep + shim share]",
        wasm_mem, c_mem)
    row("  of which the container process PSS (MiB) [containerd: busybox sleep]",
        get(b, "memory-wasm", "ctr_pss_kb_avg", KIB), get(c, "memory-native", "ctr_pss_kb_avg", KIB))
    row("native busybox sleep memory per container: PSS container + monitor (MiB) [containerd: + shim share]",
        get(b, "memory-native", "per_container_pss_kb", KIB), c_mem)
    mon_rss = get(b, "memory-native", "monitor_rss_kb_avg", KIB)
    row("monitor RSS per container, VmRSS (MiB) [containerd: containerd-shim-runc-v2 per pod]",
        mon_rss, get(c, "memory-native", "shim_rss_kb", KIB))
    parts = [get(b, "memory-native", f"monitor_rss_{k}_kb_avg", KIB) for k in ("anon", "file", "shmem")]
    row("  monitor VmRSS = anon + file + shmem (MiB) [shmem: the sealed memfd copy of berth, shared]",
        " + ".join(fmt(v) for v in parts) if all(isinstance(v, float) for v in parts) else
        "n/a (not measured in this run)", "-")
    row("monitor PSS per container (MiB) [containerd: containerd-shim-runc-v2 per pod]",
        get(b, "memory-native", "monitor_pss_kb_avg", KIB), get(c, "memory-native", "shim_pss_kb", KIB))
    mon_pss = get(b, "memory-native", "monitor_pss_kb_avg", KIB)
    mon_uss = get(b, "memory-native", "monitor_uss_kb_avg", KIB)
    row("monitor USS per container, private pages only (MiB) [containerd: containerd-shim-runc-v2 per pod]",
        mon_uss, get(c, "memory-native", "shim_uss_kb", KIB))
    row("monitor VmRSS of wasm containers (MiB)", get(b, "memory-wasm", "monitor_rss_kb_avg", KIB),
        "n/a (no Wasm under containerd here)")
    host_run = get(b, "pods-host", "run_ms")
    row("RunPodSandbox, host network, own PID namespace, median (ms) [containerd: + pause container]",
        host_run, get(c, "pods-host", "run_ms"))
    row("StopPodSandbox, host network, median (ms)", get(b, "pods-host", "stop_ms"),
        get(c, "pods-host", "stop_ms"))
    row("RemovePodSandbox, host network, median (ms)", get(b, "pods-host", "remove_ms"),
        get(c, "pods-host", "remove_ms"))

    def scale_of(d):
        return d.get("results", {}).get("scale") if d else None
    bs, cs = scale_of(b), scale_of(c)
    target = (bs or cs or {}).get("target", 1000)
    row(f"1000 idle wasm containers: running containers reached (of {target}) [containerd: busybox sleep]",
        get(b, "scale", "running"), get(c, "scale", "running"), 0)
    b_list = get(b, "scale", "list_ms_median")
    row("1000 idle wasm containers: ListContainers median at that scale (ms)", b_list,
        get(c, "scale", "list_ms_median"))
    row("1000 idle wasm containers: memory used, free -m after - before (MiB; noisy: moves with other work on the machine, see PSS below)",
        get(b, "scale", "mem_delta_mib"), get(c, "scale", "mem_delta_mib"), 0)
    row("1000 idle wasm containers: PSS per container at that scale, container + monitor/shim (MiB)",
        get(b, "scale", "pss_per_container_mib"), get(c, "scale", "pss_per_container_mib"))

    def daemon(d, when):
        s = (d or {}).get("results", {}).get("scale") or {}
        m = s.get("daemon_" + when)
        return m["rss_mib"] if m else get(d, "scale", "daemon_" + when)
    row("1000 idle wasm containers: runtime daemon VmRSS before (MiB)", daemon(b, "before"), daemon(c, "before"), 1)
    row("1000 idle wasm containers: runtime daemon VmRSS at that scale (MiB)", daemon(b, "after"),
        daemon(c, "after"), 1)
    row("1000 idle wasm containers: time to create and start them (s)",
        get(b, "scale", "create_s"), get(c, "scale", "create_s"), 1)
    row("1000 idle wasm containers: time to remove them, StopPodSandbox + RemovePodSandbox (s)",
        get(b, "scale", "cleanup_s"), get(c, "scale", "cleanup_s"), 1)
    for name, s in (("berth", bs), (cname, cs)):
        if s:
            why = s.get("stop_reason") or "all created"
            lines.append("")
            lines.append(f"{name} scale run: {s['created']} created, {s['running']} running, {s['listed']} "
                         f"listed; stopped because: {why}; free -m used {s['mem_used_before_mib']} → "
                         f"{s['mem_used_after_mib']} MiB; load average at the end {s.get('loadavg_end')}. "
                         + ("Checkpoints (containers: elapsed s, ListContainers median of 5 ms, used MiB): "
                            + ", ".join(f"{p['containers']}: {p['elapsed_s']}, {p['list_ms_median']}, "
                                        f"{p['mem_used_mib']}" for p in s["checkpoints"]) + "."
                            if s.get("checkpoints") else ""))
    lines += runs_table()
    lines += ["", "### Targets for berth (Wasm and monitor)", "",
              "| metric | target | berth | met |", "|---|---|---|---|"]
    at_scale = get(b, "scale", "pss_per_container_mib")
    for name, target_txt, v, t in (
        ("wasm create+start to first log line, warm cache", "≤ 10 ms", warm, 10),
        ("wasm create+start to first log line, cold cache", "≤ 20 ms", cold, 20),
        ("wasm memory per container (PSS container + monitor)", "≤ 4 MiB", wasm_mem, 4),
        ("monitor RSS (VmRSS, native busybox sleep)", "≤ 1 MiB", mon_rss, 1),
        ("  the same as PSS (shared pages split between the monitors that map them)", "≤ 1 MiB", mon_pss, 1),
        ("  the same as USS (pages only this monitor holds)", "≤ 1 MiB", mon_uss, 1),
        ("RunPodSandbox, host network (issue 5)", "≤ 3 ms", host_run, 3),
        ("ListContainers with 1000 idle Wasm containers", "≤ 50 ms", b_list, 50),
    ):
        shown = fmt(v) + (" ms" if "ms" in target_txt and isinstance(v, float) else
                          " MiB" if isinstance(v, float) else "")
        if "ListContainers" in name and bs and bs.get("running", 0) < 1000 and isinstance(v, float):
            shown += f" (at {bs['running']} containers)"
            ok = "n/a (1000 not reached)"
        else:
            ok = met(v, t)
        lines.append(f"| {name} | {target_txt} | {shown} | {ok} |")
    if isinstance(at_scale, float):
        lines.append(f"| wasm memory per container at scale (PSS container + monitor, {bs['created']} "
                     f"containers) | ≤ 4 MiB | {at_scale:.2f} MiB | {met(at_scale, 4)} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main():
    b, c = load("berth"), load("containerd")
    if b is None and c is None:
        print("wasm_report.py: no results in bench/results/wasm; run bench/wasm.sh", file=sys.stderr)
        return
    path = os.path.join(HERE, "RESULTS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    new = section(b, c)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head.rstrip("\n") + "\n\n" + new + (("\n" + tail) if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    with open(path, "w") as f:
        f.write(text)
    print(f"wasm_report.py: wrote the Wasm and monitor section of {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
