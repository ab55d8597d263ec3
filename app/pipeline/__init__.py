"""Pure steps of the photo pipeline: bytes and arrays in, values out (no I/O, web or database).

Importing any module of the pipeline first runs this file, which caps OpenCV's decoders before
``cv2`` can be loaded by any of them: OpenCV reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, when its
library loads, so setting it later (e.g. in ``decode.py`` after ``identify.py`` imported cv2)
would leave the default of 2^30 pixels in force.
"""

import os

DEFAULT_MAX_PIXELS = 80_000_000
"""Largest image we accept: above a 48 MP phone sensor, far below what would exhaust memory."""

os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))
