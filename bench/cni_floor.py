#!/usr/bin/env python3
"""The CNI plugins alone, without any runtime: what RunPodSandbox and StopPodSandbox cannot
go below with this network configuration on this machine.

    cni_floor.py CONFLIST OUT.json [--runs 30] [--cni-path /usr/lib/cni]

Per run, like critest's pod benchmark and one pod after the other: a network namespace
(`ip netns add`, lo up), ADD through the list in order (each plugin gets the previous
result), DEL in reverse. Twice: once deleting each namespace right after its DEL (as
containerd does), once deleting them all at the end (as berth's batched release does in
effect): the kernel's teardown of a namespace runs RCU barriers that the next DEL's veth
deletion queues behind. Times are for the plugin processes only (spawn to exit), so they
are a floor for the runtimes, which run the same plugins with the same configuration.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def run_plugin(cni_path, net, plugin, command, cid, netns, prev):
    conf = dict(plugin)
    conf["cniVersion"] = net["cniVersion"]
    conf["name"] = net["name"]
    if prev is not None:
        conf["prevResult"] = prev
    if plugin.get("capabilities", {}).get("portMappings"):
        conf["runtimeConfig"] = {"portMappings": []}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": cni_path,
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    binary = next((os.path.join(d, plugin["type"]) for d in cni_path.split(":")
                   if os.path.exists(os.path.join(d, plugin["type"]))), None)
    if binary is None:
        sys.exit(f"cni_floor.py: plugin {plugin['type']} not in {cni_path}")
    t = time.perf_counter()
    r = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{plugin['type']} {command}: {r.stdout.decode()} {r.stderr.decode()}")
    out = json.loads(r.stdout) if command == "ADD" and r.stdout.strip() else None
    return out, elapsed * 1000.0


def one_pod(cni_path, net, i, held):
    cid = f"berth-cni-floor-{os.getpid()}-{i}"
    ns = f"berth-cni-floor-{i}"
    netns = f"/run/netns/{ns}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    add_ms = del_ms = 0.0
    result = None
    try:
        for plugin in net["plugins"]:
            result, ms = run_plugin(cni_path, net, plugin, "ADD", cid, netns, result)
            add_ms += ms
    finally:
        for plugin in reversed(net["plugins"]):
            _, ms = run_plugin(cni_path, net, plugin, "DEL", cid, netns, result)
            del_ms += ms
        if held is None:
            subprocess.run(["ip", "netns", "del", ns], check=True)
        else:
            held.append(ns)
    return add_ms, del_ms


def series(cni_path, net, runs, tag, later):
    """ADD and DEL times of `runs` pods; namespaces deleted at once, or at the end."""
    held = [] if later else None
    adds, dels = [], []
    try:
        for i in range(runs):
            add_ms, del_ms = one_pod(cni_path, net, f"{tag}-{i}", held)
            adds.append(add_ms)
            dels.append(del_ms)
    finally:
        for ns in held or []:
            subprocess.run(["ip", "netns", "del", ns], check=True)
    return adds, dels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("conflist")
    ap.add_argument("out")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--cni-path", default="/usr/lib/cni:/opt/cni/bin")
    a = ap.parse_args()
    net = json.load(open(a.conflist))
    one_pod(a.cni_path, net, "warm-up", None)
    adds, dels = series(a.cni_path, net, a.runs, "now", later=False)
    adds_later, dels_later = series(a.cni_path, net, a.runs, "later", later=True)
    time.sleep(1)  # let the kernel finish the namespaces deleted last
    res = {"conflist": os.path.basename(a.conflist),
           "plugins": [p["type"] for p in net["plugins"]], "runs": a.runs,
           "add_ms": adds, "del_ms": dels,
           "add_median_ms": statistics.median(adds), "del_median_ms": statistics.median(dels),
           "netns_deleted_later": {
               "add_ms": adds_later, "del_ms": dels_later,
               "add_median_ms": statistics.median(adds_later),
               "del_median_ms": statistics.median(dels_later)}}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    later = res["netns_deleted_later"]
    print(f"cni_floor: ADD median {res['add_median_ms']:.2f} ms, DEL median "
          f"{res['del_median_ms']:.2f} ms over {a.runs} runs; with the namespaces deleted at "
          f"the end: ADD {later['add_median_ms']:.2f}, DEL {later['del_median_ms']:.2f}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
