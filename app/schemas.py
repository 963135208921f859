"""Request and response models (they become the OpenAPI schema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Path
from pydantic import BaseModel, Field

from index.store import MAX_ID, MAX_LABEL_CHARS, ImageRecord

if TYPE_CHECKING:
    from model.predictor import Predictor

# A stored image's id in a path: the store's ids are positive 64-bit integers (index/store.py)
ImageId = Annotated[int, Path(ge=1, le=MAX_ID, description="id of a stored image")]


class ModelInfo(BaseModel):
    architecture: str
    weights_hash: str = Field(description="SHA-256 of the weights' tensors")
    num_classes: int

    @classmethod
    def of(cls, predictor: Predictor) -> ModelInfo:
        return cls(architecture=predictor.meta.architecture, weights_hash=predictor.weights_hash, num_classes=predictor.meta.num_classes)


class Prediction(BaseModel):
    index: int = Field(description="class index")
    label: str
    probability: float = Field(ge=0, le=1)


FAMILIARITY = (
    "how familiar the picture is to the model: the share of held-out training images less familiar than it, by deep "
    "nearest neighbours over conv1, conv3 and fc7 (0.5: a typical training image; near 0: unlike anything the model "
    "was trained on); null where the weights carry no familiarity score, and for a stored image's query (GET /similar/{id})"
)
FAMILIAR = "false: the picture is unlike the model's training images and its labels mean little; null where familiarity is null"


class Familiarity(BaseModel):
    familiarity: float | None = Field(None, ge=0, le=1, description=FAMILIARITY)
    familiar: bool | None = Field(None, description=FAMILIAR)


class ClassifyResult(Familiarity):
    filename: str | None
    predictions: list[Prediction] = Field(description="top-k, most probable first (probabilities at the fitted temperature)")


class ClassifyResponse(BaseModel):
    model: ModelInfo
    ten_crop: bool
    results: list[ClassifyResult]


class SimilarHit(BaseModel):
    id: int
    score: float = Field(ge=-1, le=1, description="cosine similarity of fc7 vectors")
    label: str | None = Field(description="null while the gallery's store cannot be reached")
    source: str | None
    image_url: str
    meta_url: str

    @classmethod
    def of(cls, image_id: int, score: float, record: ImageRecord | None) -> SimilarHit:
        return cls(
            id=image_id,
            score=min(1.0, max(-1.0, score)),
            label=record.label if record else None,
            source=record.source if record else None,
            image_url=f"/images/{image_id}",
            meta_url=f"/images/{image_id}/meta",
        )


class SimilarQuery(Familiarity):
    filename: str | None = Field(description="the uploaded file's name (null for a stored image)")
    count: int
    results: list[SimilarHit] = Field(description="most similar first")
    predictions: list[Prediction] = Field(default_factory=list, description="the query's top-5 labels (uploads only)")


class SimilarResponse(BaseModel):
    model: ModelInfo
    count: int = Field(description="hits for the first (or only) query")
    results: list[SimilarHit] = Field(description="the first (or only) query's hits, most similar first")
    queries: list[SimilarQuery] = Field(description="one entry per query image, in upload order")


class AddedImage(BaseModel):
    id: int
    filename: str | None
    created: bool = Field(description="false: the same bytes were already stored; the existing id is returned")
    near_duplicate_of: int | None = None
    near_duplicate_score: float | None = None


class AddImagesResponse(BaseModel):
    images: list[AddedImage]


class ImageMeta(BaseModel):
    id: int
    sha256: str
    source: str | None
    label: str | None
    width: int
    height: int
    created_at: float = Field(description="when it was stored: seconds since the Unix epoch")
    image_url: str

    @classmethod
    def of(cls, rec: ImageRecord) -> ImageMeta:
        return cls(
            id=rec.id, sha256=rec.sha256, source=rec.source, label=rec.label, width=rec.width, height=rec.height, created_at=rec.created,
            image_url=f"/images/{rec.id}",
        )  # fmt: skip


class ImageList(BaseModel):
    images: list[ImageMeta] = Field(description="in id order")
    next_after: int | None = Field(description="pass as `after` for the next page; null on the last page")


class LabelUpdate(BaseModel):
    label: str | None = Field(max_length=MAX_LABEL_CHARS, description="the new label; null removes it")


class DeleteResponse(BaseModel):
    id: int
    deleted: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ready, degraded (searches served, the store out of reach or the index behind) or not ready")
    pid: int | None = Field(None, description="the answering process (one of several with --workers)")
    model: ModelInfo | None = None
    index: dict[str, object] | None = None
    weights: dict[str, object] | None = Field(None, description="staged weights' re-embedding progress, and switches made")
    detail: str | None = None


class WeightsState(BaseModel):
    hash: str
    state: str = Field(description="active (served), staged (being re-embedded or ready to switch to) or retired (vectors kept)")
    dim: int
    file_bytes: int
    file_stored: bool
    vectors: int = Field(description="stored images with a vector of these weights")
    images: int


class ModelsResponse(BaseModel):
    serving: str = Field(description="the weights hash this process answers with")
    weights: list[WeightsState]
    comparison: dict[str, object] | None = Field(None, description="active against staged (with ?compare=true)")


class ErrorResponse(BaseModel):
    detail: str
