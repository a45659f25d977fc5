"""`qdeploy push --engine ansible`: export the playbook, run it with ansible-runner, and
turn its per-host events into the push's progress and results.

`push_fleet` exports the deployment into a temporary directory (qdeploy.ansible.export),
runs `site.yml` on the inventory with ansible-runner, and follows each host's task events
(`HostEvents`): the stage goes to the same progress function the native engine uses, the
plan, the agent's answer and failures into that host's `PushResult`, whose `outcome` says
updated / unchanged / rolled back / failed / not attempted. The bench reports and verify
outputs the playbook fetched are stored as a native push stores them (report files under
--reports and the SQLite store).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from qdeploy.ansible import export
from qdeploy.push import pipeline, transfer, wheel
from qdeploy.push.options import ProgressFn, PushOptions, PushResult, no_progress
from qdeploy.remote import hostkeys, targets
from qrun.errors import UserError

INSTALL_HINT = "pip install 'qdeploy[ansible]'"
INVENTORY_TIMEOUT_S = 60.0
STAGES = {"probe": "connecting", "copy": "uploading", "receive": "receiving",
          "runner": "runner", "bench": "bench", "verify": "verify", "fetch": "fetching",
          "check verify": "verify", "roll back": "rolling back"}
UPDATED, UNCHANGED, ROLLED_BACK, FAILED, NOT_ATTEMPTED = (
    "updated", "unchanged", "rolled back", "failed", "not attempted")


def ansible_path() -> str:
    """PATH with this interpreter's scripts directory first (where pip put ansible-playbook)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def require_ansible() -> None:
    """ansible-runner importable and ansible-playbook on PATH, else one line naming the fix."""
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        raise UserError(f"--engine ansible needs ansible-runner and ansible-core; "
                        f"{INSTALL_HINT}") from None
    for tool in ("ansible-playbook", "ansible-inventory"):
        if shutil.which(tool, path=ansible_path()) is None:
            raise UserError(f"--engine ansible needs {tool} (ansible-core) on PATH; "
                            f"{INSTALL_HINT}")


def inventory_hosts(inventory: Path) -> list:
    """The inventory's host names in Ansible's order, parsed by Ansible itself; an inventory it
    cannot parse is one error line."""
    inventory = Path(inventory)
    if not inventory.is_file():
        raise UserError(f"--inventory {inventory} does not exist; pass an Ansible inventory file")
    env = dict(os.environ, PATH=ansible_path(), ANSIBLE_INVENTORY_UNPARSED_FAILED="True",
               ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="True")
    try:
        done = subprocess.run(["ansible-inventory", "-i", str(inventory), "--list"],
                              capture_output=True, text=True, env=env,
                              timeout=INVENTORY_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"ansible-inventory took over {INVENTORY_TIMEOUT_S:g} s to read "
                        f"{inventory}; check the inventory (a dynamic one?)") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unable to parse" in ln or "ERROR" in ln),
                   lines[-1] if lines else f"exit status {done.returncode}")
        raise UserError(f"Ansible cannot parse inventory {inventory} ({why}); fix it "
                        "(INI or YAML, see ansible-inventory -i FILE --list)")
    data = json.loads(done.stdout)
    hosts: list = []

    def walk(group: str) -> None:
        entry = data.get(group) or {}
        hosts.extend(h for h in entry.get("hosts", []) if h not in hosts)
        for child in entry.get("children", []):
            walk(child)

    walk("all")
    if not hosts:
        raise UserError(f"inventory {inventory} lists no hosts; add one per line")
    return hosts


def ssh_environment(options: PushOptions) -> dict:
    """Connection settings for Ansible's ssh plugin, as qdeploy push applies them: host keys
    checked (known_hosts file, accept-new on request), key file, ssh config, timeout.

    The known_hosts file is always named, as the native engine resolves it
    (hostkeys.fleet_known_hosts): OpenSSH's own default is the passwd entry's home, not
    $HOME, so a key accepted here would otherwise land where a native push never looks. Only
    an ssh config that names UserKnownHostsFile is left to say it, per host, to both engines.
    """
    extra = []
    if options.ssh_config is not None:  # a missing one means none, as natively
        config = Path(options.ssh_config)
        extra += ["-F", str(config) if config.is_file() else os.devnull]
    known_hosts = known_hosts_file(options)
    if known_hosts is not None:
        extra += ["-o", f"UserKnownHostsFile={known_hosts}"]
    if options.accept_new:
        extra += ["-o", "StrictHostKeyChecking=accept-new"]
    env = {"ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_SSH_EXTRA_ARGS": " ".join(extra)}
    if options.identity is not None:
        env["ANSIBLE_PRIVATE_KEY_FILE"] = str(options.identity)
    if options.connect_timeout is not None:
        env["ANSIBLE_TIMEOUT"] = str(max(1, round(options.connect_timeout)))
    return env


