"""`ahead`: an iterator produced in a thread of its own, a few items ahead of its reader.

Input pipelines tokenize with eager TensorFlow ops: run inside tf.data's own threads (a
`from_generator` body) they can wait forever on the pool the pipeline holds, so they run in a
thread of ours; TensorFlow releases the GIL in its ops, so tokenizing overlaps the reader's
packing, serializing or training.

>>> list(ahead(iter(range(5))))
[0, 1, 2, 3, 4]
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def ahead(items: Iterable[T], size: int = 4, name: str = "ahead") -> Iterator[T]:
    """The items of `items`, produced in a daemon thread at most `size` ahead; an exception
    of the producer is raised to the reader at that point of the stream."""
    q: queue.Queue = queue.Queue(maxsize=size)

    def produce() -> None:
        try:
            for item in items:
                q.put((item, None))
            q.put((_END, None))
        except BaseException as err:  # ends the stream: bad data, or a bug
            q.put((_END, err))

    threading.Thread(target=produce, daemon=True, name=name).start()
    while True:
        item, err = q.get()
        if item is _END:
            if err is not None:
                raise err
            return
        yield item
