"""Keras callbacks of tf_hps."""

from __future__ import annotations

import keras
import numpy as np

from tf_hps.updates import UpdatePublisher


class PublishChangedRows(keras.callbacks.Callback):
    """Publishes the rows of a training ``Embedding`` that changed, to running servers.

    Every ``every_n_steps`` training batches, and at the end of training, it
    compares the layer's table with the one it last published, publishes the
    rows that differ, and flushes.

    Args:
        publisher: an ``UpdatePublisher``.
        model_name, table_name: where the rows go (as in ``UpdatePublisher.publish``).
        embedding: a ``keras.layers.Embedding`` (or any layer whose first
            weight is the (rows, dim) table).
        every_n_steps: how often to publish.
        keys: the key of each row (default: row i has key i).

    Example:
        >>> callback = PublishChangedRows(publisher, "foo", "sparse_embedding0", model.layers[1])  # doctest: +SKIP
        >>> model.fit(x, y, callbacks=[callback])                                                # doctest: +SKIP
    """

    def __init__(self, publisher: UpdatePublisher, model_name: str, table_name, embedding, every_n_steps: int = 100,
                 keys=None):
        super().__init__()
        if not isinstance(every_n_steps, int) or isinstance(every_n_steps, bool) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        if not getattr(embedding, "weights", None):
            raise ValueError("embedding must be a built layer with a (rows, dim) table as its first weight")
        self.publisher = publisher
        self.model_name = model_name
        self.table_name = table_name
        self.embedding = embedding
        self.every_n_steps = every_n_steps
        self.keys = None if keys is None else np.asarray(keys)
        self.rows_published = 0
        self._steps = 0
        self._last: np.ndarray | None = None

    def _table(self) -> np.ndarray:
        return np.array(keras.ops.convert_to_numpy(self.embedding.weights[0]), np.float32)

    def publish_now(self) -> int:
        """Publishes the rows changed since the last call; returns how many."""
        table = self._table()
        if self._last is None or self._last.shape != table.shape:
            changed = np.arange(table.shape[0])
        else:
            changed = np.flatnonzero((table != self._last).any(axis=1))
        if changed.size:
            keys = changed if self.keys is None else self.keys[changed]
            self.publisher.publish(self.model_name, self.table_name, keys, table[changed])
            self.publisher.flush()
            self.rows_published += int(changed.size)
        self._last = table
        return int(changed.size)

    def on_train_begin(self, logs=None):
        if self._last is None:
            self._last = self._table()

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self._steps % self.every_n_steps == 0:
            self.publish_now()

    def on_train_end(self, logs=None):
        self.publish_now()