def known_hosts_file(options: PushOptions) -> Optional[str]:
    """The known_hosts file Ansible's ssh is pointed at: the one a native push with these
    options reads and records keys in (hostkeys.fleet_known_hosts, on the ssh config a native
    push reads), or None when that ssh config names UserKnownHostsFile."""
    config = None
    if options.known_hosts is None:
        try:
            config = targets.load_ssh_config(options.ssh_config)
        except UserError:
            pass  # paramiko cannot parse it: OpenSSH reads it on its own, as before
    return hostkeys.fleet_known_hosts(options.known_hosts, config)


class HostEvents:
    """ansible-runner's event handler: each host's task events into its PushResult and the
    progress function."""

    def __init__(self, hosts: list, deployment: transfer.Shipment, progress: ProgressFn):
        self.results = {h: PushResult(target=h) for h in hosts}
        self.files = len(deployment.files)
        self.progress = progress
        self.started: dict = {}
        self.first_error: dict = {}
        self.rolled_back: set = set()
        self.copy_start: dict = {}

    def __call__(self, event: dict) -> bool:
        data = event.get("event_data") or {}
        host, task, kind = data.get("host"), data.get("task", ""), event.get("event", "")
        result = self.results.get(host)
        if result is None:
            return True
        res = data.get("res") or {}
        if kind == "runner_on_start":
            self.started.setdefault(host, time.perf_counter())
            if task in STAGES:
                if task == "copy":
                    self.copy_start[host] = time.perf_counter()
                self.progress(host, STAGES[task], "", None, None)
        elif kind == "runner_on_ok":
            self.ok(result, task, res)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            if task == "failed":
                result.error = f"{host}: {res.get('msg')}"
            else:
                self.first_error.setdefault(host, f"{host}: {task}: {failure_line(res)}")
        elif kind == "runner_on_unreachable":
            result.error = f"{host}: unreachable ({failure_line(res)})"
            self.first_error.setdefault(host, result.error)
        return True

    def ok(self, result: PushResult, task: str, res: dict) -> None:
        host = result.target
        if task == "plan":
            plan = (res.get("ansible_facts") or {}).get("qdeploy_plan") or {}
            result.unchanged = bool(plan.get("unchanged"))
            result.release_id = plan.get("release")
            result.runner_version = plan.get("runner")
            result.files_sent = 0 if result.unchanged else len(plan.get("send") or [])
            result.files_skipped = self.files - result.files_sent
            result.bytes_sent = 0 if result.unchanged else int(plan.get("bytes") or 0)
            total = result.bytes_sent
            self.progress(host, "unchanged" if result.unchanged else "planned",
                          f"{result.files_sent} files", 0, total)
        elif task == "receive":
            answer = agent_answer(res)
            result.previous, result.old_previous = answer.get("previous"), answer.get(
                "old_previous")
            start = self.copy_start.get(host)
            result.transfer_s = time.perf_counter() - start if start else 0.0
            self.progress(host, "uploaded", "", result.bytes_sent, result.bytes_sent)
        elif task == "runner":
            result.runner_installed = True
            result.runner_version = wheel.runner_version()
        elif task == "roll back":
            self.rolled_back.add(host)

    def finish(self) -> list:
        """Every host's result, with its outcome; hosts without events were not attempted."""
        out = []
        for host, r in self.results.items():
            if host not in self.started:
                r.outcome = NOT_ATTEMPTED
                r.error = (f"{host}: not attempted (an earlier batch failed more hosts than "
                           "--max-fail allows)")
            elif r.error is None and host not in self.first_error:
                r.ok = True
                r.outcome = UNCHANGED if r.unchanged else UPDATED
                if r.runner_version is None:
                    r.runner_version = wheel.runner_version()
                self.progress(host, "done", "", None, None)
            else:
                r.error = r.error or self.first_error[host]
                r.outcome = ROLLED_BACK if host in self.rolled_back else FAILED
                self.progress(host, "failed", r.error, None, None)
            r.seconds = time.perf_counter() - self.started.get(host, time.perf_counter())
            out.append(r)
        return out


def agent_answer(res: dict) -> dict:
    for line in reversed(res.get("stdout_lines") or []):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict):
            return answer
    return {}


