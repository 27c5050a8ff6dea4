#!/usr/bin/env python3
"""Writes the seed corpora of image-store's fuzz targets (committed; rerun after edits):

  corpus/image_manifest/  OCI and Docker manifests, indexes and image configs, references
  corpus/layer_unpack/    one mode byte (see fuzz_targets/layer_unpack.rs) + a small layer

    python3 image-store/fuzz/make_corpus.py
"""
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def out_dir(target):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def dg(n):
    return "sha256:" + ("%02x" % n) * 32


def manifests():
    d = out_dir("image_manifest")
    oci_index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg(1),
             "size": 1234, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg(2),
             "size": 1234, "platform": {"os": "linux", "architecture": "amd64", "variant": "v3"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg(3),
             "size": 1234, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg(4),
             "size": 99, "platform": {"os": "wasip1", "architecture": "wasm"}},
        ],
    }
    layout_index = {
        "schemaVersion": 2,
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dg(5),
             "size": 500, "annotations": {
                 "io.containerd.image.name": "docker.io/library/busybox:1.36",
                 "org.opencontainers.image.ref.name": "1.36"}},
        ],
    }
    docker_list = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
             "digest": dg(6), "size": 528, "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }
    oci_manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": dg(7), "size": 600},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg(8),
             "size": 2000000},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": dg(9),
             "size": 300},
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    docker_manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": dg(10), "size": 1500},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
             "digest": dg(11), "size": 700000},
        ],
    }
    wasm_manifest = {
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": dg(12),
                   "size": 100},
        "layers": [
            {"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": dg(13),
             "size": 4096, "annotations": {"org.opencontainers.image.title": "app.wasm"}},
        ],
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"User": "1000:1000", "Env": ["PATH=/usr/bin:/bin"],
                   "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "echo hi"], "WorkingDir": "/",
                   "Labels": {"module.wasm.image/variant": "compat"}},
        "rootfs": {"type": "layers", "diff_ids": [dg(14), dg(15), dg(16)]},
        "history": [{"created_by": "fuzz seed"}],
    }
    wasm_config = {"architecture": "wasm", "os": "wasip1", "config": {"User": "app"},
                   "rootfs": {"type": "layers", "diff_ids": [dg(17)]}}
    schema1 = {"schemaVersion": 1, "name": "library/x", "tag": "latest", "fsLayers": []}
    docs = {
        "oci_index.json": oci_index,
        "layout_index.json": layout_index,
        "docker_list.json": docker_list,
        "oci_manifest.json": oci_manifest,
        "docker_manifest.json": docker_manifest,
        "wasm_manifest.json": wasm_manifest,
        "config.json": config,
        "wasm_config.json": wasm_config,
        "schema1.json": schema1,
    }
    for name, doc in docs.items():
        with open(os.path.join(d, name), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
    refs = {
        "ref_short": "busybox",
        "ref_tag": "registry.k8s.io/e2e-test-images/agnhost:2.53",
        "ref_port": "127.0.0.1:5000/wasm/hello:v1",
        "ref_digest": "index.docker.io/library/nginx@" + dg(18),
    }
    for name, r in refs.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(r)


def add(tf, name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link="", pax=None, **kw):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = 1_600_000_000
    ti.linkname = link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        ti.pax_headers = pax
    for k, v in kw.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def tar_bytes(fmt, build):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        build(tf)
    # Without tarfile's padding to a 10 KiB record: the entries and the end-of-archive
    # blocks are enough, and the fuzzer works best on small inputs.
    data = buf.getvalue().rstrip(b"\0")
    return data + b"\0" * (-len(data) % 512) + b"\0" * 1024


def typical(tf):
    add(tf, "./", tarfile.DIRTYPE, mode=0o755)
    add(tf, "etc/", tarfile.DIRTYPE, mode=0o755)
    add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    add(tf, "bin/sh", data=b"\x7fELF\x02\x01\x01", mode=0o755, uid=0, gid=0)
    add(tf, "bin/busybox", tarfile.LNKTYPE, link="bin/sh")
    add(tf, "usr/bin/env", tarfile.SYMTYPE, link="/bin/sh", mode=0o777)
    add(tf, "tmp/", tarfile.DIRTYPE, mode=0o1777)
    add(tf, "home/app/.profile", data=b"export A=1\n", uid=1000, gid=1000, mode=0o600)


def whiteouts(tf):
    add(tf, "var/lib/.wh..wh..opq")
    add(tf, "var/.wh.cache")
    add(tf, "etc/.wh.motd")
    add(tf, ".wh..wh.plnk/123")
    add(tf, "etc/hosts", data=b"127.0.0.1 localhost\n")


def specials(tf):
    add(tf, "dev/", tarfile.DIRTYPE, mode=0o755)
    add(tf, "dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    add(tf, "dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9)
    add(tf, "run/fifo", tarfile.FIFOTYPE, mode=0o600)
    add(tf, "usr/bin/ping", data=b"x", mode=0o4755)


def pax(tf):
    add(tf, "opt/" + "long-directory-name/" * 8 + "file", data=b"long\n",
        pax={"mtime": "1700000000.123456789", "SCHILY.xattr.user.fuzz": "v",
             "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"})
    add(tf, "opt/link", tarfile.SYMTYPE, link="../" * 4 + "etc/shadow")


def gnu_long(tf):
    add(tf, "srv/" + "n" * 150, data=b"gnu long name\n")
    add(tf, "srv/l", tarfile.SYMTYPE, link="t" * 120)


def octal(n, width):
    return (b"%0*o" % (width - 1, n)) + b"\0"


def gnu_sparse(blocks, real_size, data):
    """A GNU sparse entry (type 'S') with the old-format block map in its header."""
    h = bytearray(512)
    h[0:6] = b"sparse"
    h[100:108] = octal(0o644, 8)
    h[108:116] = octal(0, 8)
    h[116:124] = octal(0, 8)
    h[124:136] = octal(len(data), 12)
    h[136:148] = octal(1_600_000_000, 12)
    h[156:157] = b"S"
    h[257:265] = b"ustar  \0"
    for i, (off, length) in enumerate(blocks):
        at = 386 + 24 * i
        h[at:at + 12] = octal(off, 12)
        h[at + 12:at + 24] = octal(length, 12)
    h[483:495] = octal(real_size, 12)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    pad = b"\0" * (-len(data) % 512)
    return bytes(h) + data + pad + b"\0" * 1024


def layers():
    d = out_dir("layer_unpack")
    plain = tar_bytes(tarfile.GNU_FORMAT, typical)
    seeds = {
        "typical_tar": b"\0" + plain,
        "typical_gzip_here": b"\1" + plain,
        "typical_tar_gz": b"\0" + gzip.compress(plain, mtime=0),
        "whiteouts": b"\1" + tar_bytes(tarfile.GNU_FORMAT, whiteouts),
        "specials": b"\1" + tar_bytes(tarfile.GNU_FORMAT, specials),
        "pax": b"\1" + tar_bytes(tarfile.PAX_FORMAT, pax),
        "gnu_long": b"\1" + tar_bytes(tarfile.GNU_FORMAT, gnu_long),
        # A sparse file of 2 KiB: a hole, then 512 bytes of data.
        "sparse": b"\0" + gnu_sparse([(1024, 512)], 2048, b"s" * 512),
    }
    if shutil.which("zstd"):
        seeds["typical_tar_zst"] = b"\0" + subprocess.run(
            ["zstd", "-q", "-c"], input=plain, stdout=subprocess.PIPE, check=True
        ).stdout
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    manifests()
    layers()
