"""Keep TensorFlow's start-up and converter chatter off the user's terminal.

TensorFlow and its converter write to file descriptor 2 from C++, so Python-level
redirection does not catch them: stderr is pointed at a scratch file while
TensorFlow is imported or converts. Exceptions still carry their messages.
"""

from __future__ import annotations

import contextlib
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def quiet():
    """Silence fd 2 and TensorFlow's Python logger for the duration of the block."""
    from qrun.model.runtime import fd2_filtered

    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with fd2_filtered(lambda line: False):
            yield
    finally:
        logger.setLevel(level)


def tensorflow():
    """Import TensorFlow quietly and return the module."""
    with quiet():
        import tensorflow as tf
    return tf


def keras():
    """Import Keras (with its TensorFlow backend) quietly and return the module."""
    with quiet():
        import keras as k
    return k
