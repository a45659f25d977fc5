#!/usr/bin/env python3
"""`qdeploy push` against OpenSSH's own tools on loopback sshds, side by side in one run.

Three comparisons, each interleaved over --reps rounds (medians reported) so machine noise
falls on both sides alike:
- 64 MiB push: a fresh release (upload, sha256 on the device, switch) vs `scp` of the same
  file. Target: push <= 1.0x scp. Also printed: scp followed by a remote `sha256sum`, the
  same verified copy done with OpenSSH's tools.
- unchanged re-push vs `rsync -a` of the unchanged directory (its quick check). Target:
  <= 0.5x rsync, and zero model bytes sent (bytes on the wire, counted by a relay, are printed
  for both: only the handshake and one probe for qdeploy).
- 10 targets in parallel vs 1 target, both with qdeploy (and scp for reference). Target:
  <= 3x. The loopback "devices" share this machine's cores with the host, so the fleet does
  ten devices' work (sshd decryption, writing, sha256) on them too: the busy CPU time of the
  whole machine is read from /proc/stat around each push, and the floor it sets (the fleet's
  CPU time spread over every core: no schedule finishes sooner unless a push costs less CPU)
  is printed beside the ratio, with the CPU per target that 3x would need.
- the same 1 vs 10 with each sshd behind its own --link-mbit link (a `tc` HTB class per port
  on lo, removed at the end): devices with a network link of their own, as real Pis have.
  Not a target; it shows what the pool does when the link, not this machine's CPU, is the limit.
- keepalives and deadlines: the same 64 MiB push and unchanged re-push with them (as shipped)
  and without (no keepalives, the deadline watch thread not started: as before issue 18),
  interleaved. Target: no more than noise.
- faults: a link that stalls mid-upload (a relay that stops forwarding, sockets left open):
  the time from the stall to the push's error line (target <= the timeout + 1 s), and from
  the abandoned receiver to a successful next push (target <= 10 s).
qdeploy runs in-process (`push_many`, --no-bench, runner left alone): rsync and scp are
C programs, so a Python interpreter start would measure imports, not the push. The CLI's
wall time for the unchanged re-push is printed too.

Setup: starts 10 `sshd -D` on 127.0.0.1 with temporary keys (as root), installs Debian's
rsync when missing, stops every sshd by PID at the end.

    .venv/bin/python scripts/bench_push.py [--reps 3] [--size-mib 64] [--targets 10]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qdeploy.push import pipeline as push  # noqa: E402
from qdeploy.push.fleet import push_many
from qdeploy.remote import targets
from qdeploy.push import transfer
from tests.fixtures.sshd import TcpProxy, _keygen, _missing, make_deployment, start_sshd  # noqa: E402
from qdeploy.remote import deadline  # noqa: E402

TARGETS = {"push_vs_scp": 1.0, "repush_vs_rsync": 0.5, "fleet_vs_one": 3.0}


def ensure_rsync() -> None:
    if shutil.which("rsync"):
        return
    print("installing rsync (Debian package) for the comparison", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "rsync"],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def busy_cpu_s() -> float:
    """CPU seconds this machine (every process, every core) has spent not idle, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


def timed_cpu(fn) -> tuple[float, float]:
    """Wall seconds of fn() and the machine's busy CPU seconds meanwhile."""
    cpu0 = busy_cpu_s()
    seconds, _ = timed(fn)
    return seconds, busy_cpu_s() - cpu0


@contextlib.contextmanager
def loopback_fleet(prefix: str, count: int):
    """`count` sshds on 127.0.0.1 in a temporary directory, stopped and removed on exit.

    Yields (the directory, the client key, a known_hosts file with every host key, the servers).
    """
    missing = _missing()
    if missing:
        sys.exit(f"error: {missing}")
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    servers = []
    try:
        key = _keygen(tmp / "id_ed25519", "bench")
        for i in range(count):
            (tmp / f"sshd{i}").mkdir()
            servers.append(start_sshd(tmp / f"sshd{i}", key.with_suffix(".pub")))
        kh = tmp / "known_hosts"
        kh.write_text("".join(s.known_hosts_line() for s in servers))
        yield tmp, key, kh, servers
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def per_device_links(ports: list, mbit: int):
    """Traffic to each port on lo limited to `mbit` Mbit/s, one HTB class per port, as if each
    device had its own link; the qdisc is removed on exit."""
    def tc(*argv):
        subprocess.run(["tc", *argv], check=True, capture_output=True)
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
    try:
        tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit")
        for i, port in enumerate(ports):
            tc("class", "add", "dev", "lo", "parent", "1:", "classid", f"1:{10 + i}", "htb",
               "rate", f"{mbit}mbit")
            tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
               "match", "ip", "dport", str(port), "0xffff", "flowid", f"1:{10 + i}")
        yield
    finally:
        tc("qdisc", "del", "dev", "lo", "root")


