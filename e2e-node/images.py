#!/usr/bin/env python3
"""Stand-ins for the images the node e2e suite (k8s.io/kubernetes v1.37.2, test/e2e_node
and test/e2e/common) pulls for its [NodeConformance] specs, built the way
critest/images/build.py builds critest's (its Tree, OciLayout, base layer and C programs are
imported, not copied) into one OCI layout, and pushed to the local registry 127.0.0.1:5000.

    e2e-node/images.py [--out e2e-node/out/oci] [--agnhost PATH] [--push] [--list]

- Base layer: critest's (Debian's dynamic busybox, glibc, /etc files), byte for byte.
- agnhost: the Go binary from k8s.io/kubernetes/test/images/agnhost at v1.37.2
  (e2e-node/install-node-e2e.sh puts it in the prefix) on the base layer, laid out as the
  upstream image: /agnhost, /agnhost-2 -> agnhost, /uploads, /localhost.{crt,key} (from the
  module), user-defined-in-image (uid 1000) in group-defined-in-image (gid 50000),
  Entrypoint ["/agnhost"], Cmd ["pause"]; plus a `curl` script over busybox wget, a `bash`
  that runs busybox ash, and the
  `nmeter` of the busybox stand-in (upstream's Alpine busybox has one; the container
  lifecycle specs run their logging command in agnhost too).
- Reproducible like critest's: fixed tar order, owners, mtimes; gzip mtime 0.

Each manifest is named `<repository>:<tag>` as it is in the registry (no host), e.g.
`e2e-test-images/busybox:1.37.0-2`; run.sh points KUBE_TEST_REPO_LIST's registries at
127.0.0.1:5000/... so those are the names the suite asks for. See e2e-node/images.md.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "critest", "images"))
import build as cb  # noqa: E402  critest/images/build.py, used as a library

KUBE_PREFIX = "/usr/local/lib/berth-test/kubernetes-1.37.2"
MODCACHE = os.environ.get("GOMODCACHE") or subprocess.run(
    ["/usr/local/go/bin/go", "env", "GOMODCACHE"], capture_output=True, text=True).stdout.strip()
REGISTRY = "127.0.0.1:5000"
E2E = "e2e-test-images/"


# The agnhost image has curl (Alpine's); specs run `sh -c "curl http://..."` in it
# (lifecycle exec hooks). busybox wget does the GET.
CURL = r"""#!/bin/sh
# curl stand-in (e2e-node/images.py): GET of the URL among the arguments with busybox wget,
# the body to stdout; options are ignored.
url=""
for a in "$@"; do
    case $a in http://* | https://*) url=$a ;; esac
done
[ -n "$url" ] || { echo "curl stand-in: no URL in: $*" >&2; exit 2; }
exec wget -q -O - --no-check-certificate "$url"
"""


# busybox's nmeter, which Debian's busybox lacks: e2e_node's container lifecycle specs log
# `date -u +%FT$(nmeter -d0 '%3t' | head -n1)Z`. Only the time field (%t, %Nt) is done.
NMETER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long delay_ms = 1000;
    int decimals = 0;
    const char *fmt = "%t";
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-d", 2) == 0)
            delay_ms = atol(argv[i][2] ? argv[i] + 2 : (i + 1 < argc ? argv[++i] : "1000"));
        else
            fmt = argv[i];
    }
    const char *p = strchr(fmt, '%');
    if (p && p[1] >= '1' && p[1] <= '6')
        decimals = p[1] - '0';
    for (;;) {
        struct timespec ts;
        struct tm tm;
        char hms[32];
        clock_gettime(CLOCK_REALTIME, &ts);
        localtime_r(&ts.tv_sec, &tm);
        strftime(hms, sizeof hms, "%H:%M:%S", &tm);
        if (decimals) {
            long frac = ts.tv_nsec;
            for (int k = decimals; k < 9; k++)
                frac /= 10;
            printf("%s.%0*ld\n", hms, decimals, frac);
        } else {
            printf("%s\n", hms);
        }
        if (fflush(stdout) == EOF)
            return 0;
        if (delay_ms > 0)
            usleep(delay_ms * 1000);
    }
}
"""


def agnhost_tree(binary):
    t = cb.Tree()
    t.put("agnhost", cb.read(binary), 0o755)
    t.symlink("agnhost-2", "agnhost")
    t.mkdir("uploads")
    # The serving certificate of `agnhost netexec --tls-cert-file /localhost.crt ...`.
    porter = os.path.join(MODCACHE, "k8s.io", "kubernetes@v1.37.2", "test", "images", "agnhost", "porter")
    for f in ("localhost.crt", "localhost.key"):
        t.put(f, cb.read(os.path.join(porter, f)))
    t.put("usr/bin/curl", CURL, 0o755)
    # Upstream installs bash; probe specs run `/bin/bash -c` scripts that ash runs as well.
    t.put("bin/bash", "#!/bin/sh\n# bash stand-in (e2e-node/images.py): busybox ash.\nexec /bin/sh \"$@\"\n", 0o755)
    t.put("etc/passwd", cb.ETC_PASSWD +
          "user-defined-in-image:x:1000:1000:Linux User,,,:/home/user-defined-in-image:/bin/sh\n")
    t.put("etc/group", cb.ETC_GROUP +
          "user-defined-in-image:x:1000:\ngroup-defined-in-image:x:50000:user-defined-in-image\n")
    t.mkdir("home/user-defined-in-image")
    return t


