"""A task's result on one frame, three ways: a JSON-able dict, a short text line and a
picture (PIL, with qrun.tasks.draw).

Each task's steps (qrun.tasks.detect.Detector, qrun.tasks.segment.Segmenter,
qrun.tasks.pose.PoseFinder, qrun.measure.bench.Classifier) give their own result type
from `postprocess`; a `Renderer` per task kind turns it into these.
"""

from __future__ import annotations

from dataclasses import dataclass

from qrun.model.manifest import CLASSIFY, DETECT, POSE, SEGMENT


def _round(value: float) -> float:
    return round(float(value), 2)


@dataclass(frozen=True)
class Renderer:
    """How frames of one task are shown."""

    kind: str
    threshold: float = 0.3  # pose: the lowest keypoint score drawn and printed
    colormap: str = "pascal"  # segment

    def record(self, found) -> dict:
        """The task's part of a frame's JSON line."""
        if self.kind == DETECT:
            return {"objects": [{"id": o.id, "label": o.label, "score": round(o.score, 5),
                                 "box": {k: _round(v) for k, v in o.bbox._asdict().items()}}
                                for o in found]}
        if self.kind == SEGMENT:
            return {"classes": found[2]}
        if self.kind == POSE:
            return {"keypoints": [{"name": k.name, "score": round(float(k.score), 4),
                                   "x": _round(k.x), "y": _round(k.y)} for k in found]}
        return {"classes": [{"id": c.id, "label": c.label, "score": round(float(c.score), 5)}
                            for c in found]}

    def text(self, found) -> str:
        """What a frame's line says after its index and time."""
        if self.kind == DETECT:
            return (", ".join(f"{o.label or o.id} {o.score:.2f}" for o in found[:5])
                    + (f" (+{len(found) - 5})" if len(found) > 5 else "")) or "no objects"
        if self.kind == SEGMENT:
            return ", ".join(f"{c['label'] or c['id']} {100 * c['fraction']:.0f}%"
                             for c in found[2][:4])
        if self.kind == POSE:
            seen = [k for k in found if k.score >= self.threshold]
            return f"{len(seen)} keypoints scored {self.threshold} or more"
        return ", ".join(f"{c.label or c.id} {c.score:.3f}" for c in found[:3])

    def draw(self, picture, found):
        """The frame with the result drawn on it (RGB)."""
        from qrun.tasks import draw

        if self.kind == DETECT:
            return draw.draw_objects(picture, found)
        if self.kind == SEGMENT:
            return draw.overlay(picture, draw.palette_mask(found[1], self.colormap))
        if self.kind == POSE:
            return draw.draw_pose(picture, found, self.threshold)
        return draw_caption(picture, self.text(found))


def draw_caption(picture, text: str):
    """A copy of the picture with `text` on a dark band at its top (classify)."""
    from PIL import ImageDraw

    canvas = picture.convert("RGB")
    pen = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = pen.textbbox((4, 4), text)
    pen.rectangle([0, 0, x1 + 4, y1 + 4], fill=(0, 0, 0))
    pen.text((4, 4), text, fill=(255, 255, 0))
    return canvas


KINDS = (CLASSIFY, DETECT, SEGMENT, POSE)
