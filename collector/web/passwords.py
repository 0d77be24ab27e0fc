"""The web page's password file: one user a line, ``NAME:scrypt$N$r$p$SALT$HASH`` (salt and hash in
base64), made and changed by ``sockfleet web passwd``.

The file is private: it is written with mode 0600, and ``sockfleet web`` refuses one that other users
may read (a systemd credential counts as private: ``sockfleet.private``).  Passwords are hashed with
scrypt (RFC 7914), a random 16-byte salt per user.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import os
import secrets
import tempfile
import threading
from pathlib import Path

from sockfleet.collector.errors import UsageError
from sockfleet.commandline import printable
from sockfleet.private import exposed_mode

N, R, P = 2**14, 8, 1  # scrypt's cost: about 16 MiB and 50 ms a password here
_SCHEME = "scrypt"


def hashed(password: str, salt: bytes | None = None) -> str:
    """``"hunter2"`` → ``"scrypt$16384$8$1$<salt>$<hash>"``."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    parts = (_SCHEME, str(N), str(R), str(P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    return "$".join(parts)


def matches(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (in constant time)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != _SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        found = hashlib.scrypt(
            password.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(found, expected)


def load(path: str, option: str = "--password-file") -> dict[str, str]:
    """The users and their hashes; a file others may read, or a line that is not ``NAME:HASH``, is refused."""
    try:
        mode = exposed_mode(path)
        if mode is not None:
            raise UsageError(f"{option} {path}: other users may read it (mode {mode:04o}); `chmod 600 {path}`")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{option} {path}: not a password file (not text)") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, _, stored = line.partition(":")
        if not name or not stored.startswith(_SCHEME + "$"):
            raise UsageError(f"{option} {path}: line {number} is not NAME:HASH (made by `sockfleet web passwd`)")
        users[name] = stored
    return users


def store(path: str, user: str, password: str | None) -> None:
    """Set ``user``'s password (``None``: remove the user), replacing the file whole, mode 0600; one change at a
    time (a lock on the folder), so that two changes made at once both stay."""
    if not 0 < len(user) <= 64 or ":" in user or not user.isprintable() or any(c.isspace() for c in user):
        raise UsageError(f"--user {printable(user[:64])!r}: a user's name is 1 to 64 printable characters, no colon")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--file {path}: {exc.strerror} (its folder)") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _replace(path, user, password, folder)
    finally:
        os.close(lock)


def _replace(path: str, user: str, password: str | None, folder: str) -> None:
    users = load(path, "--file") if os.path.lexists(path) else {}
    if password is None:
        if users.pop(user, None) is None:
            raise UsageError(f"--user {user}: not in {path}")
    else:
        users[user] = hashed(password)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".passwd-")  # made with mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.writelines(f"{name}:{stored}\n" for name, stored in sorted(users.items()))
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class PasswordFile:
    """The users of a password file, read again whenever the file changes (a user removed by `sockfleet web
    passwd --delete` is refused from the next request on).  Safe to use from several threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.users = load(path)
        self.seen = self._version()
        self.proven: set[bytes] = set()  # digests of name:password pairs already checked, to skip scrypt
        self.unknown = hashed(secrets.token_hex(16))  # checked for unknown names: as slow as for a known one

    def _version(self) -> tuple[int, int, int]:
        found = os.stat(self.path)
        return found.st_ino, found.st_mtime_ns, found.st_size

    def check(self, name: str, password: str) -> bool:
        """Whether ``name`` may log in with ``password`` (about 50 ms the first time: run it in a thread)."""
        with self.lock:
            try:
                if self._version() != self.seen:
                    self.users, self.seen, self.proven = load(self.path), self._version(), set()
            except (OSError, UsageError):
                return False  # the file is gone or broken: nobody logs in until it is mended
            digest = hashlib.sha256(f"{name}\0{password}".encode()).digest()
            if digest in self.proven:
                return True
            stored = self.users.get(name)
        if not matches(stored or self.unknown, password) or stored is None:
            return False
        with self.lock:
            if len(self.proven) < 1024:
                self.proven.add(digest)
        return True
