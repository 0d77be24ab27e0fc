"""The systemd units in ``deploy/systemd``: they pass ``systemd-analyze verify``, their exposure is the one
``deploy/README.md`` states, their command lines are the commands', and the agent, started as an
unprivileged user with exactly its unit's capabilities, sees every socket and owner root sees, while
without any one of them it misses something.  Both programs also run within their units' system calls,
address families and namespaces (as seccomp filters) and without writable and executable memory.

systemd itself is not needed: ``setpriv`` switches user and capabilities as a unit would."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import re
import shlex
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Zoo

UNITS = ROOT / "deploy" / "systemd"
AGENT_UNIT = UNITS / "sockfleet-agent.service"
COLLECTOR_UNIT = UNITS / "sockfleet-collector.service"
WEB_UNIT = UNITS / "sockfleet-web.service"
INSTALLED = "/opt/sockfleet/bin/sockfleet"  # where deploy/README.md installs the command
CREDENTIALS = "${CREDENTIALS_DIRECTORY}"
TOKEN = "/etc/sockfleet/agent.token"  # the agent's token: root's, mode 0600
NOBODY = 65534  # the agent's user in these tests: any uid but root's will do
STRANGER = 65533  # the owner of sockets the agent must see although they are not its own

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not is_root or shutil.which("setpriv") is None or shutil.which("ip") is None or shutil.which("unshare") is None,
    reason="switching users and making network namespaces need root, setpriv, unshare and ip",
)
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


# Reading the units.


def settings(unit: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> its values in order, as systemd reads a unit file (comments, continued lines)."""
    found: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in unit.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def capabilities(unit: Path, key: str = "AmbientCapabilities") -> frozenset[str]:
    return frozenset(word for value in settings(unit).get(f"Service.{key}", []) for word in value.split())


def command_line(unit: Path) -> list[str]:
    (line,) = settings(unit)["Service.ExecStart"]
    return shlex.split(line)


def credentials(unit: Path) -> dict[str, str]:
    """``LoadCredential=NAME:PATH`` lines: name -> the file on the host."""
    return dict(value.split(":", 1) for value in settings(unit).get("Service.LoadCredential", []))


def test_the_agents_ambient_capabilities_are_its_whole_bounding_set() -> None:
    ambient = capabilities(AGENT_UNIT)
    assert ambient == capabilities(AGENT_UNIT, "CapabilityBoundingSet")
    assert ambient and all(re.fullmatch(r"CAP_[A-Z_]+", name) for name in ambient)
    assert settings(AGENT_UNIT)["Service.NoNewPrivileges"] == ["yes"]
    assert settings(AGENT_UNIT)["Service.DynamicUser"] == ["yes"]


def test_the_collector_has_no_capability_at_all() -> None:
    unit = settings(COLLECTOR_UNIT)
    assert unit["Service.CapabilityBoundingSet"] == [""] and unit["Service.AmbientCapabilities"] == [""]
    assert unit["Service.DynamicUser"] == ["yes"] and unit["Service.StateDirectory"] == ["sockfleet"]


def test_the_web_page_runs_as_the_collectors_user_with_no_capability() -> None:
    unit = settings(WEB_UNIT)
    assert unit["Service.CapabilityBoundingSet"] == [""] and unit["Service.AmbientCapabilities"] == [""]
    assert unit["Service.DynamicUser"] == ["yes"] and unit["Service.User"] == ["sockfleet-collector"]
    assert unit["Service.StateDirectory"] == settings(COLLECTOR_UNIT)["Service.StateDirectory"]


@pytest.mark.parametrize("unit", [AGENT_UNIT, COLLECTOR_UNIT, WEB_UNIT], ids=lambda unit: unit.stem)
def test_every_credential_the_command_line_names_is_loaded(unit: Path) -> None:
    named = {word.split("/", 1)[1] for word in command_line(unit) if word.startswith(CREDENTIALS + "/")}
    assert named == set(credentials(unit))
    assert all(path.startswith("/etc/sockfleet/") for path in credentials(unit).values())


# systemd-analyze: verify and security.


