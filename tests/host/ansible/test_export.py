"""`qdeploy ansible export` and the playbook's plan, without a device: the directory it writes
(staged and renamed), the plan filter against qdeploy.push.transfer's, and bad input."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qdeploy.ansible import export
from qdeploy.push import release, transfer, wheel
from qdeploy.push.options import PushOptions
from qdeploy.push.pipeline import for_target
from qdeploy.remote import inventory
from qrun.errors import UserError
from tests.fixtures.deployments import make_deployment

PLUGIN = Path(export.__file__).parent / "playbook" / "filter_plugins" / "qdeploy.py"


def plugin():
    spec = importlib.util.spec_from_file_location("qdeploy_filters", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deployment_vars(dep: transfer.Shipment) -> dict:
    return {"manifest_sha256": dep.manifest_sha256, "manifest_name": "manifest.json",
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in dep.files],
            "runner": True, "runner_version": wheel.runner_version(), "wheel": "w.whl",
            "wheelhouse": [], "probe_mark": release.PROBE_MARK.decode()}


def probe_output(current=None, previous=None, runner=None) -> str:
    """What release.probe_command prints for a device with these releases (id, manifest)."""
    head = "root /r\n"
    for name, rel in (("current", current), ("previous", previous)):
        if rel:
            head += f"{name} releases/{rel[0]}\n"
    if runner:
        head += f"runner qrun-{runner}.dist-info\n"
    mark = release.PROBE_MARK.decode()
    return (head + mark + (current[1] if current else "") + mark
            + (previous[1] if previous else ""))


def test_plan_filter_plans_as_the_native_transfer(tmp_path):
    a = transfer.load_deployment(make_deployment(tmp_path / "a"))
    b = transfer.load_deployment(make_deployment(tmp_path / "b", extra={"x.bin": b"1" * 10}))
    f = plugin()
    cases = [(None, None), (("r1", a.manifest_bytes.decode()), None),
             (("r2", b.manifest_bytes.decode()), ("r1", a.manifest_bytes.decode()))]
    for current, previous in cases:
        text = probe_output(current, previous, wheel.runner_version())
        state = release.parse_probe(text.split("\n", 1)[1].encode())
        for dep in (a, b):
            native = transfer.Transfer(None).plan(dep, state)
            plan = f.qdeploy_plan(text, deployment_vars(dep))
            assert plan["unchanged"] == native.unchanged
            assert not plan["install_runner"] and plan["root"] == "/r"
            if native.unchanged:
                assert plan["release"] == native.release_id and plan["uploads"] == []
                continue
            assert sorted(s["name"] for s in plan["send"]) == sorted(s.name for s in native.send)
            assert plan["bytes"] == native.bytes_to_send and plan["linked"] == len(native.link)
            header = __import__("json").loads(plan["header"])
            links = {h["name"]: h["source"] for h in header["files"]}
            for name, source in native.link.items():
                assert links[name] == source
            assert [u["dest"] for u in plan["uploads"]] == ["/r/.incoming/"] + [
                f"/r/.incoming/{s.sha256}" for s in native.send]


def test_plan_installs_the_runner_when_its_version_differs(tmp_path):
    a = transfer.load_deployment(make_deployment(tmp_path / "a"))
    plan = plugin().qdeploy_plan(probe_output(runner="0.0.1+old"), deployment_vars(a))
    assert plan["install_runner"]
    assert {"src": "files/w.whl", "dest": "/r/runner/"} in plan["uploads"]


def test_export_writes_the_playbook_directory_and_replaces_an_earlier_one(tmp_path):
    dep = make_deployment(tmp_path / "dep")
    out = tmp_path / "pb"
    export.export(dep, out, export.ExportOptions(serial="1,10%,50%", max_fail="10%"))
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"site.yml", "rollback.yml", "ansible.cfg", "group_vars/all.yml", "files/agent.py",
            "filter_plugins/qdeploy.py", f"files/qrun-{wheel.runner_version()}-py3-none-any.whl",
            "files/artifacts/manifest.json"} <= names
    site = (out / "site.yml").read_text()
    assert 'serial: [1, "10%", "50%"]' in site and "max_fail_percentage: 10" in site
    assert (out / "files/agent.py").read_text() == release.agent_source()
    assert "host_key_checking = True" in (out / "ansible.cfg").read_text()
    for f in transfer.load_deployment(dep).files:
        assert (out / "files/artifacts" / f.name).read_bytes() == f.path.read_bytes()
    groupvars = (out / "group_vars/all.yml").read_text()
    assert transfer.load_deployment(dep).manifest_sha256 in groupvars
    export.export(dep, out, export.ExportOptions())  # an earlier export: replaced
    assert "serial: [\"100%\"]" in (out / "site.yml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dep", "pb"]  # no staging left


@pytest.mark.parametrize("serial, max_fail, message", [
    ("1,,50%", "10%", "--serial '1,,50%' is not a list"),
    ("0", "10%", "--serial '0' is not a list"),
    ("1", "ten", "--max-fail 'ten' is not a percentage"),
    ("1", "120%", "--max-fail '120%' is not a percentage"),
])
def test_bad_batches_are_one_error_and_write_nothing(tmp_path, serial, max_fail, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        export.export(make_deployment(tmp_path / "dep"), tmp_path / "pb",
                      export.ExportOptions(serial=serial, max_fail=max_fail))
    assert not (tmp_path / "pb").exists()


def test_failed_export_leaves_nothing_half_written(tmp_path):
    dep = make_deployment(tmp_path / "dep")
    with pytest.raises(UserError, match="holds no .whl"):
        export.export(dep, tmp_path / "pb", export.ExportOptions(wheelhouse=tmp_path / "empty"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dep"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a qdeploy playbook directory"):
        export.export(dep, tmp_path / "other", export.ExportOptions())
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_inventory_per_host_settings_apply_to_the_native_engine(tmp_path):
    inv = tmp_path / "hosts.ini"
    inv.write_text("[pis]\npi1 ansible_host=10.0.0.7 qdeploy_remote_dir=/srv/qd "
                   "qdeploy_python=/usr/bin/python3.11 ansible_ssh_private_key_file=/k/id\n"
                   "pi2 ansible_host=10.0.0.8\n")
    pi1, pi2 = inventory.load(inv)
    assert (pi1.remote_dir, pi1.python, pi1.identity) == ("/srv/qd", "/usr/bin/python3.11",
                                                          "/k/id")
    o1, o2 = for_target(pi1, PushOptions()), for_target(pi2, PushOptions())
    assert (o1.remote_dir, o1.python, str(o1.identity)) == ("/srv/qd", "/usr/bin/python3.11",
                                                            "/k/id")
    assert (o2.remote_dir, o2.python, o2.identity) == ("~/qdeploy", "python3", None)
    explicit = for_target(pi1, PushOptions(remote_dir="/cli"))  # the command line wins
    assert explicit.remote_dir == "/cli" and explicit.python == "/usr/bin/python3.11"
    inv.write_text("pi1 ansible_host=10.0.0.7 qdeploy_remote_dir=\n")
    with pytest.raises(UserError, match="line 1: qdeploy_remote_dir is empty"):
        inventory.load(inv)


def qdeploy(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def one_error(done) -> str:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_engine_bad_input_is_one_error_line(tmp_path):
    dep = make_deployment(tmp_path / "dep")
    bad = tmp_path / "bad.yml"
    bad.write_text("all:\n  hosts: [unclosed\n")
    env = dict(os.environ, HOME=str(tmp_path), PATH=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))  # ~/.ansible in tmp
    if importlib.util.find_spec("ansible_runner") is not None:
        assert "cannot parse inventory" in one_error(
            qdeploy("push", dep, "--engine", "ansible", "-i", bad, env=env))
    assert "--serial 'x' is not" in one_error(
        qdeploy("push", dep, "--engine", "ansible", "-i", bad, "--serial", "x"))
    assert "--max-fail '5 %' is not" in one_error(
        qdeploy("push", dep, "--engine", "ansible", "-i", bad, "--max-fail", "5 %"))
    assert "not an engine" in one_error(qdeploy("push", dep, "--engine", "puppet", "-t", "x"))
    # options the exported playbook does not carry are refused, not dropped
    image = tmp_path / "bench.png"
    image.write_bytes(b"")
    error = one_error(qdeploy("push", dep, "--engine", "ansible", "-i", bad,
                              "--bench-image", image, "--runner-extras", "video"))
    assert "--bench-image and --runner-extras run with the native engine only" in error
    assert "drop --engine ansible" in error
    assert "--eval runs with the native engine only" in one_error(
        qdeploy("push", dep, "--engine", "ansible", "-i", bad, "--eval", tmp_path))
    # ansible-runner missing: the same command with the import blocked
    blocked = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['ansible_runner'] = None; "
         "from qdeploy.cli import main; sys.argv[0] = 'qdeploy'; main()",
         "push", str(dep), "--engine", "ansible", "-i", str(bad)],
        capture_output=True, text=True, timeout=120)
    assert "pip install 'qdeploy[ansible]'" in one_error(blocked)
