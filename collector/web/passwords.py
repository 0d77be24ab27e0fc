"""The web page's password file: one user a line, ``NAME:scrypt$N$r$p$SALT$HASH`` (salt and hash in
base64), made and changed by ``sockfleet web passwd``.

The file is private: it is written with mode 0600, and ``sockfleet web`` refuses one that other users
may read (a systemd credential counts as private: ``sockfleet.private``).  Passwords are hashed with
scrypt (RFC 7914), a random 16-byte salt per user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from sockfleet.collector.errors import UsageError
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


def load(path: str) -> dict[str, str]:
    """The users and their hashes; a file others may read, or a line that is not ``NAME:HASH``, is refused."""
    try:
        mode = exposed_mode(path)
        if mode is not None:
            raise UsageError(f"--password-file {path}: other users may read it (mode {mode:04o}); `chmod 600 {path}`")
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--password-file {path}: {exc.strerror}") from exc
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, _, stored = line.partition(":")
        if not name or not stored.startswith(_SCHEME + "$"):
            raise UsageError(f"--password-file {path}: line {number} is not NAME:HASH (made by `sockfleet web passwd`)")
        users[name] = stored
    return users


def store(path: str, user: str, password: str | None) -> None:
    """Set ``user``'s password (``None``: remove the user), replacing the file whole, mode 0600."""
    if not user or ":" in user or any(c.isspace() for c in user):
        raise UsageError(f"--user {user!r}: a user's name has no colon and no spaces")
    users = load(path) if os.path.exists(path) else {}
    if password is None:
        if users.pop(user, None) is None:
            raise UsageError(f"--user {user}: not in {path}")
    else:
        users[user] = hashed(password)
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=".passwd-")  # made with mode 0600
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.writelines(f"{name}:{stored}\n" for name, stored in sorted(users.items()))
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
