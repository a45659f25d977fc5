"""Label files in both common forms: ``id label`` / ``id: label`` per line, or one label per line.

The form is decided for the whole file: it is the id form only when every
non-blank line starts with an integer id followed by a label (``0 background``,
``3: cat``); otherwise line *i* (from 0) is the label of class *i*, as in Coral's
`imagenet_labels.txt` and `inat_bird_labels.txt`.

A file that does not fit a model's scores one to one (a `background` first line, COCO's
90-id layout with `n/a` holes, as Coral's `coco_labels.txt`) is mapped onto the scores by
the model's own class names when it has them (`fit`); otherwise it is refused with one
line naming both counts. `for_model` picks the labels a run uses: `--labels`, else the
deployment's, else those a bare model file carries (qrun.model.metadata).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from qrun.errors import UserError

ID_LINE = re.compile(r"^\s*(\d+)\s*(?::\s*|\s+)(\S.*?)\s*$")


@dataclass(frozen=True)
class Labels:
    """id -> label, and whether the file gave explicit ids (else one label per line)."""

    names: dict = field(default_factory=dict)
    id_form: bool = False


def parse_labels(text: str) -> Labels:
    """Labels from the text of a label file (either form)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    filled = [line for line in lines if line.strip()]
    matches = [ID_LINE.match(line) for line in filled]
    if filled and all(matches):
        return Labels({int(m.group(1)): m.group(2) for m in matches}, id_form=True)
    return Labels({i: line.strip() for i, line in enumerate(lines)}, id_form=False)


def to_text(labels: Labels) -> str:
    """The text of a labels file holding `labels`, in the form they came in."""
    if labels.id_form:
        return "".join(f"{k} {v}\n" for k, v in sorted(labels.names.items()))
    return "".join(f"{labels.names[k]}\n" for k in sorted(labels.names))


def read_labels(path: Path) -> Labels:
    """Read a label file; a missing or unreadable one is a UserError."""
    path = Path(path)
    try:
        return parse_labels(path.read_text(encoding="utf-8-sig"))
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a readable text labels file ({exc.__class__.__name__}); "
                        "give one label per line, or 'id label' lines") from None


GIVEN_FIX = "give --labels the labels file made for this model"
FOUND_FIX = "use the labels file made for this model, or pass --labels"


def check_fit(labels: Labels, classes: int, path: Path, given: bool = False) -> None:
    """Fail unless the labels fit an output of `classes` scores.

    One label per line must give exactly one label per score; the id form may
    skip ids but must not name one at or above `classes`. `given`: the user named the
    file with --labels (the fix then cannot be to pass --labels).
    """
    if not labels.names:
        raise UserError(f"{path} holds no labels; give one label per line")
    fix = GIVEN_FIX if given else FOUND_FIX
    if not labels.id_form and len(labels.names) != classes:
        raise UserError(f"{path} has {len(labels.names)} labels but the model outputs {classes} "
                        f"scores; {fix}")
    top = max(labels.names)
    if top >= classes:
        raise UserError(f"{path} names class id {top} but the model outputs only {classes} "
                        f"scores (ids 0 to {classes - 1}); {fix}")


def _key(label: str) -> str:
    return " ".join(label.replace("_", " ").lower().split())


def by_name(labels: Labels, names: Labels) -> tuple:
    """(Labels with `names`' ids, spelled as `labels` spells them, or None; the model's
    names missing from `labels`)."""
    index = {}
    for label in labels.names.values():
        index.setdefault(_key(label), label)
    missing = [n for n in names.names.values() if _key(n) not in index]
    if missing:
        return None, missing
    return Labels({i: index[_key(n)] for i, n in names.names.items()},
                  id_form=names.id_form), []


def fit(labels: Labels, classes: int, path: Path, names: Optional[Labels] = None,
        given: bool = True) -> tuple:
    """(Labels that fit `classes` scores, how): `labels` when they fit; else, when the
    model names its `classes` classes (`names`), the file's labels mapped onto the model's
    ids by name; else a UserError naming both counts. `how` is None, or a line saying
    what was mapped."""
    try:
        check_fit(labels, classes, path, given)
        return labels, None
    except UserError as refused:
        if names is None or not names.names or len(names.names) != classes \
                or max(names.names) >= classes:
            if not given:
                raise
            raise UserError(f"{refused}; the model names no classes to map them by") \
                from None
        mapped, missing = by_name(labels, names)
        if mapped is None:
            shown = ", ".join(repr(n if len(n) <= 30 else n[:29] + "…") for n in missing[:3])
            shown += ", ..." if len(missing) > 3 else ""
            raise UserError(f"{path} has {len(labels.names)} labels but the model outputs "
                            f"{classes} scores, and {len(missing)} of the model's {classes} "
                            f"class names are not in it ({shown}); "
                            f"{GIVEN_FIX if given else FOUND_FIX}") from None
    return mapped, (f"{path}'s {len(labels.names)} labels mapped onto the model's {classes} "
                    "classes by their names")


def for_model(given: Optional[Path], deployed: Optional[Path], model_file: Optional[Path],
              classes: Optional[int]) -> tuple:
    """(id -> label, where they came from) for a run: `given` (--labels), else the
    deployment's labels file `deployed`, else the labels a bare `model_file` carries
    (Ultralytics' names, a packed label file). Checked against `classes` when the model
    says how many it has; a file that does not fit is mapped by the model's own names
    (the bare file's, else the deployment's labels) when there are any."""
    own = None
    if model_file is not None:
        from qrun.model.metadata import model_labels

        own, _ = model_labels(model_file)
    path = given or deployed
    if path is None:
        if own is None:
            return {}, None
        if classes is not None:
            check_fit(own, classes, model_file)
        return own.names, model_file
    parsed = read_labels(path)
    if classes is not None:
        if own is None and given is not None and deployed is not None and deployed.is_file():
            own = read_labels(deployed)
        parsed, _ = fit(parsed, classes, path, own, given=given is not None)
    return parsed.names, path
