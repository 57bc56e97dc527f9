#!/usr/bin/python3
"""Write an mkfs.xfs protofile (mkfs.xfs(8), -p) for a directory tree, the
way a user without ocidisk would feed mkfs.xfs an unpacked image.

Usage: bench/protofile.py ROOTFS > proto

The format cannot say hard links (they become copies), xattrs or names
with white space (those are left out and counted on stderr); xfsprogs 6.1
ships no generator of its own.
"""
import os
import stat
import sys


def mode_field(st):
    m = st.st_mode
    kind = {stat.S_IFREG: "-", stat.S_IFDIR: "d", stat.S_IFLNK: "l",
            stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}[stat.S_IFMT(m)]
    u = "u" if m & stat.S_ISUID else "-"
    g = "g" if m & stat.S_ISGID else "-"
    return f"{kind}{u}{g}{m & 0o777:03o}"


skipped = 0


def walk(path, depth, out):
    global skipped
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if any(c.isspace() for c in name):
            skipped += 1
            continue
        st = os.lstat(full)
        ind = " " * depth
        head = f"{ind}{name} {mode_field(st)} {st.st_uid} {st.st_gid}"
        if stat.S_ISDIR(st.st_mode):
            out.write(head + "\n")
            walk(full, depth + 1, out)
            out.write(ind + "$\n")
        elif stat.S_ISREG(st.st_mode):
            out.write(f"{head} {full}\n")
        elif stat.S_ISLNK(st.st_mode):
            out.write(f"{head} {os.readlink(full)}\n")
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            out.write(f"{head} {os.major(st.st_rdev)} {os.minor(st.st_rdev)}\n")
        elif stat.S_ISFIFO(st.st_mode):
            out.write(head + "\n")
        else:
            skipped += 1


def main():
    root = sys.argv[1]
    st = os.lstat(root)
    out = sys.stdout
    out.write("/dev/null\n0 0\n")
    out.write(f"{mode_field(st)} {st.st_uid} {st.st_gid}\n")
    walk(root, 1, out)
    out.write("$\n")
    if skipped:
        print(f"protofile: left out {skipped} entries the format cannot name", file=sys.stderr)


main()
