"""The task adapters, as pycoral's `adapters/`: which output plays which role (roles), and
small functions over an interpreter that turn an image into input and outputs into
classes, objects, class maps or keypoints (adapters, classify, detect, segment, pose,
letterbox, pipeline), drawn with PIL (draw)."""
