#!/usr/bin/env python3
"""Summarise critest Ginkgo JSON reports.

    critest/results.py                 # write critest/RESULTS.md from critest/results/*.json
    critest/results.py --summary FILE  # print pass/fail/skip counts of one report
    critest/results.py --compact FULL OUT   # store a report without its bulky captured output

RESULTS.md has one row per area of the critest catalogue (critest/areas.tsv, same names
and order as the reference catalogue), berth and containerd columns side by side, then
every failed or skipped spec with a one-line reason.
"""

import argparse
import datetime
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RUNTIMES = ("berth", "containerd")


def pinned(script, var):
    """A version pinned in one of the install scripts (VAR=x.y.z), so the text follows them."""
    with open(os.path.join(HERE, script)) as f:
        m = re.search(rf"^{var}=([0-9][0-9.]*)$", f.read(), re.M)
    return m.group(1) if m else "?"


CRITEST_VERSION = pinned("install-tools.sh", "CRI_TOOLS_VERSION")
CONTAINERD_VERSION = pinned("install-containerd.sh", "CONTAINERD_VERSION")
RUNC_VERSION = pinned("install-containerd.sh", "RUNC_VERSION")
# Column and heading names: the comparison runtime with its minor version.
LABEL = {"berth": "berth",
         "containerd": "containerd " + ".".join(CONTAINERD_VERSION.split(".")[:2])}
OTHER = "Other (new in v" + ".".join(CRITEST_VERSION.split(".")[:2]) + ")"
SELINUX_PREFIX = "SELinux"
FAILED_STATES = {"failed", "panicked", "timedout", "interrupted", "aborted"}

# Skips that come from the harness or the host, not from the runtime under test.
FILTER_REASONS = [
    (re.compile(r"benchmark about "),
     "benchmark spec: critest runs it only with -benchmark (see bench/run.sh)"),
    (re.compile(r"public image with digest"),
     "skipped by critest/run.sh (-ginkgo.skip): pulls an upstream manifest-list digest "
     "(gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…) that no locally built "
     "image can have"),
]


def load_areas():
    areas = []
    with open(os.path.join(HERE, "areas.tsv")) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            name, regex = line.split("\t", 1)
            areas.append((name, re.compile(regex)))
    return areas


def area_of(areas, text):
    for name, regex in areas:
        if regex.search(text):
            return name
    return OTHER


def full_text(spec):
    return " ".join((spec.get("ContainerHierarchyTexts") or []) + [spec.get("LeafNodeText", "")])


WRAPPERS = ("Timed out after", "Unexpected error:", "Expected success, but got an error:")


def first_line(message, limit=300):
    """The informative first line of a Gomega failure message: its first line, plus the
    substance when that line is only a wrapper ("Unexpected error:", "Timed out after ..."),
    plus the gRPC error when there is one."""
    lines = [l.strip() for l in (message or "").splitlines() if l.strip()]
    if not lines:
        return ""
    if lines[0] == "Expected":
        out = [" ".join(lines[:4])]
    else:
        out, i = [], 0
        while i < len(lines) and lines[i].startswith(WRAPPERS):
            out.append(lines[i])
            i += 1
        while i < len(lines):
            line = lines[i]
            i += 1
            head, sep, rest = line.partition(">:")
            if line.startswith("<") and sep:
                if rest.strip():
                    out.append(rest.strip())
                    break
                continue  # "<*T | 0x...>:" header; the text follows
            out.append(line)
            break
        rpc = next((l for l in lines if "rpc error:" in l), None)
        if rpc and not any("rpc error:" in o for o in out):
            out.append(rpc)
    line = " ".join(out)
    return line if len(line) <= limit else line[: limit - 1] + "…"


# Bulky per-spec fields dropped from the stored reports (the full ones stay in critest/out).
BULKY = ("CapturedGinkgoWriterOutput", "CapturedStdOutErr", "SpecEvents", "ProgressReports")


