"""Jobs, as one import: the names of the modules the job machinery is split into.

* :mod:`longrag.services.job_store`: job records, batch items and waiting uploads
  (:class:`JobStore`, :class:`Job`, the states, :func:`get_jobs`).
* :mod:`longrag.services.token_sinks`: how streamed tokens reach the API (:func:`token_sink`).
* :mod:`longrag.services.job_runs`: the service functions the workers run (:func:`run_ingest`,
  :func:`run_question`, :func:`run_batch`, :func:`run_batch_item`, :func:`run_delete`,
  :func:`run_reindex`) and the upload helpers.
* :mod:`longrag.services.dispatch`: Celery when a broker is configured, a thread pool otherwise
  (:func:`make_dispatcher`).
* :mod:`longrag.services.tasknames`: task names and their queues, shared with ``longrag.workers``.

``from longrag.services import jobs as J`` then ``J.get_jobs``, ``J.run_ingest``... works as it
always has; new code may import from the module that defines a name.
"""

from __future__ import annotations

from longrag.services.dispatch import CeleryDispatcher, Dispatcher, LocalDispatcher, make_dispatcher
from longrag.services.job_runs import (
    doc_id_for,
    error_dict,
    question_from,
    read_upload,
    run_batch,
    run_batch_item,
    run_delete,
    run_ingest,
    run_question,
    run_reindex,
    save_upload,
    validate_question,
)
from longrag.services.job_store import (
    CANCELLABLE_KINDS,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    JobStore,
    get_jobs,
    new_id,
    worker_id,
)
from longrag.services.tasknames import (
    QUEUE_OF,
    QUEUES,
    TASK_BATCH,
    TASK_BATCH_ITEM,
    TASK_DELETE,
    TASK_INGEST,
    TASK_QUESTION,
    TASK_REINDEX,
)
from longrag.services.token_sinks import (
    LOCAL_SINK,
    STREAM_PREFIX,
    STREAM_TTL_S,
    LocalTokenSink,
    RedisTokenSink,
    TokenSink,
    token_sink,
)

__all__ = [
    "CANCELLABLE_KINDS", "CANCELLED", "FAILED", "LOCAL_SINK", "QUEUED", "QUEUES", "QUEUE_OF", "RUNNING", "STATES",
    "STREAM_PREFIX", "STREAM_TTL_S", "SUCCEEDED", "TASK_BATCH", "TASK_BATCH_ITEM", "TASK_DELETE", "TASK_INGEST",
    "TASK_QUESTION", "TASK_REINDEX", "CeleryDispatcher", "Dispatcher", "Job", "JobStore", "LocalDispatcher",
    "LocalTokenSink", "RedisTokenSink", "TokenSink", "doc_id_for", "error_dict", "get_jobs", "make_dispatcher",
    "new_id", "question_from", "read_upload", "run_batch", "run_batch_item", "run_delete", "run_ingest",
    "run_question", "run_reindex", "save_upload", "token_sink", "validate_question", "worker_id",
]
