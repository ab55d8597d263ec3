"""DICOM VL Photographic Image objects: UIDs, code tables and the Part 10 builder."""
