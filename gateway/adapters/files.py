"""The one atomic file writer: the file at ``path`` is either the old one or the whole new one, even after a power
cut, and never a partial one.

``write_atomic(path, data, mode)`` writes a temporary file in the same directory (created exclusively, mode set
before any byte is written), fsyncs it, renames it over ``path`` and fsyncs the directory, so the rename itself
survives a power cut. On any failure the temporary file is removed and the ``OSError`` is raised; callers turn it
into their own error type (``StoreError``, ``KeyFileError``, ...). ``secret=True`` (private keys, the console's
PIN lock) refuses a symbolic link at ``path``: someone who can plant a link next to a secret should not learn
where we write it, nor make us replace a file they chose.

Users: the private key and the JWK Set (``keys.py``), the boot epoch (``boot_epoch.py``), the config file
(``gateway/app/config.py``, also for the console and ``provision``), the console's PIN lock state, the BLE
scanner's BTHome counters (``drivers/ble/replay_state.py``).
"""

import errno
import os
import tempfile

#: what ``fsync`` of a directory says on file systems that cannot do it (some FUSE and network mounts)
_NO_DIR_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


class UnsafePath(OSError):
    """``path`` is a symbolic link where a secret was to be written."""


def write_atomic(path, data, mode=0o644, *, secret=False):
    """Replace ``path`` with ``data`` (bytes, or text written as UTF-8) atomically and durably, with ``mode``."""
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if secret and os.path.islink(path):
        raise UnsafePath("refusing to write a secret through the symbolic link %s" % path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".%s.tmp." % os.path.basename(path), dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def fsync_dir(directory):
    """Make a rename in ``directory`` durable. A file system that cannot fsync a directory is not an error; a
    failing disk (EIO, ENOSPC) is."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)
