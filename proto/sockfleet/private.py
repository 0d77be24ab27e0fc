"""Whether a secret file (an agent's token, the web page's password file) is kept private.

A file is private when no one but its owner may read it (mode 0600 or stricter), as ssh asks of a key,
or when it is one of the service's systemd credentials (under ``$CREDENTIALS_DIRECTORY``): systemd
shows those as mode 0440 with an access list that names the service's user alone, in a folder only
that user may enter.
"""

from __future__ import annotations

import os
import ssl


def exposed_mode(path: str) -> int | None:
    """The file's permission bits if users other than its owner may read it; ``None`` when it is private.

    Raises ``OSError`` when the file cannot be looked at.
    """
    mode = os.stat(path).st_mode & 0o777
    if not mode & 0o077:
        return None
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        folder, found = os.path.realpath(credentials), os.path.realpath(path)
        if os.path.commonpath((folder, found)) == folder:
            return None
    return mode


def key_pair_problem(cert: str, key: str) -> str | None:
    """Why a PEM certificate and its private key cannot serve (one line naming both files), or ``None``; read at
    start, so that a wrong file is one line then rather than a failure at the first connection."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        return f"--tls-cert {cert} / --tls-key {key}: not a certificate and its key ({exc.reason or exc})"
    except OSError as exc:
        return f"--tls-cert {cert} / --tls-key {key}: {exc.strerror}"
    return None
