"""`qrun info`: the runtime, whether libedgetpu loads, which Edge TPUs are present, and models.

Edge TPUs are found without the runtime: PCIe/M.2 ones as `/dev/apex_N`, USB
Accelerators by their USB ids in `/sys/bus/usb/devices` (`1a6e:089a` until the
runtime has loaded the firmware, `18d1:9302` after). Every input and output of
every model of the deployment is listed (name, position, tensor index, shape,
dtype, quantization, per-axis quantization when present), and the task its
manifest records (kind, which output plays which role, decoder, why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from qrun.model import runtime
from qrun.errors import UserError
from qrun.model.layout import EDGETPU, FLOAT, INT8
from qrun.model.tensors import TensorSpec

DEV_ROOT = Path("/dev")
USB_ROOT = Path("/sys/bus/usb/devices")
USB_IDS = {
    "1a6e:089a": "USB Accelerator, firmware not loaded yet",
    "18d1:9302": "USB Accelerator, firmware loaded",
}


def edgetpu_devices(dev_root: Path = DEV_ROOT, usb_root: Path = USB_ROOT) -> list[dict]:
    """Edge TPUs visible to the OS: PCIe `/dev/apex_*` and USB Accelerators by USB id."""
    found = [{"kind": "pci", "path": str(p), "state": "PCIe/M.2 Edge TPU"}
             for p in sorted(Path(dev_root).glob("apex_*"))]
    for dev in sorted(Path(usb_root).glob("*")) if Path(usb_root).is_dir() else []:
        try:
            usb_id = ((dev / "idVendor").read_text().strip() + ":"
                      + (dev / "idProduct").read_text().strip()).lower()
        except OSError:
            continue
        if usb_id in USB_IDS:
            found.append({"kind": "usb", "path": str(dev), "id": usb_id, "state": USB_IDS[usb_id]})
    return found


def tensor_info(details: dict) -> dict:
    """One model input or output as reported: name, tensor index, shape, dtype, scale and
    zero point, and `per_axis` (axis, scales, zero points) when it is quantized per axis."""
    return TensorSpec.from_details(details).to_dict()


def task_info(task) -> dict:
    """A manifest's Task as reported: kind, labels role, output roles (role -> position in
    the outputs), decoder and its parameters, and where the task came from and why."""
    return {"kind": task.kind, "labels": task.labels, "outputs": dict(task.outputs),
            "decoder": task.decoder, "params": dict(task.params), "source": task.source,
            "reason": task.reason}


def describe_model(path: Path) -> dict:
    """Inputs, outputs and kind of a model file, read without allocating (works for Edge TPU models)."""
    module = runtime.interpreter_module()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model not found: {path}")
    try:
        interpreter = module.Interpreter(model_path=str(path))
    except ValueError as exc:
        raise UserError(f"{path} cannot be loaded as a TFLite model: "
                        f"{str(exc).splitlines()[0]}; check the file is complete") from None
    return {
        "path": str(path),
        "size": path.stat().st_size,
        "edgetpu": runtime.is_edgetpu_model(path),
        "inputs": [tensor_info(d) for d in interpreter.get_input_details()],
        "outputs": [tensor_info(d) for d in interpreter.get_output_details()],
    }


def info(model: Optional[Path] = None, tpu: str = "") -> dict:
    """Everything `qrun info` reports, as one dict."""
    from qrun.model import deployment
    from qrun.model.delegate_probe import probe_delegate

    rt = runtime.runtime_info()
    library = runtime.edgetpu_library()
    probe = probe_delegate(library, runtime.check_device(tpu))
    report = {
        "kind": "qrun-info",
        "runtime": {"name": rt.name, "version": rt.version},
        "edgetpu_library": {"name": library, "loads": probe.ok, "kind": probe.kind,
                            "reason": probe.reason},
        "edgetpu_devices": edgetpu_devices(),
        "task": None,  # the deployment manifest's, when there is one
        "models": [],
    }
    if model is None and not (deployment.qdeploy_home() / deployment.CURRENT).exists():
        return report
    dep = deployment.resolve(model)
    if dep.manifest is not None:
        report["task"] = task_info(dep.manifest.task)
    paths = [dep.model] if dep.model else []
    if dep.manifest is not None and dep.root is not None:
        for role in (EDGETPU, INT8, FLOAT):
            p = dep.artifact(role)
            if p is not None and p not in paths:
                paths.append(p)
    for p in paths:
        described = describe_model(p)
        described["role"] = dep.role_of(p)
        report["models"].append(described)
    return report


def format_info(report: dict) -> str:
    """The human-readable form of `info()`."""
    lib = report["edgetpu_library"]
    lines = [f"runtime: {report['runtime']['name']} {report['runtime']['version']}",
             f"libedgetpu: {lib['name']}: " + ("loads" if lib["loads"] else lib["reason"])]
    devices = report["edgetpu_devices"]
    lines.append("Edge TPUs: " + (", ".join(f"{d['path']} ({d['state']})" for d in devices)
                                  if devices else "none found (/dev/apex_*, USB 1a6e:089a / "
                                  "18d1:9302)"))
    task = report.get("task")
    if task is not None:
        lines.append(task_line(task))
    roles = {position: role for role, position in (task or {}).get("outputs", {}).items()}
    for m in report["models"]:
        kind = "Edge TPU model" if m["edgetpu"] else "CPU model"
        role = f", role {m['role']}" if m.get("role") else ""
        lines.append(f"model: {m['path']} ({kind}{role}, {m['size']} bytes)")
        for which in ("inputs", "outputs"):
            for position, t in enumerate(m[which]):
                plays = roles.get(position) if which == "outputs" else None
                lines.append(tensor_line(which[:-1], position, t, plays))
    return "\n".join(lines)


def task_line(task: dict) -> str:
    """`task: detect (boxes: output 0, ...; decoder ssd_postprocess; from graph: why)`."""
    parts = [", ".join(f"{role}: output {position}"
                       for role, position in task["outputs"].items())]
    if task["decoder"]:
        params = ", ".join(f"{k} {v}" for k, v in task["params"].items())
        parts.append(f"decoder {task['decoder']}" + (f" ({params})" if params else ""))
    if task["labels"]:
        parts.append(f"labels: {task['labels']}")
    if task["reason"] or task["source"]:
        parts.append(": ".join(p for p in (task["source"], task["reason"]) if p))
    detail = "; ".join(p for p in parts if p)
    return f"task: {task['kind']}" + (f" ({detail})" if detail else "")


def tensor_line(end: str, position: int, t: dict, role=None) -> str:
    """`  input input: [1, 128, 128, 3] uint8, scale 0.0078125, zero point 128 (input 0,
    tensor 87)`, with the per-axis quantization and the output's task role when known."""
    quant = (f"scale {t['scale']:.6g}, zero point {t['zero_point']}" if t["scale"]
             else "not quantized")
    per_axis = t.get("per_axis")
    if per_axis:
        quant += (f", per axis {per_axis['axis']} ({len(per_axis['scales'])} scales "
                  f"{min(per_axis['scales']):.6g}..{max(per_axis['scales']):.6g})")
    where = f"{end} {position}" + (f", tensor {t['index']}" if t["index"] is not None else "")
    where += f"; {role}" if role else ""
    return f"  {end} {t['name']}: {t['shape']} {t['dtype']}, {quant} ({where})"
