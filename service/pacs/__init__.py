"""Hospital integration over the network: listener, delivery and PACS pull of DICOM results.

- ``listener``: Storage SCP with an AE whitelist; ``processing``: dedupe and job submission.
- ``delivery``: C-STORE / STOW-RS with retries and a dead letter (``deadletter``); the job
  system's post-success hook ``dicom-delivery``.
- ``pull`` and ``dicomweb``: pull mode (QIDO-RS, WADO-RS, STOW-RS).
- ``config``: the ``BREASTDX_DICOM_*`` settings; ``state``: dedupe markers and source headers.

It sits above the job system and the DICOM objects (``service.dicom``), which never import it.
"""
