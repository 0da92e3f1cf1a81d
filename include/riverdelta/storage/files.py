"""Control files (state, pointers, pid files, progress) written whole or not at all.

Readers of these files never take a lock: they must see the old content or the
new, never half of it. The one way to get that on POSIX is to write a private
temporary file beside the target and ``rename`` it over the target. Here, and only
here, so that every caller gets the same care: a name no other writer (process or
thread) can pick, no following a planted symlink, the mode set at creation (0600
for secrets is never briefly wider), the data on disk before the rename, and no
stray temporary file after a failure. (No library in the lock does this for us:
``atomicwrites`` is unmaintained and cannot set the mode at creation.)
"""

from __future__ import annotations

import os
from pathlib import Path
from secrets import token_hex


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
