"""Path and query parameters (and body fields) shared by the routes, each bounded at the edge: an integer
the database cannot hold would otherwise reach a query and fail there (a 500); here it
is a 422 naming the parameter."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import Field

from app.protocol import MAX_INT, SHORT_TEXT
from app.services.runs import MAX_TAG_LENGTH, MAX_TAGS

RunId = Annotated[int, Path(ge=1, le=MAX_INT, description="the run's id")]
CommandId = Annotated[int, Path(ge=1, le=MAX_INT, description="the command's id")]
Step = Annotated[int, Path(ge=0, le=MAX_INT, description="the checkpoint's training step")]
WorkerId = Annotated[str, Path(min_length=1, max_length=SHORT_TEXT, description="the id /workers/register gave")]
Since = Annotated[int, Query(ge=0, le=MAX_INT, description="only what came after this id")]
Tags = Annotated[
    list[Annotated[str, Field(max_length=MAX_TAG_LENGTH, pattern=r"^[^,]*$")]],
    Field(max_length=MAX_TAGS, description="the run's tags (no commas; trimmed, repeats dropped)"),
]
"""A run's tags in a body, bounded alike wherever a run gets them (creation, PATCH)."""
MaxPoints = Annotated[int, Query(ge=4, le=200_000, description="points per series at most (min/max downsampled)")]
"""Of a chart's data as a table (CSV or JSON), a run's or the compared runs'."""
ChartFormat = Literal["csv", "json"]
