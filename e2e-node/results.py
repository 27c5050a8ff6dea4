#!/usr/bin/env python3
"""Summarises a ginkgo v2 JSON report of a node e2e run (e2e-node/run.sh) by area.

    e2e-node/results.py REPORT.json [--markdown]

Area = the spec's outermost container ("[sig-node] Container Lifecycle Hook"). Specs that
the focus/skip filters left out are not counted; a spec skipped at run time (e2eskipper,
a missing feature) is "skipped". Prints a table (Markdown with --markdown, rows in the
RESULTS.md layout with the containerd columns "not run"), then each failed spec with the
first lines of its failure and where it failed.
"""

import json
import re
import sys
from collections import OrderedDict


def name_of(spec):
    return " ".join([*(spec.get("ContainerHierarchyTexts") or []), spec.get("LeafNodeText", "")]).strip()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    markdown = "--markdown" in sys.argv[2:]
    with open(sys.argv[1]) as f:
        suites = json.load(f)
    areas = OrderedDict()
    failed = []
    filtered = 0
    for suite in suites:
        for spec in suite.get("SpecReports") or []:
            if spec.get("LeafNodeType") != "It":
                # BeforeSuite/AfterSuite failures count too.
                if spec.get("State") not in ("passed", "skipped", None):
                    failed.append((spec.get("LeafNodeType"), spec))
                continue
            state = spec.get("State")
            msg = (spec.get("Failure") or {}).get("Message", "")
            if state == "skipped" and not msg:
                filtered += 1
                continue
            area = (spec.get("ContainerHierarchyTexts") or ["(top level)"])[0]
            counts = areas.setdefault(area, {"passed": 0, "failed": 0, "skipped": 0})
            if state == "passed":
                counts["passed"] += 1
            elif state == "skipped" or state == "pending":
                counts["skipped"] += 1
            else:
                counts["failed"] += 1
                failed.append((state, spec))
    total = {k: sum(c[k] for c in areas.values()) for k in ("passed", "failed", "skipped")}
    if markdown:
        print("| Area | berth passed | berth failed | berth skipped | containerd passed | containerd failed | containerd skipped |")
        print("|---|---|---|---|---|---|---|")
        for area, c in sorted(areas.items()):
            print(f"| {area} | {c['passed']} | {c['failed']} | {c['skipped']} | not run | not run | not run |")
        print(f"| **Total** | **{total['passed']}** | **{total['failed']}** | **{total['skipped']}** | not run | not run | not run |")
    else:
        for area, c in sorted(areas.items()):
            print(f"{c['passed']:4d} passed {c['failed']:4d} failed {c['skipped']:4d} skipped  {area}")
        print(f"{total['passed']:4d} passed {total['failed']:4d} failed {total['skipped']:4d} skipped  TOTAL"
              f" ({filtered} specs not selected)")
    for state, spec in failed:
        fail = spec.get("Failure") or {}
        loc = fail.get("Location") or {}
        msg = re.sub(r"\s+", " ", fail.get("Message", ""))[:600]
        where = f"{loc.get('FileName', '?').split('k8s.io/kubernetes@v1.37.2/')[-1]}:{loc.get('LineNumber', '?')}"
        print(f"\n{'- ' if markdown else ''}{'**' if markdown else ''}{name_of(spec) or spec.get('LeafNodeType')}"
              f"{'**' if markdown else ''} ({state}, {where}): {msg}")


if __name__ == "__main__":
    main()
