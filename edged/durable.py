"""Making a file's existence durable: fsync the folder that holds its name.

An fsync of a file makes its bytes durable, not its directory entry; after a power cut a
new or renamed file can vanish unless its folder was fsynced too. Every place that creates
or renames a file it must not lose (audit segments, keys, config versions) calls this.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
