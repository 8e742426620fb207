"""How long the verified loaders take (sha256 of the decompressed content included)."""

from timing import best_of

import lm4f.data as data




def run():
    loaders = {
        "fashion_mnist train load": lambda: data.fashion_mnist("train"),
        "movielens_100k load": data.movielens_100k,
        "clothing_reviews load": data.clothing_reviews,
        "minilm_path check": data.minilm_path,
    }
    return [{"metric": name, "value": best_of(loader) * 1000, "unit": "ms (best of 3)"}
            for name, loader in loaders.items()]
