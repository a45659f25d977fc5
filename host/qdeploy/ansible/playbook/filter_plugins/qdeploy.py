"""Filters of qdeploy's playbook (qdeploy.ansible.export ships this file as its source).

Standard library only: it runs inside ansible-playbook on the controller, where qdeploy itself
need not be installed. `qdeploy_plan` reads the probe's output (the format of
qdeploy.push.release.probe_command: `current`/`previous`/`runner`/`release` lines, then both
manifests after a mark) and plans the push the way qdeploy.push.transfer.Transfer.plan does:
equal manifests (by sha256) mean nothing to send; a file the device has in `current` or
`previous` (by sha256) is hard-linked there by the agent; the rest is copied into
`.incoming/<sha256>` and linked from there. `qdeploy_shell_path` quotes a remote path for
/bin/sh, keeping a leading `~/` as $HOME.
"""

import hashlib
import json
import re
import shlex
from datetime import datetime, timezone

INCOMING = ".incoming"  # under the remote dir: files copied for one push, removed after it
_RUNNER_RE = re.compile(r"^qrun-(.+)\.dist-info$")


def qdeploy_shell_path(path):
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def parse_probe(stdout, mark):
    """The device's state: {"root", "current", "previous", "runner", "releases", manifests}."""
    head, _, rest = stdout.partition(mark)
    current_manifest, _, previous_manifest = rest.partition(mark)
    state = {"root": None, "current": None, "previous": None, "runner": None, "releases": [],
             "current_manifest": current_manifest or None,
             "previous_manifest": previous_manifest or None}
    for line in head.splitlines():
        key, _, value = line.partition(" ")
        if key in ("current", "previous"):
            state[key] = value.rstrip("/").rsplit("/", 1)[-1]
        elif key == "runner" and _RUNNER_RE.match(value):
            state["runner"] = _RUNNER_RE.match(value).group(1)
        elif key == "release":
            state["releases"].append(value)
        elif key == "root":  # printed before the probe by the playbook
            state["root"] = value
    return state


def _artifacts(raw):
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    artifacts = data.get("artifacts") if isinstance(data, dict) else None
    return artifacts if isinstance(artifacts, dict) else {}


def device_files(state):
    """sha256 -> path under the remote dir of every artifact in previous and current."""
    found = {}
    for which in ("previous", "current"):
        rid = state[which]
        for art in _artifacts(state[which + "_manifest"]).values():
            if rid and isinstance(art, dict) and isinstance(art.get("sha256"), str) \
                    and isinstance(art.get("file"), str):
                found[art["sha256"]] = "releases/%s/%s" % (rid, art["file"])
    return found


def copies(plan, deployment, remote_dir):
    """What the `copy` task sends (src under the playbook, dest on the device): the agent
    first (its dest, a directory, is created), then the files the device lacks, then the
    runner wheel and the wheelhouse when the runner is installed."""
    incoming = "%s/%s/" % (remote_dir, INCOMING)
    if plan["unchanged"] and not plan["install_runner"]:
        return []
    out = [{"src": "files/agent.py", "dest": incoming}]
    out += [{"src": "files/artifacts/" + f["name"], "dest": incoming + f["sha256"]}
            for f in plan["send"]]
    if plan["install_runner"]:
        out += [{"src": "files/" + deployment["wheel"], "dest": remote_dir + "/runner/"}]
        out += [{"src": "files/wheelhouse/" + name, "dest": remote_dir + "/wheelhouse/"}
                for name in deployment["wheelhouse"]]
    return out


def qdeploy_plan(stdout, deployment, now=None):
    """The plan for one host from its probe output and the deployment (group_vars).

    Returns {"root" (the remote dir as the device's shell expands it), "unchanged", "release",
    "stamp", "current", "previous", "runner",
    "install_runner", "send": [{"name", "sha256", "size"}], "bytes", "linked", "header",
    "uploads"}: `header` is the agent's `receive` header line, every file with a source (linked
    or copied); `uploads` is what the copy task sends.
    """
    state = parse_probe(stdout, deployment["probe_mark"])
    remote_dir = state["root"]
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")
    plan = {"root": remote_dir, "current": state["current"], "previous": state["previous"],
            "stamp": stamp,
            "runner": state["runner"], "send": [], "linked": 0, "bytes": 0, "header": "",
            "install_runner": bool(deployment["runner"]) and
            state["runner"] != deployment["runner_version"]}
    manifest = state["current_manifest"]
    if manifest is not None and hashlib.sha256(manifest.encode(
            "utf-8", "surrogateescape")).hexdigest() == deployment["manifest_sha256"]:
        plan.update(unchanged=True, release=state["current"])
        return dict(plan, uploads=copies(plan, deployment, remote_dir))
    rid = "%s-%s" % (stamp, deployment["manifest_sha256"][:8])
    have, files = device_files(state), []
    for f in deployment["files"]:
        source = have.get(f["sha256"]) if f["name"] != deployment["manifest_name"] else None
        if source is None:
            source = "%s/%s" % (INCOMING, f["sha256"])
            if all(s["sha256"] != f["sha256"] for s in plan["send"]):
                plan["send"].append(f)
                plan["bytes"] += f["size"]
        else:
            plan["linked"] += 1
        files.append({"name": f["name"], "size": f["size"], "sha256": f["sha256"],
                      "source": source})
    plan.update(unchanged=False, release=rid,
                header=json.dumps({"release": rid, "files": files}))
    return dict(plan, uploads=copies(plan, deployment, remote_dir))


def qdeploy_failure(result):
    """One line for a failed task's result: the agent's message (its JSON answer), else the
    last stderr line, else Ansible's own message."""
    for line in reversed(result.get("stdout_lines") or []):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and answer.get("message"):
            return str(answer["message"])
    lines = [ln for ln in str(result.get("stderr") or "").splitlines() if ln.strip()]
    if lines:
        return lines[-1].strip()
    return str(result.get("msg") or "exit status %s" % result.get("rc"))


class FilterModule:
    def filters(self):
        return {"qdeploy_plan": qdeploy_plan, "qdeploy_shell_path": qdeploy_shell_path,
                "qdeploy_failure": qdeploy_failure}
