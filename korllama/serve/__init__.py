"""The grading service: schema.py (request and answer types from the spec), errors.py (limits and the sentences of
4xx answers), batching.py (micro-batches on a worker thread), page.py (the analyst page at /, its files in web/),
app.py (`create_app`: the FastAPI app)."""

from korllama.serve.app import create_app
from korllama.serve.schema import applicant_model, example_applicant, result_model

__all__ = ["applicant_model", "create_app", "example_applicant", "result_model"]
