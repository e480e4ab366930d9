"""Hospital integration over DICOM: routing, SEG/SR/SC results, listener, delivery, PACS pull.

- ``routing``: which stage analyses a received instance (SOP Class, Modality, tags).
- ``outputs`` (``seg``, ``sr``, ``sc``, ``identity``): the results of one analysis as DICOM
  objects built with highdicom, marked as AI-generated and not for clinical use.
- ``artefacts``: the SEG and SR of an API job's DICOM input, built as the job succeeds (served
  at ``/v1/analyses/{id}/seg.dcm`` and ``sr.dcm``).
- ``listener``: Storage SCP with an AE whitelist; ``processing``: dedupe and submission.
- ``delivery``: C-STORE / STOW-RS with retries and a dead letter (``deadletter``); the job
  system's post-success hook ``dicom-delivery``.
- ``pacs`` and ``dicomweb``: pull mode (QIDO-RS, WADO-RS, STOW-RS).
- ``config``: the ``BREASTDX_DICOM_*`` settings; ``state``: dedupe markers and source headers.
"""
