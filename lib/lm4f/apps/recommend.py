"""The recommender API of case study 6.4.

    app = create_app(recommender)          # an lm4f.recsys.Recommender
    server = lm4f.serving.start(app)
    httpx.post(server.url + "/recommend", json={"user_id": 42, "k": 10})
    httpx.post(server.url + "/recommend", json={"history": [50, 172, 181], "k": 5})
    httpx.get(server.url + "/popular", params={"k": 5})

Exactly one of ``user_id`` or ``history`` per request. A registered user without behaviour gets
the popularity fallback (``"strategy": "popularity"``). A saved model (``python -m lm4f.train
movies``) is served with ``python -m lm4f.serve movies``. Requests are typed by Pydantic models;
bad input gets a 4xx whose ``detail`` says how to fix it (422 for a malformed request, 404 for an
unknown user, 422 for unknown movie ids). Health, readiness, metrics, the request log, the body
limit and the error schema come from ``lm4f.apps.service``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lm4f.apps.service import ServiceError, create_service

MAX_K = 100
MAX_HISTORY = 2000  # the most active MovieLens-100K user rated 737 movies
MAX_BODY_BYTES = 64 * 1024
EXAMPLES = {"/recommend": '{"user_id": 42, "k": 10} or {"history": [50, 172, 181], "k": 5}'}


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int | None = Field(None, strict=True, description="a known MovieLens user id (1..943)")
    history: Annotated[list[Annotated[int, Field(strict=True)]], Field(max_length=MAX_HISTORY)] | None = Field(
        None, description="movie ids the visitor watched, oldest first")
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description=f"how many movies to return (1..{MAX_K})")

    @field_validator("history")
    @classmethod
    def not_empty(cls, history):
        if history is not None and not history:
            raise ValueError('"history" is empty: send at least one movie id, '
                             "or call GET /popular for a visitor with no history")
        return history

    @model_validator(mode="after")
    def exactly_one(self):
        if (self.user_id is None) == (self.history is None):
            raise ValueError('send exactly one of "user_id" (a known user) or "history" (a list of movie ids)')
        return self


class Movie(BaseModel):
    movie_id: int
    title: str
    score: float


class RecommendResponse(BaseModel):
    user_id: int | None
    strategy: str
    items: list[Movie]


def create_app(recommender, max_body_bytes: int = MAX_BODY_BYTES, about: dict | None = None) -> FastAPI:
    """A FastAPI app serving ``recommender`` (see ``lm4f.recsys.Recommender``).

    ``about`` (e.g. ``SavedModel.about()``) is what ``/ready`` reports about the model.
    """
    valid_items = set(recommender.titles)

    def movies(pairs) -> list[Movie]:
        return [Movie(movie_id=item, title=recommender.titles.get(item, "?"), score=round(score, 4))
                for item, score in pairs]

    app = create_service(
        "Movie recommender (lm4f case study 6.4)", description="Top-k unseen movies for a user or a history.",
        max_body_bytes=max_body_bytes, examples=EXAMPLES, about=about,
        info=lambda: {"model": recommender.name, "items": len(valid_items)},
        warmup=lambda: recommender.for_history(sorted(valid_items)[:3], 10),
        body_advice='Send a user_id or a history of movie ids, e.g. {"user_id": 42, "k": 10}.')

    @app.get("/popular", response_model=RecommendResponse)
    def popular(k: int = Query(10, ge=1, le=MAX_K, description=f"how many movies to return (1..{MAX_K})")):
        return RecommendResponse(user_id=None, strategy="popularity", items=movies(recommender.popular(k)))

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(request: RecommendRequest):
        if request.user_id is not None:
            if request.user_id not in recommender.known_users:
                raise ServiceError(404, f"Unknown user_id {request.user_id}. Known ids run from "
                                        f"{min(recommender.known_users)} to {max(recommender.known_users)}; "
                                        'for a new visitor send "history" or call GET /popular.', code="unknown_user")
            strategy, pairs = recommender.for_user(request.user_id, request.k)
            return RecommendResponse(user_id=request.user_id, strategy=strategy, items=movies(pairs))
        unknown = sorted(set(request.history) - valid_items)
        if unknown:
            raise ServiceError(422, f"Unknown movie ids in history: {unknown[:10]}. Movie ids run from "
                                    f"{min(valid_items)} to {max(valid_items)}.", code="unknown_item")
        strategy, pairs = recommender.for_history(request.history, request.k)
        return RecommendResponse(user_id=None, strategy=strategy, items=movies(pairs))

    return app
