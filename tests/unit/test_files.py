"""gateway.adapters.files.write_atomic: the one atomic writer (mode, fsync of file and directory, no partial file)."""

import os
import stat

import pytest

from gateway.adapters import files


def test_writes_bytes_and_text_with_the_mode(tmp_path):
    path = tmp_path / "a.json"
    files.write_atomic(path, b"\x00\x01", 0o600)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    files.write_atomic(str(path), "é\n", 0o644)
    assert path.read_text("utf-8") == "é\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left behind


def test_fsyncs_the_file_then_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.write_atomic(tmp_path / "f", b"x")
    assert synced == [False, True]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state"
    path.write_bytes(b"old")

    def broken(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        files.write_atomic(path, b"new" * 1000)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state"]


def test_a_secret_is_not_written_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"theirs")
    link = tmp_path / "key.pem"
    link.symlink_to(target)
    with pytest.raises(files.UnsafePath):
        files.write_atomic(link, b"secret", 0o600, secret=True)
    assert target.read_bytes() == b"theirs" and link.is_symlink()


def test_a_directory_that_cannot_be_fsynced_is_not_an_error(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    files.write_atomic(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_the_writers_of_the_gateway_use_it(tmp_path, monkeypatch):
    """Keys, the JWK Set, the boot epoch, the config, the PIN lock and the BTHome counters all go through it."""
    from drivers.ble import replay_state
    from gateway.adapters import boot_epoch, keys
    from gateway.app import config
    from gateway.app.console.auth import LockState
    written = []
    real = files.write_atomic

    def spy(path, data, mode=0o644, **kw):
        written.append((os.path.basename(path), mode, kw.get("secret", False)))
        return real(path, data, mode, **kw)

    for module in (keys, boot_epoch, replay_state, files):
        monkeypatch.setattr(module, "write_atomic", spy, raising=False)
    monkeypatch.setattr("gateway.app.console.auth.write_atomic", spy)
    key = keys.SigningKey.generate()
    keys.write_private(str(tmp_path / "key.pem"), key)
    keys.write_jwks(str(tmp_path / "trust.jwks"), {"keys": [key.jwk("gw-1")]})
    boot_epoch.write(str(tmp_path / "q.boot"), 7)
    replay_state.save(str(tmp_path / "c.json"), {"A4:C1:38:00:00:01": 3})
    config.write_atomic(str(tmp_path / "config.toml"), "[gateway]\n", 0o640)
    LockState(str(tmp_path / "lock.json")).save({"failures": 1, "locked_out": False, "wait_s": 0.0})
    assert written == [("key.pem", 0o600, True), ("trust.jwks", 0o644, False), ("q.boot", 0o600, False),
                       ("c.json", 0o600, False), ("config.toml", 0o640, False), ("lock.json", 0o600, True)]
