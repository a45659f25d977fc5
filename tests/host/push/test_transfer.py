"""What a push sends (`Transfer.plan`) against the releases a device has, without a device."""

from __future__ import annotations

import json

import pytest

from qdeploy.push import release, transfer
from qrun.model import manifest as qmanifest
from tests.fixtures.deployments import make_deployment


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transfer")
    directory = make_deployment(tmp / "out", extra={"notes.txt": b"v1\n"})
    return transfer.load_deployment(directory, transfer.HashCache(tmp / "cache.json"))


def _device(current: dict, previous: dict) -> release.RemoteState:
    """A device whose releases r2 (current) and r1 (previous) hold these manifests."""
    return release.RemoteState(current="r2", previous="r1",
                               current_manifest=json.dumps(current).encode(),
                               previous_manifest=json.dumps(previous).encode())


def _artifacts(dep, *names) -> dict:
    """The manifest entries of `dep` for the files `names`, as a device's manifest holds them."""
    return {"artifacts": {f"role{i}": {"file": f.name, "sha256": f.sha256}
                          for i, f in enumerate(dep.files) if f.name in names}}


def test_an_empty_device_gets_every_file(deployment):
    plan = transfer.Transfer(None).plan(deployment, release.RemoteState())
    assert not plan.unchanged and plan.link == {}
    assert [f.name for f in plan.send] == [f.name for f in deployment.files]
    assert plan.send[-1].name == qmanifest.MANIFEST_NAME
    assert plan.bytes_to_send == deployment.total_bytes
    assert plan.release_id.endswith("-" + deployment.manifest_sha256[:8])


def test_the_same_manifest_is_unchanged(deployment):
    state = release.RemoteState(current="r1", current_manifest=deployment.manifest_bytes)
    plan = transfer.Transfer(None).plan(deployment, state)
    assert plan.unchanged and plan.release_id == "r1"
    assert plan.send == [] and plan.bytes_to_send == 0


def test_files_the_device_has_are_linked_by_sha256(deployment):
    names = [f.name for f in deployment.files]
    model, labels = names[0], "imagenet_labels.txt"
    state = _device(current=_artifacts(deployment, labels),
                    previous=_artifacts(deployment, model, qmanifest.MANIFEST_NAME))
    plan = transfer.Transfer(None).plan(deployment, state)
    assert not plan.unchanged
    assert plan.link == {model: f"releases/r1/{model}", labels: f"releases/r2/{labels}"}
    sent = [f.name for f in plan.send]
    assert qmanifest.MANIFEST_NAME in sent  # the manifest is always the new release's own
    assert sorted(sent + list(plan.link)) == sorted(names)
    again = plan.sending([model])  # the device's copy turned out damaged: sent instead
    assert again.link == {labels: f"releases/r2/{labels}"}
    assert {f.name for f in again.send} == set(names) - {labels}


def test_an_unreadable_device_manifest_links_nothing(deployment):
    state = release.RemoteState(current="r1", current_manifest=b"\xff not json")
    plan = transfer.Transfer(None).plan(deployment, state)
    assert not plan.unchanged and plan.link == {}
    assert len(plan.send) == len(deployment.files)
