"""The grading service: schema.py (request and answer types from the spec), errors.py (limits and the sentences of
4xx answers, strict JSON), batching.py (micro-batches on a worker thread), page.py (the analyst page at /, its files in
web/), jobs.py (the page's file jobs, their limits and their clean-up), guard.py (the Host allow-list, security
headers, the header deadline), app.py (`create_app`: the FastAPI app)."""

from korllama.serve.app import create_app
from korllama.serve.schema import applicant_model, example_applicant, result_model

__all__ = ["applicant_model", "create_app", "example_applicant", "result_model"]
