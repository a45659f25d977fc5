"""The release links on a device across failed pushes, rollbacks and concurrent pushes.

On the `local` target (the same device agent as over SSH, run by /bin/sh) with real
deployments and a real verify; a second push that lands meanwhile is a real second push. Also
the host's half of the probe and of the agent's answers, without a device.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest

from qdeploy.push import fleet
from qdeploy.push import pipeline as push
from qdeploy.push import release
from qdeploy.remote import targets
from qdeploy.remote.connection import CommandResult
from qdeploy.remote.local import LocalConnection
from qrun.model.preprocess import Preprocess
from tests.fixtures.deployments import make_deployment

UNIT = Preprocess(0.0, 255.0, "RGB")  # pixels / 255: the model's outputs move, verify fails
LOCAL = targets.parse_target("local")


@pytest.fixture(scope="module")
def deployments(tmp_path_factory):
    """Three different deployments with reference inputs, and one that makes verify fail."""
    tmp = tmp_path_factory.mktemp("deployments")
    deps = [make_deployment(tmp / f"v{i}", reference=True, extra={"notes.txt": b"v%d\n" % i})
            for i in range(3)]
    return deps, make_deployment(tmp / "unit", reference=True, preprocess=UNIT)


def _opts(tmp_path, **kw):
    base = dict(remote_dir=str(tmp_path / "device"), reports_dir=tmp_path / "reports",
                bench=False, verify=False)
    base.update(kw)
    return push.PushOptions(**base)


def _push(dep, opts, progress=push.no_progress):
    return fleet.push_many([LOCAL], dep, opts, progress)[0]


def _links(device) -> dict:
    return {name: os.readlink(device / name) if os.path.islink(device / name) else None
            for name in ("current", "previous")}


def test_failed_verify_restores_current_and_previous(deployments, tmp_path):
    (a, b, c), unit = deployments
    opts = _opts(tmp_path)
    device = tmp_path / "device"
    first, second = _push(a, opts), _push(b, opts)
    assert first.ok and second.ok, (first.error, second.error)
    before = _links(device)
    assert before == {"current": f"releases/{second.release_id}",
                      "previous": f"releases/{first.release_id}"}
    bad = _push(c, _opts(tmp_path, verify=True, verify_against=unit))
    assert not bad.ok and "verify failed" in bad.error
    assert f"current rolled back to release {second.release_id}" in bad.error
    assert _links(device) == before  # `previous` points at A again, not unlinked
    assert not (device / "releases" / bad.release_id).exists()
    links = push.rollback_target(LOCAL, opts)
    assert links == {"current": first.release_id, "previous": second.release_id}


def test_undo_leaves_a_release_another_push_made_current_meanwhile(deployments, tmp_path):
    """Push C fails verify, but push B landed between C's switch and its undo: B stays."""
    (a, b, c), unit = deployments
    opts = _opts(tmp_path)
    device = tmp_path / "device"
    first = _push(a, opts)
    assert first.ok, first.error
    landed = []

    def other_operator(target, stage, detail="", done=None, total=None):
        if stage == "verify" and detail == "starting" and not landed:
            landed.append(_push(b, opts))

    bad = _push(c, _opts(tmp_path, verify=True, verify_against=unit), other_operator)
    [other] = landed
    assert other.ok, other.error
    assert not bad.ok and "verify failed" in bad.error
    assert "another push switched it meanwhile" in bad.error and "\n" not in bad.error
    assert _links(device) == {"current": f"releases/{other.release_id}",
                              "previous": f"releases/{bad.release_id}"}
    for rid in (first.release_id, bad.release_id, other.release_id):
        assert (device / "releases" / rid / "manifest.json").is_file()


def test_rollback_to_the_current_release_reports_the_real_previous(deployments, tmp_path):
    (a, b, _), _ = deployments
    opts = _opts(tmp_path)
    first, second = _push(a, opts), _push(b, opts)
    links = push.rollback_target(LOCAL, opts, to=second.release_id)
    assert links == {"current": second.release_id, "previous": first.release_id}
    assert _links(tmp_path / "device")["previous"] == f"releases/{first.release_id}"


def test_a_failure_after_the_switch_says_current_was_switched(deployments, tmp_path):
    (a, b, _), _ = deployments
    opts = _opts(tmp_path)
    device = tmp_path / "device"
    first = _push(a, opts)
    assert first.ok, first.error
    (device / ".previous.tmp" / "in-the-way").mkdir(parents=True)  # `previous` cannot switch
    second = _push(b, opts)
    assert not second.ok
    switched = _links(device)["current"]
    assert switched != f"releases/{first.release_id}"
    assert f"switched `current` to release {switched[9:]}, then failed: " in second.error
    assert "Is a directory" in second.error and "unchanged" not in second.error


