"""The recommender API of case study 6.4.

    app = create_app(recommender)          # an lm4f.recsys.Recommender
    server = lm4f.serving.start(app)
    httpx.post(server.url + "/recommend", json={"user_id": 42, "k": 10})
    httpx.post(server.url + "/recommend", json={"history": [50, 172, 181], "k": 5})
    httpx.get(server.url + "/popular", params={"k": 5})

Exactly one of ``user_id`` or ``history`` per request. A registered user without behaviour gets
the popularity fallback (``"strategy": "popularity"``). Bad input gets a 4xx whose ``detail`` says
how to fix it.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

MAX_K = 100


class RecommendRequest(BaseModel):
    user_id: int | None = Field(None, description="a known MovieLens user id (1..943)")
    history: list[int] | None = Field(None, description="movie ids the visitor watched, oldest first")
    k: int = Field(10, description=f"how many movies to return (1..{MAX_K})")


class Movie(BaseModel):
    movie_id: int
    title: str
    score: float


class RecommendResponse(BaseModel):
    user_id: int | None
    strategy: str
    items: list[Movie]


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise HTTPException(422, f"k must be between 1 and {MAX_K}, got {k}.")


def create_app(recommender) -> FastAPI:
    """A FastAPI app serving ``recommender`` (see ``lm4f.recsys.Recommender``)."""
    app = FastAPI(title="Movie recommender (lm4f case study 6.4)")
    valid_items = set(recommender.titles)

    def movies(pairs) -> list[Movie]:
        return [Movie(movie_id=item, title=recommender.titles.get(item, "?"), score=round(score, 4))
                for item, score in pairs]

    @app.get("/health")
    def health():
        return {"status": "ok", "model": recommender.name, "items": len(valid_items)}

    @app.get("/popular", response_model=RecommendResponse)
    def popular(k: int = Query(10)):
        _check_k(k)
        return RecommendResponse(user_id=None, strategy="popularity", items=movies(recommender.popular(k)))

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(request: RecommendRequest):
        _check_k(request.k)
        if (request.user_id is None) == (request.history is None):
            raise HTTPException(422, 'Send exactly one of "user_id" (a known user) or "history" '
                                     '(a list of movie ids), e.g. {"user_id": 42, "k": 10}.')
        if request.user_id is not None:
            if request.user_id not in recommender.known_users:
                raise HTTPException(404, f"Unknown user_id {request.user_id}. Known ids run from "
                                         f"{min(recommender.known_users)} to {max(recommender.known_users)}; "
                                         'for a new visitor send "history" or call GET /popular.')
            strategy, pairs = recommender.for_user(request.user_id, request.k)
            return RecommendResponse(user_id=request.user_id, strategy=strategy, items=movies(pairs))
        if not request.history:
            raise HTTPException(422, '"history" is empty: send at least one movie id, '
                                     "or call GET /popular for a visitor with no history.")
        unknown = sorted(set(request.history) - valid_items)
        if unknown:
            raise HTTPException(422, f"Unknown movie ids in history: {unknown[:10]}. "
                                     f"Movie ids run from {min(valid_items)} to {max(valid_items)}.")
        strategy, pairs = recommender.for_history(request.history, request.k)
        return RecommendResponse(user_id=None, strategy=strategy, items=movies(pairs))

    return app
