"""`qrun verify` and `qdeploy push --verify`: the device's outputs against the host's.

Real models, real images, real runtimes: Coral's MobileNet v1 0.25 on Coral's test images
(cat, Grace Hopper, parrot) as the reference inputs. Differences come from real causes:
TFLite's reference kernels instead of XNNPACK, or a deployment preprocessed differently.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from qdeploy.cli.push_view import print_table, result_notes
from qdeploy.push import crosscheck
from qdeploy.push.fleet import push_many
from qdeploy.push.options import PushOptions
from qdeploy.remote import targets
from qdeploy.reports import store
from qrun.model import manifest as qm
from qrun.measure import verify as device_verify
from qrun.errors import UserError
from qrun.model.preprocess import Preprocess
from tests.fixtures.deployments import make_deployment
from tests.fixtures.sshd import push_options

UNIT = Preprocess(0.0, 255.0, "RGB")  # pixels / 255: what the model was not trained with


@pytest.fixture
def reference_deployment(tmp_path):
    return make_deployment(tmp_path / "qdeploy-out", reference=True)


def _host(directory):
    manifest = qm.load(directory)
    samples = device_verify.load_reference(crosscheck.reference_file(directory, manifest))
    return samples, crosscheck.int8_model(directory, manifest), manifest.preprocess


# -- the comparison on real outputs ---------------------------------------------------------

def test_same_model_same_runtime_agrees_exactly(reference_deployment):
    document = device_verify.verify(reference_deployment)
    assert document["kind"] == "qrun-verify" and document["reference"]["samples"] == 3
    [int8] = document["variants"]
    assert int8["variant"] == "int8" and int8["device"]["used"] == "cpu"
    [scores] = int8["outputs"]  # verify schema 2: one record per output
    assert scores["top1"] == [283, 401, 89]  # Persian cat, military uniform, macaw
    # No libedgetpu on this machine: the Edge TPU model is skipped, saying why.
    assert [s["variant"] for s in document["skipped"]] == ["edgetpu"]
    assert "libedgetpu" in document["skipped"][0]["reason"]
    result = crosscheck.check(document, *_host(reference_deployment))
    [c] = result.comparisons
    assert result.ok and (c.agree, c.samples, c.max_abs_diff, c.max_steps) == (3, 3, 0.0, 0.0)


def test_reference_kernels_differ_by_a_few_steps_within_the_tolerance(reference_deployment):
    """TFLite's reference kernels round differently from XNNPACK: a real, small difference."""
    from ai_edge_litert import interpreter as litert

    samples, model, pre = _host(reference_deployment)
    specs, values = crosscheck.host_run(model, samples, pre)
    expected, step = values[0], specs[0].scale
    ref = litert.Interpreter(model_path=str(model),
                             experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    ref.allocate_tensors()
    [raw] = device_verify.run_samples(ref, samples, pre, model)
    [spec] = device_verify.output_specs(ref)
    other = (raw.astype(np.float32) - spec.zero_point) * spec.scale
    c = crosscheck.compare_outputs(expected, other, step)
    assert c.agree == 3 and 0 < c.max_steps <= crosscheck.DEFAULT_STEPS and c.ok
    assert c.max_abs_diff == pytest.approx(c.max_steps * step)
    strict = crosscheck.compare_outputs(expected, other, step, tolerance_steps=c.max_steps - 1)
    assert not strict.ok and strict.agree == 3


def test_mismatched_preprocessing_is_caught(reference_deployment, tmp_path):
    """The device ran the deployment preprocessed with mean 128 / std 128; the host's copy
    says pixels / 255: the outputs move by tens of steps and top-1 flips."""
    document = device_verify.verify(reference_deployment)
    other = make_deployment(tmp_path / "unit", reference=True, preprocess=UNIT)
    samples, _, _ = _host(reference_deployment)
    _, model, pre = _host(other)
    result = crosscheck.check(document, samples, model, pre)
    [c] = result.comparisons
    assert not result.ok and not c.ok
    assert c.agree < c.samples and c.max_steps > crosscheck.DEFAULT_STEPS
    line = result.failure(crosscheck.DEFAULT_STEPS)
    assert "differ" in line and f"top-1 {c.agree}/3" in line and "tolerance 16 steps" in line


def test_near_tie_flip_is_counted_but_passes_and_a_clear_flip_fails():
    step = 1 / 256
    host = np.array([[0.50, 0.49, 0.01], [0.9, 0.05, 0.05]])
    tie = np.array([[0.49, 0.50, 0.01], [0.9, 0.05, 0.05]])  # 3 steps apart: a near-tie
    c = crosscheck.compare_outputs(host, tie, step)
    assert c.ok and (c.agree, c.near_ties, c.worst_sample) == (1, 1, 0)
    assert "1/2 (1 near-tie)" in c.text()
    # The host's top-1 leads by 0.07 (18 steps); the device's outputs move by at most 0.04
    # (10 steps, within the tolerance) yet swap the two: a top-1 failure on its own.
    host = np.array([[0.52, 0.45, 0.03]])
    clear = np.array([[0.48, 0.49, 0.03]])
    c = crosscheck.compare_outputs(host, clear, step)
    assert c.max_steps <= crosscheck.DEFAULT_STEPS
    assert not c.ok and (c.agree, c.near_ties) == (0, 0)
    # a wider tolerance: a tie
    assert crosscheck.compare_outputs(host, clear, step, tolerance_steps=18).ok


def test_outputs_of_another_shape_are_one_error():
    with pytest.raises(UserError, match="another model"):
        crosscheck.compare_outputs(np.zeros((3, 1001)), np.zeros((3, 10)), 1 / 256)


def test_qrun_verify_json_is_exact_and_without_reference_one_error(run_qrun, reference_deployment,
                                                                  tmp_path):
    out = run_qrun("verify", "--model", reference_deployment, "--device", "cpu", "--json", "-")
    assert out.code == 0, out.err
    document = json.loads(out.out)
    [int8] = document["variants"]
    [output] = int8["outputs"]  # verify schema 2: one record per output
    raw = [device_verify.decode(t, output["dtype"], 1001) for t in output["values"]]
    samples, model, pre = _host(reference_deployment)
    _, [expected] = crosscheck.host_run(model, samples, pre)
    got = (np.stack(raw).astype(np.float32) - output["zero_point"]) * output["scale"]
    assert np.array_equal(got, expected)
    text = run_qrun("verify", "--model", reference_deployment)
    assert text.code == 0 and text.out.startswith("int8 on cpu: top-1 283 401 89")
    bare = make_deployment(tmp_path / "bare")
    missing = run_qrun("verify", "--model", bare)
    assert missing.code == 1 and missing.out == ""
    assert missing.err_lines[-1].startswith("error: cannot verify") and \
        "re-run qdeploy convert" in missing.err_lines[-1]
    assert sum(ln.startswith("error:") for ln in missing.err_lines) == 1


# -- push --verify to `local` -----------------------------------------------------------------

def _push_local(dep, tmp_path, **kw):
    opts = PushOptions(remote_dir=str(tmp_path / "device"), reports_dir=tmp_path / "reports",
                       bench_runs=2, **kw)
    return push_many([targets.parse_target("local")], dep, opts)[0]


def test_local_push_verifies_exactly_and_stores_the_figures(reference_deployment, tmp_path):
    from rich.console import Console

    result = _push_local(reference_deployment, tmp_path)
    assert result.ok, result.error
    [c] = result.verify
    assert (c.variant, c.agree, c.samples, c.max_abs_diff, c.ok) == ("int8", 3, 3, 0.0, True)
    assert [s["variant"] for s in result.verify_skipped] == ["edgetpu"]
    with store.open_store(tmp_path / "reports") as s:
        [v] = s.verifications("local")
        assert (v.agreement, v.max_abs_diff, v.ok) == (1.0, 0.0, True)
        assert v.model_sha256 == qm.load(reference_deployment).artifacts[qm.INT8].sha256
        [row] = s.latest()
        assert (row.agreement, row.max_abs_diff) == (1.0, 0.0)
    console = Console(record=True, width=80)
    print_table([result], console)
    text = console.export_text()
    assert "verify" in text and "3/3 Δ0" in text
    assert "verify int8 on cpu: top-1 3/3, max |Δ| 0 (0 steps" in " ".join(text.split())
    report = subprocess.run([sys.executable, "-m", "qdeploy", "report", "--reports",
                             tmp_path / "reports", "--json"], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    [latest] = json.loads(report.stdout)["latest"]
    assert (latest["agreement"], latest["max_abs_diff"]) == (1.0, 0.0)


def test_without_reference_inputs_verify_is_a_note_unless_asked_for(tmp_path):
    bare = make_deployment(tmp_path / "bare")
    result = _push_local(bare, tmp_path)
    assert result.ok and result.verify == [] and "no reference inputs" in result.verify_note
    assert "re-run qdeploy convert" in " ".join(result_notes([result]))
    with pytest.raises(UserError, match=r"--verify: .* has no reference inputs.*re-run qdeploy "
                                        r"convert"):
        _push_local(bare, tmp_path / "asked", verify=True)
    assert not (tmp_path / "asked" / "device").exists()  # refused before anything was sent
    off = _push_local(bare, tmp_path / "off", bench=False)
    assert off.ok and off.verify_note is None and off.reports == []


def qdeploy_cli(*args):
    return subprocess.run([sys.executable, "-m", "qdeploy", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_failed_verify_rolls_back_to_the_previous_release(reference_deployment, tmp_path):
    device = tmp_path / "device"
    common = ["-t", "local", "--remote-dir", device, "--reports", tmp_path / "reports",
              "--bench-runs", "2"]
    good = qdeploy_cli("push", reference_deployment, *common)
    assert good.returncode == 0, good.stderr
    release1 = os.readlink(device / "current")
    unit = make_deployment(tmp_path / "unit", reference=True, preprocess=UNIT)
    changed = make_deployment(tmp_path / "v2", reference=True, extra={"notes.txt": b"v2\n"})
    bad = qdeploy_cli("push", changed, *common, "--verify-against", unit)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == bad.stderr.strip().splitlines()[-1]
    assert "verify failed" in errors[0] and "max |Δ|" in errors[0]
    assert f"current rolled back to release {release1.split('/')[-1]}" in errors[0]
    assert os.readlink(device / "current") == release1  # the bad release is not current
    # ... and it is gone: no `previous` link to it, no directory, nothing to roll back to
    assert not os.path.lexists(device / "previous")
    assert sorted(p.name for p in (device / "releases").iterdir()) == [release1.split("/")[-1]]
    back = qdeploy_cli("rollback", "-t", "local", "--remote-dir", device)
    assert back.returncode == 1 and "nothing to roll back to" in back.stderr
    db = sqlite3.connect(tmp_path / "reports" / store.STORE_NAME)
    assert db.execute("SELECT ok FROM verifications ORDER BY id").fetchall() == [(1,), (0,)]
    # The same push with verify off goes through: the check is what stopped it.
    off = qdeploy_cli("push", changed, *common, "--no-verify")
    assert off.returncode == 0, off.stderr
    assert os.readlink(device / "current") != release1


def test_failed_first_verify_leaves_no_current(reference_deployment, tmp_path):
    unit = make_deployment(tmp_path / "unit", reference=True, preprocess=UNIT)
    result = _push_local(reference_deployment, tmp_path, verify_against=unit)
    assert not result.ok and "verify failed" in result.error
    assert "current removed (there is no previous release" in result.error
    assert not os.path.lexists(tmp_path / "device" / "current")
    assert list((tmp_path / "device" / "releases").iterdir()) == []  # the failed one is gone


def test_failed_verify_of_an_unchanged_push_leaves_current_and_says_so(reference_deployment,
                                                                       tmp_path):
    first = _push_local(reference_deployment, tmp_path)
    assert first.ok, first.error
    release1 = os.readlink(tmp_path / "device" / "current")
    unit = make_deployment(tmp_path / "unit", reference=True, preprocess=UNIT)
    again = _push_local(reference_deployment, tmp_path, verify_against=unit)
    assert not again.ok and again.unchanged and "verify failed" in again.error
    assert "current was already this release before the push and stays" in again.error
    assert os.readlink(tmp_path / "device" / "current") == release1


# -- over SSH -------------------------------------------------------------------------------

@pytest.mark.slow
def test_push_over_ssh_verifies_on_the_device(sshd, ssh_client_key, device, tmp_path,
                                              isolated_home):
    dep = make_deployment(tmp_path / "qdeploy-out", reference=True)
    opts = push_options(tmp_path, sshd, ssh_client_key, remote_dir=str(device), bench=True,
                        bench_runs=2)
    events = []
    [result] = push_many([targets.parse_target(sshd.target)], dep, opts,
                         lambda t, stage, detail="", done=None, total=None:
                         events.append((stage, detail)))
    assert result.ok, result.error
    [c] = result.verify
    assert (c.variant, c.device_used, c.agree, c.samples, c.max_abs_diff) == \
        ("int8", "cpu", 3, 3, 0.0)
    assert any(stage == "verify" and "reference inputs through" in detail
               for stage, detail in events)
    assert (device / "current" / "reference_inputs.npy").is_file()
    with store.open_store(opts.reports_dir) as s:
        [v] = s.verifications(sshd.target)
        assert v.ok and v.agreement == 1.0
        assert v.reference_sha256 == qm.load(dep).artifacts[qm.REFERENCE].sha256
