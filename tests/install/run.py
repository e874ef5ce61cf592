"""Build the wheel, install it into a fresh venv for every CPython >= 3.11 on this machine, and
run tests/install/smoke.py from each install, outside the source tree.

    python tests/install/run.py [--keep]

Pythons: `python3` and `python3.N` on PATH, and pyenv's versions (PYENV_ROOT, `pyenv root`,
~/.pyenv). One per minor version. The versions the project claims (pyproject's classifiers)
that are not found are reported; under CI (CI set) a missing one fails the run, so CI proves
every claimed version. Exit 0 only when every smoke passed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMOKE = Path(__file__).resolve().parent / "smoke.py"
MIN = (3, 11)
# What an install must hold: the code of every package and the files read at run time.
# Every file of the page's static folder (its modules import one another: one missing breaks the page).
WHEEL_MUST_HOLD = ("gateway/store/keystore.py", "gateway/data/scopes.yaml", "gateway/data/redis.conf",
                   *sorted(f"admin_api/static/{p.name}" for p in (ROOT / "admin_api" / "static").iterdir()),
                   "gateway_verify.py")


def claimed_versions() -> list[tuple[int, int]]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [re.fullmatch(r"Programming Language :: Python :: (\d+)\.(\d+)", c) for c in meta.get("classifiers", ())]
    return sorted((int(m[1]), int(m[2])) for m in found if m)


def python_version(exe: str) -> tuple[str, tuple[int, int, int]] | None:
    """(the interpreter's own path, its version) for a CPython, else None."""
    try:
        out = subprocess.run([exe, "-c", "import sys, platform; print(platform.python_implementation(), *sys.version_info[:3], sys.executable)"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split(maxsplit=4)
    if out.returncode != 0 or len(parts) != 5 or parts[0] != "CPython":
        return None
    return parts[4].strip(), (int(parts[1]), int(parts[2]), int(parts[3]))


def find_pythons() -> dict[tuple[int, int], tuple[str, tuple[int, int, int]]]:
    """minor version -> (interpreter, full version), the first found of each."""
    candidates = [shutil.which("python3")]
    candidates += [shutil.which(f"python3.{n}") for n in range(MIN[1], 20)]
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True)
        roots.append(out.stdout.strip())
    for root in filter(None, roots):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3")))
    found: dict[tuple[int, int], tuple[str, tuple[int, int, int]]] = {}
    for exe in filter(None, candidates):
        probed = python_version(exe)
        if probed and probed[1][:2] >= MIN and probed[1][:2] not in found:
            found[probed[1][:2]] = probed
    return dict(sorted(found.items()))


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    wheel = next(out.glob("api_key_gateway-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in WHEEL_MUST_HOLD if n not in names]
    if missing:
        raise SystemExit(f"install smoke: the wheel lacks {', '.join(missing)}")
    return wheel


def install(exe: str, venv: Path, wheel: Path) -> tuple[bool, str]:
    """A fresh venv with the wheel and its dependencies (nothing of the test extra)."""
    steps = [[exe, "-m", "venv", str(venv)], [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                              "--disable-pip-version-check", str(wheel)]]
    log = []
    for step in steps:
        out = subprocess.run(step, capture_output=True, text=True, timeout=600)
        log.append(out.stdout + out.stderr)
        if out.returncode != 0:
            return False, "".join(log)
    return True, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the venvs and logs (their folder is printed)")
    parser.add_argument("--only", metavar="3.N", action="append", default=[],
                        help="test only these minor versions (repeatable; default: every one found)")
    args = parser.parse_args()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="gateway-install-"))
    try:
        wheel = build_wheel(tmp / "dist")
        pythons = find_pythons()
        if args.only:
            pythons = {m: p for m, p in pythons.items() if f"{m[0]}.{m[1]}" in args.only}
        print(f"install smoke: {wheel.name}; Pythons found: "
              + ", ".join(f"{'.'.join(map(str, v))} ({exe})" for exe, v in pythons.values()), flush=True)
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(pythons) or 1) as pool:
            installs = {minor: pool.submit(install, exe, tmp / f"venv-{minor[0]}.{minor[1]}", wheel)
                        for minor, (exe, _) in pythons.items()}
        results: dict[tuple[int, int], str] = {}
        for minor, (_, version) in pythons.items():
            label = ".".join(map(str, version))
            ok, log = installs[minor].result()
            if not ok:
                print(f"--- Python {label}: pip install of the wheel failed\n{log[-3000:]}", flush=True)
                results[minor] = "FAILED (install)"
                continue
            # The smoke runs from a folder outside the source tree, with a copy of the script,
            # so nothing can be imported from the checkout.
            work = tmp / f"run-{minor[0]}.{minor[1]}"
            work.mkdir()
            script = work / "smoke.py"
            shutil.copy(SMOKE, script)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PYTHON"))}
            print(f"--- Python {label}", flush=True)
            out = subprocess.run([str(tmp / f"venv-{minor[0]}.{minor[1]}" / "bin" / "python"), "-I", str(script)],
                                 cwd=work, env=env, timeout=300)
            results[minor] = "passed" if out.returncode == 0 else "FAILED"
        missing = [c for c in claimed_versions() if c not in pythons
                   and (not args.only or f"{c[0]}.{c[1]}" in args.only)]
        print("\ninstall smoke, per Python (wheel installed into a fresh venv, run outside the source tree):")
        for minor, (exe, version) in pythons.items():
            print(f"  {'.'.join(map(str, version)):<8} {results[minor]:<18} {exe}")
        for minor in missing:
            print(f"  {minor[0]}.{minor[1]:<6} NOT TESTED         claimed in pyproject.toml, but no such Python on this machine")
        failed = [m for m, r in results.items() if r != "passed"]
        strict = bool(os.environ.get("CI"))
        print(f"install smoke: {len(results) - len(failed)} of {len(results)} Pythons passed"
              f"{f', {len(missing)} claimed version(s) absent' if missing else ''} ({time.monotonic() - started:.0f} s)")
        if missing and strict:
            print("install smoke: under CI every claimed Python must be tested")
        return 1 if failed or (missing and strict) else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
