"""The defaults and limits that a command's help text states, named once: the code and the `--help` both read them
here, so what the help says is what the code does. Light on purpose (no imports): the CLI reads it before anything
heavy is imported.
"""

BATCH_SIZE = 32  # rows in one forward pass when a command scores (predict, evaluate, explain)
CHUNK_ROWS = 10_000  # rows read, cleaned, scored and written at a time: memory follows this, not the table's size
VALID_FRACTION = 0.2  # the stratified share of a table held out (training's validation rows, the trees' scored rows)
# the stratified share of a table kept aside as test rows: no choice (checkpoint, decision rule, prompt fields) is made
# on them, so the figures `--held-out` reports there are not optimistic (issue 27 item 5)
TEST_FRACTION = 0.1
SPLIT_SEED = 0

# the service (`korllama serve`)
MAX_BATCH = 64  # applicants scored in one forward pass
MAX_WAIT_MS = 10.0  # how long the first pending request waits for others to batch with
MAX_APPLICANTS = 1024  # applicants in one request
MAX_JOBS = 4  # files the page takes at once (waiting or being graded); one more is a 429
MAX_DISK_MB = 1024  # uploads and graded files on disk together; past it an upload is a 429
HEADER_TIMEOUT_S = 10.0  # seconds a client has to send a request's headers
