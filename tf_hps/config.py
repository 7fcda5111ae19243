"""HPS JSON configuration, read through the op library's parser.

The schema is parsed in C++ only; Python asks the op library for the
canonical form (every key, defaults filled in, absolute paths) and reads
values from that.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


from tf_hps._ops import evaluate, ops
from tf_hps._warn import warn


@dataclass(frozen=True)
class PsConfig:
    """A parsed parameter-server config.

    Attributes:
        path: absolute path of the file it came from.
        canonical_json: self-contained JSON that the init op carries, so a
            SavedModel keeps working after the file is moved or deleted.
        data: ``canonical_json`` as a dict.
    """

    path: str
    canonical_json: str
    data: dict[str, Any]

    def model(self, model_name: str) -> dict[str, Any]:
        """The config of one model; raises ValueError naming the known models."""
        for model in self.data["models"]:
            if model["model"] == model_name:
                return model
        names = ", ".join(repr(m["model"]) for m in self.data["models"])
        raise ValueError(f"model {model_name!r} is not in {self.path} (models: {names})")


def load_config(ps_config_file: str | os.PathLike) -> PsConfig:
    """Parses and validates an HPS config file.

    Unknown keys give one ``UserWarning`` each; a missing required key, a
    wrong type or a bad value raises ``tf.errors.InvalidArgumentError``
    naming the JSON path (e.g. ``models[0].embedding_vecsize_per_table``).

    Example:
        >>> cfg = load_config("ps_config.json")          # doctest: +SKIP
        >>> cfg.model("foo")["embedding_vecsize_per_table"]  # doctest: +SKIP
        [16]
    """
    path = os.path.abspath(os.fspath(ps_config_file))
    # Parsed now, also inside a tf.Graph, a tf.function or TF1 mode (eager execution disabled).
    canonical, warning_list = evaluate(lambda: ops().tf_hps_parse_config(config_file=path))
    for message in warning_list:
        warn(message.decode(), UserWarning)
    text = canonical.decode()
    return PsConfig(path=path, canonical_json=text, data=json.loads(text))
