"""`qdeploy ansible export`: a deployment as a self-contained Ansible playbook directory.

    PLAYBOOK_DIR/site.yml             the push (probe, copy, receive, runner, bench, verify,
                                      fetch; a failing host rolled back)
    PLAYBOOK_DIR/rollback.yml         `qdeploy rollback` through Ansible
    PLAYBOOK_DIR/group_vars/all.yml   the deployment: release facts, every file's sha256,
                                      the runner's version, the device commands
    PLAYBOOK_DIR/files/artifacts/     the deployment directory (artifacts, manifest.json)
    PLAYBOOK_DIR/files/agent.py       the device agent (qdeploy.push.agent), as qdeploy push
                                      runs it
    PLAYBOOK_DIR/files/qrun-*.whl     the runner wheel (qdeploy.push.wheel), wheelhouse/
    PLAYBOOK_DIR/filter_plugins/      the plan by sha256 (stdlib only, see its docstring)
    PLAYBOOK_DIR/ansible.cfg          ssh connection plugin, pipelining, host keys checked

The playbook and its filters are real files of this package (`playbook/`); `export` fills in
the batches (`serial`, `max_fail_percentage`) and the deployment. Everything is written into
a staging directory beside PLAYBOOK_DIR and renamed into place, so a half-written export is
never left behind; an earlier export there is replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Optional

import qrun
from qrun.model import manifest as qmanifest
from qrun.errors import UserError
from qdeploy.push import release, transfer, wheel
from qdeploy.push.options import PushOptions

PLAYBOOK_PACKAGE = "qdeploy.ansible"
MARKER = "site.yml"  # a directory holding it is an earlier export, replaced by a new one
DEFAULT_SERIAL = "100%"
DEFAULT_MAX_FAIL = "100%"
# Stand-ins for the remote dir and interpreter in the device commands: the playbook sets
# shell variables R and PY per host (qdeploy_remote_dir, qdeploy_python).
_R_WORD, _PY_WORD = "/qdeploy-remote-dir", "qdeploy-python"
_BATCH_RE = re.compile(r"^(?:[1-9][0-9]*|(?:100|[1-9]?[0-9](?:\.[0-9]+)?)%)$")
_PERCENT_RE = re.compile(r"^(?:100|[1-9]?[0-9](?:\.[0-9]+)?)%?$")


@dataclass
class ExportOptions:
    """What the exported playbook does: batches, failure budget, bench and verify."""

    serial: str = DEFAULT_SERIAL  # "1,10%,50%": Ansible's serial list
    max_fail: str = DEFAULT_MAX_FAIL  # "10%": max_fail_percentage
    bench: bool = True
    verify: Optional[bool] = None  # None: when the bench runs
    bench_runs: Optional[int] = None
    compare: bool = False
    runner: bool = True
    wheelhouse: Optional[Path] = None
    inventory: Optional[Path] = None  # copied in as `inventory`, ansible.cfg's default

    @classmethod
    def from_push(cls, options: PushOptions, serial: str, max_fail: str) -> "ExportOptions":
        return cls(serial=serial, max_fail=max_fail, bench=options.bench, verify=options.verify,
                   bench_runs=options.bench_runs, compare=options.compare,
                   runner=options.runner, wheelhouse=options.wheelhouse)

    @property
    def verifying(self) -> bool:
        return self.verify if self.verify is not None else self.bench


def parse_serial(text: str) -> list:
    """`1,10%,50%` -> [1, "10%", "50%"] (Ansible's serial: host counts or percentages)."""
    words = [w.strip() for w in str(text).split(",")]
    if not words or any(not _BATCH_RE.match(w) for w in words):
        raise UserError(f"--serial {text!r} is not a list of batch sizes; write host counts "
                        "or percentages separated by commas, e.g. 1,10%,50%")
    return [w if w.endswith("%") else int(w) for w in words]


def parse_max_fail(text: str) -> float:
    """`10%` (or `10`) -> 10: the percentage of a batch that may fail before the rest stop."""
    text = str(text).strip()
    if not _PERCENT_RE.match(text):
        raise UserError(f"--max-fail {text!r} is not a percentage; write e.g. 10% (0% stops "
                        "at the first failed host, 100% never stops)")
    value = float(text.rstrip("%"))
    return int(value) if value.is_integer() else value


def _playbook_file(name: str) -> str:
    return resources.files(PLAYBOOK_PACKAGE).joinpath("playbook", name).read_text("utf-8")


def device_command(text: str) -> str:
    """A command built for the stand-in remote dir and interpreter, using $R and $PY."""
    return text.replace(release.shell_path(_R_WORD), '"$R"').replace(_PY_WORD, '"$PY"')


def probe_body() -> str:
    """release.probe_command after its `R=...;` (the playbook sets R per host)."""
    command = release.probe_command(_R_WORD)
    prefix = f"R={release.shell_path(_R_WORD)}; "
    assert command.startswith(prefix)
    return command[len(prefix):]


def bench_args(options: ExportOptions) -> str:
    args = ["--compare"] if options.compare else []
    if options.bench_runs is not None:
        args += ["--runs", str(int(options.bench_runs))]
    return " ".join(args)


def group_vars(deployment: transfer.Shipment, options: ExportOptions, wheel_name: str,
               wheelhouse: list) -> str:
    """group_vars/all.yml: one `qdeploy` mapping; its shell commands tagged !unsafe (never
    templated)."""
    outputs = (["bench"] if options.bench else []) + (["verify"] if options.verifying else [])
    data = {
        "manifest_sha256": deployment.manifest_sha256,
        "manifest_name": qmanifest.MANIFEST_NAME,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256}
                  for f in deployment.files],
        "runner": options.runner, "runner_version": wheel.runner_version(),
        "qrun_version": qrun.__version__, "wheel": wheel_name, "wheelhouse": wheelhouse,
        "probe_mark": release.PROBE_MARK.decode(), "keep": release.KEEP_RELEASES,
        "lock_wait": release.LOCK_WAIT_S, "idle": release.RECEIVE_IDLE_S,
        "outputs": outputs, "bench_args": bench_args(options),
    }
    unsafe = {
        "probe": probe_body(),
        "install": device_command(wheel.install_command(_R_WORD, _PY_WORD, wheel_name,
                                                        bool(wheelhouse))),
    }
    lines = ["# Written by qdeploy ansible export: the deployment this playbook pushes.",
             "qdeploy:"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in data.items()]
    lines += [f"  {key}: !unsafe {json.dumps(value)}" for key, value in unsafe.items()]
    return "\n".join(lines) + "\n"


