"""Keep TensorFlow's start-up and converter chatter off the user's terminal.

TensorFlow and its converter write to file descriptor 2 from C++, so Python-level
redirection does not catch them: stderr is pointed at a scratch file while
TensorFlow is imported or converts. Exceptions still carry their messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def quiet():
    """Silence fd 2 and TensorFlow's Python logger for the duration of the block."""
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
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
