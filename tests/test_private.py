"""Secret files (an agent's token, the web page's password file) must be private: mode 0600, or a systemd
credential of the service's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from sockfleet.private import exposed_mode


def test_a_file_only_its_owner_may_read_is_private(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("x")
    secret.chmod(0o600)
    assert exposed_mode(str(secret)) is None
    secret.chmod(0o640)
    assert exposed_mode(str(secret)) == 0o640
    secret.chmod(0o604)
    assert exposed_mode(str(secret)) == 0o604


def test_a_systemd_credential_is_private_and_nothing_outside_its_folder_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    token = credentials / "token"
    token.write_text("x")
    token.chmod(0o440)  # as systemd shows a credential: an access list names the service's user alone
    outside = tmp_path / "elsewhere"
    outside.write_text("x")
    outside.chmod(0o440)
    (credentials / "link").symlink_to(outside)
    assert exposed_mode(str(token)) == 0o440
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert exposed_mode(str(token)) is None
    assert exposed_mode(str(outside)) == 0o440
    assert exposed_mode(str(credentials / "link")) == 0o440  # a link out of the folder is not a credential
    with pytest.raises(FileNotFoundError):
        exposed_mode(str(credentials / "none"))
