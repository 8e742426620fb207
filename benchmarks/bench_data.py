"""How long the verified loaders take (sha256 of the decompressed content included)."""

import time

import lm4f.data as data


def _best_of(function, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def run():
    loaders = {
        "fashion_mnist train load": lambda: data.fashion_mnist("train"),
        "movielens_100k load": data.movielens_100k,
        "clothing_reviews load": data.clothing_reviews,
        "minilm_path check": data.minilm_path,
    }
    return [{"metric": name, "value": _best_of(loader) * 1000, "unit": "ms (best of 3)"}
            for name, loader in loaders.items()]