def installed_here(unit: Path, folder: Path, text: str | None = None) -> Path:
    """A copy of ``unit`` in ``folder`` whose ExecStart runs this checkout's ``sockfleet``: verify checks
    that the program exists."""
    here = Path(sys.executable).parent / "sockfleet"
    if not here.exists():
        pytest.skip(f"{here} is not installed (bash .ci/setup)")
    copy = folder / unit.name
    copy.write_text((text if text is not None else unit.read_text()).replace(INSTALLED, str(here)))
    return copy


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_analyze
@pytest.mark.parametrize("unit", [AGENT_UNIT, COLLECTOR_UNIT, WEB_UNIT], ids=lambda unit: unit.stem)
def test_the_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    result = verify(installed_here(unit, tmp_path))
    # An unknown key or a value systemd cannot parse is only a warning (exit status 0): no output at all.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


@needs_analyze
def test_verify_tells_a_broken_unit(tmp_path: Path) -> None:
    text = AGENT_UNIT.read_text()
    misspelt = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes").replace("RestartSec=5s", "RestartSec=soon")
    assert misspelt != text
    result = verify(installed_here(AGENT_UNIT, tmp_path, misspelt))
    assert "Unknown key" in result.stderr and "Failed to parse" in result.stderr
    missing = verify(installed_here(AGENT_UNIT, tmp_path, text.replace(INSTALLED, "/nonexistent/sockfleet")))
    assert missing.returncode != 0 and "/nonexistent/sockfleet" in missing.stderr


def offline_security() -> bool:
    """``systemd-analyze security --offline``: systemd 250 and later."""
    version = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True, check=False).stdout
    number = re.match(r"systemd (\d+)", version)
    return number is not None and int(number.group(1)) >= 250


def documented_exposure(unit: Path) -> float:
    text = (ROOT / "deploy" / "README.md").read_text()
    found = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d)", text)
    assert found, f"deploy/README.md does not give the exposure of {unit.name}"
    return float(found.group(1))


