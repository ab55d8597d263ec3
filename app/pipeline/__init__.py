"""Pure steps of the photo pipeline: bytes and arrays in, values out (no I/O, web or database)."""
