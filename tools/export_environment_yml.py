"""Writes environment.yml from uv.lock (run by `make environment.yml`).

conda's pip cannot install TFF 0.87.0 beside jax 0.4.13 (TFF pins the
never-published jaxlib 0.4.14), so the pip list holds every locked package
but TFF, which the file's header tells users to add with --no-deps.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
HELD_BACK = "tensorflow-federated"


def main() -> int:
    exported = subprocess.run(
        ["uv", "export", "--frozen", "--no-hashes", "--extra", "test", "--no-emit-project", "--no-header"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    pins = sorted(
        line.split(";")[0].strip() for line in exported.splitlines()
        if "==" in line and not line.startswith(("#", " ")) and not line.startswith(HELD_BACK + "==")
    )
    tff = next(line.split(";")[0].strip() for line in exported.splitlines() if line.startswith(HELD_BACK + "=="))
    lines = [
        "# Generated from uv.lock by tools/export_environment_yml.py; a test checks the two agree.",
        "# conda env create -f environment.yml && conda activate fedlab, then (TFF pins a jaxlib that",
        "# PyPI never published, so it goes in without its dependencies, which are all listed below):",
        f"#   pip install --no-deps {tff} && pip install --no-deps -e .",
        "name: fedlab",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
    ] + [f"      - {pin}" for pin in pins]
    (ROOT / "environment.yml").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
