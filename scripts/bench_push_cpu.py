#!/usr/bin/env python3
"""What one 64 MiB copy costs in CPU, and what that does to 10 copies at once, on loopback sshds.

`scripts/bench_push.py` measures `qdeploy push` against its targets. This one explains the
fleet figure: on loopback the "devices" (sshd, the receiving command) share this machine's
cores with the client, so ten copies cannot finish sooner than ten copies' CPU time spread over
the cores. For each way of copying, side by side in one run, it prints for one target and for
--targets in parallel: wall time, the whole machine's busy CPU seconds (from /proc/stat, every
process: client, sshd, receiver), the fleet/one ratio, the floor that CPU time sets on it, and
the CPU per target a 3x ratio would need.

Ways of copying (all to a fresh file or directory per run, AES-128-GCM on the wire):
- qdeploy push (in-process `push_many`, --no-bench, runner left alone): upload, sha256 on
  the device, fsync, switch `current`
- ssh 'cat > f'                      OpenSSH client, plain copy
- ssh 'tee f | sha256sum'            OpenSSH client, copy and hash on the device
- ssh 'cat > /dev/null'              OpenSSH client, transport only
- paramiko 'cat > /dev/null'         qdeploy's connection (paramiko), transport only

    .venv/bin/python scripts/bench_push_cpu.py [--reps 2] [--size-mib 64] [--targets 10]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_push import busy_cpu_s, loopback_fleet, payload_deployment  # noqa: E402
from qdeploy.push import pipeline as push  # noqa: E402  (bench_push puts the repo on sys.path)
from qdeploy.push.fleet import push_many
from qdeploy.remote import targets

CIPHER = "aes128-gcm@openssh.com"  # what qdeploy's connection prefers


def measure(fn) -> tuple[float, float]:
    cpu0, start = busy_cpu_s(), time.perf_counter()
    fn()
    return time.perf_counter() - start, busy_cpu_s() - cpu0


def run_all(argvs: list, payload: Path) -> None:
    procs = []
    for argv in argvs:
        with open(payload, "rb") as stdin:
            procs.append(subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL))
    if any(p.wait() for p in procs):
        raise SystemExit(f"error: {argvs[0][0]} failed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--targets", type=int, default=10)
    args = ap.parse_args()
    with loopback_fleet("qdeploy-bench-push-cpu-", args.targets) as (tmp, key, kh, servers):
        dep = payload_deployment(tmp, args.size_mib)
        payload = dep / "payload.bin"
        opts = push.PushOptions(identity=key, known_hosts=kh, bench=False, runner=False,
                                ssh_config=tmp / "no-ssh-config", jobs=args.targets)
        ssh = ["ssh", "-i", str(key), "-o", f"UserKnownHostsFile={kh}", "-o", "BatchMode=yes",
               "-c", CIPHER]
        run = [0]

        def qdeploy_push(group):
            opts.remote_dir = f"~/push{run[0]}"
            results = push_many([targets.parse_target(s.target) for s in group], dep, opts)
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise SystemExit(f"error: push failed: {bad[0]}")

        def openssh(command):
            def go(group):
                run_all([[*ssh, "-p", str(s.port), "root@127.0.0.1",
                          command.format(out=f"{tmp}/out{run[0]}-{i}")]
                         for i, s in enumerate(group)], payload)
            return go

        def paramiko_null(group):
            def one(server):
                conn = push.connect(targets.parse_target(server.target), opts).open()
                try:
                    with open(payload, "rb") as fh:
                        result = conn.run("cat > /dev/null",
                                          stdin=iter(lambda: fh.read(1 << 20), b""))
                    if not result.ok:
                        raise SystemExit(f"error: {result.last_error_line()}")
                finally:
                    conn.close()
            ctx = multiprocessing.get_context("fork")  # a process per target, as push_many
            procs = [ctx.Process(target=one, args=(s,)) for s in group]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            if any(p.exitcode for p in procs):
                raise SystemExit("error: paramiko copy failed")

        ways = {"qdeploy push": qdeploy_push,
                "ssh 'cat > f'": openssh("cat > {out}"),
                "ssh 'tee f | sha256sum'": openssh("tee {out} | sha256sum"),
                "ssh 'cat > /dev/null'": openssh("cat > /dev/null"),
                "paramiko 'cat > /dev/null'": paramiko_null}
        fig = {(w, k): [] for w in ways for k in ("one", "one_cpu", "many", "many_cpu")}
        for rep in range(args.reps):
            for way, fn in (ways.items() if rep % 2 == 0 else reversed(ways.items())):
                for label, group in (("one", servers[:1]), ("many", servers)):
                    run[0] += 1
                    seconds, cpu_s = measure(lambda: fn(group))
                    fig[(way, label)].append(seconds)
                    fig[(way, f"{label}_cpu")].append(cpu_s)
                for f in tmp.glob("out*"):
                    f.unlink()
                for s in servers:
                    for d in s.home.glob("push*"):
                        shutil.rmtree(d, ignore_errors=True)

        med = {k: statistics.median(v) for k, v in fig.items()}
        n, cores = args.targets, os.cpu_count() or 1
        print(f"CPU cost of a {args.size_mib} MiB copy over loopback SSH, {args.reps} rounds, "
              f"medians; {cores} cores, load average {os.getloadavg()[0]:.1f}")
        print(f"  {'':28s} {'one: wall':>10s} {'CPU-s':>6s}   {n}: wall {'CPU-s/target':>12s}"
              f" {'ratio':>6s} {'floor':>6s} {'3x needs':>9s}")
        for way in ways:
            one, one_cpu = med[(way, "one")], med[(way, "one_cpu")]
            many, many_cpu = med[(way, "many")], med[(way, "many_cpu")]
            floor = many_cpu / cores / one
            budget = 3 * one * cores / n
            print(f"  {way:28s} {one:10.3f} {one_cpu:6.2f}   {many:8.3f} {many_cpu / n:12.2f}"
                  f" {many / one:6.2f} {floor:6.2f} {budget:9.2f}")
        print(f"floor: the {n} copies' CPU time over {cores} cores, divided by one copy's wall "
              "time (every core busy all the time); 3x needs: the CPU-s per target at which "
              f"{n} copies could finish in 3 times one copy's wall time")
        return 0


if __name__ == "__main__":
    sys.exit(main())
