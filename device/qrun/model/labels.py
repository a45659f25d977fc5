"""Label files in both common forms: ``id label`` / ``id: label`` per line, or one label per line.

The form is decided for the whole file: it is the id form only when every
non-blank line starts with an integer id followed by a label (``0 background``,
``3: cat``); otherwise line *i* (from 0) is the label of class *i*, as in Coral's
`imagenet_labels.txt` and `inat_bird_labels.txt`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

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


def check_fit(labels: Labels, classes: int, path: Path) -> None:
    """Fail unless the labels fit an output of `classes` scores.

    One label per line must give exactly one label per score; the id form may
    skip ids but must not name one at or above `classes`.
    """
    if not labels.names:
        raise UserError(f"{path} holds no labels; give one label per line")
    fix = "use the labels file made for this model, or pass --labels"
    if not labels.id_form and len(labels.names) != classes:
        raise UserError(f"{path} has {len(labels.names)} labels but the model outputs {classes} "
                        f"scores; {fix}")
    top = max(labels.names)
    if top >= classes:
        raise UserError(f"{path} names class id {top} but the model outputs only {classes} "
                        f"scores (ids 0 to {classes - 1}); {fix}")