@contextlib.contextmanager
def without_watch(opts):
    """Pushes as before issue 18: no keepalives, no deadline watch thread, no touches."""
    saved = deadline.Watch.__init__, deadline.Watch.touch, opts.keepalive

    def bare_init(self, transport, keepalive=0, keepalive_count=1):
        self.transport, self.keepalive, self.keepalive_count = transport, 0, 1
        self.name = self.limit = self.phase = self.asked = self.expired = None
        self.kind, self.last, self.alive = "", 0.0, 0.0
        self.stopped = threading.Event()

    deadline.Watch.__init__, deadline.Watch.touch, opts.keepalive = bare_init, lambda self: None, 0
    try:
        yield
    finally:
        deadline.Watch.__init__, deadline.Watch.touch, opts.keepalive = saved


def stall_figures(server, kh: Path, dep: Path, opts, timeout: float) -> tuple:
    """(stall -> error line s, abandoned receiver -> next push done s) for one stall."""
    proxy = TcpProxy(server.port, stall_after=4 << 20)  # mid-upload
    with open(kh, "a") as f:
        f.write(server.known_hosts_line().replace(f"]:{server.port} ", f"]:{proxy.port} "))
    saved = opts.connect_timeout, opts.command_timeout
    opts.connect_timeout = opts.command_timeout = timeout
    try:
        failed = push_many([targets.parse_target(f"root@127.0.0.1:{proxy.port}")], dep,
                           opts)[0]
        error_at = time.monotonic()
        assert not failed.ok and proxy.stalled_at, failed.error
        again = push_many([targets.parse_target(server.target)], dep, opts)[0]
        assert again.ok and again.notes, again.error
        return error_at - proxy.stalled_at, time.monotonic() - proxy.stalled_at
    finally:
        opts.connect_timeout, opts.command_timeout = saved
        proxy.close()


