"""Where DICOM instances are kept: the local Part 10 store, and PACS destinations."""
