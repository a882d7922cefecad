"""Request bodies (pydantic, unknown fields refused) and the errors every route may answer."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from park.site import EnterpriseState


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        # every text ends up in PostgreSQL (a command row, an alarm event): refused here with a clear 422,
        # not by the database as a 503
        if isinstance(v, str):
            if "\x00" in v:
                raise ValueError("must not contain NUL (\\u0000) characters")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (no lone surrogate characters)") from None
        return v


class AckBody(Body):
    by: str = Field(min_length=1, max_length=100, description="who acknowledges (name)")
    note: str | None = Field(default=None, max_length=1000)


class ResolveBody(Body):
    by: str = Field(min_length=1, max_length=100)
    cause: str = Field(min_length=1, max_length=2000, description="原因")
    action: str = Field(min_length=1, max_length=2000, description="处置措施")


class ShelveBody(Body):
    by: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=1000)
    until: AwareDatetime = Field(description="expiry, with a time zone; at most 24 h ahead")


class UnshelveBody(Body):
    by: str = Field(min_length=1, max_length=100)


class StatusBody(Body):
    state: EnterpriseState
    by: str = Field(min_length=1, max_length=100)


class HandoverBody(Body):
    handed_over_by: str = Field(min_length=1, max_length=100, description="交班人")
    taken_over_by: str = Field(min_length=1, max_length=100, description="接班人")
    note: str | None = Field(default=None, max_length=2000, description="交接事项")


def _err(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"example": {"detail": text}}}}


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _err("no token, or an invalid or revoked one"),
    403: _err("outside the token's unit"),
    413: _err("request body over the limit"),
    429: _err("too many failed tokens from this address"),
}
COMMAND_ERRORS: dict[int | str, dict[str, Any]] = AUTH_ERRORS | {
    404: _err("no such alarm"),
    409: _err("not possible in the alarm's state"),
    503: _err("the database is away; retry after the Retry-After seconds"),
}
