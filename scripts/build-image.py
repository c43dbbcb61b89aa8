#!/usr/bin/env python3
"""Build the Plexus container image as an OCI archive, without a container engine.

    scripts/build-image.py [--out dist/plexus-image.tar] [--ref docker.io/library/plexus:latest]

The image the manifests in packaging/k8s/ name (``plexus:latest``) holds:
  /usr/lib/plexus/plexus/         the frozen CNI plugin (make build), copied onto each node by the
                                  DaemonSet's init container, and run as its probes (``--probe``)
  /usr/lib/plexus/plexus-ipamd/   the frozen daemon and plexusctl (packaging/plexus-ipamd.spec),
                                  linked from /usr/bin
  /bin/busybox and its applets    for the init container's install script (Debian's busybox-static)
  the C library and what else the bundles link, copied from this build host (ldd)
One uncompressed layer, files sorted, owned by root, dated from the last commit: the same inputs
give the same image digest. Load it with ``ctr -n k8s.io images import``, ``podman load`` or
``skopeo copy oci-archive:dist/plexus-image.tar docker://REGISTRY/plexus:TAG``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APPLETS = ("sh", "cp", "mv", "ln", "mkdir", "rm", "chmod", "cat", "ls", "echo", "test", "[", "ip", "sleep")


def source_date() -> int:
    out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True)
    return int(out.stdout.strip() or os.environ.get("SOURCE_DATE_EPOCH", "0"))


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def linked_libraries(files: list[Path]) -> set[str]:
    """What the dynamic loader needs for these ELF files, outside the bundles themselves."""
    needed: set[str] = set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"=>\s+(/\S+)", line) or re.match(r"\s*(/\S+)\s+\(", line)
            if m and "/usr/lib/plexus/" not in m.group(1) and "/_internal/" not in m.group(1):
                needed.add(m.group(1))
    return needed


def rootfs(root: Path, plugin: Path, daemon: Path, busybox: Path) -> None:
    for d in ("bin", "usr/bin", "usr/lib/plexus", "etc", "tmp", "proc", "sys", "dev", "run", "var", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "var/run").symlink_to("../run")  # as on the nodes: CNI_NETNS=/var/run/netns/<id> is /run/netns/<id>
    (root / "tmp").chmod(0o1777)
    shutil.copytree(plugin, root / "usr/lib/plexus/plexus", symlinks=True)
    shutil.copytree(daemon, root / "usr/lib/plexus/plexus-ipamd", symlinks=True)
    for name in ("plexus-ipamd", "plexusctl"):
        (root / "usr/bin" / name).symlink_to(f"../lib/plexus/plexus-ipamd/{name}")
    shutil.copy2(busybox, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    elves = [p for p in (root / "usr/lib/plexus").rglob("*") if p.is_file() and is_elf(p)]
    for lib in sorted(linked_libraries(elves)):
        real = Path(lib)
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real.resolve(), dest)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532::/tmp:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnonroot:x:65532:\n")


def _tar_bytes(add: list[tuple[str, Path | bytes]], mtime: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, src in add:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            data = src if isinstance(src, bytes) else src.read_bytes()
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def layer(root: Path, mtime: int) -> bytes:
    buf = io.BytesIO()

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = mtime
        return info

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
        for rel in paths:
            tar.add(root / rel, arcname=rel, recursive=False, filter=reset)
    return buf.getvalue()


def oci_archive(layer_tar: bytes, ref: str, mtime: int, labels: dict[str, str]) -> bytes:
    """An OCI image layout (oci-layout, index.json, blobs) in one tar, plus docker-archive's
    manifest.json, so both containerd and docker-style loaders take it."""
    created = dt.datetime.fromtimestamp(mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    diff_id = hashlib.sha256(layer_tar).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Entrypoint": ["/usr/bin/plexus-ipamd"], "WorkingDir": "/",
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": created, "created_by": "scripts/build-image.py"}],
    }, sort_keys=True).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{config_digest}",
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{diff_id}",
                    "size": len(layer_tar)}],
    }, sort_keys=True).encode()
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    index = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{manifest_digest}",
                       "size": len(manifest), "annotations": {"io.containerd.image.name": ref,
                                                              "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]}}],
    }, sort_keys=True).encode()
    docker = json.dumps([{"Config": f"blobs/sha256/{config_digest}", "RepoTags": [ref],
                          "Layers": [f"blobs/sha256/{diff_id}"]}]).encode()
    return _tar_bytes([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                       ("manifest.json", docker), (f"blobs/sha256/{config_digest}", config),
                       (f"blobs/sha256/{diff_id}", layer_tar), (f"blobs/sha256/{manifest_digest}", manifest)], mtime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "dist" / "plexus-image.tar"))
    p.add_argument("--ref", default="docker.io/library/plexus:latest")
    p.add_argument("--plugin", default=str(REPO / "dist" / "plexus"), help="the frozen plugin's onedir (make build)")
    p.add_argument("--daemon", default=str(REPO / "dist" / "plexus-ipamd"), help="the frozen daemon's onedir")
    p.add_argument("--busybox", default="/bin/busybox", help="a static busybox (Debian: busybox-static)")
    a = p.parse_args()
    for path, what in ((Path(a.plugin) / "plexus", "make build"), (Path(a.daemon) / "plexus-ipamd", "make image"),
                       (Path(a.busybox), "apt-get install busybox-static")):
        if not path.exists():
            print(f"build-image: {path} is missing ({what})", file=sys.stderr)
            return 1
    if subprocess.run(["ldd", a.busybox], capture_output=True, text=True).returncode == 0:
        print(f"build-image: {a.busybox} is not static (apt-get install busybox-static)", file=sys.stderr)
        return 1
    mtime = source_date()
    with tempfile.TemporaryDirectory(prefix="plexus-image-") as tmp:
        root = Path(tmp) / "rootfs"
        rootfs(root, Path(a.plugin), Path(a.daemon), Path(a.busybox))
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        labels = {"org.opencontainers.image.source": "plexus", "org.opencontainers.image.revision": commit,
                  "org.opencontainers.image.title": "plexus"}
        data = oci_archive(layer(root, mtime), a.ref, mtime, labels)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    print(f"build-image: {a.ref} -> {out} ({len(data) // (1024 * 1024)} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
