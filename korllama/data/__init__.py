"""Tables in: read a file (read.py) or stream it in chunks (stream.py), clean it against its spec (clean.py), as
a Table (table.py)."""

from korllama.data.clean import DataWarning, clean
from korllama.data.read import as_table, read_table, sniff
from korllama.data.stream import TableChunks, table_chunks
from korllama.data.table import Split, Table, duplicate_ids, profile, smallest_split, split

__all__ = ["DataWarning", "Split", "Table", "TableChunks", "as_table", "clean", "duplicate_ids", "profile",
           "read_table", "smallest_split", "sniff", "split", "table_chunks"]
