"""Using what was trained: restore a run's model from its folder and export it (`restore`;
the SavedModel writer is training/export.py, which a run also calls at its end), score it
with tables and pictures (`evaluate`), classify image files with an export (`predict`)."""
