#!/usr/bin/env python3
"""Wasm and monitor benchmarks against one CRI runtime, through its gRPC socket.

    wasm_bench.py --runtime berth|containerd --endpoint unix:///PATH --out FILE.json
                  [--root DIR] [--runs 20] [--mem-containers 10]
                  [--scale 1000] [--scale-pods 10] [--scale-seconds 600]

Run by bench/wasm.sh, which starts and stops the runtimes (critest/lib.sh). A CRI client in
this process (grpcio, stubs generated from the CRI api.proto) keeps client start-up out of
the timings, which crictl would add to every call.

berth:
  first-line-wasm-warm   CreateContainer + StartContainer of wasm-hello:compat-smart until
                         its CRI log file holds a complete line, compile cache warm
  first-line-wasm-cold   the same with <root>/wasm-cache/{index,objects} emptied before
                         each run (so CreateContainer compiles the module)
  first-line-native      the same for busybox `echo` (a native container)
  memory-wasm            PSS of the container process + its monitor, idle wasm-loop
  memory-native          the same for busybox `sleep`; also the monitor's VmRSS and PSS
  scale                  wasm-loop containers in --scale-pods pods up to --scale, with
                         ListContainers latency, memory used and time taken
containerd: first-line-native, memory-native (container PSS + its share of the pod's
containerd-shim-runc-v2; the shim's own VmRSS and PSS), scale with busybox `sleep`.
"""

import argparse
import glob
import importlib
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STUBS = os.path.join(HERE, "out", "cri_pb")

WASM_HELLO = "127.0.0.1:5000/berth-test/wasm-hello:compat-smart"
WASM_LOOP = "127.0.0.1:5000/berth-test/wasm-loop:compat-smart"
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-2"


def proto_file():
    """The CRI v1 api.proto: the one berth builds with (k8s-cri crate), else cri-api's."""
    cands = sorted(glob.glob(os.path.expanduser("~/.cargo/registry/src/*/k8s-cri-*/proto/v1.proto")))
    cands += sorted(glob.glob(os.path.expanduser("~/go/pkg/mod/k8s.io/cri-api@*/pkg/apis/runtime/v1/api.proto")))
    if not cands:
        sys.exit("wasm_bench.py: no CRI api.proto found (cargo registry or Go module cache)")
    return cands[-1]


def load_stubs():
    src = proto_file()
    name = os.path.splitext(os.path.basename(src))[0]
    os.makedirs(STUBS, exist_ok=True)
    stamp = os.path.join(STUBS, "source.txt")
    if not os.path.exists(os.path.join(STUBS, name + "_pb2.py")) or \
            not os.path.exists(stamp) or open(stamp).read() != src:
        from grpc_tools import protoc
        rc = protoc.main(["protoc", "-I", os.path.dirname(src), "--python_out", STUBS,
                          "--grpc_python_out", STUBS, src])
        if rc != 0:
            sys.exit(f"wasm_bench.py: protoc failed on {src}")
        open(stamp, "w").write(src)
    sys.path.insert(0, STUBS)
    return importlib.import_module(name + "_pb2"), importlib.import_module(name + "_pb2_grpc")


def log(msg):
    print(f"wasm_bench: {msg}", file=sys.stderr, flush=True)


def ms(seconds):
    return seconds * 1000.0


def proc_kb(pid, path, key):
    with open(f"/proc/{pid}/{path}") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/{path}")


def pss_kb(pid):
    return proc_kb(pid, "smaps_rollup", "Pss")


def rss_kb(pid):
    return proc_kb(pid, "status", "VmRSS")


def uss_kb(pid):
    """Memory only this process holds (private clean + private dirty pages)."""
    return proc_kb(pid, "smaps_rollup", "Private_Clean") + proc_kb(pid, "smaps_rollup", "Private_Dirty")


def ppid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    return 0


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def meminfo_kb():
    m = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":")
            m[k] = int(v.split()[0])
    return m


def mem_used_mib():
    """The "used" column of `free -m` (procps 4: total - available)."""
    out = subprocess.run(["free", "-m"], capture_output=True, text=True, check=True).stdout
    return float(next(line.split()[2] for line in out.splitlines() if line.startswith("Mem:")))


def mem_available_mib():
    return meminfo_kb()["MemAvailable"] / 1024.0


def logged(path, text):
    try:
        with open(path, errors="replace") as f:
            return text in f.read()
    except FileNotFoundError:
        return False


DAEMON_PID = 0


