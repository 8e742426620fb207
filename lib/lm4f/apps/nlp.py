"""The customer-review assistant as an HTTP API (case study 6.2).

    app = create_app(classifier, retriever)
    server = lm4f.serving.start(app)
    httpx.post(server.url + "/classify", json={"text": "Runs small, lovely fabric"})
    httpx.post(server.url + "/ask", json={"question": "Is it see-through?", "clothing_id": 1078, "k": 3})

``classifier`` is anything with ``predict_proba(list_of_texts) -> array (N,)`` and a ``threshold``
(e.g. ``lm4f.nlp.TfidfClassifier``; one trained on labels of your own, whose ``labels`` name them,
answers ``{"label", "probabilities"}`` instead of ``{"recommended", "probability", "threshold"}``);
``retriever`` has ``search(question, k, clothing_id)`` and
``products()`` (e.g. ``lm4f.nlp.ReviewRetriever``). A saved model (``python -m lm4f.train reviews``)
is served with ``python -m lm4f.serve reviews``. Every request body is typed by a Pydantic model: a
wrong type, an empty or a too long text, an unknown field or malformed JSON gets a 4xx whose
``detail`` says what to send instead, and the server keeps serving. Health, readiness, metrics,
the request log and the body limit come from ``lm4f.apps.service``.

How much ``/classify`` says is a server setting, ``scores`` (``--scores`` / ``LM4F_SCORES`` of
``python -m lm4f.serve reviews``): ``"full"`` returns probabilities to 4 decimals, ``"rounded"`` to
one decimal, ``"label"`` only the decision. Returned probabilities help a membership-inference
attacker (chapter 8.1.3 measures how much, through this API); fewer digits give them less to work with.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lm4f.apps.service import ServiceError, create_service

MAX_TEXT_CHARS = 5000  # the longest review in the data set has about 500 words (< 3,000 characters)
MAX_K = 20
MAX_BODY_BYTES = 64 * 1024  # a review of 5,000 characters is at most 20 kB of UTF-8
SCORES = ("full", "rounded", "label")  # what /classify reveals: probabilities to 4 decimals, to 1 decimal, or none
WARMUP_TEXT = "Runs a bit small but the fabric is lovely."

EXAMPLES = {
    "/classify": '{"text": "Runs small but the fabric is lovely"}',
    "/ask": '{"question": "Does it run small?", "clothing_id": 1078, "k": 3}',
}


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS,
                                           strict=True)]


class ClassifyResponse(BaseModel):
    """The course's review model answers ``recommended``, ``probability``, ``threshold``; a model trained on
    labels of your own answers ``label`` and ``probabilities`` (and ``threshold`` when it has two labels)."""

    recommended: bool | None = Field(None, description="the course's model: does the reviewer recommend the item")
    probability: float | None = Field(None, description="the course's model: P(the reviewer recommends the item); "
                                                        "4 decimals, 1 with scores='rounded', absent with 'label'")
    threshold: float | None = Field(None, description="decision threshold on P(recommended), or on P(second "
                                                      "label) of a two-label model of your own")
    label: str | None = Field(None, description="a model trained on your own labels: the predicted label")
    probabilities: dict[str, float] | None = Field(None, description="a model trained on your own labels: "
                                                                     "P(label) for each label")


class ReviewAskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500,
                                               strict=True)]
    clothing_id: int | None = Field(default=None, strict=True, description="search only this product's reviews")
    k: int = Field(default=3, ge=1, le=MAX_K, strict=True)


class Answer(BaseModel):
    clothing_id: int
    score: float = Field(description="cosine similarity of question and review, -1 to 1")
    review: str


class ReviewAskResponse(BaseModel):
    question: str
    answers: list[Answer]


def create_app(classifier, retriever=None, title: str = "Customer-review assistant",
               max_body_bytes: int = MAX_BODY_BYTES, about: dict | None = None, scores: str = "full") -> FastAPI:
    """Build the FastAPI app that serves ``/classify`` and ``/ask`` (plus ``lm4f.apps.service``'s routes).

    ``about`` (e.g. ``SavedModel.about()``) is what ``/ready`` reports about the model. ``scores`` is
    what ``/classify`` reveals besides the decision: ``"full"`` (probabilities to 4 decimals),
    ``"rounded"`` (to 1 decimal) or ``"label"`` (no probability at all); ``/health`` reports it.
    """
    if scores not in SCORES:
        raise ValueError(f"scores must be one of {', '.join(SCORES)}, got {scores!r} "
                         "(the --scores option or LM4F_SCORES of python -m lm4f.serve reviews)")
    digits = {"full": 4, "rounded": 1, "label": None}[scores]
    labels = getattr(classifier, "labels", None)  # names of your own labels (lm4f.nlp.TfidfClassifier.labels)

    def warmup():
        (classifier.predict if labels is not None else classifier.predict_proba)([WARMUP_TEXT])
        if retriever is not None:
            retriever.search(WARMUP_TEXT, k=1)

    app = create_service(
        title, description="Classify a review (recommends or not) and find the reviews that answer a question.",
        max_body_bytes=max_body_bytes, examples=EXAMPLES, warmup=warmup, about=about,
        body_advice=f"Send one text of at most {MAX_TEXT_CHARS:,} characters.",
        info=lambda: {"classify": True, "scores": scores, "ask": retriever is not None,
                      "reviews_indexed": 0 if retriever is None else len(retriever.reviews),
                      **({"labels": list(labels)} if labels is not None else {})})

    # TF-IDF and a linear model answer in about a millisecond: the route runs on the event loop, since a worker
    # thread's hand-off and GIL contention would cost more than the model (/ask's MiniLM stays on a thread).
    @app.post("/classify", response_model=ClassifyResponse, response_model_exclude_none=True)
    async def classify(request: ClassifyRequest) -> ClassifyResponse:
        if labels is not None:
            probabilities = classifier.probabilities([request.text])[0]  # (labels,)
            index = int(classifier.predict([request.text])[0])
            return ClassifyResponse(label=labels[index], threshold=classifier.threshold if len(labels) == 2 else None,
                                    probabilities=None if digits is None else
                                    {name: round(float(p), digits) for name, p in zip(labels, probabilities)})
        probability = float(classifier.predict_proba([request.text])[0])
        threshold = float(getattr(classifier, "threshold", 0.5))
        return ClassifyResponse(recommended=probability >= threshold,
                                probability=None if digits is None else round(probability, digits),
                                threshold=threshold)

    @app.post("/ask", response_model=ReviewAskResponse)
    def ask(request: ReviewAskRequest) -> ReviewAskResponse:
        if retriever is None:
            raise ServiceError(503, "/ask is not enabled: create_app was given no retriever.", code="not_enabled")
        if request.clothing_id is not None and request.clothing_id not in set(retriever.products()):
            known = retriever.products()
            more = " ..." if len(known) > 10 else ""
            raise ServiceError(404, f"no reviews indexed for clothing_id {request.clothing_id}; "
                                    f"use one of {known[:10]}{more} or leave clothing_id out")
        hits = retriever.search(request.question, k=request.k, clothing_id=request.clothing_id)
        answers = [Answer(clothing_id=hit["clothing_id"], score=round(hit["score"], 4), review=hit["review"])
                   for hit in hits]
        return ReviewAskResponse(question=request.question, answers=answers)

    return app
