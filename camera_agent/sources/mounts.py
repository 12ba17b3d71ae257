"""Which filesystem a folder lives on, to tell a network filesystem from a local one.

File-system events (inotify) report only what this machine writes; on a network
filesystem another machine's writes go unseen, so a watched folder there is polled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["NETWORK_FILESYSTEMS", "filesystem_type"]

MOUNTINFO = Path("/proc/self/mountinfo")
# Filesystems whose files other machines (or a VM's host) can change.
NETWORK_FILESYSTEMS = frozenset(
    {
        "9p", "afs", "beegfs", "ceph", "cifs", "davfs", "drvfs", "fuse.glusterfs", "fuse.rclone",
        "fuse.s3fs", "fuse.sshfs", "glusterfs", "gpfs", "lustre", "ncpfs", "nfs", "nfs4", "smb3",
        "smbfs", "vboxsf", "virtiofs",
    }
)  # fmt: skip
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def filesystem_type(folder: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The type of the filesystem `folder` is on ("ext4", "nfs4", ...), or None where unknown."""
    try:
        text = mountinfo.read_text()
    except OSError:  # not Linux, or no /proc
        return None
    target = os.path.realpath(folder)
    best, found = "", None
    # Each line: ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE OPTIONS
    for line in text.splitlines():
        mount, separator, rest = line.partition(" - ")
        fields, kind = mount.split(), rest.split()
        if not separator or len(fields) < 5 or not kind:
            continue
        point = _OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[4])
        inside = point == "/" or target == point or target.startswith(point.rstrip("/") + "/")
        # The deepest mount point wins; of equal ones the later, which is mounted over the earlier.
        if inside and len(point) >= len(best):
            best, found = point, kind[0]
    return found