def failure_line(res: dict) -> str:
    """One line from a failed task's result (as the playbook's qdeploy_failure filter)."""
    message = agent_answer(res).get("message")
    if message:
        return str(message)
    lines = [ln.strip() for ln in str(res.get("stderr") or "").splitlines()
             if ln.strip() and not ln.startswith("Shared connection to")]
    return lines[-1] if lines else str(res.get("msg") or f"exit status {res.get('rc')}")


def check_command(playbook: Path, options: PushOptions) -> list:
    """The in-play verify check (qdeploy.ansible.check), with this interpreter."""
    argv = [sys.executable, "-m", "qdeploy.ansible.check", str(playbook / "files" / "artifacts"),
            "--tolerance", str(options.verify_tolerance)]
    if options.verify_against is not None:
        argv += ["--against", str(Path(options.verify_against).resolve())]
    return argv


def store_fetched(result: PushResult, fetched: Path, deployment: transfer.Shipment,
                  options: PushOptions, verify_dir: Path) -> None:
    """The bench report and verify output fetched for one host, stored as a native push
    stores them; the figures into its result."""
    from qdeploy.ansible import check

    host_dir = fetched / result.target
    for path in sorted(host_dir.glob("*-bench.json")):
        report = json.loads(path.read_text(encoding="utf-8"))
        stored, ids = pipeline.store_report(report, result.target, options.reports_dir,
                                            deployment.manifest)
        result.report_files.append(stored)
        result.report_ids.extend(ids)
        result.reports.extend(pipeline.reports_of(report))
    for path in sorted(host_dir.glob("*-verify.json")):
        outcome = check.outcome(verify_dir, path, options.verify_tolerance,
                                options.verify_against)
        pipeline.store_verification(outcome, result.target, options.reports_dir)
        result.verify, result.verify_skipped = outcome.comparisons, outcome.skipped


def push_fleet(directory: Path, inventory: Path, options: PushOptions,
               serial: str = export.DEFAULT_SERIAL, max_fail: str = export.DEFAULT_MAX_FAIL,
               progress: ProgressFn = no_progress, hosts: Optional[list] = None) -> list:
    """Push the deployment in `directory` to every host of `inventory` through Ansible;
    results in inventory order (`hosts`: its host names when already read)."""
    export.parse_serial(serial)
    export.parse_max_fail(max_fail)
    require_ansible()
    import ansible_runner

    pipeline.check_identity(options)
    hosts = hosts or inventory_hosts(inventory)
    deployment = transfer.load_deployment(directory)
    verifying = options.verifying
    if verifying and pipeline.host_side(deployment, options) is None:
        verifying = False  # no reference inputs: pushed with a note, as natively
    ex = export.ExportOptions.from_push(options, serial, max_fail)
    ex.verify = verifying
    with tempfile.TemporaryDirectory(prefix="qdeploy-ansible-") as tmp:
        tmp = Path(tmp)
        playbook = export.export(directory, tmp / "playbook", ex, deployment)
        fetched = tmp / "fetched"
        extravars = {"qdeploy_reports": str(fetched)}
        if verifying:
            extravars["qdeploy_verify_check"] = check_command(playbook, options)
        known_hosts = known_hosts_file(options)
        if options.accept_new and known_hosts is not None:
            # OpenSSH creates no directory for a key it accepts outside the passwd home
            try:
                Path(known_hosts).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError:
                pass  # ssh then says it could not record the key, as it would anyway
        env = dict(ssh_environment(options), PATH=ansible_path(),
                   ANSIBLE_CONFIG=str(playbook / "ansible.cfg"), ANSIBLE_FORKS=str(options.jobs),
                   ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_NOCOLOR="True")
        events = HostEvents(hosts, deployment, progress)
        (tmp / "runner").mkdir()
        run = ansible_runner.run(
            private_data_dir=str(tmp / "runner"), project_dir=str(playbook), playbook="site.yml",
            inventory=str(Path(inventory).resolve()), extravars=extravars, envvars=env,
            event_handler=events, quiet=True, timeout=None)
        results = events.finish()
        if run.status not in ("successful", "failed") and all(not r.ok for r in results):
            raise UserError(f"ansible-playbook did not run ({run.status}): "
                            f"{_last_lines(run)}")
        for r in (r for r in results if r.ok):  # a rolled-back release's figures: not kept
            store_fetched(r, fetched, deployment, options, playbook / "files" / "artifacts")
        if not verifying and options.verifying:
            for r in results:
                r.verify_note = pipeline.NO_REFERENCE_NOTE
    return results


def _last_lines(run) -> str:
    try:
        text = run.stdout.read()
    except Exception:
        return "no output"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"