def daemon_mem():
    """The runtime daemon's VmRSS and PSS in MiB (needs --daemon-pid)."""
    if DAEMON_PID <= 0:
        return None
    try:
        return {"rss_mib": round(rss_kb(DAEMON_PID) / 1024.0, 1), "pss_mib": round(pss_kb(DAEMON_PID) / 1024.0, 1)}
    except OSError:
        return None


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


class Cri:
    def __init__(self, endpoint, pb, pb_grpc, workdir):
        import grpc
        self.pb = pb
        self.chan = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 64 << 20),
                                                             ("grpc.default_authority", "localhost")])
        self.rt = pb_grpc.RuntimeServiceStub(self.chan)
        self.img = pb_grpc.ImageServiceStub(self.chan)
        self.workdir = workdir
        self.pods = []

    def pull(self, image):
        self.img.PullImage(self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image)), timeout=300)

    def pod_config(self, name, annotations=None, host_network=False):
        """A pod config with its own log directory; `host_network`: network NODE."""
        logdir = os.path.join(self.workdir, "logs", name)
        os.makedirs(logdir, exist_ok=True)
        linux = self.pb.LinuxPodSandboxConfig()
        if host_network:
            linux.security_context.namespace_options.network = self.pb.NODE
        cfg = self.pb.PodSandboxConfig(
            metadata=self.pb.PodSandboxMetadata(name=name, namespace="berth-bench", uid=f"bench-{name}-{os.getpid()}"),
            log_directory=logdir, annotations=annotations or {}, linux=linux)
        return cfg, logdir

    def run_pod(self, name, annotations=None):
        cfg, logdir = self.pod_config(name, annotations)
        pid = self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(config=cfg), timeout=120).pod_sandbox_id
        self.pods.append(pid)
        return (pid, cfg, logdir)

    def create(self, pod, name, image, command=(), args=()):
        pid, cfg, _ = pod
        c = self.pb.ContainerConfig(
            metadata=self.pb.ContainerMetadata(name=name), image=self.pb.ImageSpec(image=image),
            command=list(command), args=list(args), log_path=name + ".log",
            linux=self.pb.LinuxContainerConfig())
        return self.rt.CreateContainer(self.pb.CreateContainerRequest(
            pod_sandbox_id=pid, config=c, sandbox_config=cfg), timeout=120).container_id

    def start(self, cid):
        self.rt.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=120)

    def status(self, cid):
        r = self.rt.ContainerStatus(self.pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=60)
        info = json.loads(r.info["info"]) if "info" in r.info else {}
        return r.status, info

    def remove(self, cid):
        self.rt.StopContainer(self.pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
        self.rt.RemoveContainer(self.pb.RemoveContainerRequest(container_id=cid), timeout=60)

    def remove_pod(self, pod_id):
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=600)
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=600)
        self.pods.remove(pod_id)

    def list_ms(self):
        t = time.perf_counter()
        n = len(self.rt.ListContainers(self.pb.ListContainersRequest(), timeout=60).containers)
        return ms(time.perf_counter() - t), n

    def cleanup(self):
        for p in list(self.pods):
            try:
                self.remove_pod(p)
            except Exception as e:  # noqa: BLE001 - best effort; the harness sweeps the rest
                log(f"removing pod {p[:12]}: {e}")


def wait_line(path, deadline_s=15.0):
    """Waits until the file holds a complete (newline-terminated) line."""
    t_end = time.perf_counter() + deadline_s
    while True:
        try:
            with open(path, "rb") as f:
                if b"\n" in f.read(65536):
                    return True
        except FileNotFoundError:
            pass
        if time.perf_counter() > t_end:
            return False
        time.sleep(0.0002)


def cache_objects(root):
    return glob.glob(os.path.join(root, "wasm-cache", "objects", "*.cwasm"))


def clear_wasm_cache(root):
    """Empties the compile cache; fails if there was nothing to clear (wrong dir)."""
    files = [f for sub in ("index", "objects") for f in glob.glob(os.path.join(root, "wasm-cache", sub, "*"))]
    if not files:
        raise RuntimeError(f"no compile cache entries under {root}/wasm-cache to clear")
    for f in files:
        os.unlink(f)


def check_compiled(root):
    """After a cold CreateContainer: the module was compiled into the cache again."""
    if len(cache_objects(root)) != 1:
        raise RuntimeError(f"expected one freshly compiled object in {root}/wasm-cache/objects")


