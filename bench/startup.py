#!/usr/bin/env python
"""Start-up cost of the plugin's start-up hook: ``python -c pass`` with and without it.

Two fresh virtual environments of the same interpreter, side by side in a temporary
directory: one with the onmt-trainkit wheel installed (``--no-deps``: the hook, the package,
nothing else), one empty. ``python -c pass`` runs ``--runs`` times in each, interleaved (A, B,
A, B...) so that the machine's load weighs on both alike; the table gives the mean, the
standard deviation, the median and the minimum of the wall time in milliseconds, and the
median of the processor time (user + system, from the children's resource usage), which
other work on the machine disturbs much less than the wall time. ``python -X importtime``
then gives what importing the hook's package itself costs (its own and cumulative
microseconds, median of the runs). With ``hyperfine`` on the PATH (Debian: ``apt-get install
hyperfine``), it also runs the two commands side by side for a second opinion.

    python bench/startup.py --runs 50
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _environment(path: str, wheel: str | None) -> str:
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", path], check=True)
    python = os.path.join(path, "bin", "python")
    if wheel is not None:
        subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel],
                       check=True)
    return python


def _time(python: str) -> tuple[float, float]:
    """Runs ``python -c pass``; returns its wall and processor times in milliseconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
    return wall, cpu


def _import_time(python: str, runs: int) -> tuple[float, float]:
    own, cumulative = [], []
    for _ in range(runs):
        process = subprocess.run([python, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                                 check=True)
        for line in process.stderr.splitlines():
            fields = [field.strip() for field in line.split("|")]
            if len(fields) == 3 and fields[2] == "onmt_trainkit":
                own.append(int(fields[0].split(":")[-1]))
                cumulative.append(int(fields[1]))
    return statistics.median(own), statistics.median(cumulative)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs of python -c pass per environment")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", os.path.join(work, "dist"), ROOT], check=True)
        (wheel,) = (os.path.join(work, "dist", name) for name in os.listdir(os.path.join(work, "dist")))
        pythons = {"with the hook": _environment(os.path.join(work, "hook"), wheel),
                   "without": _environment(os.path.join(work, "plain"), None)}
        check = subprocess.run([pythons["with the hook"], "-c", "import sys; print('onmt_trainkit' in sys.modules)"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert check == "True", "the hook did not run"
        times: dict[str, list[float]] = {name: [] for name in pythons}
        cpu: dict[str, list[float]] = {name: [] for name in pythons}
        for _ in range(args.runs):
            for name, python in pythons.items():
                wall, processor = _time(python)
                times[name].append(wall)
                cpu[name].append(processor)
        print(f"python -c pass, {args.runs} runs each, interleaved (ms):")
        print(f"{'':>14} {'mean':>7} {'sd':>6} {'median':>7} {'min':>6} {'cpu median':>10}")
        for name, values in times.items():
            print(f"{name:>14} {statistics.mean(values):7.2f} {statistics.stdev(values):6.2f} "
                  f"{statistics.median(values):7.2f} {min(values):6.2f} {statistics.median(cpu[name]):10.2f}")
        for label, values in (("wall", times), ("cpu", cpu)):
            difference = statistics.median(values["with the hook"]) - statistics.median(values["without"])
            print(f"difference of the medians ({label}): {difference:+.2f} ms")
        own, cumulative = _import_time(pythons["with the hook"], min(args.runs, 20))
        print(f"python -X importtime: importing onmt_trainkit takes {own:.0f} us (its own code), "
              f"{cumulative:.0f} us with what it imports (medians)")
        if shutil.which("hyperfine"):
            subprocess.run(["hyperfine", "--warmup", "5", "--runs", str(args.runs), "-N",
                            f"{pythons['with the hook']} -c pass", f"{pythons['without']} -c pass"], check=True)


if __name__ == "__main__":
    main()
