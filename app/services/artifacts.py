"""Evaluation artifacts: the video of an extra recorded episode and its plans JSON, which a
worker uploads beside an evaluation's scores (docs/worker-protocol.md) and the run and
compare pages show.

A file is checked before it replaces anything: its name says what it is (app.protocol.
ARTIFACT_NAME), a video must be a WebM by its EBML header and plans must match app.protocol.
Plans, so the page never gets a file it cannot play or draw. The body is streamed to a
temporary file beside its final place, counted as it comes (an oversized upload is cut off
without being held in memory), and renamed over the old file in one step: a retried upload
replaces it whole. Files live under <data_dir>/artifacts/<run_id>/, one row each in
`artifacts`; deleting the run removes both (app.services.runs)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from pydantic import BaseModel, ValidationError
from sqlmodel import Session, col, select

from app.models import Artifact, Run, stored_id
from app.protocol import ARTIFACT_NAME, MAX_PLANS_BYTES, Plans
from app.services import NotFound
from app.services.events import now, record_change

ARTIFACTS_DIR = "artifacts"
MEDIA_TYPES = {"video": "video/webm", "plans": "application/json"}
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
DOCTYPE_ID = 0x4282
HEADER_BYTES = 4096
"""Enough of a file to hold its whole EBML header (a few dozen bytes in practice)."""


class Invalid(ValueError):
    """The upload is not an artifact the server keeps (422); `loc` names what is wrong."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class TooLarge(ValueError):
    """The body is over the limit of its kind of artifact (413)."""


ArtifactKind = Literal["video", "plans"]


@dataclass(frozen=True)
class ArtifactName:
    name: str
    variant: str
    eval_kind: str
    step: int
    kind: ArtifactKind

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.kind]


@dataclass(frozen=True)
class Received:
    """An uploaded body on disk, not yet in its place."""

    path: Path
    sha256: str
    size: int


class ArtifactOut(BaseModel):
    """An artifact as the API lists it; `url` serves the file (with range requests)."""

    name: str
    kind: ArtifactKind
    variant: str
    eval_kind: str
    step: int
    size: int
    sha256: str
    created_at: float
    url: str


def parse_name(name: str) -> ArtifactName:
    match = ARTIFACT_NAME.fullmatch(name)
    if match is None:
        raise Invalid(
            ("path", "name"),
            f"{name[:80]!r} is not an artifact name: write it as "
            "<R1|R2>-<final|quick>-<checkpoint step>.<webm|plans.json>, e.g. R1-final-1000000.webm",
        )
    variant, eval_kind, step, ext = match.groups()
    return ArtifactName(name, variant, eval_kind, int(step), "video" if ext == "webm" else "plans")


def check_media_type(parsed: ArtifactName, content_type: str | None) -> None:
    """The declared type must be the name's, so a client never stores what it did not mean to."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared != parsed.media_type:
        raise Invalid(
            ("header", "content-type"),
            f"{parsed.name} must be sent as Content-Type: {parsed.media_type}, not {declared or 'none'}",
        )


def size_limit(parsed: ArtifactName, max_body_bytes: int) -> int:
    return max_body_bytes if parsed.kind == "video" else min(MAX_PLANS_BYTES, max_body_bytes)


def check_length(parsed: ArtifactName, content_length: str | None, limit: int) -> None:
    """Refuse a declared oversized body before a byte of it is read."""
    if content_length and content_length.isdigit() and int(content_length) > limit:
        raise TooLarge(too_large(parsed, limit))


def too_large(parsed: ArtifactName, limit: int) -> str:
    return f"{parsed.name} is over the {limit / 2**20:g} MiB a {parsed.kind} artifact may have"


def run_dir(data_dir: Path, run_id: int) -> Path:
    return data_dir / ARTIFACTS_DIR / str(run_id)


async def receive(chunks: AsyncIterator[bytes], parsed: ArtifactName, folder: Path, limit: int) -> Received:
    """Writes the body to a temporary file in `folder` (removed on any error), hashing and
    counting it as it comes: past `limit` the upload stops there (TooLarge)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f".{parsed.name}.", suffix=".tmp")
    path, digest, size = Path(name), hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(too_large(parsed, limit))
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Received(path, digest.hexdigest(), size)


