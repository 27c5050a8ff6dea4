#!/usr/bin/env python3
"""Reproducible builder of berth's test images: the stand-ins for every image critest
v1.34.0 pulls, plus WASI test images. Writes one OCI image layout.

    critest/images/build.py [--cache DIR] [--out DIR]

Inputs are Debian packages used as data (busybox, libc6; fetched with `apt-get download`
into the cache dir), small shell scripts and two tiny C programs (gcc), and WAT sources
(wat2wasm, Debian's wabt). All tar entries have fixed owners and mtimes and gzip streams
have mtime 0, so the same inputs give byte-identical blobs and digests on every run.

Each manifest in OUT/index.json carries `org.opencontainers.image.ref.name` = the
repository path and tag it gets in the local registry (e.g. `e2e-test-images/busybox:1.29-2`);
critest/registry.sh pushes them. A summary (ref, manifest digest, config digest) is
written to OUT/refs.tsv. See critest/images/README.md for what each image is for.
"""

import argparse
import glob
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

EPOCH = 946684800  # 2000-01-01T00:00:00Z, every file's mtime
CREATED = "2000-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
WASM_VARIANT = "module.wasm.image/variant"

# ---------------------------------------------------------------------------------------
# File contents of the stand-ins.

ETC_PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
"""

ETC_GROUP = """\
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
operator:x:37:
staff:x:50:
users:x:100:
nogroup:x:65534:
"""

ETC_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"

# Debian's busybox has neither pgrep nor ipcs; critest runs `pgrep sleep` and `ipcs -m`.
BIN_PGREP = r"""#!/bin/sh
# pgrep PATTERN: print the PIDs whose process name (comm) matches the extended regex.
[ $# -eq 1 ] || { echo "usage: pgrep PATTERN" >&2; exit 2; }
found=1
for dir in /proc/[0-9]*; do
  pid=${dir#/proc/}
  [ "$pid" = "$$" ] && continue
  name=$(cat "$dir/comm" 2>/dev/null) || continue
  if echo "$name" | grep -Eq -- "$1"; then
    echo "$pid"
    found=0
  fi
done
exit $found
"""

BIN_IPCS = r"""#!/bin/sh
# ipcs [-m|-a]: list System V shared memory segments from /proc/sysvipc/shm.
case "${1:--m}" in
  -m|-a) ;;
  *) echo "ipcs: only shared memory (-m) is listed here" >&2; exit 1 ;;
esac
printf '\n------ Shared Memory Segments --------\n'
printf 'key        shmid      owner      perms      bytes      nattch     status\n'
[ -r /proc/sysvipc/shm ] && awk 'NR > 1 {
  printf "0x%08x %-10s %-10s %-10s %-10s %-10s\n", $1, $2, $8, $3, $4, $7 }' /proc/sysvipc/shm
printf '\n'
"""

# nginx stand-in: the process is named nginx (pidof), has "master process" in its
# command line, writes /var/run/nginx.pid and serves HTTP on ${NGINX_PORT:-80}.
USR_SBIN_NGINX = r"""#!/bin/sh
# nginx stand-in on top of busybox httpd (see critest/images/README.md).
[ "$1" = "nginx: master process" ] || exec "$0" "nginx: master process" "$@"
echo $$ > /var/run/nginx.pid
httpd -f -p "${NGINX_PORT:-80}" -h /usr/share/nginx/html &
server=$!
trap 'kill $server 2>/dev/null; rm -f /var/run/nginx.pid; exit 0' INT QUIT TERM
wait $server
"""

HTTPD_FOREGROUND = r"""#!/bin/sh
# Apache httpd-foreground stand-in on top of busybox httpd; logs a line naming httpd.
echo "httpd-foreground: serving /usr/local/apache2/htdocs on port 80 (busybox httpd)" >&2
httpd -f -v -p 80 -h /usr/local/apache2/htdocs &
server=$!
trap 'kill $server 2>/dev/null; exit 0' INT QUIT TERM WINCH
wait $server
"""

# Sandbox process. It must not be a shell running sleep: containers share the pod's PID
# namespace by default, and critest's "execSync with timeout" expects `pgrep sleep` empty.
PAUSE_C = r"""
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig)
{
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0)
        ;
}

