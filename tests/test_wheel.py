"""The install without a clone: a wheel built from the repository, installed with pip into a fresh
virtual environment, whose `mcu serve` serves the page (client/web travels as package data).

The suite runs with loopback alone (scripts/test), so nothing is downloaded: the wheel is built
without build isolation (setuptools and build come with the test extras), and the fresh environment
sees this environment's packages, the ones scripts/setup-venv installed, through a .pth file. pip
still resolves the wheel's dependencies, against those, and installs the wheel itself for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, start_mcu, stop_process

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "client" / "web"
#: What the checkout holds beside its sources (.gitignore's names): environments, builds, caches.
IGNORED = (".git", ".venv", "build", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", "test-artifacts")


def run(*command: str | Path, cwd: Path, seconds: float) -> str:
    """A command's output; the test fails with that output if it fails or outlasts `seconds`."""
    try:
        done = subprocess.run(command, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{command} took over {seconds} s: {expired.stdout}{expired.stderr}")
    if done.returncode != 0:
        pytest.fail(f"{command} exited {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


def clean_env() -> dict[str, str]:
    """This environment less what would let a child import the checkout instead of the wheel."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


@pytest.mark.timeout(200)
def test_a_wheel_installed_in_a_fresh_environment_serves_the_page(tmp_path: Path) -> None:
    # Built from a copy: a build left in the checkout (mcu.egg-info's file list, build/lib) would
    # otherwise go into this wheel, and this build would be left in the checkout.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*IGNORED))
    dist = tmp_path / "dist"
    # `python -m build`: a source archive, then the wheel built from it (so the archive is complete too).
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source, cwd=tmp_path, seconds=60)
    [wheel] = dist.glob("mcu-*.whl")

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path, seconds=20)
    site = run(
        venv / "bin" / "python",
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        cwd=tmp_path,
        seconds=10,
    ).strip()
    # The dependencies, offline: this environment's packages, on the fresh one's path after its own.
    ours = {sysconfig.get_paths()[kind] for kind in ("purelib", "platlib")}
    (Path(site) / "mcu-test-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    # This environment's pip, so its configuration holds, with the fresh environment as the target.
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "--no-index",
        "--quiet",
        wheel,
        cwd=tmp_path,
        seconds=30,
    )

    installed = run(
        venv / "bin" / "python", "-c", "from mcu.server.page import WEB_ROOT; print(WEB_ROOT)", cwd=tmp_path, seconds=20
    ).strip()
    assert Path(installed) == Path(site) / "client" / "web"

    port = free_port()
    server = start_mcu(port, "--host", "127.0.0.1", program=[str(venv / "bin" / "mcu")], cwd=tmp_path, env=clean_env())
    try:
        status, page = fetch(f"http://127.0.0.1:{port}/")
        assert status == 200
        assert page == (WEB / "index.html").read_text()
        assert 'src="/static/app.js"' in page
        status, script = fetch(f"http://127.0.0.1:{port}/static/app.js")
        assert status == 200
        assert script == (WEB / "app.js").read_text()
    finally:
        stop_process(server)