def check_content(parsed: ArtifactName, path: Path) -> None:
    """A video must be WebM, plans must be Plans of the variant and step the name says."""
    if parsed.kind == "video":
        with open(path, "rb") as f:
            _check_webm(f.read(HEADER_BYTES))
    else:
        _check_plans(parsed, path.read_bytes())


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at `pos` and the position after it; element ids
    keep their length marker bit, sizes do not."""
    if pos >= len(data) or data[pos] == 0:
        raise Invalid(("body",), "the EBML header of the video is malformed")
    length = 9 - data[pos].bit_length()
    value = data[pos] if keep_marker else data[pos] & (0xFF >> length)
    for byte in data[pos + 1 : pos + length]:
        value = value << 8 | byte
    return value, pos + length


def _check_webm(head: bytes) -> None:
    if not head.startswith(EBML_MAGIC):
        raise Invalid(("body",), "not a WebM video: it does not start with the EBML magic 1A 45 DF A3")
    size, pos = _vint(head, len(EBML_MAGIC), keep_marker=False)
    end = min(len(head), pos + size)
    while pos < end:
        element, pos = _vint(head, pos, keep_marker=True)
        length, pos = _vint(head, pos, keep_marker=False)
        if element == DOCTYPE_ID:
            doctype = head[pos : pos + length].rstrip(b"\0")
            if doctype != b"webm":
                raise Invalid(("body",), f"not a WebM video: its EBML DocType is {doctype[:20]!r}, not 'webm'")
            return
        pos += length
    raise Invalid(("body",), "not a WebM video: its EBML header declares no DocType")


def _check_plans(parsed: ArtifactName, raw: bytes) -> None:
    try:
        plans = Plans.model_validate_json(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the document"
        raise Invalid(
            ("body", *first["loc"]),
            f"not a plans JSON: {where}: {first['msg']}"
            + (f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""),
        ) from None
    if (plans.variant, plans.checkpoint_step) != (parsed.variant, parsed.step):
        raise Invalid(
            ("body",),
            f"the plans are of {plans.variant} at step {plans.checkpoint_step}, but the "
            f"name {parsed.name} says {parsed.variant} at step {parsed.step}",
        )


def store(session: Session, run: Run, parsed: ArtifactName, received: Received, data_dir: Path) -> Artifact:
    """Upserts the row and moves the file into place, in the run's (fenced) write: a stale
    attempt's upload never reaches the file. The run page hears of it through the stream."""
    row = session.exec(select(Artifact).where(Artifact.run_id == run.id, Artifact.name == parsed.name)).first()
    if row is None:
        row = Artifact(
            run_id=run.id,
            name=parsed.name,
            kind=parsed.kind,
            variant=parsed.variant,
            eval_kind=parsed.eval_kind,
            step=parsed.step,
            size=0,
            sha256="",
            created_at=0.0,
        )
    row.size, row.sha256, row.created_at = received.size, received.sha256, now()
    session.add(row)
    session.flush()
    os.replace(received.path, run_dir(data_dir, stored_id(run)) / parsed.name)
    record_change(session, run.id, "artifact", artifact_out(row, "").model_dump())
    return row


def list_artifacts(session: Session, run_id: int) -> list[Artifact]:
    """Oldest evaluation first, each one's video before its plans."""
    return list(
        session.exec(
            select(Artifact).where(Artifact.run_id == run_id).order_by(col(Artifact.step), col(Artifact.name).desc())
        )
    )


def artifact_out(a: Artifact, root: str) -> ArtifactOut:
    """`root`: the path prefix the server is reached under (app.urls)."""
    return ArtifactOut(
        name=a.name,
        kind=cast(ArtifactKind, a.kind),  # the name it was stored under says which
        variant=a.variant,
        eval_kind=a.eval_kind,
        step=a.step,
        size=a.size,
        sha256=a.sha256,
        created_at=a.created_at,
        url=f"{root}/api/runs/{a.run_id}/artifacts/{a.name}",
    )


def file_of(session: Session, data_dir: Path, run_id: int, name: str) -> tuple[Path, str]:
    """The stored file of a listed artifact and its media type. A restored lab whose backup
    holds no artifact files has the rows without the files: that is a 404 saying so."""
    row = session.exec(select(Artifact).where(Artifact.run_id == run_id, Artifact.name == name)).first()
    if row is None:
        raise NotFound(f"run {run_id} has no artifact {name[:80]!r}")
    path = run_dir(data_dir, run_id) / row.name
    if not path.is_file():
        raise NotFound(
            f"the file of artifact {row.name} is not on this server (a restored lab whose state backup did not hold it)"
        )
    return path, MEDIA_TYPES[row.kind]


def newest_final_videos(session: Session, run_ids: list[int]) -> dict[int, list[Artifact]]:
    """Per run, the video of its newest final evaluation of each variant (R1 before R2),
    what the compare page shows side by side."""
    rows = session.exec(
        select(Artifact)
        .where(col(Artifact.run_id).in_(run_ids), Artifact.kind == "video", Artifact.eval_kind == "final")
        .order_by(col(Artifact.run_id), col(Artifact.variant), col(Artifact.step).desc())
    )
    out: dict[int, list[Artifact]] = {}
    for row in rows:
        picked = out.setdefault(row.run_id, [])
        if all(p.variant != row.variant for p in picked):
            picked.append(row)
    return out