def first_line_series(cri, pod, label, image, command, runs, warmups, before=None, after_create=None,
                      expect_runtime=None):
    """Medians of create, start and create+start-to-first-log-line over `runs`."""
    samples = []
    _, _, logdir = pod
    for i in range(warmups + runs):
        name = f"{label}-{i}"
        if before:
            before()
        t0 = time.perf_counter()
        cid = cri.create(pod, name, image, command)
        t1 = time.perf_counter()
        if after_create:
            after_create()
        cri.start(cid)
        t2 = time.perf_counter()
        if not wait_line(os.path.join(logdir, name + ".log")):
            st, _ = cri.status(cid)
            raise RuntimeError(f"{label}: no log line within 15 s (state {st.state}, exit {st.exit_code}, {st.message})")
        t3 = time.perf_counter()
        if i == 0 and expect_runtime:
            _, info = cri.status(cid)
            if info.get("runtime") != expect_runtime:
                raise RuntimeError(f"{label}: ran as {info.get('runtime')}, expected {expect_runtime}")
        if i >= warmups:
            samples.append((ms(t1 - t0), ms(t2 - t1), ms(t3 - t0)))
        cri.remove(cid)
    med = lambda k: statistics.median(s[k] for s in samples)  # noqa: E731
    return {"runs": runs, "warmups": warmups, "create_ms": med(0), "start_ms": med(1), "total_ms": med(2),
            "total_min_ms": min(s[2] for s in samples), "total_max_ms": max(s[2] for s in samples),
            "samples_total_ms": [round(s[2], 3) for s in samples]}


def host_network_pods(cri, runs, warmups=2):
    """RunPodSandbox / StopPodSandbox / RemovePodSandbox of an empty pod on the host network
    (its own PID namespace, so berth starts its pod init and containerd its pause container)."""
    pb = cri.pb
    series = {"run": [], "stop": [], "remove": []}
    for i in range(warmups + runs):
        cfg, _ = cri.pod_config(f"host-{i}", host_network=True)
        t0 = time.perf_counter()
        pod_id = cri.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=120).pod_sandbox_id
        t1 = time.perf_counter()
        cri.rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        t2 = time.perf_counter()
        cri.rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=120)
        t3 = time.perf_counter()
        if i >= warmups:
            for k, v in zip(series, (t1 - t0, t2 - t1, t3 - t2)):
                series[k].append(ms(v))
    out = {"runs": runs, "warmups": warmups}
    for k, v in series.items():
        out[f"{k}_ms"] = statistics.median(v)
        out[f"samples_{k}_ms"] = [round(x, 3) for x in v]
    return out


def idle_memory(cri, runtime, label, image, command, n, wait_text):
    """PSS of each container process and its parent (berth's monitor, containerd's shim)."""
    pod = cri.run_pod(f"mem-{label}")
    cids = []
    for i in range(n):
        cid = cri.create(pod, f"{label}-{i}", image, command)
        cri.start(cid)
        cids.append(cid)
    _, _, logdir = pod
    deadline = time.time() + 30
    for i in range(n if wait_text else 0):
        while not logged(os.path.join(logdir, f"{label}-{i}.log"), wait_text):
            if time.time() > deadline:
                raise RuntimeError(f"{label}-{i}: '{wait_text}' not logged within 30 s")
            time.sleep(0.1)
    time.sleep(3)  # idle
    rows = []
    for cid in cids:
        st, info = cri.status(cid)
        pid = int(info.get("pid") or 0)
        if st.state != 1 or pid <= 0:
            raise RuntimeError(f"{label}: container {cid[:12]} not running (state {st.state}, pid {pid})")
        parent = ppid(pid)
        rows.append({"pid": pid, "parent": parent, "parent_cmd": cmdline(parent)[:120],
                     "runtime": info.get("runtime", "native"),
                     "ctr_pss_kb": pss_kb(pid), "ctr_rss_kb": rss_kb(pid),
                     "parent_pss_kb": pss_kb(parent), "parent_rss_kb": rss_kb(parent),
                     "parent_uss_kb": uss_kb(parent),
                     "parent_rss_anon_kb": proc_kb(parent, "status", "RssAnon"),
                     "parent_rss_file_kb": proc_kb(parent, "status", "RssFile"),
                     "parent_rss_shmem_kb": proc_kb(parent, "status", "RssShmem")})
    parents = {r["parent"] for r in rows}
    out = {"containers": n, "rows": rows, "distinct_parents": len(parents),
           "ctr_pss_kb_avg": statistics.mean(r["ctr_pss_kb"] for r in rows),
           "ctr_rss_kb_avg": statistics.mean(r["ctr_rss_kb"] for r in rows)}
    if runtime == "berth":
        bad = [r for r in rows if "__monitor" not in r["parent_cmd"]]
        if bad:
            raise RuntimeError(f"{label}: parent of pid {bad[0]['pid']} is not a monitor: {bad[0]['parent_cmd']}")
        out["monitor_pss_kb_avg"] = statistics.mean(r["parent_pss_kb"] for r in rows)
        out["monitor_rss_kb_avg"] = statistics.mean(r["parent_rss_kb"] for r in rows)
        out["monitor_uss_kb_avg"] = statistics.mean(r["parent_uss_kb"] for r in rows)
        # VmRSS = anonymous + file-backed (libc, ...) + shmem (the sealed memfd copy of berth
        # the monitor runs from, shared by all monitors).
        for part in ("anon", "file", "shmem"):
            out[f"monitor_rss_{part}_kb_avg"] = statistics.mean(r[f"parent_rss_{part}_kb"] for r in rows)
        out["per_container_pss_kb"] = out["ctr_pss_kb_avg"] + out["monitor_pss_kb_avg"]
    else:
        # One containerd-shim-runc-v2 per pod serves all its containers (and the pause
        # container, whose own PSS is not counted here).
        shim = rows[0]["parent"]
        if any(r["parent"] != shim for r in rows) or "containerd-shim" not in rows[0]["parent_cmd"]:
            raise RuntimeError(f"{label}: unexpected parents {parents}: {rows[0]['parent_cmd']}")
        out["shim_pss_kb"] = pss_kb(shim)
        out["shim_rss_kb"] = rss_kb(shim)
        out["shim_uss_kb"] = uss_kb(shim)
        out["per_container_pss_kb"] = out["ctr_pss_kb_avg"] + out["shim_pss_kb"] / n
    cri.remove_pod(pod[0])
    return out