def test_damaged_or_missing_copies_on_the_device_are_sent_again(deployments, tmp_path):
    """Files the device has by sha256 are linked, unless its copy is damaged (a flipped byte on
    the SD card) or gone: then the push sends their bytes and completes."""
    (a, b, _), _ = deployments
    opts = _opts(tmp_path)
    device = tmp_path / "device"
    first = _push(a, opts)
    assert first.ok, first.error
    model = device / "current" / "mobilenet_v1_0.25_128_quant.tflite"
    data = bytearray(model.read_bytes())
    data[1000] ^= 0xFF
    model.write_bytes(bytes(data))
    (device / "current" / "imagenet_labels.txt").unlink()
    second = _push(b, opts)
    assert second.ok, second.error
    # notes + manifest as planned, then the model and labels the device could not link
    assert (second.files_sent, second.files_skipped) == (4, 2)
    for name in ("mobilenet_v1_0.25_128_quant.tflite", "imagenet_labels.txt",
                 "mobilenet_v1_0.25_128_quant_edgetpu.tflite", "notes.txt"):
        assert (device / "current" / name).read_bytes() == (b / name).read_bytes(), name
    assert not [p for p in (device / "releases").iterdir() if p.name.startswith(".")]


# -- the probe and the agent's answers, host side ---------------------------------------------

def test_parse_probe_reads_links_runner_releases_and_manifests():
    output = (b"current releases/r2\nprevious releases/r1/\n"
              b"runner qrun-0.1.0+1a2b3c4d5e6f.dist-info\nrunner qrun.dist-info\n"
              b"release r1\nrelease r2\n" + release.PROBE_MARK + b'{"artifacts": {}}'
              + release.PROBE_MARK + b"not json")
    state = release.parse_probe(output)
    assert (state.current, state.previous) == ("r2", "r1")
    assert state.runner_version == "0.1.0+1a2b3c4d5e6f"
    assert state.releases == ["r1", "r2"]
    assert state.manifest_dict("current") == {"artifacts": {}}
    assert state.previous_manifest == b"not json" and state.manifest_dict("previous") == {}


def test_parse_probe_of_an_empty_device():
    state = release.parse_probe(release.PROBE_MARK * 2)
    assert state == release.RemoteState()
    assert state.manifest_dict("current") == {}


def test_probe_reads_what_the_agent_wrote(tmp_path):
    """The probe's shell command and the agent's receive agree on the layout (run by /bin/sh)."""
    conn, device = LocalConnection(), tmp_path / "dev ice"
    assert release.probe(conn, str(device)) == release.RemoteState()
    for rid in ("r1", "r2"):
        manifest = json.dumps({"release": rid}).encode()
        header = {"release": rid, "files": [{"name": "manifest.json", "size": len(manifest),
                                             "sha256": hashlib.sha256(manifest).hexdigest(),
                                             "source": None}]}
        done = conn.run(release.receive_command(sys.executable, str(device)),
                        stdin=json.dumps(header).encode() + b"\n" + manifest)
        assert release.agent_answer(done)["release"] == rid, done.stderr
    state = release.probe(conn, str(device))
    assert (state.current, state.previous, state.releases) == ("r2", "r1", ["r1", "r2"])
    assert state.manifest_dict("previous") == {"release": "r1"}


def test_agent_answer_is_the_last_json_line_of_stdout():
    result = CommandResult(91, b'qrun 0.1\n{"error": "pip", "message": "no wheel"}\n', b"x\n")
    assert release.agent_answer(result) == {"error": "pip", "message": "no wheel"}
    assert release.failure_text(result) == "no wheel"
    for stdout in (b"", b"qrun 0.1.0\n", b"[1, 2]\n"):
        silent = CommandResult(127, stdout, b"sh: 1: python9: not found\n")
        assert release.agent_answer(silent) == {}
        assert release.failure_text(silent) == "sh: 1: python9: not found"


def test_the_lock_error_names_the_holder_and_rollback_says_nothing_to_roll_back(tmp_path):
    conn = LocalConnection()
    locked = CommandResult(75, b'{"error": "locked", "message": "x", "pid": "4242"}\n', b"")
    assert "a stale one holds its lock (pid 4242); wait for it" in \
        str(release.locked_error(conn, "~/qdeploy", locked))
    with pytest.raises(release.UserError) as info:
        release.rollback(conn, str(tmp_path / "none"), sys.executable)
    assert str(info.value) == (f"local: no previous release under {tmp_path / 'none'}; "
                               "nothing to roll back to")
    with pytest.raises(release.UserError, match="is not a release id"):
        release.rollback(conn, str(tmp_path), sys.executable, to="../etc")
