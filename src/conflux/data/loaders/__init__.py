"""Loaders from real data files (or hub datasets when online) to the canonical pair table.

Every loader reads its whole input, checks it, and returns in-memory tables; it writes nothing. The caller
writes outputs atomically (:func:`conflux.data.pairs.write_pairs`), so a bad row never leaves a partial file.
Every problem with the input is a :class:`conflux.errors.DataError` naming the file, the row and the field.
"""

from conflux.data.loaders.canonical import load_canonical
from conflux.data.loaders.helpsteer import load_helpsteer2
from conflux.data.loaders.persona import read_dialogue
from conflux.data.loaders.pku import load_pku_saferlhf
from conflux.data.loaders.records import read_records
from conflux.data.loaders.result import LoadResult

__all__ = [
    "LoadResult",
    "load_canonical",
    "load_helpsteer2",
    "load_pku_saferlhf",
    "read_dialogue",
    "read_records",
]