def build(out, agnhost, work):
    debs = cb.fetch_debs(os.path.join(REPO, "critest", "out", "cache"))
    busybox_root = cb.unpack_deb(debs["busybox"], os.path.join(work, "busybox"))
    libc_root = cb.unpack_deb(debs["libc6"], os.path.join(work, "libc6"))
    linux = {"architecture": "amd64", "os": "linux"}
    oci = cb.OciLayout(out)
    base, base_id = oci.tar_layer(cb.base_tree(busybox_root, libc_root))

    def image(refs, extra, config):
        layers, ids = [base], [base_id]
        for tree in extra:
            d, i = oci.tar_layer(tree)
            layers.append(d)
            ids.append(i)
        config["history"] = [{"created": cb.CREATED, "created_by": "e2e-node/images.py"}]
        oci.publish(refs, config, layers, ids, linux)

    # BusyBox (the default image of e2e_node and e2e/common), with an nmeter.
    nmeter = cb.single_file("bin/nmeter", cb.compile_c(work, "nmeter", NMETER_C), 0o755)
    image([E2E + "busybox:1.37.0-2"], [nmeter], cb.linux_config(cmd=["sh"]))
    # Pause: also run as an ordinary container by a few specs.
    image(["pause:3.10.2"], [cb.single_file("pause", cb.compile_c(work, "pause", cb.PAUSE_C), 0o755)],
          cb.linux_config(entrypoint=["/pause"]))
    # Nginx and NginxNew: critest's nginx script (busybox httpd on :80).
    web = cb.Tree()
    web.put("usr/sbin/nginx", cb.USR_SBIN_NGINX, 0o755)
    web.put("usr/share/nginx/html/index.html",
            "<!DOCTYPE html>\n<html><body><h1>Welcome to nginx!</h1></body></html>\n")
    image([E2E + "nginx:1.27.0-2", E2E + "nginx:1.28.0-2"], [web],
          cb.linux_config(cmd=["nginx", "-g", "daemon off;"], ports=["80/tcp"], stop_signal="SIGTERM"))
    # Nonewprivs: setuid-root nnp printing its effective uid.
    image([E2E + "nonewprivs:1.4"],
          [cb.single_file("usr/local/bin/nnp", cb.compile_c(work, "nnp", cb.NNP_C), 0o4755)],
          cb.linux_config(cmd=["nnp"]))
    # NonRoot: USER 1234 on the base.
    image([E2E + "nonroot:1.5"], [], cb.linux_config(cmd=["sh"], user="1234"))
    # GlibcDnsTesting (hostname/FQDN specs run `hostname; hostname -f` style commands in it).
    image([E2E + "glibc-dns-testing:2.1.1"], [], cb.linux_config(cmd=["sh"]))
    # IpcUtils: busybox has ipcmk/ipcrm; critest's base layer adds an ipcs script.
    image([E2E + "ipc-utils:1.4"], [], cb.linux_config(cmd=["sh"]))
    # Agnhost and AgnhostPrev (the same v1.37.2 binary under both tags).
    if agnhost:
        image([E2E + "agnhost:2.66.1", E2E + "agnhost:2.55"], [nmeter, agnhost_tree(agnhost)],
              cb.linux_config(entrypoint=["/agnhost"], cmd=["pause"],
                              ports=["80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"]))
    oci.finish()
    return oci.summary


def remote_digest(ref):
    repo, tag = ref.rsplit(":", 1)
    r = subprocess.run(
        ["curl", "-fsS", "-m", "5", "-I",
         "-H", "Accept: application/vnd.oci.image.manifest.v1+json",
         f"http://{REGISTRY}/v2/{repo}/manifests/{tag}"],
        capture_output=True, text=True)
    for line in r.stdout.splitlines():
        k, _, v = line.partition(":")
        if k.strip().lower() == "docker-content-digest":
            return v.strip()
    return None


def push(out, summary):
    pushed = same = 0
    for ref, manifest, _ in summary:
        if remote_digest(ref) == manifest:
            same += 1
            continue
        cb.run("skopeo", "copy", "-q", "--preserve-digests", "--dest-tls-verify=false",
               f"oci:{out}:{ref}", f"docker://{REGISTRY}/{ref}")
        if remote_digest(ref) != manifest:
            sys.exit(f"images.py: {REGISTRY}/{ref}: digest after push is not {manifest}")
        pushed += 1
    print(f"images.py: {REGISTRY}: pushed {pushed}, already present {same}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "out", "oci"))
    ap.add_argument("--agnhost", default=os.path.join(KUBE_PREFIX, "bin", "agnhost"),
                    help="the agnhost binary (default: install-node-e2e.sh's); absent: no agnhost image")
    ap.add_argument("--push", action="store_true", help=f"push what changed to {REGISTRY}")
    args = ap.parse_args()
    agnhost = args.agnhost if os.path.isfile(args.agnhost) else None
    if not agnhost:
        print(f"images.py: no agnhost binary at {args.agnhost}; building without the agnhost images",
              file=sys.stderr)
    work = tempfile.mkdtemp(prefix="berth-node-e2e-images-")
    try:
        if os.path.exists(args.out):
            shutil.rmtree(args.out)
        summary = build(args.out, agnhost, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for ref, manifest, _ in summary:
        print(f"{manifest}  {ref}")
    if args.push:
        push(args.out, summary)


if __name__ == "__main__":
    main()
