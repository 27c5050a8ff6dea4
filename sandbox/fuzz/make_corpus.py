#!/usr/bin/env python3
"""Writes the seed corpus of sandbox's cni_result fuzz target (committed; rerun after
edits): results of the bridge, ptp, host-local and portmap plugins, spec 0.3.1 to 1.1.0.

    python3 sandbox/fuzz/make_corpus.py
"""
import json
import os
import shutil

d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "cni_result")
shutil.rmtree(d, ignore_errors=True)
os.makedirs(d)

seeds = {
    "bridge_1.0.0": {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "berth0", "mac": "aa:bb:cc:dd:ee:ff"},
            {"name": "veth1234", "mac": "11:22:33:44:55:66"},
            {"name": "eth0", "mac": "66:55:44:33:22:11", "sandbox": "/run/berth/pods/x/ns/net"},
        ],
        "ips": [
            {"interface": 2, "address": "fd00:88::5/64", "gateway": "fd00:88::1"},
            {"interface": 2, "address": "10.88.0.5/16", "gateway": "10.88.0.1"},
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        "dns": {},
    },
    "host_local_0.3.1": {
        "cniVersion": "0.3.1",
        "ips": [{"version": "4", "address": "10.1.2.3/24", "gateway": "10.1.2.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    },
    "ptp_0.4.0": {
        "cniVersion": "0.4.0",
        "interfaces": [
            {"name": "veth9f", "mac": "ee:ee:ee:ee:ee:ee"},
            {"name": "eth0", "mac": "0a:58:0a:f4:00:07", "sandbox": "/proc/4242/ns/net"},
        ],
        "ips": [{"version": "4", "interface": 1, "address": "10.244.0.7/32", "gateway": ""}],
    },
    "portmap_1.1.0": {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"interface": 0, "address": "192.168.1.20/24"}],
        "dns": {},
    },
    "empty": {},
}
for name, doc in seeds.items():
    with open(os.path.join(d, name + ".json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
