"""A plain wheel install, outside the source tree, carries the launch profiles and the built-in haystack."""

from __future__ import annotations

import json
import subprocess
import sys
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
    venv.create(env_dir, system_site_packages=True, with_pip=True)  # niah's dependencies come from here
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def niah(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([env_dir / "bin" / "niah", *args], cwd=outside, capture_output=True,
                              text=True, timeout=300, check=False)

    where = subprocess.run(
        [python, "-c", "import niah.data as d; print(d.__file__); print(d.data_dir('launch_profiles'))"],
        cwd=outside, capture_output=True, text=True, check=True,
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
