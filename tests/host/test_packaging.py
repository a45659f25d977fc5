"""The one-command install of the onnx extra: build-backend/qdeploy_build.py adds the
`tensorflow` requirement (tensorflow-cpu under that name) to qdeploy's metadata, and the
versions it joins stay in step."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import tomllib
import zipfile

from packaging.requirements import Requirement
from packaging.version import Version

from tests.paths import ROOT

PACKAGING = ROOT / "build-backend"
METADATA = ("Metadata-Version: 2.4\nName: qdeploy\nVersion: 0.1.0\n"
            "Provides-Extra: onnx\nRequires-Dist: onnx>=1.16; extra == \"onnx\"\n\n# qdeploy\n\n"
            "The README.\n")


def backend():
    spec = importlib.util.spec_from_file_location("qdeploy_build", PACKAGING / "qdeploy_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def project(path) -> dict:
    return tomllib.loads(path.read_text())


def test_the_requirement_goes_among_the_headers_once():
    b = backend()
    patched = b.with_shim(METADATA)
    head, body = patched.split("\n\n", 1)
    assert head.splitlines()[-1] == b.REQUIREMENT and body == "# qdeploy\n\nThe README.\n"
    assert b.with_shim(patched) == patched
    requirement = Requirement(b.REQUIREMENT.split(": ", 1)[1])
    assert requirement.name == "tensorflow" and requirement.url == b.SHIM.as_uri()
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    mac = {"sys_platform": "darwin", "platform_machine": "arm64"}
    assert requirement.marker.evaluate({**linux, "extra": "onnx"})
    assert not requirement.marker.evaluate({**linux, "extra": "host"})
    assert not requirement.marker.evaluate({**mac, "extra": "onnx"})  # real tensorflow there


def test_a_built_wheel_gets_it_with_its_record_updated(tmp_path):
    wheel = tmp_path / "qdeploy-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("qdeploy/__init__.py", "")
        archive.writestr("qdeploy-0.1.0.dist-info/METADATA", METADATA)
        archive.writestr("qdeploy-0.1.0.dist-info/RECORD",
                         "qdeploy/__init__.py,sha256=x,0\n"
                         "qdeploy-0.1.0.dist-info/METADATA,sha256=old,1\n"
                         "qdeploy-0.1.0.dist-info/RECORD,,\n")
    b = backend()
    b._patch_wheel(wheel)
    with zipfile.ZipFile(wheel) as archive:
        meta = archive.read("qdeploy-0.1.0.dist-info/METADATA")
        record = archive.read("qdeploy-0.1.0.dist-info/RECORD").decode().splitlines()
        assert archive.read("qdeploy/__init__.py") == b""
    assert b.REQUIREMENT in meta.decode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(meta).digest()).rstrip(b"=").decode()
    assert record == ["qdeploy/__init__.py,sha256=x,0",
                      f"qdeploy-0.1.0.dist-info/METADATA,sha256={digest},{len(meta)}",
                      "qdeploy-0.1.0.dist-info/RECORD,,"]


def test_pyproject_uses_the_backend_and_the_versions_agree():
    ours = project(ROOT / "pyproject.toml")
    assert ours["build-system"]["build-backend"] == "qdeploy_build"
    assert ours["build-system"]["backend-path"] == ["build-backend"]
    extras = ours["project"]["optional-dependencies"]
    onnx = {Requirement(r).name: Requirement(r) for r in extras["onnx"]}
    assert str(onnx["onnx2tf"].specifier).startswith("==")  # one place for its version
    shim = project(PACKAGING / "tensorflow-cpu-as-tensorflow" / "pyproject.toml")["project"]
    assert shim["name"] == "tensorflow"
    version = Version(shim["version"])
    assert version in onnx["tf-keras"].specifier  # tf-keras requires tensorflow 2.M.*
    cpu = Requirement(shim["dependencies"][0])
    host = next(Requirement(r) for r in extras["host"] if r.startswith("tensorflow-cpu"))
    assert cpu.name == "tensorflow-cpu" and version in cpu.specifier
    assert version in host.specifier
