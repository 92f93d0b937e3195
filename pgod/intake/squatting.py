"""Names taken ahead of the programs they belong to, told apart from a program's own files.

The runtime names a profile `<pid>.profraw` (LLVM_PROFILE_FILE's %p) in a folder everyone
writes. A user who creates that name first, for a pid no process has yet, either receives the
program's profile (a file of theirs, writable by others) or makes its write fail (with
fs.protected_regular, the program may not open another user's file there). Such an entry is
recognised by its name: the pid in it is no running process of the entry's owner.

Two kinds of programs make files that look the same for a moment, and must not lose them:

- a child forked without exec writes at exit under its parent's pid: the runtime expands %p
  once, at start (measured with clang 14: the child of 20785 wrote 20785.profraw), and the
  parent may be gone by then;
- a process in another pid namespace (a container) never matches the host's /proc.

Both create the file and fill it within microseconds. So an empty file is freed only once it
has stayed empty SETTLE_SECONDS after its last change; a folder (which no program makes) at
once. What one uid has pending never holds a candidate back (fair.py): the squatter could
otherwise keep its own names in place by flooding.
"""

from __future__ import annotations

import os
import re
import stat
import time

# An empty file younger than this may be a running program's (the runtime creates its file at
# start and writes it at exit); older, it is a dead program's and is claimed as empty.
EMPTY_FILE_GRACE_SECONDS = 600.0
# An empty candidate is freed once unchanged this long: a forked child's or another pid
# namespace's exit write fills its file well within it.
SETTLE_SECONDS = 2.0
# An empty file named for a running process of its owner is left to that process, whose exit
# write brings it back; it is looked at again this often all the same, since the process may not
# be the file's writer (an uninstrumented program that got the pid by chance, or got it after the
# writer died): its name must not wait for an event that never comes.
OWNER_RECHECK_SECONDS = 15.0

_PID_NAME = re.compile(r"([1-9][0-9]{0,9})\.profraw")


def owners_process(name: str, owner_uid: int) -> bool | None:
    """For a spool entry named ``<pid>.profraw`` (the name the runtime gives it): True if that
    pid is a running process of the entry's owner, False if it is none of the owner's (a
    squatter's name). None when the name has another form or /proc cannot tell."""
    matched = _PID_NAME.fullmatch(name)
    if matched is None:
        return None
    try:
        return os.stat(f"/proc/{matched.group(1)}").st_uid == owner_uid
    except FileNotFoundError:
        return False
    except OSError:
        return None  # /proc not readable here: cannot tell


def squatter(name: str, owner_uid: int) -> bool:
    """Does the spool entry ``name`` claim to be the profile of a process that is not a running
    process of the entry's owner? A name that cannot be judged is not."""
    return owners_process(name, owner_uid) is False


def squat_candidate(name: str, info: os.stat_result) -> bool:
    """A folder, or an empty and new regular file, whose name is a squatter's (above)."""
    if stat.S_ISDIR(info.st_mode):
        return squatter(name, info.st_uid)
    if stat.S_ISREG(info.st_mode) and info.st_size == 0 and time.time() - info.st_mtime < EMPTY_FILE_GRACE_SECONDS:
        return squatter(name, info.st_uid)
    return False


def settle_left(info: os.stat_result) -> float:
    """Seconds an empty candidate must still stay unchanged before it is freed (0: free it)."""
    return max(0.0, SETTLE_SECONDS - (time.time() - max(info.st_mtime, info.st_ctime)))
