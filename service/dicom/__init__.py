"""DICOM objects: what a received instance is for, and the results of one analysis as DICOM.

- ``routing``: which stage analyses a received instance (SOP Class, Modality, anatomy).
- ``outputs`` (``seg``, ``sr``, ``sc``, ``identity``): the results of one analysis as DICOM
  objects built with highdicom, marked as AI-generated and not for clinical use.
- ``artefacts``: the SEG and SR of an API job's DICOM input, built as the job succeeds (served
  at ``/v1/analyses/{id}/seg.dcm`` and ``sr.dcm``).

This layer sits below the job system and knows no networking: ``service.pacs`` (listener,
delivery, PACS pull) builds on it, never the other way round (``tests/test_architecture.py``).
"""
