"""FastAPI apps of the case studies (one module per product), served with ``lm4f.serving``."""
