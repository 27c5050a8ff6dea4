#!/usr/bin/env python3
"""Check a berth critest report against critest/expected-pass.txt.

    critest/check-expected.py REPORT            # exit 1 if a listed spec did not pass
    critest/check-expected.py --partial REPORT  # a --focus run: ignore specs it did not select
    critest/check-expected.py --grow REPORT     # add every spec that passed to the list

expected-pass.txt holds one spec per line, its full Ginkgo text without the "[k8s.io] "
prefix ("Runtime info runtime should support ... [Conformance]"). The list only ever
grows: --grow adds, nothing removes.
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import results  # noqa: E402  (critest/results.py)

EXPECTED = os.path.join(HERE, "expected-pass.txt")
HEADER = """\
# critest specs berth is expected to pass (full spec text without "[k8s.io] ").
# Only ever grown: `critest/check-expected.py --grow critest/results/berth.json` adds what
# passed. critest/run.sh --runtime berth fails when one of these does not pass.
"""


def name(text):
    return text.replace("[k8s.io] ", "", 1)


def read_expected():
    if not os.path.exists(EXPECTED):
        return []
    with open(EXPECTED) as f:
        return [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--partial", action="store_true")
    ap.add_argument("--grow", action="store_true")
    args = ap.parse_args()

    outcome = {name(t): (o, r) for t, o, r in results.specs(args.report)}
    expected = read_expected()

    if args.grow:
        new = sorted(s for s, (o, _) in outcome.items() if o == "passed" and s not in expected)
        with open(EXPECTED, "w") as f:
            f.write(HEADER)
            for s in sorted(set(expected) | set(new)):
                f.write(s + "\n")
        print(f"check-expected: {len(new)} spec(s) added, {len(expected) + len(new)} listed")
        return 0

    missing, not_run = [], 0
    for s in expected:
        o, reason = outcome.get(s, ("absent", "not in the report"))
        if o == "passed":
            continue
        if args.partial and (o == "absent" or reason.startswith("not selected")):
            not_run += 1
            continue
        missing.append((s, o, reason))
    for s, o, reason in missing:
        print(f"check-expected: REGRESSION {o}: {s} — {reason}", file=sys.stderr)
    checked = len(expected) - not_run
    print(f"check-expected: {checked - len(missing)}/{checked} expected specs passed"
          + (f" ({not_run} listed specs not selected by this partial run)" if not_run else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
