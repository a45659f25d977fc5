"""Manifest schema 1 and 2 on one device: releases written by either, pushed, verified,
rolled back and run by the new runner (which reads both), against a real sshd."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from qdeploy.push.fleet import push_many
from qdeploy.push.pipeline import rollback_target
from qdeploy.remote import targets
from tests.fixtures.deployments import make_deployment, write_schema_1
from tests.fixtures.sshd import push_options as options
from tests.paths import CORAL

pytestmark = pytest.mark.slow
CAT = CORAL / "cat.bmp"


@pytest.fixture(autouse=True)
def _isolated_home(isolated_home):
    """No real ~/.ssh, agent or cache: every key and known_hosts file is the test's own."""


def deployments(tmp_path) -> tuple:
    """The same model as a schema-1 and a schema-2 deployment (different releases)."""
    old = make_deployment(tmp_path / "old", reference=True, created="2025-01-01T00:00:00Z")
    write_schema_1(old)
    new = make_deployment(tmp_path / "new", reference=True, created="2026-12-01T00:00:00Z")
    return old, new


def classify_on_device(device) -> list:
    """`qrun classify --json` through the device's current, with the runner the push installed."""
    done = subprocess.run([str(device / "venv" / "bin" / "qrun"), "classify", str(CAT), "--json"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "QDEPLOY_HOME": str(device)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["results"]


def schema_of_current(device) -> int:
    return json.loads((device / "current" / "manifest.json").read_text())["schema_version"]


@pytest.mark.parametrize("first,second", [("old", "new"), ("new", "old")])
def test_push_over_a_release_of_the_other_schema_then_roll_back(
        sshd, ssh_client_key, device, tmp_path, first, second):
    old, new = deployments(tmp_path)
    by_name = {"old": old, "new": new}
    opts = options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), verify=True)
    target = targets.parse_target(sshd.target)

    pushed = push_many([target], by_name[first], opts)[0]
    assert pushed.ok, pushed.error
    assert schema_of_current(device) == (1 if first == "old" else 2)
    before = classify_on_device(device)

    over = push_many([target], by_name[second], opts)[0]
    assert over.ok, over.error
    assert over.release_id != pushed.release_id
    assert over.verify and all(c.ok for c in over.verify), over.verify_note
    assert schema_of_current(device) == (1 if second == "old" else 2)
    assert classify_on_device(device) == before  # same model, either schema

    rollback_target(target, opts)
    assert schema_of_current(device) == (1 if first == "old" else 2)
    assert classify_on_device(device) == before
