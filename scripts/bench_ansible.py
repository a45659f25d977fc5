#!/usr/bin/env python3
"""The ansible engine against its yardsticks, side by side in one run, on ten loopback sshds.

  1. an unchanged re-run through Ansible (`qdeploy push --engine ansible`: export, one probe
     per host) vs `ansible -m ping` on the same inventory: target ratio <= 1.5;
  2. a changed 64 MiB model to every host through Ansible vs the native engine (per host:
     the fleet's wall time / hosts), the ratio reported.

Runs as root (sshd logs in as root on 127.0.0.1), with ansible-core and ansible-runner
importable and ansible-playbook on PATH:
    PYTHONPATH=host:device:. .venv/bin/python scripts/bench_ansible.py --hosts 10 --reps 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "host"), str(ROOT / "device"), str(ROOT)]

from qdeploy.ansible import runner  # noqa: E402
from qdeploy.push.fleet import push_many  # noqa: E402
from qdeploy.push.options import PushOptions  # noqa: E402
from qdeploy.remote import targets  # noqa: E402
from tests.fixtures.deployments import make_deployment  # noqa: E402
from tests.fixtures.sshd import _keygen, start_sshd  # noqa: E402

MODEL_MIB = 64


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    runner.require_ansible()
    tmp = Path(tempfile.mkdtemp(prefix="qdeploy-bench-ansible-"))
    os.environ["HOME"] = str(tmp / "home")  # ~/.ansible and known_hosts of this run only
    (tmp / "home").mkdir()
    servers = []
    try:
        key = _keygen(tmp / "id_ed25519", "bench")
        for i in range(args.hosts):
            (tmp / f"s{i}").mkdir()
            servers.append(start_sshd(tmp / f"s{i}", key.with_suffix(".pub")))
        known = tmp / "known_hosts"
        known.write_text("".join(s.known_hosts_line() for s in servers))
        inv = tmp / "hosts.ini"
        inv.write_text("[bench]\n" + "".join(
            f"h{i} ansible_host=127.0.0.1 ansible_port={s.port} ansible_user=root "
            f"qdeploy_remote_dir={tmp}/dev{i}-ansible\n" for i, s in enumerate(servers)))
        opts = PushOptions(identity=key, known_hosts=known, bench=False, runner=False,
                           ssh_config=tmp / "none", jobs=args.hosts, reports_dir=tmp / "r")
        env = dict(os.environ, PATH=runner.ansible_path(), **runner.ssh_environment(opts),
                   ANSIBLE_FORKS=str(args.hosts))
        ping = ["ansible", "-i", str(inv), "all", "-m", "ping", "-o"]
        native_targets = [targets.Target(f"n{i}", "127.0.0.1", "root", s.port,
                                         remote_dir=f"{tmp}/dev{i}-native")
                          for i, s in enumerate(servers)]

        def deployment(n: int) -> Path:
            return make_deployment(tmp / f"dep{n}", extra={
                "big_model.bin": os.urandom(MODEL_MIB << 20)})

        base = deployment(0)
        first = runner.push_fleet(base, inv, opts)
        assert all(r.ok for r in first), [r.error for r in first]
        pings, reruns = [], []
        for _ in range(args.reps):
            pings.append(timed(lambda: subprocess.run(ping, env=env, check=True,
                                                      capture_output=True)))
            reruns.append(timed(lambda: runner.push_fleet(base, inv, opts)))
        ansible_s, native_s = [], []
        for rep in range(args.reps):
            dep = deployment(rep + 1)
            start = time.perf_counter()
            results = runner.push_fleet(dep, inv, opts)
            ansible_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            results += push_many(native_targets, dep, opts)
            native_s.append(time.perf_counter() - start)
            assert all(r.ok and r.bytes_sent > MODEL_MIB << 20 for r in results), \
                [r.error for r in results]
            shutil.rmtree(dep)
        ping_m, rerun_m = statistics.median(pings), statistics.median(reruns)
        a_m = statistics.median(ansible_s) / args.hosts
        n_m = statistics.median(native_s) / args.hosts
        print(f"{args.hosts} loopback hosts, {args.reps} reps, medians")
        print(f"unchanged re-run via Ansible {rerun_m:.2f} s vs ansible -m ping {ping_m:.2f} s:"
              f" ratio {rerun_m / ping_m:.2f} (target <= 1.5)")
        print(f"changed {MODEL_MIB} MiB model, per host: Ansible {a_m:.2f} s vs native "
              f"{n_m:.2f} s: ratio {a_m / n_m:.2f}")
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
