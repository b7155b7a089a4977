"""environment.yml (conda) and uv.lock must pin the same versions."""

import pathlib
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _lock() -> dict[str, str]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {p["name"]: p["version"] for p in lock["package"] if p["name"] != "fedlab"}


def _env_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return dict(line.split("==") for line in pip)


def test_environment_yml_matches_lock():
    lock, env = _lock(), _env_pins()
    drift = {name: (version, lock.get(name)) for name, version in env.items() if lock.get(name) != version}
    assert not drift, f"environment.yml differs from uv.lock (env, lock): {drift}; run `make environment.yml`"
    # Every locked package is in environment.yml, except TFF (installed --no-deps, named in the header).
    missing = set(lock) - set(env) - {"tensorflow-federated"}
    assert not missing, f"in uv.lock but not environment.yml: {sorted(missing)}"
    header = (ROOT / "environment.yml").read_text()
    assert f"tensorflow-federated=={lock['tensorflow-federated']}" in header


def test_jax_override_is_declared():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    overrides = pyproject["tool"]["uv"]["override-dependencies"]
    assert {"jax==0.4.13", "jaxlib==0.4.13"} <= set(overrides)
    assert _lock()["jaxlib"] == "0.4.13"


def test_jupyterlab_starts():
    """`make lab` works: JupyterLab imports with the locked packaging (TF Privacy pins an older one)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "jupyterlab", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