def scale(cri, image, command, total, pods, seconds, min_avail_mib):
    """Up to `total` idle containers in `pods` pods, within `seconds` and while memory lasts."""
    per_pod = -(-total // pods)
    used_before = mem_used_mib()
    daemon_before = daemon_mem()
    t0 = time.perf_counter()
    created = 0
    stop_reason = None
    checkpoints = []
    pod_list = []
    try:
        for p in range(pods):
            pod = cri.run_pod(f"scale-{p}")
            pod_list.append(pod[0])
            for i in range(per_pod):
                if created >= total:
                    break
                if time.perf_counter() - t0 > seconds:
                    stop_reason = f"time cap of {seconds} s reached"
                    break
                if mem_available_mib() < min_avail_mib:
                    stop_reason = f"MemAvailable fell below {min_avail_mib} MiB"
                    break
                cid = cri.create(pod, f"c{i}", image, command)
                cri.start(cid)
                created += 1
                if created % 100 == 0:
                    lat = sorted(cri.list_ms()[0] for _ in range(5))
                    checkpoints.append({"containers": created, "elapsed_s": round(time.perf_counter() - t0, 1),
                                        "list_ms_median": round(lat[2], 2), "mem_used_mib": round(mem_used_mib()),
                                        "loadavg": loadavg()})
                    log(f"scale: {checkpoints[-1]}")
            if stop_reason:
                break
    except Exception as e:  # noqa: BLE001 - report how far it got
        stop_reason = f"error after {created} containers: {e}"
    create_s = time.perf_counter() - t0
    time.sleep(5)  # let them settle into idle
    lats = []
    listed = 0
    for _ in range(20):
        v, listed = cri.list_ms()
        lats.append(v)
    running = sum(1 for c in cri.rt.ListContainers(cri.pb.ListContainersRequest(), timeout=60).containers
                  if c.state == 1)
    used_after = mem_used_mib()
    # PSS of every container process and of its monitors (berth) / shims (containerd):
    # unlike free -m, not moved by other work on the machine.
    ctr_pss = 0
    parents = set()
    for c in cri.rt.ListContainers(cri.pb.ListContainersRequest(), timeout=60).containers:
        try:
            _, info = cri.status(c.id)
            pid = int(info.get("pid") or 0)
            if pid > 0:
                ctr_pss += pss_kb(pid)
                parents.add(ppid(pid))
        except (OSError, KeyError, ValueError):
            pass
    parent_pss = sum(pss_kb(p) for p in parents if p > 1)
    daemon = daemon_mem()
    t1 = time.perf_counter()
    for p in pod_list:
        cri.remove_pod(p)
    cleanup_s = time.perf_counter() - t1
    return {"target": total, "pods": pods, "created": created, "running": running, "listed": listed,
            "stop_reason": stop_reason, "create_s": round(create_s, 1),
            "list_ms_median": statistics.median(lats), "list_ms_max": max(lats),
            "mem_used_before_mib": round(used_before), "mem_used_after_mib": round(used_after),
            "mem_delta_mib": round(used_after - used_before), "cleanup_s": round(cleanup_s, 1),
            "pss_containers_mib": round(ctr_pss / 1024.0, 1), "pss_monitors_mib": round(parent_pss / 1024.0, 1),
            "monitors": len(parents), "daemon_before": daemon_before, "daemon_after": daemon,
            "pss_per_container_mib": (ctr_pss + parent_pss) / 1024.0 / max(created, 1),
            "checkpoints": checkpoints, "loadavg_end": loadavg()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", required=True, choices=["berth", "containerd"])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", help="berth's root dir (its wasm-cache is cleared for the cold runs)")
    ap.add_argument("--workdir", default="/run/berth-bench-wasm/work")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mem-containers", type=int, default=10)
    ap.add_argument("--scale", type=int, default=1000)
    ap.add_argument("--scale-pods", type=int, default=10)
    ap.add_argument("--scale-seconds", type=int, default=600)
    ap.add_argument("--min-available-mib", type=int, default=3072)
    ap.add_argument("--only", default="first-line,pods-host,memory,scale")
    ap.add_argument("--daemon-pid", type=int, default=0)
    a = ap.parse_args()
    global DAEMON_PID
    DAEMON_PID = a.daemon_pid
    only = set(a.only.split(","))
    pb, pb_grpc = load_stubs()
    cri = Cri(a.endpoint, pb, pb_grpc, a.workdir)
    res = {"runtime": a.runtime, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "nproc": os.cpu_count(), "kernel": os.uname().release, "loadavg_start": loadavg(),
           "command": " ".join(sys.argv), "results": {}, "errors": {}}
    r = res["results"]

    def step(key, fn):
        log(f"{a.runtime}: {key} (load {loadavg()})")
        try:
            r[key] = fn()
            r[key]["loadavg_after"] = loadavg()
        except Exception as e:  # noqa: BLE001 - recorded as n/a with the reason
            log(f"{a.runtime}: {key} failed: {e}")
            res["errors"][key] = str(e).splitlines()[0][:300]

    try:
        images = [BUSYBOX] + ([WASM_HELLO, WASM_LOOP] if a.runtime == "berth" else [])
        for im in images:
            cri.pull(im)
        if "first-line" in only:
            pod = cri.run_pod("first-line")
            step("first-line-native", lambda: first_line_series(
                cri, pod, "native", BUSYBOX, ["/bin/echo", "hello from busybox"], a.runs, 2,
                expect_runtime="native" if a.runtime == "berth" else None))
            if a.runtime == "berth":
                step("first-line-wasm-warm", lambda: first_line_series(
                    cri, pod, "warm", WASM_HELLO, [], a.runs, 2, expect_runtime="wasm"))
                step("first-line-wasm-cold", lambda: first_line_series(
                    cri, pod, "cold", WASM_HELLO, [], a.runs, 0,
                    before=lambda: clear_wasm_cache(a.root), after_create=lambda: check_compiled(a.root),
                    expect_runtime="wasm"))
            cri.remove_pod(pod[0])
        if "pods-host" in only:
            step("pods-host", lambda: host_network_pods(cri, a.runs))
        if "memory" in only:
            step("memory-native", lambda: idle_memory(
                cri, a.runtime, "sleep", BUSYBOX, ["/bin/sleep", "3600"], a.mem_containers, None))
            if a.runtime == "berth":
                step("memory-wasm", lambda: idle_memory(
                    cri, a.runtime, "loop", WASM_LOOP, [], a.mem_containers, "tick"))
        if "scale" in only and a.scale > 0:
            if a.runtime == "berth":
                step("scale", lambda: scale(cri, WASM_LOOP, [], a.scale, a.scale_pods, a.scale_seconds,
                                            a.min_available_mib))
            else:
                step("scale", lambda: scale(cri, BUSYBOX, ["/bin/sleep", "3600"], a.scale, a.scale_pods,
                                            a.scale_seconds, a.min_available_mib))
    finally:
        cri.cleanup()
        res["loadavg_end"] = loadavg()
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
