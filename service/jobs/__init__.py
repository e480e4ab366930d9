"""Analysis jobs: submission, the job store, the RQ queues and tasks, hooks, reconciliation.

``submit_analysis`` and ``get_job`` (``service.jobs.service``) are what the API and the DICOM
listener call; ``register_hook`` lets other packages act on a finished job.
"""

from service.jobs.hooks import register_hook
from service.jobs.service import (
    get_job,
    job_artefact,
    job_dicom_output,
    job_results,
    submit_analysis,
)
from service.jobs.state import JobError, JobRecord, JobState, Origin

__all__ = [
    "JobError",
    "JobRecord",
    "JobState",
    "Origin",
    "get_job",
    "job_artefact",
    "job_dicom_output",
    "job_results",
    "register_hook",
    "submit_analysis",
]