def payload_deployment(tmp: Path, size_mib: int) -> Path:
    """A deployment with a random `payload.bin` of size_mib, its hashes cached as on a re-push."""
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")
    dep = make_deployment(tmp / "qdeploy-out", extra={"payload.bin": os.urandom(size_mib << 20)})
    transfer.load_deployment(dep)  # the stat cache a user's second push would have
    return dep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--link-mbit", type=int, default=100,
                    help="per-device link for the extra fleet figure (0: skip it)")
    ap.add_argument("--stall-timeout", type=float, default=4.0,
                    help="--connect-timeout and --command-timeout for the stall figures")
    args = ap.parse_args()
    if args.link_mbit and not shutil.which("tc"):
        sys.exit("error: tc (Debian's iproute2) is needed for --link-mbit; install it or pass "
                 "--link-mbit 0")
    ensure_rsync()
    with loopback_fleet("qdeploy-bench-push-", args.targets) as (tmp, key, kh, servers):
        dep = payload_deployment(tmp, args.size_mib)
        big = dep / "payload.bin"
        opts = push.PushOptions(identity=key, known_hosts=kh, bench=False, runner=False,
                                ssh_config=tmp / "no-ssh-config", jobs=args.targets)
        one = [targets.parse_target(servers[0].target)]
        fleet = [targets.parse_target(s.target) for s in servers]
        ssh_opts = ["-i", str(key), "-o", f"UserKnownHostsFile={kh}", "-o", "BatchMode=yes"]
        s0 = servers[0]

        def push_to(tlist, remote: str):
            opts.remote_dir = remote  # under each sshd's own $HOME: one device per server
            results = push_many(tlist, dep, opts)
            bad = [r.error for r in results if not r.ok]
            if bad:
                raise SystemExit(f"error: push failed: {bad[0]}")
            return results

        def scp_to(server, dest: Path):
            dest.mkdir(parents=True, exist_ok=True)
            subprocess.run(["scp", "-q", *ssh_opts, "-P", str(server.port), str(big),
                            f"root@127.0.0.1:{dest}/"], check=True)

        def rsync_to(dest: Path, stats=False):
            out = subprocess.run(["rsync", "-a", *(["--stats"] if stats else []), "-e",
                                  " ".join(["ssh", *ssh_opts, "-p", str(s0.port)]),
                                  f"{dep}/", f"root@127.0.0.1:{dest}/"],
                                 check=True, capture_output=True, text=True)
            return out.stdout

        fig = {k: [] for k in ("push", "scp", "scpsum", "repush", "rsync", "one", "fleet",
                               "scp1", "scp10", "one_cpu", "fleet_cpu", "one_link",
                               "fleet_link", "push_bare", "push_watched", "repush_bare",
                               "repush_watched", "stall_error", "stall_next")}

        def scp_and_verify(dest: Path):
            scp_to(s0, dest)
            subprocess.run(["ssh", *ssh_opts, "-p", str(s0.port), "root@127.0.0.1",
                            f"sha256sum {dest}/{big.name}"], check=True, capture_output=True)
        repush_bytes = None
        for rep in range(args.reps):
            work = tmp / f"rep{rep}"
            # One model: fresh release vs scp (alternating which goes first).
            order = [("scp", lambda: scp_to(s0, work / "scp")),
                     ("push", lambda: push_to(one, f"~/rep{rep}/push")),
                     ("scpsum", lambda: scp_and_verify(work / "scpsum"))]
            for name, fn in (order if rep % 2 else order[::-1]):
                fig[name].append(timed(fn)[0])
            # Unchanged re-push vs rsync's unchanged re-sync.
            rsync_to(work / "rsync")
            order = [("rsync", lambda: rsync_to(work / "rsync")),
                     ("repush", lambda: push_to(one, f"~/rep{rep}/push"))]
            for name, fn in (order if rep % 2 else order[::-1]):
                seconds, value = timed(fn)
                fig[name].append(seconds)
                if name == "repush":
                    repush_bytes = value[0].bytes_sent
                    assert value[0].unchanged
            # 1 target vs N targets, qdeploy; scp for reference.
            for name, tlist in (("one", one), ("fleet", fleet)):
                seconds, cpu_s = timed_cpu(lambda: push_to(tlist, f"~/rep{rep}/{name}"))
                fig[name].append(seconds)
                fig[f"{name}_cpu"].append(cpu_s)
            fig["scp1"].append(timed(lambda: scp_to(s0, work / "scp1"))[0])

            def scp_all():
                procs = [subprocess.Popen(["scp", "-q", *ssh_opts, "-P", str(s.port), str(big),
                                           f"root@127.0.0.1:{work}/scpN{i}/"])
                         for i, s in enumerate(servers) if (work / f"scpN{i}").mkdir() is None]
                if any(p.wait() for p in procs):
                    raise SystemExit("error: scp failed")
            fig["scp10"].append(timed(scp_all)[0])
            shutil.rmtree(work, ignore_errors=True)
            for s in servers:
                shutil.rmtree(s.home / f"rep{rep}", ignore_errors=True)

        # Keepalives and deadlines, with and without, interleaved; then a stall.
        for rep in range(args.reps):
            runs = [("watched", contextlib.nullcontext), ("bare", lambda: without_watch(opts))]
            for name, ctx in (runs if rep % 2 else runs[::-1]):
                with ctx():
                    fig[f"push_{name}"].append(timed(lambda: push_to(one, f"~/kw{rep}/{name}"))[0])
                    fig[f"repush_{name}"].append(
                        timed(lambda: push_to(one, f"~/kw{rep}/{name}"))[0])
            for s in servers:
                shutil.rmtree(s.home / f"kw{rep}", ignore_errors=True)
            opts.remote_dir = f"~/stall{rep}"
            to_error, to_next = stall_figures(s0, kh, dep, opts, args.stall_timeout)
            fig["stall_error"].append(to_error)
            fig["stall_next"].append(to_next)

        if args.link_mbit:
            with per_device_links([s.port for s in servers], args.link_mbit):
                for rep in range(args.reps):
                    for name, tlist in (("one_link", one), ("fleet_link", fleet)):
                        fig[name].append(timed(lambda: push_to(tlist, f"~/link{rep}/{name}"))[0])
                    for s in servers:
                        shutil.rmtree(s.home / f"link{rep}", ignore_errors=True)

        # Bytes on the wire for an unchanged re-push (relay count) and rsync's own count.
        wire = "~/wire"
        push_to(one, wire)
        proxy = TcpProxy(s0.port)
        with open(kh, "a") as f:
            f.write(s0.known_hosts_line().replace(f"]:{s0.port} ", f"]:{proxy.port} "))
        opts.remote_dir = wire
        wired = push_many([targets.parse_target(f"root@127.0.0.1:{proxy.port}")], dep,
                          opts)[0]
        assert wired.ok and wired.unchanged, wired.error
        proxy.close()
        wire_bytes = proxy.sent
        rsync_to(tmp / "wire-rsync")
        rsync_stats = rsync_to(tmp / "wire-rsync", stats=True)
        rsync_sent = next((ln.split(":")[1].strip() for ln in rsync_stats.splitlines()
                           if ln.startswith("Total bytes sent")), "?")
        cli = [sys.executable, "-m", "qdeploy", "push", str(dep), "-t", s0.target, "--no-bench",
               "--identity", str(key), "--known-hosts", str(kh), "--remote-dir", wire,
               "--ssh-config", str(tmp / "no-ssh-config")]
        cli_s = statistics.median(timed(lambda: subprocess.run(cli, check=True,
                                                               capture_output=True))[0]
                                  for _ in range(3))

        med = {k: statistics.median(v) for k, v in fig.items() if v}
        ratios = {"push_vs_scp": med["push"] / med["scp"],
                  "repush_vs_rsync": med["repush"] / med["rsync"],
                  "fleet_vs_one": med["fleet"] / med["one"]}
        n = args.targets
        cores = os.cpu_count() or 1
        floor_s = med["fleet_cpu"] / cores  # the fleet's CPU time with every core busy
        fleet_busy = med["fleet_cpu"] / (cores * med["fleet"])
        budget = TARGETS["fleet_vs_one"] * med["one"] * cores / n  # CPU-s per target for 3x
        print(f"qdeploy push benchmark: {args.size_mib} MiB model, loopback sshd, "
              f"{args.reps} interleaved rounds, medians (s); {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        print(f"  {args.size_mib} MiB push (upload, verify, switch)  {med['push']:.3f}   "
              f"scp {med['scp']:.3f}"
              f"   ratio {ratios['push_vs_scp']:.2f}  (target <= {TARGETS['push_vs_scp']})")
        print(f"    reference: scp then `ssh sha256sum` of the file (a verified copy with OpenSSH"
              f" tools) {med['scpsum']:.3f}, ratio {med['push'] / med['scpsum']:.2f}")
        print(f"  unchanged re-push                     {med['repush']:.3f}   rsync "
              f"{med['rsync']:.3f}   ratio {ratios['repush_vs_rsync']:.2f}  "
              f"(target <= {TARGETS['repush_vs_rsync']})")
        print(f"    model bytes sent {repush_bytes}; bytes on the wire {wire_bytes} "
              f"(rsync: {rsync_sent} sent); CLI wall time {cli_s:.2f} s (interpreter start "
              "and imports included)")
        print(f"  {n} targets vs 1, qdeploy               {med['fleet']:.3f} vs {med['one']:.3f}"
              f"   ratio {ratios['fleet_vs_one']:.2f}  (target <= {TARGETS['fleet_vs_one']})")
        print(f"    busy CPU on this machine (host, sshd, the device's receiver): one push "
              f"{med['one_cpu']:.2f} CPU-s, the fleet {med['fleet_cpu'] / n:.2f} per target, "
              f"keeping the cores {fleet_busy:.0%} busy; on {cores} cores that CPU time alone "
              f"takes {floor_s:.2f} s (ratio {floor_s / med['one']:.2f}); "
              f"{TARGETS['fleet_vs_one']:g}x needs <= {budget:.2f} CPU-s per target")
        print(f"  {n} targets vs 1, scp (reference)       {med['scp10']:.3f} vs {med['scp1']:.3f}"
              f"   ratio {med['scp10'] / med['scp1']:.2f}")
        if args.link_mbit:
            print(f"  {n} targets vs 1 over a {args.link_mbit} Mbit/s link per device (not a "
                  f"target)  {med['fleet_link']:.3f} vs {med['one_link']:.3f}   ratio "
                  f"{med['fleet_link'] / med['one_link']:.2f}")
        print(f"  keepalives + deadlines vs none (as before): {args.size_mib} MiB push "
              f"{med['push_watched']:.3f} vs {med['push_bare']:.3f} (ratio "
              f"{med['push_watched'] / med['push_bare']:.2f}); unchanged re-push "
              f"{med['repush_watched']:.3f} vs {med['repush_bare']:.3f} (ratio "
              f"{med['repush_watched'] / med['repush_bare']:.2f})")
        print(f"  stalled link (timeouts {args.stall_timeout:g} s): stall -> error line "
              f"{med['stall_error']:.2f} s (target <= {args.stall_timeout + 1:g}); abandoned "
              f"receiver -> next push done {med['stall_next']:.2f} s (target <= 10)")
        met = all(ratios[k] <= TARGETS[k] for k in TARGETS) and repush_bytes == 0
        met = met and med["stall_error"] <= args.stall_timeout + 1 and med["stall_next"] <= 10
        print("all targets met" if met else "not all targets met: " + ", ".join(
            k for k in TARGETS if ratios[k] > TARGETS[k]))
        return 0


if __name__ == "__main__":
    sys.exit(main())