def compact(src, dst):
    with open(src) as f:
        report = json.load(f)
    for suite in report:
        for spec in suite.get("SpecReports") or []:
            for key in BULKY:
                spec.pop(key, None)
            failure = spec.get("Failure") or {}
            failure.pop("ProgressReport", None)
            failure.pop("AdditionalFailure", None)
    with open(dst, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def specs(report_path):
    """[(full text, outcome, reason)] for every It node of a report; outcome is passed,
    failed or skipped."""
    with open(report_path) as f:
        report = json.load(f)
    out = []
    for suite in report:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                if spec.get("State") in FAILED_STATES:  # BeforeSuite/AfterSuite failures
                    out.append((f"[{spec.get('LeafNodeType')}]", "failed",
                                first_line((spec.get("Failure") or {}).get("Message"))))
                continue
            text = full_text(spec)
            state = spec.get("State", "")
            message = first_line((spec.get("Failure") or {}).get("Message"))
            if state == "passed":
                out.append((text, "passed", ""))
            elif state in FAILED_STATES:
                if state != "failed":
                    message = f"{state}: {message}"
                out.append((text, "failed", message))
            else:
                if not message:
                    message = next((r for rx, r in FILTER_REASONS if rx.search(text)),
                                   "not selected by -ginkgo.focus/-ginkgo.skip")
                out.append((text, "skipped", message))
    return out


def counts(entries):
    c = {"passed": 0, "failed": 0, "skipped": 0}
    for _, outcome, _ in entries:
        c[outcome] += 1
    return c


def report_meta(path):
    with open(path) as f:
        report = json.load(f)
    suite = report[0] if report else {}
    start = suite.get("StartTime", "")[:19].replace("T", " ")
    run_time = suite.get("RunTime", 0) / 1e9
    return start, run_time


def write_results_md():
    areas = load_areas()
    data = {}
    for rt in RUNTIMES:
        path = os.path.join(HERE, "results", rt + ".json")
        data[rt] = specs(path) if os.path.exists(path) else None

    per_area = {}
    for rt, entries in data.items():
        for text, outcome, reason in entries or []:
            area = area_of(areas, text)
            per_area.setdefault(area, {}).setdefault(rt, []).append((text, outcome, reason))

    lines = [f"# critest v{CRITEST_VERSION} results: berth and {LABEL['containerd']} on this machine", ""]
    lines.append("Generated by `critest/results.py` from the Ginkgo JSON reports "
                 "`critest/results/berth.json` and `critest/results/containerd.json`, written by")
    lines.append("`critest/run.sh --runtime berth` and `critest/run.sh --runtime containerd` "
                 f"(containerd = containerd {CONTAINERD_VERSION} + runc {RUNC_VERSION} built from the "
                 "Go module proxy by `critest/install-containerd.sh`,")
    lines.append("configured as in critest/README.md; NRI specs run against it with `-nri-socket`). "
                 "Images: the stand-ins from `critest/images/build.py`, "
                 "served by 127.0.0.1:5000 through registry mirrors.")
    lines.append("")
    for rt in RUNTIMES:
        path = os.path.join(HERE, "results", rt + ".json")
        if data[rt] is None:
            lines.append(f"- {rt}: no report yet (`critest/run.sh --runtime {rt}`)")
        else:
            start, run_time = report_meta(path)
            lines.append(f"- {LABEL[rt]}: run started {start} UTC, {run_time:.0f} s")
    lines.append("")
    lines.append("| Area | " + " | ".join(f"{LABEL[rt]} {o}" for rt in RUNTIMES
                                         for o in ("passed", "failed", "skipped")) + " |")
    lines.append("|---|---|---|---|---|---|---|")

    def row(name, groups):
        cells = [name]
        for rt in RUNTIMES:
            if data[rt] is None:
                cells += ["n/a"] * 3
            else:
                c = counts(groups.get(rt, []))
                cells += [str(c["passed"]), str(c["failed"]), str(c["skipped"])]
        return "| " + " | ".join(cells) + " |"

    selinux = None
    total = {rt: [] for rt in RUNTIMES}
    area_names = [n for n, _ in areas]
    if OTHER in per_area:
        area_names.append(OTHER)
    for name in area_names:
        groups = per_area.get(name, {})
        if name.startswith(SELINUX_PREFIX):
            selinux = (name, groups)
            continue
        lines.append(row(name, groups))
        for rt in RUNTIMES:
            total[rt] += groups.get(rt, [])
    lines.append(row("**Total**", total))
    if selinux:
        lines.append(row(selinux[0], selinux[1]))
    lines.append("")
    registered = max((len(e) for e in data.values() if e), default=0)
    lines.append(f"critest v{CRITEST_VERSION} registers {registered} specs: the 113 of the v1.32.0 "
                 "catalogue, 4 new ones in catalogue areas and 25 in the areas marked "
                 "\"(new since v1.34)\" (areas in `critest/areas.tsv`); "
                 + (f"no spec needed the \"{OTHER}\" row." if OTHER not in per_area
                    else f"specs that match no area are in \"{OTHER}\"."))
    lines.append("SELinux specs are registered only when SELinux is enabled on the critest host "
                 "(it is not here), so that row is always 0.")
    lines.append("")

    for rt in RUNTIMES:
        if data[rt] is None:
            continue
        for outcome in ("failed", "skipped"):
            items = [(area_of(areas, t), t, r) for t, o, r in data[rt] if o == outcome]
            lines.append(f"## {LABEL[rt]}: {outcome} ({len(items)})")
            lines.append("")
            if not items:
                lines.append("None.")
            order = {n: i for i, n in enumerate(area_names)}
            for area, text, reason in sorted(items, key=lambda x: (order.get(x[0], 99), x[1])):
                spec = text.replace("[k8s.io] ", "", 1)
                reason = reason.replace("|", "\\|")
                lines.append(f"- {area} › `{spec}` — {reason}")
            lines.append("")

    out = os.path.join(HERE, "RESULTS.md")
    with open(out, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    print(f"results.py: wrote {out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--summary", metavar="REPORT", help="print the counts of one JSON report")
    ap.add_argument("--compact", nargs=2, metavar=("FULL", "OUT"),
                    help="copy a report without captured output and spec events")
    args = ap.parse_args()
    if args.compact:
        compact(*args.compact)
        return
    if args.summary:
        c = counts(specs(args.summary))
        print(f"{os.path.basename(args.summary)}: {c['passed']} passed, {c['failed']} failed, "
              f"{c['skipped']} skipped")
        return
    write_results_md()


if __name__ == "__main__":
    main()
