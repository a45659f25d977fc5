"""Frames from cameras, video files, streams and folders through a task's model, pipelined.

sources (what gives frames), pipeline (stages on their own threads joined by small bounded
queues, each stage timed), sinks (JSON lines, annotated video or images, text lines),
serve (the live page: MJPEG and /stats), render (a task's result as JSON and as a picture),
run (the `qrun detect|classify|segment|pose SOURCE` command put together).
"""
