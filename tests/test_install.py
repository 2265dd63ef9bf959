"""A plain wheel install, outside the source tree, carries the launch profiles and the built-in haystack.

The venv is a fresh one (no system site-packages: those are the base interpreter's, not the running
environment's); niah's dependencies come from the running environment through a `.pth` file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_in_a_fresh_venv_lists_profiles_and_builds_a_haystack(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(REPO), "-w", str(wheels)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = wheels.glob("niah-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300, env=env)
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, env=env).stdout.strip()
    (Path(venv_site) / "running_env_deps.pth").write_text("\n".join(running_site_packages()) + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def niah(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([env_dir / "bin" / "niah", *args], cwd=outside, capture_output=True,
                              text=True, timeout=300, check=False, env=env)

    where = subprocess.run(
        [python, "-c", "import niah.data as d; print(d.__file__); print(d.data_dir('launch_profiles'))"],
        cwd=outside, capture_output=True, text=True, check=True, env=env,
    ).stdout.split()
    assert all(Path(p).is_relative_to(env_dir) for p in where), where  # the wheel's copy, not the checkout

    listed = niah("profile", "list")
    assert listed.returncode == 0, listed.stderr
    shipped = {p.stem for p in (REPO / "launch_profiles").glob("*.toml")}
    assert shipped and all(name in listed.stdout for name in shipped)

    built = niah("haystack", "--length", "4096", "--depth", "50", "--json")
    assert built.returncode == 0, built.stderr
    prompt = json.loads(built.stdout)
    assert prompt["length"] == 4096 and prompt["corpus"] == "builtin"


def running_site_packages() -> list[str]:
    """The running environment's site-packages folders (a venv's own, and the base's when it sees them)."""
    own = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return [p for p in sys.path if p in own or Path(p).name in ("site-packages", "dist-packages")]
