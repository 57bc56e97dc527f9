#!/usr/bin/python3
"""Tag NEW in an OCI layout: the image tagged FROM plus one gzip layer made
from DIR (its contents placed under DEST in the image).

Usage: add_layer.py LAYOUT FROM NEW DIR DEST

The layer is written by GNU tar (numeric owner 0:0, sorted names, fixed
mtime) and gzip -n, so the same DIR gives the same digest. umoci 0.4's
`insert` is not used: it writes layers without tar's end blocks (GNU tar
and ocidisk both refuse them as truncated).
"""
import hashlib
import json
import os
import subprocess
import sys


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest


def read(layout, digest):
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":")[1]), "rb") as f:
        return json.load(f)


def main():
    layout, old, new, src, dest = sys.argv[1:6]
    tar = subprocess.run(
        ["tar", "-C", src, "--sort=name", "--owner=0", "--group=0", "--numeric-owner",
         "--mtime=@1700000000", "--transform", "s,^\\.," + dest.rstrip("/") + ",",
         "-cf", "-", "."],
        check=True, capture_output=True).stdout
    gz = subprocess.run(["gzip", "-n", "-c"], input=tar, check=True, capture_output=True).stdout
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    ref = "org.opencontainers.image.ref.name"
    desc = next(m for m in index["manifests"] if m.get("annotations", {}).get(ref) == old)
    manifest = read(layout, desc["digest"])
    config = read(layout, manifest["config"]["digest"])
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(tar).hexdigest())
    cbytes = json.dumps(config).encode()
    manifest["config"]["digest"] = blob(layout, cbytes)
    manifest["config"]["size"] = len(cbytes)
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": blob(layout, gz), "size": len(gz)})
    mbytes = json.dumps(manifest).encode()
    nd = dict(desc, digest=blob(layout, mbytes), size=len(mbytes), annotations={ref: new})
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get(ref) != new] + [nd]
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)


if __name__ == "__main__":
    main()