ANSIBLE_CFG = """\
# Written by qdeploy ansible export. Host keys are checked (known_hosts, as qdeploy push
# does); the ssh connection plugin with pipelining and a shared connection per host.
[defaults]
{inventory}host_key_checking = True
interpreter_python = auto_silent
retry_files_enabled = False

[ssh_connection]
pipelining = True
usetty = False
ssh_args = -o ControlMaster=auto -o ControlPersist=60s
"""


def _link_or_copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_playbook(stage: Path, deployment: transfer.Shipment, options: ExportOptions) -> None:
    """Every file of the playbook directory, into `stage`."""
    files = stage / "files"
    for f in deployment.files:
        _link_or_copy(f.path, files / "artifacts" / f.name)
    (files / "agent.py").write_text(release.agent_source(), encoding="utf-8")
    wheel_name = wheel.build_wheel(files).name
    wheelhouse = []
    if options.wheelhouse is not None:
        found = sorted(Path(options.wheelhouse).glob("*.whl"))
        if not found:
            raise UserError(f"--wheelhouse {options.wheelhouse} holds no .whl files; fill it "
                            "with `pip download -d DIR --platform ...` for the device")
        for p in found:
            _link_or_copy(p, files / "wheelhouse" / p.name)
        wheelhouse = [p.name for p in found]
    site = _playbook_file("site.yml")
    site = site.replace("__SERIAL__", json.dumps(parse_serial(options.serial)))
    site = site.replace("__MAX_FAIL__", json.dumps(parse_max_fail(options.max_fail)))
    (stage / "site.yml").write_text(site, encoding="utf-8")
    (stage / "rollback.yml").write_text(_playbook_file("rollback.yml"), encoding="utf-8")
    (stage / "filter_plugins").mkdir()
    (stage / "filter_plugins" / "qdeploy.py").write_text(
        _playbook_file("filter_plugins/qdeploy.py"), encoding="utf-8")
    (stage / "group_vars").mkdir()
    (stage / "group_vars" / "all.yml").write_text(
        group_vars(deployment, options, wheel_name, wheelhouse), encoding="utf-8")
    inventory = ""
    if options.inventory is not None:
        shutil.copyfile(options.inventory, stage / "inventory")
        inventory = "inventory = inventory\n"
    (stage / "ansible.cfg").write_text(ANSIBLE_CFG.format(inventory=inventory),
                                       encoding="utf-8")


def check_out(out: Path) -> None:
    if out.exists() and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not a qdeploy playbook directory; pass a "
                        "new directory (an earlier export there is replaced)")


def export(directory: Path, out: Path, options: ExportOptions,
           deployment: Optional[transfer.Shipment] = None) -> Path:
    """Write the playbook directory for the deployment in `directory` at `out`; returns it."""
    parse_serial(options.serial)
    parse_max_fail(options.max_fail)
    if options.inventory is not None and not Path(options.inventory).is_file():
        raise UserError(f"--inventory {options.inventory} does not exist; pass an Ansible "
                        "inventory file")
    out = Path(out)
    check_out(out)
    deployment = deployment or transfer.load_deployment(directory)
    if options.verifying:
        from qdeploy.push import crosscheck

        crosscheck.host_side(deployment.directory, deployment.manifest,
                             required=bool(options.verify))
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        write_playbook(stage, deployment, options)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.rename(out, old / out.name)
        os.rename(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out
