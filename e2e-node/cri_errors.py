#!/usr/bin/env python3
"""Failed CRI calls in a kubelet log, grouped: one line per kind, most frequent first.

    cri_errors.py KUBELET_LOG [--max N]

A line counts when it carries a gRPC status ("rpc error: code = ...", "Unimplemented"), or
is an error-level (E) line that names a CRI RPC and says it failed. Lines about the
kubelet's own back-off decisions (CrashLoopBackOff, ImagePullBackOff) do not count: they are
the kubelet saying no, not the runtime. Each group is printed as
"FAIL <count>x [<RPCs>] <message> err=<error>" with IDs, UIDs and numbers elided, or with
"ok  " in front and the reason after it when the kubelet asked for the failure:
  - PodSandboxStats("") NotFound: the kubelet's start-up probe (cmd/kubelet/app/server.go)
    that only looks for Unimplemented to decide whether the runtime serves CRI stats;
  - NotFound for a container the kubelet had already removed (it logs "RemoveContainer"
    for the same ID before; a second removal of a dead container).
Exit status 1 when a FAIL line was printed. Standard library only.
"""

import argparse
import collections
import re
import sys

RPCS = """RunPodSandbox StopPodSandbox RemovePodSandbox PodSandboxStatus ListPodSandbox
CreateContainer StartContainer StopContainer RemoveContainer ListContainers ContainerStatus
UpdateContainerResources ReopenContainerLog ExecSync PortForward ContainerStats
ListContainerStats PodSandboxStats ListPodSandboxStats UpdateRuntimeConfig RuntimeConfig
CheckpointContainer GetContainerEvents ListMetricDescriptors ListPodSandboxMetrics
StreamPodSandboxMetrics UpdatePodSandboxResources CheckpointPod RestorePod StreamPodSandboxes
StreamContainers StreamContainerStats StreamPodSandboxStats StreamImages ListImages
ImageStatus PullImage RemoveImage ImageFsInfo""".split()
RPC_RE = re.compile(r"\b(" + "|".join(RPCS) + r")\b")
GRPC_RE = re.compile(r"rpc error|code = [A-Z]|Unimplemented|UNIMPLEMENTED")
FAILED_RE = re.compile(r"fail", re.I)
NOT_FOUND_RE = re.compile(r"code = NotFound")
PROBE_RE = re.compile(r'"PodSandbox from runtime service failed".*podSandboxID=""$')
REMOVED_RE = re.compile(r'"RemoveContainer" containerID="([0-9a-f]+)"')
CONTAINER_ID_RE = re.compile(r'containerID="([0-9a-f]+)"|"ID":"([0-9a-f]+)"')
NOT_RUNTIME_RE = re.compile(r"CrashLoopBackOff|ImagePullBackOff|ErrImagePull.*back-off|Back-off")
# klog header: E1206 05:05:03.123456   12345 file.go:123]
HEADER_RE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ (\S+:\d+)\] ?(.*)$")
ELIDE = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<uid>"),
    (re.compile(r"\b[0-9a-f]{12,64}\b"), "<id>"),
    (re.compile(r"\b\d+(\.\d+)?(ms|s|µs|ns)\b"), "<dur>"),
    (re.compile(r"\b\d{5,}\b"), "<n>"),
]


def normalize(text):
    for pattern, repl in ELIDE:
        text = pattern.sub(repl, text)
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("--max", type=int, default=30)
    args = ap.parse_args()
    groups = collections.Counter()
    rpcs_of = {}
    why_ok = {}
    removed = set()
    with open(args.log, errors="replace") as f:
        for line in f:
            m = HEADER_RE.match(line.rstrip("\n"))
            if not m:
                continue
            level, _src, rest = m.groups()
            r = REMOVED_RE.search(rest)
            if r:
                removed.add(r.group(1))
            if NOT_RUNTIME_RE.search(rest):
                continue
            rpcs = sorted(set(RPC_RE.findall(rest)))
            grpc = GRPC_RE.search(rest)
            if not grpc and not (level == "E" and rpcs and FAILED_RE.search(rest)):
                continue
            key = normalize(rest)[:400]
            ok = expected(rest, removed)
            if ok:
                why_ok[key] = ok
            else:
                why_ok.pop(key, None)
            groups[key] += 1
            rpcs_of.setdefault(key, set()).update(rpcs)
    failed = False
    for key, count in groups.most_common(args.max):
        rpcs = ",".join(sorted(rpcs_of[key])) or "-"
        if key in why_ok:
            print(f"ok   {count}x [{rpcs}] {key} -- expected: {why_ok[key]}")
        else:
            failed = True
            print(f"FAIL {count}x [{rpcs}] {key}")
    if len(groups) > args.max:
        failed = failed or any(k not in why_ok for k, _ in groups.most_common()[args.max:])
        print(f"... and {len(groups) - args.max} more kinds")
    return 1 if failed else 0


def expected(rest, removed):
    """Why a failure is one the kubelet asked for, or None."""
    if not NOT_FOUND_RE.search(rest):
        return None
    if PROBE_RE.search(rest):
        return "the kubelet's start-up PodSandboxStats(\"\") probe (only Unimplemented matters)"
    ids = {a or b for a, b in CONTAINER_ID_RE.findall(rest)}
    if ids and ids <= removed:
        return "the kubelet had removed this container already (a second RemoveContainer)"
    return None


if __name__ == "__main__":
    sys.exit(main())
