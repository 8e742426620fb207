"""The recommender API of case study 6.4.

    app = create_app(recommender)          # an lm4f.recsys.Recommender
    server = lm4f.serving.start(app)
    httpx.post(server.url + "/recommend", json={"user_id": 42, "k": 10})
    httpx.post(server.url + "/recommend", json={"history": [50, 172, 181], "k": 5})
    httpx.get(server.url + "/popular", params={"k": 5})

Exactly one of ``user_id`` or ``history`` per request. A registered user without behaviour gets
the popularity fallback (``"strategy": "popularity"``). A model trained on interactions of your own
(``python -m lm4f.train movies --ratings-csv ...``) takes and returns your ids, as text:
``{"user_id": "user-17"}``, ``{"history": ["film-3", "film-8"]}``; its items' titles are their ids.
A saved model (``python -m lm4f.train movies``) is served with ``python -m lm4f.serve movies``.
Requests are typed by Pydantic models; bad input gets a 4xx whose ``detail`` says how to fix it
(422 for a malformed request, 404 for an unknown user, 422 for unknown movie ids). Health,
readiness, metrics, the request log, the body limit and the error schema come from
``lm4f.apps.service``.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import FastAPI, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from lm4f.apps.service import ServiceError, create_service

MAX_K = 100
MAX_HISTORY = 2000  # the most active MovieLens-100K user rated 737 movies
MAX_BODY_BYTES = 64 * 1024
EXAMPLES = {"/recommend": '{"user_id": 42, "k": 10} or {"history": [50, 172, 181], "k": 5}'}


class _Request(BaseModel):
    """What both request types share: ``k``, a non-empty history, exactly one of user_id and history."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description=f"how many movies to return (1..{MAX_K})")

    @field_validator("history", check_fields=False)
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


class RecommendRequest(_Request):
    """A request to the MovieLens model: integer ids."""

    user_id: int | None = Field(None, strict=True, description="a known MovieLens user id (1..943)")
    history: Annotated[list[Annotated[int, Field(strict=True)]], Field(max_length=MAX_HISTORY)] | None = Field(
        None, description="movie ids the visitor watched, oldest first")


def _as_text(value):
    """Your ids are text; a whole number sent for one (``17`` for ``"17"``) is taken as its digits."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


OwnId = Annotated[str, BeforeValidator(_as_text), StringConstraints(min_length=1, max_length=200, strict=True)]


class OwnIdsRequest(_Request):
    """A request to a model trained on interactions of your own: your ids, as text."""

    user_id: OwnId | None = Field(None, description="one of your user ids, as in the training file")
    history: Annotated[list[OwnId], Field(max_length=MAX_HISTORY)] | None = Field(
        None, description="your item ids the visitor interacted with, oldest first")


class Movie(BaseModel):
    movie_id: int | str = Field(description="MovieLens movie id, or your item id")
    title: str
    score: float


class RecommendResponse(BaseModel):
    user_id: int | str | None
    strategy: str
    items: list[Movie]


def create_app(recommender, max_body_bytes: int = MAX_BODY_BYTES, about: dict | None = None) -> FastAPI:
    """A FastAPI app serving ``recommender`` (see ``lm4f.recsys.Recommender``).

    ``about`` (e.g. ``SavedModel.about()``) is what ``/ready`` reports about the model.
    """
    own_ids = getattr(recommender, "string_ids", False)
    valid_items = set(recommender.external_items()) if own_ids else set(recommender.titles)
    Request = OwnIdsRequest if own_ids else RecommendRequest
    examples = EXAMPLES
    if own_ids:  # an example in the model's own ids
        user, items = sorted(recommender.known_users)[0], recommender.external_items()[:2]
        examples = {"/recommend": f'{{"user_id": "{user}", "k": 10}} or {{"history": {json.dumps(items)}, "k": 5}}'}

    def movies(pairs) -> list[Movie]:
        return [Movie(movie_id=recommender.to_external(item) if own_ids else item,
                      title=recommender.titles.get(item, "?"), score=round(score, 4)) for item, score in pairs]

    app = create_service(
        "Movie recommender (lm4f case study 6.4)", description="Top-k unseen movies for a user or a history.",
        max_body_bytes=max_body_bytes, examples=examples, about=about,
        info=lambda: {"model": recommender.name, "items": len(valid_items)},
        warmup=lambda: recommender.for_history(sorted(recommender.titles)[:3], 10),
        body_advice=f"Send a user_id or a history of movie ids, e.g. {examples['/recommend'].split(' or ')[0]}.")

    def known_ids(ids, what: str) -> str:
        if own_ids:
            shown = ", ".join(repr(i) for i in sorted(ids)[:3])
            return f"This model knows {len(ids):,} {what}, e.g. {shown}"
        return f"Known ids run from {min(ids)} to {max(ids)}"

    @app.get("/popular", response_model=RecommendResponse)
    async def popular(k: int = Query(10, ge=1, le=MAX_K, description=f"how many movies to return (1..{MAX_K})")):
        return RecommendResponse(user_id=None, strategy="popularity", items=movies(recommender.popular(k)))

    # One forward pass of the small sequence model takes one to two milliseconds: the route runs on the event loop,
    # since a worker thread's hand-off and GIL contention would cost more than the model.
    async def recommend(request):
        if request.user_id is not None:
            if request.user_id not in recommender.known_users:
                shown = repr(request.user_id) if own_ids else request.user_id
                raise ServiceError(404, f"Unknown user_id {shown}. {known_ids(recommender.known_users, 'users')}; "
                                        'for a new visitor send "history" or call GET /popular.', code="unknown_user")
            strategy, pairs = recommender.for_user(request.user_id, request.k)
            return RecommendResponse(user_id=request.user_id, strategy=strategy, items=movies(pairs))
        unknown = sorted(set(request.history) - valid_items)
        if unknown:
            if own_ids:
                detail = f"Unknown item ids in history: {unknown[:10]}. {known_ids(valid_items, 'items')}."
            else:
                detail = (f"Unknown movie ids in history: {unknown[:10]}. Movie ids run from "
                          f"{min(valid_items)} to {max(valid_items)}.")
            raise ServiceError(422, detail, code="unknown_item")
        history = recommender.to_internal(request.history) if own_ids else request.history
        strategy, pairs = recommender.for_history(history, request.k)
        return RecommendResponse(user_id=None, strategy=strategy, items=movies(pairs))

    recommend.__annotations__["request"] = Request  # the request type of this model's ids, for FastAPI
    app.post("/recommend", response_model=RecommendResponse)(recommend)

    return app
