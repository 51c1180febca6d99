"""The page's file jobs (korllama.serve.page, POST /page/jobs): an upload graded by `predict_file`, the chunked path
`korllama predict` uses, one at a time on a worker thread with the model the service already holds.

What an applicant sent is not left behind: each job has its own folder in one temporary folder (korllama-page-*);
the upload is deleted once graded or failed, the graded file (formulas neutralised by predict_file) when its job
is deleted (DELETE /page/jobs/{id}), an hour after it is done or when JOBS_KEPT newer ones are, and everything when
the service stops (its lifespan calls `close`, on SIGTERM as on Ctrl-C). Files waiting or being graded and bytes on
disk are capped (`Limits`): past a cap an upload is a 429 with a sentence.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
import time
import traceback
import uuid
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import HTTPException

from korllama.defaults import MAX_DISK_MB, MAX_JOBS
from korllama.errors import KorllamaError
from korllama.predict import predict_file
from korllama.run import Run

JOBS_KEPT = 8  # finished jobs whose graded files are kept for download; older ones are deleted
MAX_DISK_BYTES = MAX_DISK_MB * 2**20
KEEP_S = 3600  # a graded file is deleted this long after it is done


@dataclass(frozen=True)
class Limits:
    """What the page's file jobs may hold: `korllama serve --max-jobs --max-disk-mb` set the first two."""

    max_jobs: int = MAX_JOBS
    max_disk_bytes: int = MAX_DISK_BYTES
    keep_s: float = KEEP_S


def size_text(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n:,} bytes"


class Cancelled(Exception):
    """Raised in the grading thread (from its progress callback) when the job was cancelled or the service stops."""


@dataclass
class Job:
    id: str
    name: str
    folder: Path
    proba: bool
    status: str = "queued"  # queued, checking, grading, done, failed, cancelled
    done: int = 0
    total: int = 0
    error: str | None = None
    result: dict = field(default_factory=dict)
    bytes: int = 0  # on disk: the upload, then the graded file
    finished: float | None = None  # time.monotonic() when done or failed
    future: Future | None = None

    path = property(lambda self: self.folder / self.name)
    out = property(lambda self: self.folder / "graded.csv")
    active = property(lambda self: self.status in ("queued", "checking", "grading"))

    def state(self) -> dict:
        return {"id": self.id, "name": self.name, "status": self.status, "done": self.done, "total": self.total,
                "error": self.error} | {k: self.result.get(k) for k in ("rows", "counts", "seconds", "warnings")}


class Jobs:
    """Uploaded files graded one at a time on a worker thread by `predict_file`, each in its own temporary folder
    (named as uploaded, so that error sentences name the user's file, as the CLI's do), within `limits`."""

    def __init__(self, run: Run, decision: str, batch_size: int, limits: Limits):
        self.run, self.decision, self.batch_size, self.limits = run, decision, batch_size, limits
        self.root = Path(tempfile.mkdtemp(prefix="korllama-page-"))
        # the service's lifespan calls close() (SIGINT and SIGTERM alike: uvicorn re-raises the signal after it, so
        # no finalizer would run); this is for an app that never started or stopped
        weakref.finalize(self, shutil.rmtree, self.root, True)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="korllama-page")

    def new(self, name: str, proba: bool, declared: int = 0) -> Job:
        """A job for an upload of `declared` bytes (0: not said), or a 429 when the page holds too much already."""
        name = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]", "_", Path(name.strip()).name).strip(". ")[:120] or "upload.csv"
        self.sweep()
        with self.lock:
            waiting = sum(j.active for j in self.jobs.values())
            if waiting >= self.limits.max_jobs:
                raise HTTPException(429, f"{waiting} files are waiting or being graded, the most this service "
                                         "takes at once; try again when one is done")
            self._room(declared)
            job = Job(uuid.uuid4().hex, name if name != "graded.csv" else "graded-input.csv",
                      Path(tempfile.mkdtemp(dir=self.root)), proba)
            self.jobs[job.id] = job
        return job

    def _room(self, more: int) -> None:
        held = sum(j.bytes for j in self.jobs.values())
        if held + more > self.limits.max_disk_bytes:
            raise HTTPException(429, f"this service holds {size_text(held)} of files being graded or waiting to be "
                                     f"downloaded, and its limit is {size_text(self.limits.max_disk_bytes)}; try "
                                     "again later (graded files are deleted an hour after they are done)")

    def grow(self, job: Job, more: int) -> None:
        """Count `more` bytes of the job's upload, or a 429 past the disk cap."""
        with self.lock:
            self._room(more)
            job.bytes += more

    def forget(self, job: Job) -> None:
        """The job and its files, gone."""
        with self.lock:
            self.jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        self.sweep()
        job = self.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no file job {job_id!r} here (a graded file is kept for an hour, for the last "
                                     f"{JOBS_KEPT} files, and not across restarts); upload the file again")
        return job

    def cancel(self, job: Job) -> dict:
        """Stop the job (waiting: it never starts; grading: at its next batch) and delete its files now."""
        if job.future is not None:
            job.future.cancel()
        job.status = "cancelled" if job.active else job.status
        self.forget(job)
        return {"id": job.id, "status": job.status, "deleted": True}

    def sweep(self, now: float | None = None) -> None:
        """Delete the graded files done more than `keep_s` ago, and all but the newest JOBS_KEPT."""
        now = time.monotonic() if now is None else now
        finished = sorted((j for j in list(self.jobs.values()) if j.finished is not None), key=lambda j: j.finished)
        for i, job in enumerate(finished):
            if i < len(finished) - JOBS_KEPT or now - job.finished > self.limits.keep_s:
                self.forget(job)

    async def sweeper(self, every_s: float = 60) -> None:
        """The timer of the service's lifespan: `sweep` once a minute, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            self.sweep()

    def close(self) -> None:
        """Stop: waiting jobs never start, the running one stops at its next batch, every file is deleted."""
        for job in list(self.jobs.values()):
            job.status = "cancelled" if job.active else job.status
        self.worker.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def start(self, job: Job) -> None:
        job.future = self.worker.submit(self.grade, job)

    def grade(self, job: Job) -> None:
        def progress(done: int, total: int) -> None:
            if job.status == "cancelled":
                raise Cancelled()
            job.status, job.done, job.total = "grading", done, total

        if job.status == "cancelled":
            return
        job.status = "checking"
        status, error = "done", None
        try:
            job.result = predict_file(self.run, job.path, job.out, with_proba=job.proba,
                                      batch_size=self.batch_size, decision=self.decision, progress=progress)
        except Cancelled:
            shutil.rmtree(job.folder, ignore_errors=True)
            return
        except KorllamaError as exc:  # the CLI's sentence; a path in it is the temporary folder's: not said
            status, error = "failed", str(exc).replace(f"{job.folder}/", "")
        except Exception as exc:  # a bug: said on the page, the traceback in the service's log
            traceback.print_exc()
            status, error = "failed", f"grading failed unexpectedly ({type(exc).__name__}: {exc})"
        finally:
            job.path.unlink(missing_ok=True)  # what the applicant sent is not kept once graded
        if status == "failed":
            shutil.rmtree(job.folder, ignore_errors=True)
        job.finished = time.monotonic()
        job.bytes = job.out.stat().st_size if status == "done" else 0
        # said last, once its files are as they will stay: a client that sees "done" or "failed" sees them so
        job.error, job.status = error, status