int main(void)
{
    struct sigaction on_quit = { .sa_handler = quit };
    struct sigaction on_child = { .sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART };

    sigaction(SIGINT, &on_quit, 0);
    sigaction(SIGTERM, &on_quit, 0);
    sigaction(SIGCHLD, &on_child, 0);
    for (;;)
        pause();
}
"""

# Installed setuid root: prints 0 without no_new_privs, the caller's uid with it.
NNP_C = r"""
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
"""

# ---------------------------------------------------------------------------------------
# Deterministic layers and an OCI layout writer.


class Tree:
    """The files of one layer, written to tar in a fixed order."""

    def __init__(self):
        self.items = {}  # path -> (kind, payload, mode)

    def _add(self, path, kind, payload, mode):
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.items.setdefault("/".join(parts[:i]), ("dir", None, 0o755))
        self.items[path] = (kind, payload, mode)

    def mkdir(self, path, mode=0o755):
        self._add(path, "dir", None, mode)

    def put(self, path, data, mode=0o644):
        self._add(path, "file", data.encode() if isinstance(data, str) else data, mode)

    def symlink(self, path, target):
        self._add(path, "symlink", target, 0o777)

    def hardlink(self, path, target):
        self._add(path, "link", target.strip("/"), 0o755)

    def tar(self):
        # Directories, then files and symlinks, then hard links (after their targets).
        rank = {"dir": 0, "file": 1, "symlink": 1, "link": 2}
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.items, key=lambda p: (rank[self.items[p][0]], p)):
                kind, payload, mode = self.items[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.mode = EPOCH, mode
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if kind == "file":
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                    continue
                info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                             "link": tarfile.LNKTYPE}[kind]
                if payload is not None:
                    info.linkname = payload
                tar.addfile(info)
        return buf.getvalue()


def gzip_bytes(data):
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def canonical_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class OciLayout:
    def __init__(self, root):
        self.root = root
        self.blob_dir = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.blob_dir, exist_ok=True)
        self.index = []
        self.summary = []

    def blob(self, data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        path = os.path.join(self.blob_dir, digest)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    def tar_layer(self, tree):
        raw = tree.tar()
        desc = self.blob(gzip_bytes(raw), MT_LAYER_GZ)
        return desc, "sha256:" + hashlib.sha256(raw).hexdigest()

    def publish(self, refs, config, layers, diff_ids, platform, annotations=None,
                artifact_type=None):
        config = dict(config)
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        config.update({"created": CREATED, **platform})
        config_desc = self.blob(canonical_json(config), MT_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST,
                    "config": config_desc, "layers": layers}
        if artifact_type:
            manifest["artifactType"] = artifact_type
        if annotations:
            manifest["annotations"] = annotations
        desc = self.blob(canonical_json(manifest), MT_MANIFEST)
        for ref in refs:
            entry = dict(desc, platform=dict(platform),
                         annotations={"org.opencontainers.image.ref.name": ref})
            self.index.append(entry)
            self.summary.append((ref, desc["digest"], config_desc["digest"]))

    def finish(self):
        with open(os.path.join(self.root, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        with open(os.path.join(self.root, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": self.index}, f, indent=1, sort_keys=True)
            f.write("\n")
        with open(os.path.join(self.root, "refs.tsv"), "w") as f:
            for ref, manifest, config in self.summary:
                f.write(f"{ref}\t{manifest}\t{config}\n")


# ---------------------------------------------------------------------------------------
# Inputs.


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def fetch_debs(cache):
    """busybox and libc6 .debs from apt (the machine's Debian release) into the cache."""
    os.makedirs(cache, exist_ok=True)
    found = {}
    for pkg in ("busybox", "libc6"):
        debs = sorted(glob.glob(os.path.join(cache, f"{pkg}_*_amd64.deb")))
        if not debs:
            try:
                run("apt-get", "download", pkg, cwd=cache)
            except subprocess.CalledProcessError:
                run("apt-get", "update", "-qq")
                run("apt-get", "download", pkg, cwd=cache)
            debs = sorted(glob.glob(os.path.join(cache, f"{pkg}_*_amd64.deb")))
        if not debs:
            sys.exit(f"build.py: apt-get download {pkg} produced no .deb in {cache}")
        found[pkg] = debs[-1]
    return found


def unpack_deb(deb, dest):
    os.makedirs(dest, exist_ok=True)
    run("dpkg-deb", "-x", deb, dest)
    return dest


def compile_c(work, name, source):
    src = os.path.join(work, name + ".c")
    with open(src, "w") as f:
        f.write(source)
    out = os.path.join(work, name)
    run("gcc", "-O2", "-s", "-o", out, src)
    with open(out, "rb") as f:
        return f.read()


def compile_wat(work, name):
    out = os.path.join(work, name + ".wasm")
    run("wat2wasm", os.path.join(HERE, "wasm", name + ".wat"), "-o", out)
    with open(out, "rb") as f:
        return f.read()


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------
# The images.


def base_tree(busybox_root, libc_root):
    """Debian's dynamic busybox with every applet hard-linked in /bin, the three glibc
    files it needs, pgrep/ipcs scripts and a minimal /etc."""
    t = Tree()
    for d in ("bin", "dev", "etc", "home", "proc", "sbin", "sys", "usr/bin", "usr/sbin",
              "usr/local/bin", "usr/local/sbin", "var/run", "var/spool/mail", "var/www"):
        t.mkdir(d)
    t.mkdir("root", 0o700)
    t.mkdir("tmp", 0o1777)
    busybox = os.path.join(busybox_root, "bin", "busybox")
    t.put("bin/busybox", read(busybox), 0o755)
    applets = run(busybox, "--list", capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            t.hardlink("bin/" + applet, "bin/busybox")
    t.put("bin/pgrep", BIN_PGREP, 0o755)
    t.put("bin/ipcs", BIN_IPCS, 0o755)
    libdir = os.path.join(libc_root, "lib", "x86_64-linux-gnu")
    for lib in ("ld-linux-x86-64.so.2", "libc.so.6", "libresolv.so.2"):
        t.put("lib/x86_64-linux-gnu/" + lib, read(os.path.join(libdir, lib)), 0o755)
    t.symlink("lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    t.put("etc/passwd", ETC_PASSWD)
    t.put("etc/group", ETC_GROUP)
    t.put("etc/nsswitch.conf", ETC_NSSWITCH)
    return t


def single_file(path, data=b"", mode=0o644):
    t = Tree()
    t.put(path, data, mode)
    return t


def linux_config(cmd=None, entrypoint=None, user=None, env=(), ports=(), stop_signal=None):
    c = {"Env": [DEFAULT_PATH, *env], "Labels": {"io.berth.test-image": "stand-in"}}
    if entrypoint:
        c["Entrypoint"] = entrypoint
    if cmd:
        c["Cmd"] = cmd
    if user:
        c["User"] = user
    if ports:
        c["ExposedPorts"] = {p: {} for p in ports}
    if stop_signal:
        c["StopSignal"] = stop_signal
    return {"config": c, "history": [{"created": CREATED, "created_by": "critest/images/build.py"}]}


def build_linux_images(oci, work, debs):
    busybox_root = unpack_deb(debs["busybox"], os.path.join(work, "busybox"))
    libc_root = unpack_deb(debs["libc6"], os.path.join(work, "libc6"))
    linux = {"architecture": "amd64", "os": "linux"}
    base, base_id = oci.tar_layer(base_tree(busybox_root, libc_root))

    def image(refs, extra, config):
        layers, ids = [base], [base_id]
        for tree in extra:
            d, i = oci.tar_layer(tree)
            layers.append(d)
            ids.append(i)
        oci.publish(refs, config, layers, ids, linux)

    # registry.k8s.io/e2e-test-images/busybox:1.29-2: the default container image.
    image(["e2e-test-images/busybox:1.29-2"], [], linux_config(cmd=["sh"]))

    # public.ecr.aws/docker/library/busybox:*: benchmark pull/list images, kept distinct
    # from the default image (removing one must not remove the other).
    image([f"docker/library/busybox:{t}" for t in ("1", "1-glibc", "1-musl", "1-uclibc",
                                                   "1.35.0-glibc")],
          [single_file("benchmark-image")], linux_config(cmd=["sh"]))

    # registry.k8s.io/pause:*: a sandbox image for runtimes that want one. 3.10 (the
    # comparison containerd's sandbox image) is an image of its own: critest removes the
    # 3.6/3.9 tags in "remove all tags" and expects no other name for the same image.
    pause_layer = single_file("pause", compile_c(work, "pause", PAUSE_C), 0o755)
    image([f"pause:{t}" for t in ("3.6", "3.9")], [pause_layer],
          linux_config(entrypoint=["/pause"]))
    sandbox = linux_config(entrypoint=["/pause"])
    sandbox["config"]["Labels"]["io.berth.test-image.role"] = "sandbox"
    image(["pause:3.10"], [pause_layer], sandbox)

    # gcr.io/k8s-staging-cri-tools/*: image-manager images, each a distinct image ID.
    staging = "k8s-staging-cri-tools/"
    for name in ("test-image-1", "test-image-2", "test-image-3", "test-image-latest",
                 "test-image-digest"):
        image([f"{staging}{name}:latest"], [single_file(name)], linux_config(cmd=["sh"]))
    for tag in ("test", "all"):
        image([f"{staging}test-image-tag:{tag}"], [single_file(tag)], linux_config(cmd=["sh"]))
    # One image ID under three tags.
    image([f"{staging}test-image-tags:{n}" for n in (1, 2, 3)], [single_file("same-image")],
          linux_config(cmd=["sh"]))
    # Config User variants for ImageStatus uid/username.
    for name, user in (("test-image-user-uid", "1002"), ("test-image-user-username", "www-data"),
                       ("test-image-user-uid-group", "1003:1004"),
                       ("test-image-user-username-group", "www-data:1004")):
        image([f"{staging}{name}:latest"], [], linux_config(cmd=["sh"], user=user))
    # SupplementalGroupsPolicy: uid 1000 is a member of gid 50000 in the image.
    groups = Tree()
    groups.put("etc/passwd", ETC_PASSWD +
               "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")
    groups.put("etc/group", ETC_GROUP +
               "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")
    groups.mkdir("home/default-user")
    image([f"{staging}test-image-predefined-group:latest"], [groups],
          linux_config(cmd=["sh"], user="1000"))

    # Web servers.
    web = Tree()
    web.put("usr/sbin/nginx", USR_SBIN_NGINX, 0o755)
    web.put("usr/share/nginx/html/index.html",
            "<!DOCTYPE html>\n<html><body><h1>Welcome to nginx!</h1></body></html>\n")
    nginx_cmd = ["nginx", "-g", "daemon off;"]
    image(["e2e-test-images/nginx:1.14-2"], [web],
          linux_config(cmd=nginx_cmd, ports=["80/tcp"], stop_signal="SIGTERM"))
    image([f"{staging}hostnet-nginx-amd64:latest"], [web],
          linux_config(cmd=nginx_cmd, env=["NGINX_PORT=12003"], ports=["12003/tcp"],
                       stop_signal="SIGTERM"))
    httpd = Tree()
    httpd.put("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755)
    httpd.put("usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n")
    image(["e2e-test-images/httpd:2.4.39-4"], [httpd],
          linux_config(cmd=["httpd-foreground"], ports=["80/tcp"]))

    # registry.k8s.io/e2e-test-images/nonewprivs:1.3: setuid-root nnp.
    image(["e2e-test-images/nonewprivs:1.3"],
          [single_file("usr/local/bin/nnp", compile_c(work, "nnp", NNP_C), 0o4755)],
          linux_config(cmd=["nnp"]))


def build_wasm_images(oci, work):
    wasm = {"architecture": "wasm", "os": "wasip1"}
    modules = {name: compile_wat(work, name) for name in ("hello", "loop", "memhog")}

    # Rootfs-style images (crun's "compat" shape): one tar layer holding all three modules.
    rootfs = Tree()
    for name, data in modules.items():
        rootfs.put(f"{name}.wasm", data, 0o755)
    layer, layer_id = oci.tar_layer(rootfs)
    for name in modules:
        for variant in ("compat", "compat-smart"):
            config = {"config": {"Entrypoint": [f"/{name}.wasm"], "Env": [DEFAULT_PATH],
                                 "Labels": {WASM_VARIANT: variant,
                                            "io.berth.test-image": "wasm"}},
                      "history": [{"created": CREATED, "created_by": "critest/images/build.py"}]}
            oci.publish([f"berth-test/wasm-{name}:{variant}"], config, [layer], [layer_id], wasm,
                        annotations={WASM_VARIANT: variant})

    # OCI Wasm artifact shape: the module itself is the single layer.
    for name, data in modules.items():
        desc = oci.blob(data, MT_WASM_LAYER)
        desc["annotations"] = {"org.opencontainers.image.title": f"{name}.wasm"}
        config = {"config": {"Entrypoint": [f"/{name}.wasm"], "Env": [DEFAULT_PATH],
                             "Labels": {"io.berth.test-image": "wasm"}},
                  "history": [{"created": CREATED, "created_by": "critest/images/build.py"}]}
        oci.publish([f"berth-test/wasm-{name}:oci"], config, [desc],
                    ["sha256:" + hashlib.sha256(data).hexdigest()], wasm)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.join(REPO, "critest", "out", "cache"),
                    help="where the Debian .debs are downloaded (default critest/out/cache)")
    ap.add_argument("--out", default=os.path.join(REPO, "critest", "out", "oci"),
                    help="OCI layout to (re)create (default critest/out/oci)")
    args = ap.parse_args()

    for tool in ("gcc", "wat2wasm", "dpkg-deb", "apt-get"):
        if not shutil.which(tool):
            sys.exit(f"build.py: {tool} not found (apt-get install -y gcc wabt)")
    debs = fetch_debs(args.cache)
    work = tempfile.mkdtemp(prefix="berth-images-")
    try:
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        oci = OciLayout(args.out)
        build_linux_images(oci, work, debs)
        build_wasm_images(oci, work)
        oci.finish()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for ref, manifest, _ in oci.summary:
        print(f"{manifest}  {ref}")
    print(f"build.py: {len(oci.summary)} refs in {args.out} "
          f"(busybox {os.path.basename(debs['busybox'])}, libc6 {os.path.basename(debs['libc6'])})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
