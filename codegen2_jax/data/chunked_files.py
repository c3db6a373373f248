"""A Python file reader as a tf.data dataset whose position saves and restores.

tf.data cannot checkpoint Python-side state: a pipeline over ``from_generator`` or
``py_function`` fails at its first save ("PyFunc is stateful"). Here a file's documents are
read in chunks instead: chunk i holds documents [i * chunk_size, (i + 1) * chunk_size) of
the file's document stream, a pure function of (path, i) computed by a stateless
``tf.numpy_function``. The iterator's state is then plain tf.data state (the chunk index and
the document within the chunk), and a restore reads its current chunk again.

Reading in order keeps one open reader per file, so each file is parsed once; a chunk asked
out of order (the first one after a restore) reopens the file and skips to it. Counters kept
by the reader see the skipped documents again.
"""

import collections
import itertools
import threading
from collections.abc import Callable, Generator, Mapping, Sequence

import numpy as np
import tensorflow as tf

Documents = Callable[[str], Generator[Mapping[str, str], None, None]]


class ChunkedFiles:
    """Turns ``documents(path)`` into per-file datasets that tf.data can checkpoint.

    Args:
      documents: a generator of the documents of one file, in a deterministic order; every
        document has the string fields ``fields``.
      fields: the field names, in the order the datasets carry them.
      chunk_size: documents per chunk (per call into Python).
      max_open: readers kept open at once (files read in parallel by an interleave).
    """

    def __init__(
        self,
        documents: Documents,
        fields: Sequence[str],
        *,
        chunk_size: int = 256,
        max_open: int = 64,
    ):
        self._documents = documents
        self._fields = tuple(fields)
        self._chunk_size = chunk_size
        self._max_open = max_open
        # path -> (next chunk index, the file's documents from that chunk on; None when done)
        self._open: collections.OrderedDict[str, tuple[int, Generator | None]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def dataset(self, path: tf.Tensor) -> tf.data.Dataset:
        """The documents of one file: {field: tf.string scalar}."""
        chunks = tf.data.Dataset.counter().map(lambda index: self._chunk_op(path, index))
        return chunks.take_while(lambda chunk: tf.size(chunk[self._fields[0]]) > 0).unbatch()

    def _chunk_op(self, path: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
        columns = tf.numpy_function(
            self.chunk,
            [path, index],
            [tf.string] * len(self._fields),
            stateful=False,  # A pure function of its inputs: that is what makes it saveable.
        )
        return {
            name: tf.ensure_shape(column, [None])
            for name, column in zip(self._fields, columns, strict=True)
        }

    def chunk(self, path: bytes | str, index: int) -> list[np.ndarray]:
        """Chunk ``index`` of a file, one object array of UTF-8 bytes per field."""
        path = path.decode("utf-8") if isinstance(path, bytes) else path
        index = int(index)
        documents = self._take_reader(path, index)
        done = documents is None
        chunk = [] if done else list(itertools.islice(documents, self._chunk_size))
        if not done and len(chunk) < self._chunk_size:
            documents.close()  # The file is done: close it now, not at garbage collection.
            documents = None  # Remembered as done, so the empty chunk after it reads nothing.
        self._put_reader(path, index + 1, documents)
        return [
            np.array([document[name].encode("utf-8") for document in chunk], dtype=object)
            for name in self._fields
        ]

    def _take_reader(self, path: str, index: int) -> Generator | None:
        """The file's documents from chunk ``index`` on; None for a file read to its end.

        Taking the reader out of the table makes this call its only user (tf.data may call
        from several threads).
        """
        with self._lock:
            next_index, documents = self._open.pop(path, (None, None))
        if next_index == index:
            return documents
        if documents is not None:
            documents.close()
        documents = self._documents(path)
        for _ in itertools.islice(documents, index * self._chunk_size):
            pass
        return documents

    def _put_reader(self, path: str, next_index: int, documents: Generator | None) -> None:
        with self._lock:
            stale = [self._open.pop(path, (None, None))[1]]
            self._open[path] = (next_index, documents)
            while len(self._open) > self._max_open:
                stale.append(self._open.popitem(last=False)[1][1])
        for reader in stale:
            if reader is not None:
                reader.close()
