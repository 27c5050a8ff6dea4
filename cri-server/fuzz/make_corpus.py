#!/usr/bin/env python3
"""Writes the seed corpus of cri-server's container_spec fuzz target (committed; rerun
after edits). Each seed is the target's input format (see fuzz_targets/container_spec.rs):

    [flags][u16 LE n][image config JSON][u16 LE m][passwd NUL group][CreateContainerRequest]

The requests are written in protobuf text format and encoded with `protoc --encode`
against the CRI API berth is built from (cri-api/proto/api.proto; the `debug_redact`
options Debian's protoc does not know are dropped from a copy, as cri-api/build.rs does).

    python3 cri-server/fuzz/make_corpus.py
"""
import glob
import json
import os
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
_API = os.path.join(HERE, "..", "..", "cri-api", "proto", "api.proto")
_PROTO_DIR = __import__("tempfile").mkdtemp(prefix="cri-proto-")
PROTO = os.path.join(_PROTO_DIR, "api.proto")
with open(_API) as src, open(PROTO, "w") as dst:
    dst.write(src.read().replace(" [debug_redact = true]", ""))

POD = """
sandbox_config {
  metadata { name: "web" uid: "8f1c2a77-1b9e-4a8e-9a3e-7d1f0b8c9d10" namespace: "default" attempt: 0 }
  hostname: "web"
  log_directory: "/var/log/pods/default_web_8f1c2a77"
  dns_config { servers: "10.96.0.10" searches: "default.svc.cluster.local" options: "ndots:5" }
  port_mappings { protocol: TCP container_port: 80 host_port: 8080 }
  labels { key: "app" value: "web" }
  annotations { key: "kubernetes.io/config.source" value: "api" }
  linux {
    cgroup_parent: "/kubepods/besteffort/pod8f1c2a77"
    sysctls { key: "net.ipv4.ip_unprivileged_port_start" value: "0" }
    security_context { namespace_options { network: POD pid: CONTAINER ipc: POD } }
  }
}
"""

SEEDS = {
    "native_basic": (0, {"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-c", "sleep 1"],
                                    "Env": ["PATH=/usr/bin:/bin"], "WorkingDir": "/srv"},
                         "os": "linux", "architecture": "amd64"}, b"",
        POD + """
config {
  metadata { name: "app" attempt: 1 }
  image { image: "docker.io/library/busybox:1.36" }
  command: "/bin/sh" args: "-c" args: "echo hello"
  working_dir: "/tmp"
  envs { key: "A" value: "1" } envs { key: "PATH" value: "/bin" }
  mounts { container_path: "/data" host_path: "/var/lib/kubelet/pods/x/volumes/data" readonly: true recursive_read_only: true }
  mounts { container_path: "/cache" host_path: "/tmp/cache" propagation: PROPAGATION_HOST_TO_CONTAINER }
  labels { key: "io.kubernetes.container.name" value: "app" }
  log_path: "app/1.log"
  linux {
    resources { cpu_period: 100000 cpu_quota: 50000 cpu_shares: 512 memory_limit_in_bytes: 67108864 oom_score_adj: 1000 }
    security_context {
      capabilities { add_capabilities: "NET_ADMIN" drop_capabilities: "CAP_MKNOD" }
      run_as_user { value: 1000 } run_as_group { value: 1000 } supplemental_groups: 10
      no_new_privs: true readonly_rootfs: true
      seccomp { profile_type: RuntimeDefault }
      masked_paths: "/proc/kcore" readonly_paths: "/proc/sys"
    }
  }
}
pod_sandbox_id: "fuzzpod"
"""),
    "wasm_handler": (1, {"config": {"Entrypoint": ["/app.wasm"]}, "os": "wasip1",
                         "architecture": "wasm"}, b"",
        POD.replace('"web"', '"wasm-web"') + """
config {
  metadata { name: "wasm" }
  image { image: "ghcr.io/example/hello-wasm:v1" }
  annotations { key: "module.wasm.image/variant" value: "compat-smart" }
  linux { security_context { run_as_username: "app" seccomp { profile_type: Localhost localhost_ref: "profiles/fuzz.json" } } }
}
"""),
    "wasm_artifact": (8, {"architecture": "wasm", "os": "wasip1"}, b"",
        """
config {
  metadata { name: "artifact" }
  image { image: "ghcr.io/example/module:v1" }
  args: "--serve"
  linux { resources { memory_limit_in_bytes: 33554432 } }
}
"""),
    "userns_pod": (0x40 | 4, {"config": {"Cmd": ["sh"], "User": "app:wheel"}},
                   b"root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n\0"
                   b"root:x:0:\napp:x:1000:app\nwheel:x:10:app\n",
        """
sandbox_config {
  metadata { name: "isolated" uid: "u1" namespace: "ns" }
  linux { security_context { namespace_options { userns_options {
    mode: POD uids { container_id: 0 host_id: 200000 length: 65536 }
    gids { container_id: 0 host_id: 200000 length: 65536 } } } } }
}
config {
  metadata { name: "c" }
  image { image: "busybox" }
  linux { security_context { namespace_options { pid: TARGET target_id: "abc" } supplemental_groups_policy: Strict } }
}
"""),
    "privileged_host": (0x80 | 0x10 | 0x20, {"config": {"Entrypoint": ["/bin/sh"]}}, b"",
        """
sandbox_config {
  metadata { name: "node-agent" uid: "u2" namespace: "kube-system" }
  linux { security_context { privileged: true namespace_options { network: NODE pid: NODE ipc: NODE } } }
}
config {
  metadata { name: "agent" }
  image { image: "registry.k8s.io/agent:1" }
  linux { security_context { privileged: true apparmor { profile_type: Localhost localhost_ref: "agent" } seccomp_profile_path: "localhost/agent.json" } }
}
"""),
}


def main():
    d = os.path.join(HERE, "corpus", "container_spec")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, (flags, config, accounts, text) in SEEDS.items():
        req = subprocess.run(
            ["protoc", "-I", os.path.dirname(PROTO), "--encode=runtime.v1.CreateContainerRequest",
             os.path.basename(PROTO)],
            input=text.encode(), stdout=subprocess.PIPE, check=True,
        ).stdout
        cfg = json.dumps(config, separators=(",", ":")).encode()
        data = (bytes([flags]) + struct.pack("<H", len(cfg)) + cfg
                + struct.pack("<H", len(accounts)) + accounts + req)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
