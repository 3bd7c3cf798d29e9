"""The Windows admin host many HCI operators use has no fcntl, no /proc, and an os.kill(pid, 0) that sends
CTRL_C_EVENT. Here, on Linux, a child process is made to look like that host for our own code (fcntl cannot be
imported; a /proc read or a signal-0 kill from a module of ours raises) and then imports every module and starts
every command (its --help), takes a host lock and asks whether a process lives. psutil may still read /proc: on
Windows it asks the Win32 API instead. What runs on Windows itself is not tested here (no Windows machine): the
README says so."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = textwrap.dedent('''
    import builtins, os, sys
    sys.modules["fcntl"] = None  # "import fcntl" raises ImportError, as on Windows
    OURS = ("cli", "hciupgrade", "flows", "tasks", "__main__")

    def ours() -> bool:
        frame = sys._getframe(2)
        return frame.f_globals.get("__name__", "").split(".")[0] in OURS

    real_open, real_listdir, real_kill = builtins.open, os.listdir, os.kill

    def guarded_open(file, *args, **kwargs):
        if str(file).startswith("/proc") and ours():
            raise AssertionError(f"our code read {file}")
        return real_open(file, *args, **kwargs)

    def guarded_listdir(path="."):
        if str(path).startswith("/proc") and ours():
            raise AssertionError(f"our code listed {path}")
        return real_listdir(path)

    def guarded_kill(pid, sig):
        if sig == 0 and ours():
            raise AssertionError("our code sent signal 0 (CTRL_C_EVENT on Windows)")
        return real_kill(pid, sig)

    builtins.open, os.listdir, os.kill = guarded_open, guarded_listdir, guarded_kill
''')

CHECK = textwrap.dedent('''
    import importlib, os, pkgutil, tempfile
    import cli, hciupgrade, flows, tasks
    for package in (cli, hciupgrade, flows, tasks):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    from typer.testing import CliRunner
    from cli.app import app
    runner = CliRunner()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for args in [["--help"]] + [[n, "--help"] for n in names]:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    os.environ["HCI_UPGRADE_HOME"] = tempfile.mkdtemp()
    from hciupgrade.hostlock import LockTimeout, host_lock
    from hciupgrade.records.store import process_alive
    with host_lock("portable", timeout=1):
        try:
            with host_lock("portable", timeout=0.2):
                raise AssertionError("a second holder got the lock")
        except LockTimeout:
            pass
    assert process_alive(os.getpid()) and not process_alive(2 ** 22 + 12345)
    print("commands", len(names))
''')


def test_every_command_starts_without_fcntl_proc_or_signal_zero():
    done = subprocess.run([sys.executable, "-c", PRELUDE + CHECK], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split("commands")[-1]) >= 10


def test_no_module_of_ours_names_fcntl_proc_or_signal_zero():
    import re

    patterns = [re.compile(r"^\s*(import fcntl|from fcntl)", re.M), re.compile(r"[\"']/proc"),
                re.compile(r"os\.kill\([^)]*,\s*0\)")]
    sources = [p for d in ("cli", "hciupgrade", "flows", "tasks") for p in (ROOT / d).rglob("*.py")]
    offending = [f"{p.relative_to(ROOT)}: {rx.pattern}" for p in sources for rx in patterns if rx.search(p.read_text())]
    assert offending == []