@needs_analyze
@pytest.mark.parametrize("unit", [AGENT_UNIT, COLLECTOR_UNIT, WEB_UNIT], ids=lambda unit: unit.stem)
def test_the_units_exposure_is_at_most_the_documented_one(unit: Path, tmp_path: Path) -> None:
    if not offline_security():
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(installed_here(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    measured = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert measured, result.stdout + result.stderr
    assert float(measured.group(1)) <= documented_exposure(unit)


# The units' command lines are the commands'.


@pytest.fixture
def no_sockfleet_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("SOCKFLEET_")]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_sockfleet_environment")
def test_the_agent_units_command_line_is_agent_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sockfleet.agent.cli import build_parser

    argv = command_line(AGENT_UNIT)
    assert argv[:3] == [INSTALLED, "agent", "run"]
    config = tmp_path / "agent.toml"
    config.write_text('collector = "c1.example:50051"\n')
    monkeypatch.setenv("SOCKFLEET_CONFIG", str(config))  # the unit leaves the rest to /etc/sockfleet/agent.toml
    args = build_parser().parse(argv[2:])
    assert args.collector == "c1.example:50051"
    assert args.token_file == TOKEN
    state = settings(AGENT_UNIT)["Service.StateDirectory"]
    assert args.spool is not None and Path(args.spool).parent == Path("/var/lib", *state)


@pytest.mark.usefixtures("no_sockfleet_environment")
def test_the_collector_units_command_line_is_collector_serve(tmp_path: Path) -> None:
    from sockfleet.collector.parser import build_parser

    argv = command_line(COLLECTOR_UNIT)
    assert argv[:4] == [INSTALLED, "collector", "serve", "--config"]
    creds = tmp_path / "credentials"
    creds.mkdir()
    example = ROOT / "deploy" / "collector.toml"  # the example the walkthrough copies to /etc/sockfleet
    if example.exists():
        shutil.copy(example, creds / "collector.toml")
    else:
        (creds / "collector.toml").write_text('db = "sqlite:////var/lib/sockfleet/sockfleet.db"\n')
    args = build_parser().parse([word.replace(CREDENTIALS, str(creds)) for word in argv[1:]])
    assert args.config == f"{creds}/collector.toml"
    assert args.tls_key == f"{creds}/tls-key"
    assert args.db == "sqlite:////var/lib/sockfleet/sockfleet.db"


@pytest.mark.usefixtures("no_sockfleet_environment")
def test_the_web_units_command_line_is_sockfleet_web(tmp_path: Path) -> None:
    from sockfleet.collector.parser import build_parser

    argv = command_line(WEB_UNIT)
    assert argv[:4] == [INSTALLED, "web", "--config", f"{CREDENTIALS}/web.toml"]
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(ROOT / "deploy" / "web.toml", creds / "web.toml")
    args = build_parser().parse([word.replace(CREDENTIALS, str(creds)) for word in argv[1:]])
    assert (args.tls_key, args.password_file) == (f"{creds}/tls-key", f"{creds}/web.passwd")
    assert args.db == "sqlite:////var/lib/sockfleet/sockfleet.db" and args.web_action is None


# The agent with its unit's capabilities, as an unprivileged user.

BOOT = """\
import ctypes, site, sys
if {mdwe}:  # MemoryDenyWriteExecute=, as the kernel's own PR_SET_MDWE (Linux 6.3 and later) has it
    ulong = ctypes.c_ulong
    if ctypes.CDLL(None, use_errno=True).prctl(ulong(65), ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        sys.exit("PR_SET_MDWE refused: errno " + str(ctypes.get_errno()))
before = list(sys.path)
for folder in {sites!r}:
    site.addsitedir(folder)
sys.path[:] = [path for path in sys.path if path not in before] + before  # ahead of any system packages
{body}
"""
MAIN = "from sockfleet.agent.main import main\nsys.argv[0] = 'sockfleet'\nsys.exit(main())"


def boot(body: str = MAIN, mdwe: bool = False) -> str:
    """A ``-c`` program that finds sockfleet from any interpreter: this environment's site folders first."""
    return BOOT.format(mdwe=mdwe, sites=[*site.getsitepackages(), str(ROOT)], body=body)


def mdwe_supported() -> bool:
    return bool(ctypes.CDLL(None).prctl(ctypes.c_ulong(66), *(ctypes.c_ulong(0),) * 4) >= 0)  # PR_GET_MDWE


def as_user(uid: int, python: str, caps: frozenset[str] | None = None) -> list[str]:
    """``setpriv`` as systemd starts a unit: uid and gid ``uid``, no groups, no new privileges, and with
    ``caps`` (``CAP_SYS_ADMIN`` ...) as ambient, inheritable and bounding set."""
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    if caps is not None:
        names = ",".join(["-all", *(f"+{name.removeprefix('CAP_').lower()}" for name in sorted(caps))])
        command += ["--no-new-privs", f"--inh-caps={names}", f"--ambient-caps={names}", f"--bounding-set={names}"]
    return [*command, python]


def clean_environment() -> dict[str, str]:
    """This environment without coverage's: a process of another user could not write its data here."""
    return {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE")}


# Whether the user can reach the interpreter's own file.  One it cannot (pyenv's, in root's home) is not
# used, even when it starts: a program it runs, such as the system call filter below, could not start it.
REACHABLE = "import os\nos.stat(os.path.realpath(sys.executable))\n"


@functools.cache
def interpreter() -> str | None:
    """A Python that an unprivileged user may start: this one, or the system's of the same version (this one
    may live in root's home, as pyenv puts it)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        if not os.path.exists(python):
            continue
        result = subprocess.run(
            [*as_user(NOBODY, python), "-c", boot(REACHABLE + MAIN), "--version"],
            capture_output=True,
            text=True,
            cwd="/",
            env=clean_environment(),
            timeout=60,
            check=False,
        )
        if result.returncode == 0:
            return python
    return None


def unprivileged() -> str:
    python = interpreter()
    if python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that uid {NOBODY} may start")
    return python


HOLDER = """\
import os, socket, sys
server = socket.create_server(("0.0.0.0", 0))
pair = socket.socketpair()
inodes = [os.fstat(sock.fileno()).st_ino for sock in (server, *pair)]
print(os.getpid(), *inodes, os.stat("/proc/self/ns/net").st_ino, flush=True)
sys.stdin.read()
"""


def hold(command: list[str], stack: contextlib.ExitStack) -> dict[str, int]:
    """Start ``command`` (ending in a Python) holding a TCP listener and a connected pair of Unix sockets
    until the test ends: its pid, the sockets' inodes and its network namespace."""
    proc = subprocess.Popen(
        [*command, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
        env=clean_environment(),
    )
    assert proc.stdin is not None and proc.stdout is not None

    def stop() -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()

    stack.callback(stop)
    line = proc.stdout.readline()
    if not line:
        pytest.fail(f"{command} exited with status {proc.wait()}")
    pid, tcp, unix, _, netns = map(int, line.split())
    return {"pid": pid, "tcp": tcp, "unix": unix, "netns": netns}


@pytest.fixture
def named_namespace() -> Iterator[str]:
    """A network namespace of the test's own, kept under /run/netns as ``ip netns add`` keeps them."""
    name = f"sf-deploy-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


Sockets = dict[str, int]  # the test's own sockets: a name for messages -> inode


@pytest.fixture
def sockets(zoo: Zoo, named_namespace: str) -> Iterator[Sockets]:
    """Sockets the agent must see with their owners: the zoo (root's), and a listener and a Unix pair held
    by root in the test's named namespace, by another user in the host's namespace, and by another user in
    a namespace no name points to (found only through that process's /proc/PID/ns/net)."""
    python = unprivileged()
    found = {f"zoo {name}": s["inode"] for name, s in zoo.sockets.items() if s["inode"]}
    with contextlib.ExitStack() as stack:
        holders = {
            "root in named namespace": ["ip", "netns", "exec", named_namespace, python],
            "stranger": as_user(STRANGER, python),
            "stranger in hidden namespace": ["unshare", "--net", "--", *as_user(STRANGER, python)],
        }
        for who, command in holders.items():
            held = hold(command, stack)
            found |= {f"{who} tcp": held["tcp"], f"{who} unix": held["unix"]}
        yield found


def snapshot(caps: frozenset[str] | None) -> list[dict[str, Any]]:
    """``sockfleet agent snapshot --format json``: as root (``caps`` None), or as an unprivileged user with
    exactly ``caps``."""
    python = unprivileged()
    command = [python] if caps is None else as_user(NOBODY, python, caps)
    result = subprocess.run(
        [*command, "-c", boot(), "agent", "snapshot", "--format", "json"],
        capture_output=True,
        text=True,
        cwd="/",
        env=clean_environment(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


# Where a socket is, who holds it, and what only netlink tells (a Unix socket's peer and owner uid).
FIELDS = ("netns", "proto", "local_address", "local_port", "peer_inode", "uid", "user", "pid", "process", "cmdline")


def seen(rows: list[dict[str, Any]], sockets: Sockets) -> dict[str, dict[str, Any]]:
    """Each of the test's sockets found in ``rows``, by name."""
    names = {inode: name for name, inode in sockets.items()}
    return {names[row["inode"]]: {f: row[f] for f in FIELDS} for row in rows if row["inode"] in names}


def missed(by_root: dict[str, dict[str, Any]], by_agent: dict[str, dict[str, Any]]) -> set[str]:
    """What the agent saw less well than root: sockets not found, found without their owner, or with less."""
    said = set()
    for name, row in by_root.items():
        if name not in by_agent:
            said.add(f"{name}: not found")
        elif by_agent[name]["pid"] is None:
            said.add(f"{name}: no owner")
        elif by_agent[name] != row:
            said.add(f"{name}: " + ", ".join(f for f in FIELDS if by_agent[name][f] != row[f]))
    return said


@pytest.mark.root
@needs_root
def test_the_agent_with_its_units_capabilities_sees_what_root_sees(sockets: Sockets) -> None:
    by_root = seen(snapshot(None), sockets)
    assert set(by_root) == set(sockets)  # root sees them all, in every namespace, each with its process
    assert all(row["pid"] is not None for row in by_root.values())
    assert by_root["stranger tcp"]["uid"] == STRANGER
    assert by_root["stranger in hidden namespace unix"]["peer_inode"] is not None
    assert missed(by_root, seen(snapshot(capabilities(AGENT_UNIT)), sockets)) == set()


# What the agent misses without each capability, as the unit's comment says.
WITHOUT = {
    # Other users' descriptors cannot be read, nor their namespaces found.
    "CAP_SYS_PTRACE": {
        "zoo tcp4_listen: no owner",
        "stranger tcp: no owner",
        "stranger in hidden namespace tcp: not found",
    },
    # Other users' descriptors cannot be listed.
    "CAP_DAC_READ_SEARCH": {
        "zoo tcp4_listen: no owner",
        "stranger tcp: no owner",
        "stranger in hidden namespace tcp: no owner",
    },
    # No namespace but its own can be entered: elsewhere /proc/PID/net stands in for netlink, without
    # Unix peers and owners (and without destroy events, see below).
    "CAP_SYS_ADMIN": {
        "root in named namespace unix: peer_inode, uid, user",
        "stranger in hidden namespace unix: peer_inode, uid",  # this uid has no name
    },
}


@pytest.mark.root
@needs_root
def test_without_any_one_of_its_capabilities_the_agent_misses_something(sockets: Sockets) -> None:
    caps = capabilities(AGENT_UNIT)
    assert set(WITHOUT) == caps, "the unit has a capability this test does not know, or lacks one it knows"
    by_root = seen(snapshot(None), sockets)
    for cap in sorted(caps):
        lost = missed(by_root, seen(snapshot(caps - {cap}), sockets))
        assert WITHOUT[cap] <= lost, f"without {cap} the agent missed only {sorted(lost)}"
        if cap == "CAP_SYS_ADMIN":  # what it needs only to enter namespaces
            assert not [said for said in lost if "namespace" not in said], lost


LISTENER = """\
import json, os, sys, time
from sockfleet.agent.events import Events
from sockfleet.agent.netns import current_namespace
from sockfleet.agent.records import Namespace
path = "/run/netns/" + sys.argv[1]
inode = os.stat(path).st_ino
events = Events()
events.watch([current_namespace(), Namespace(inode, path, None, False)])
print("watching", flush=True)
sys.stdin.readline()
time.sleep(0.5)
taken = events.take()
events.close()
closed = sum(counts.connections for key, counts in taken.flows.items() if key[0] == inode)
print(json.dumps({"unseen": taken.unseen, "closed": closed}))
"""
CONNECTIONS = """\
import socket
server = socket.create_server(("127.0.0.1", 0))
for _ in range(3):
    client = socket.create_connection(server.getsockname()); accepted, _ = server.accept()
    client.close(); accepted.close()
"""


@pytest.mark.root
@needs_root
@pytest.mark.parametrize("dropped", [None, "CAP_SYS_ADMIN"])
def test_the_agent_joins_socket_destroy_events_in_another_namespace_with_its_units_capabilities(
    named_namespace: str, dropped: str | None
) -> None:
    """The destroy-event listener `agent run` starts, in the test's namespace: the unit's capabilities are
    enough (CAP_NET_ADMIN is not needed), and without CAP_SYS_ADMIN it cannot be joined, and says so."""
    python = unprivileged()
    caps = capabilities(AGENT_UNIT) - {dropped}
    listener = subprocess.Popen(
        [*as_user(NOBODY, python, caps), "-c", boot(LISTENER), named_namespace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        env=clean_environment(),
    )
    try:
        assert listener.stdout is not None and listener.stdin is not None
        assert listener.stdout.readline() == "watching\n"
        subprocess.run(["ip", "netns", "exec", named_namespace, python, "-c", CONNECTIONS], check=True, timeout=60)
        out, err = listener.communicate("go\n", timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.communicate()
    assert listener.returncode == 0, err
    report = json.loads(out)
    if dropped is None:
        assert report == {"unseen": {}, "closed": 6}  # three connections, both ends in the namespace
    else:
        assert report["closed"] == 0 and "not permitted" in " ".join(report["unseen"].values())


@pytest.mark.root
@needs_root
def test_agent_run_starts_and_stops_as_its_unit_runs_it(tmp_path: Path) -> None:
    """`agent run` with the unit's command line, user, capabilities and no writable and executable memory:
    it reads the token, root's file of mode 0600 in a folder only root may enter, makes its spool in the
    state directory, scans every namespace without a complaint, and stops on SIGTERM with status 0."""
    python = unprivileged()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once the probe is closed
    home = Path(tempfile.mkdtemp(prefix="sockfleet-deploy-"))  # reachable by its user, unlike tmp_path
    try:
        os.chmod(home, 0o755)
        etc, state = home / "etc", home / "state"
        etc.mkdir(mode=0o700)
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY, NOBODY)  # as systemd makes StateDirectory=
        token = etc / "agent.token"
        token.write_text("d3c0ffee" * 5 + "\n")
        token.chmod(0o600)
        config = home / "agent.toml"
        config.write_text(f'collector = "127.0.0.1:{port}"\ninsecure = true\ninterval = "0.5s"\n')
        spool = f"{state}/spool"
        argv = [
            word.replace(TOKEN, str(token)).replace("/var/lib/sockfleet-agent", str(state))
            for word in command_line(AGENT_UNIT)[1:]
        ]
        assert str(token) in argv and spool in argv
        log = tmp_path / "agent.log"
        with log.open("w") as out:
            agent = subprocess.Popen(
                [*as_user(NOBODY, python, capabilities(AGENT_UNIT)), "-c", boot(mdwe=mdwe_supported()), *argv],
                stderr=out,
                cwd="/",
                env={**clean_environment(), "SOCKFLEET_CONFIG": str(config)},
            )
            try:
                deadline = time.monotonic() + 30
                while "retrying" not in log.read_text() and agent.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.2)
            finally:
                agent.send_signal(signal.SIGTERM)
                status = agent.wait(timeout=30)
        said = log.read_text()
        assert status == 0, said
        assert "retrying" in said and "Traceback" not in said
        assert "not seen" not in said and "not scanned" not in said and "unreadable" not in said, said
        assert Path(spool).is_dir() and Path(spool).stat().st_uid == NOBODY
    finally:
        shutil.rmtree(home)


# The units' system call filter and address families, as seccomp filters.

FILTER = """\
import errno, json, os, sys
sys.path.append("/usr/lib/python3/dist-packages")  # Debian's python3-seccomp
import seccomp
allowed, families, namespaces = json.loads(sys.argv[1])
rules = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))  # SystemCallErrorNumber=EPERM
for name in allowed:
    if name not in ("socket", "setns"):
        try:
            rules.add_rule(seccomp.ALLOW, name)
        except Exception:  # a call this architecture does not have
            pass
for family in families:  # RestrictAddressFamilies=
    rules.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
for kind in namespaces:  # RestrictNamespaces=: entering one of these kinds
    rules.add_rule(seccomp.ALLOW, "setns", seccomp.Arg(1, seccomp.EQ, kind))
rules.load()
os.execv(sys.argv[2], sys.argv[2:])
"""
SECCOMP_CHECK = "import sys; sys.path.append('/usr/lib/python3/dist-packages'); import seccomp\n" + REACHABLE


def syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a ``systemd-analyze syscall-filter`` group (``@system-service``), nested ones too."""
    seen = set() if seen is None else seen
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True, text=True, check=True
    ).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        word = line.strip()
        if word.startswith("@") and word not in seen:
            seen.add(word)
            calls |= syscall_group(word, seen)
        elif word and word[0] not in "#@":
            calls.add(word)
    return calls


def sandbox(unit: Path) -> list[str]:
    """The unit's SystemCallFilter=, RestrictAddressFamilies= and RestrictNamespaces= as the argument of
    ``FILTER``."""
    unit_settings = settings(unit)
    allowed: set[str] = set()
    denied: set[str] = set()
    for line in unit_settings["Service.SystemCallFilter"]:
        words = line.removeprefix("~").split()
        calls = set().union(*(syscall_group(word) if word.startswith("@") else {word} for word in words))
        (denied if line.startswith("~") else allowed).update(calls)
    families = [int(getattr(socket, name)) for name in unit_settings["Service.RestrictAddressFamilies"][0].split()]
    kinds = {"net": 0x40000000}  # CLONE_NEWNET
    restricted = unit_settings["Service.RestrictNamespaces"][0]
    namespaces = [] if restricted == "yes" else [kinds[name] for name in restricted.split()]
    calls = allowed - denied
    return [json.dumps([sorted(calls), families, namespaces if "setns" in calls else []])]


@functools.cache
def seccomp_interpreter() -> str | None:
    """A Python with Debian's python3-seccomp that an unprivileged user may start."""
    for python in (sys.executable, "/usr/bin/python3"):
        checked = subprocess.run(
            [*as_user(NOBODY, python), "-c", SECCOMP_CHECK], capture_output=True, cwd="/", timeout=60, check=False
        )
        if checked.returncode == 0:
            return python
    return None


def filtered(unit: Path, command: list[str]) -> list[str]:
    """``command`` (``setpriv ... PYTHON``) run as ``unit`` filters system calls."""
    seccomp_python = seccomp_interpreter()
    if seccomp_python is None:
        pytest.skip("python3-seccomp is not installed")
    *switch, python = command
    return [*switch, seccomp_python, "-c", FILTER, *sandbox(unit), python]


def proc_view(unit: Path) -> list[str]:
    """A prefix that mounts ``/proc`` as the unit's ``ProtectProc=`` and ``ProcSubset=`` have it, for the
    command that follows only (a mount namespace of its own)."""
    unit_settings = settings(unit)
    options = [f"hidepid={value}" for value in unit_settings.get("Service.ProtectProc", []) if value != "default"]
    options += [f"subset={value}" for value in unit_settings.get("Service.ProcSubset", []) if value != "all"]
    if not options:
        return []
    script = f'mount -t proc -o {",".join(options)} proc /proc && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"]


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while text not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return log.read_text()


@pytest.mark.root
@needs_root
@needs_analyze
def test_the_collector_and_the_agent_work_within_their_units_system_calls(tmp_path: Path, named_namespace: str) -> None:
    """Both programs as their units run them (user, capabilities, system calls, address families,
    namespaces, their view of /proc, no writable and executable memory): the agent streams to the
    collector, in the test's namespace too, and SIGTERM stops both with status 0."""
    python = unprivileged()
    home = Path(tempfile.mkdtemp(prefix="sockfleet-deploy-"))  # reachable by their user, unlike tmp_path
    procs: list[subprocess.Popen[bytes]] = []
    try:
        os.chmod(home, 0o755)
        state = home / "state"
        state.mkdir(mode=0o700)
        os.chown(state, NOBODY, NOBODY)
        mdwe = mdwe_supported()
        collector_log, agent_log = tmp_path / "collector.log", tmp_path / "agent.log"
        serve = ["collector", "serve", "--insecure", "--allow-anonymous", "--listen", "127.0.0.1:0"]
        serve += ["--db", f"sqlite:///{state}/sockfleet.db"]
        with collector_log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [
                        *proc_view(COLLECTOR_UNIT),
                        *filtered(COLLECTOR_UNIT, as_user(NOBODY, python, frozenset())),
                        "-c",
                        boot(MAIN, mdwe),
                        *serve,
                    ],
                    stderr=out,
                    cwd="/",
                    env=clean_environment(),
                )
            )
        said = wait_for(collector_log, "listening on", procs[0])
        listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", said)
        assert listening, said
        run = ["agent", "run", "--collector", f"127.0.0.1:{listening.group(1)}", "--insecure", "--interval", "0.5s"]
        run += ["--spool", f"{state}/spool"]
        with agent_log.open("w") as out:
            procs.append(
                subprocess.Popen(
                    [
                        *proc_view(AGENT_UNIT),
                        *filtered(AGENT_UNIT, as_user(NOBODY, python, capabilities(AGENT_UNIT))),
                        "-c",
                        boot(MAIN, mdwe),
                        *run,
                    ],
                    stderr=out,
                    cwd="/",
                    env=clean_environment(),
                )
            )
        wait_for(agent_log, "connected to the collector", procs[1])
        time.sleep(1.5)  # a few scans
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (collector_log.read_text(), agent_log.read_text())
        for log in (collector_log, agent_log):
            said = log.read_text()
            assert "Traceback" not in said and "not permitted" not in said.lower(), said
        assert "connected to the collector" in agent_log.read_text()
        assert re.search(r"stopped; [1-9]\d* messages applied", collector_log.read_text())
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(home)
