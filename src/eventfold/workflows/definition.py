"""Workflow definitions: the models, and validation with a JSON pointer for every error.

:func:`parse` checks a whole definition and raises :class:`ValidationFailed`
(422) listing every problem at once, each with ``path`` a JSON pointer into the
definition: an unknown step kind, a ``$from`` / ``${…}`` naming a step that
does not come earlier, a trigger on a ``workflow.*`` (or any non-record) type,
an unknown ``when`` / ``if`` operator, an http URL refused by the SSRF rules
(:mod:`eventfold.egress`; a URL whose host is a ``${…}`` is checked when the
step runs), and every schema violation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventfold.egress import AllowList, EgressRefused, check_url
from eventfold.envelope import pydantic_errors
from eventfold.errors import FieldError, ValidationFailed
from eventfold.eventtypes.names import is_custom
from eventfold.ids import is_valid
from eventfold.workflows import conditions
from eventfold.workflows.context import check_reference, references

#: A workflow id: letters, digits, ``.``, ``_``, ``-`` (no ``:``, which run event ids use).
WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: A step id.
STEP_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: The built-in types a trigger may name: record events. A tenant's own registered
#: types may start runs too (whether one is registered is the route's to check).
TRIGGER_TYPES = ("record.upserted", "record.patched", "record.deleted")
#: Step kinds and whether their effect is retried per ``retry``.
KINDS = ("http", "record", "email", "delay", "approval")
MAX_STEPS = 50

Conditions = dict[str, dict[str, Any]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Retry(_Strict):
    """How often a failed http/email/record effect is tried, and the first pause (doubling)."""

    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_seconds: float = Field(default=1.0, ge=0, le=3600)


class Trigger(_Strict):
    """Which applied record events (or events of the tenant's own types) start a run."""

    types: list[str] = Field(min_length=1, max_length=3)
    collection: str = Field(min_length=1, max_length=63)
    when: Conditions = Field(default_factory=dict)


class _Step(_Strict):
    id: str = Field(pattern=STEP_ID_PATTERN)
    if_: Conditions | None = Field(default=None, alias="if")


#: The sealing purpose of an http step's headers (they may carry credentials).
HEADERS_PURPOSE = "workflow.headers"
#: What a sealed header's value reads as in a stored or served definition.
SEALED = "(sealed)"


class HttpStep(_Step):
    """Calls a URL with ``Idempotency-Key: <run id>:<step id>``."""

    kind: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    url: str = Field(min_length=8, max_length=2048)
    #: As sent; stored and served with every value :data:`SEALED` (see :func:`seal_headers`).
    headers: dict[str, str] | None = Field(default=None, max_length=50)
    #: The headers sealed (AES-GCM, :data:`HEADERS_PURPOSE`): set by the server only.
    headers_sealed: str | None = Field(default=None, max_length=50_000)
    body: Any = None
    retry: Retry = Field(default_factory=Retry)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


class RecordStep(_Step):
    """Publishes a record event with an id fixed by run and step."""

    kind: Literal["record"]
    op: Literal["upsert", "patch", "delete"]
    collection: str = Field(min_length=1, max_length=200)
    record: str = Field(min_length=1, max_length=300)
    data: Any = None
    retry: Retry = Field(default_factory=Retry)


class EmailStep(_Step):
    """Sends a mail through ``EVENTFOLD_SMTP_URL`` with a Message-ID fixed by run and step."""

    kind: Literal["email"]
    to: list[str] = Field(min_length=1, max_length=50)
    subject: str = Field(max_length=998)
    text: str = Field(max_length=100_000)
    retry: Retry = Field(default_factory=Retry)


class DelayStep(_Step):
    """Waits on a durable timer."""

    kind: Literal["delay"]
    seconds: float = Field(ge=0, le=366 * 86400)


class ApprovalStep(_Step):
    """Waits for approve or reject; a timeout fails it."""

    kind: Literal["approval"]
    timeout_seconds: float | None = Field(default=None, gt=0, le=366 * 86400)


Step = Annotated[
    HttpStep | RecordStep | EmailStep | DelayStep | ApprovalStep, Field(discriminator="kind")
]
_MODELS: dict[str, type[_Step]] = {
    "http": HttpStep,
    "record": RecordStep,
    "email": EmailStep,
    "delay": DelayStep,
    "approval": ApprovalStep,
}


class Definition(_Strict):
    """A whole workflow definition (the body of ``POST``/``PUT …/workflows``)."""

    id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    name: str = Field(default="", max_length=200)
    enabled: bool = True
    trigger: Trigger
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    def document(self) -> dict[str, Any]:
        """The definition as stored and served (``if`` by its name)."""
        return self.model_dump(mode="json", by_alias=True)


class _Top(_Strict):
    id: str = Field(pattern=WORKFLOW_ID_PATTERN)
    name: str = Field(default="", max_length=200)
    enabled: bool = True
    trigger: Trigger
    steps: list[Any] = Field(min_length=1, max_length=MAX_STEPS)


def parse(body: Any, allow: AllowList) -> Definition:
    """The definition in ``body``, or :class:`ValidationFailed` with every error's pointer."""
    if not isinstance(body, dict):
        raise ValidationFailed("invalid workflow", errors=[FieldError("/", "must be an object")])
    errors: list[FieldError] = []
    try:
        _Top.model_validate(body)
    except ValidationError as exc:
        # Steps and the trigger's own rules are checked below, with pointers of their own.
        errors += [
            e
            for e in pydantic_errors(exc)
            if not e.path.startswith(("/steps/", "/trigger/when", "/trigger/collection"))
            and not (e.path.startswith("/trigger/types/") and e.path.count("/") == 3)
        ]
    trigger = body.get("trigger")
    if isinstance(trigger, dict):
        errors += _check_trigger(trigger)
    steps = body.get("steps")
    if isinstance(steps, list):
        errors += _check_steps(steps[:MAX_STEPS], allow)
    if errors:
        raise ValidationFailed("invalid workflow definition", errors=errors)
    return Definition.model_validate(body)


def _check_trigger(trigger: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    types = trigger.get("types")
    for i, name in enumerate(types if isinstance(types, list) else []):
        at = f"/trigger/types/{i}"
        if not isinstance(name, str):
            errors.append(FieldError(at, "must be an event type"))
        elif name.startswith("workflow."):
            errors.append(FieldError(at, "workflow events cannot start workflows"))
        elif name not in TRIGGER_TYPES and not is_custom(name):
            errors.append(
                FieldError(
                    at,
                    f"must be one of {', '.join(TRIGGER_TYPES)}, or a tenant event type"
                    " (dotted lower-case, registered)",
                )
            )
    collection = trigger.get("collection")
    if not isinstance(collection, str) or not is_valid("collection", collection):
        errors.append(FieldError("/trigger/collection", "must be a valid collection name"))
    if "when" in trigger:
        errors += conditions.check(trigger["when"], "/trigger/when", pointers_only=False)
    return errors


def _check_steps(steps: list[Any], allow: AllowList) -> list[FieldError]:
    errors: list[FieldError] = []
    earlier: list[str] = []
    for i, raw in enumerate(steps):
        at = f"/steps/{i}"
        if not isinstance(raw, dict):
            errors.append(FieldError(at, "must be an object"))
            continue
        kind = raw.get("kind")
        model = _MODELS.get(kind) if isinstance(kind, str) else None
        if model is None:
            errors.append(FieldError(f"{at}/kind", f"unknown step kind; known: {', '.join(KINDS)}"))
        else:
            try:
                model.model_validate(raw)
            except ValidationError as exc:
                errors += pydantic_errors(exc, prefix=at)
        step_id = raw.get("id")
        if isinstance(step_id, str) and step_id in earlier:
            errors.append(FieldError(f"{at}/id", f"step id {step_id!r} is used twice"))
        if "if" in raw:
            errors += conditions.check(raw["if"], f"{at}/if", pointers_only=True)
            if isinstance(raw["if"], dict):
                for field in raw["if"]:
                    problem = check_reference(field, earlier) if field.startswith("/") else None
                    if problem:
                        errors.append(FieldError(f"{at}/if/{_esc(field)}", problem))
        for key, value in raw.items():
            if key in ("id", "kind", "if"):
                continue
            for path, ref in references(value, f"{at}/{_esc(key)}"):
                problem = check_reference(ref, earlier)
                if problem:
                    errors.append(FieldError(path, problem))
        if "headers_sealed" in raw:
            errors.append(FieldError(f"{at}/headers_sealed", "is set by the server: send headers"))
        if kind == "http" and isinstance(raw.get("url"), str) and "${" not in raw["url"]:
            try:
                check_url(raw["url"], allow)
            except EgressRefused as exc:
                errors.append(FieldError(f"{at}/url", str(exc)))
        if kind == "record":
            errors += _check_names(raw, at)
        if isinstance(step_id, str):
            earlier.append(step_id)
    return errors


def _check_names(raw: dict[str, Any], at: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for key, rule in (("collection", "collection"), ("record", "id")):
        value = raw.get(key)
        if isinstance(value, str) and "${" not in value and not is_valid(rule, value):
            errors.append(FieldError(f"{at}/{key}", f"not a valid {key} name"))
    return errors


def _esc(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def seal_headers(definition: Definition, seal: Callable[[bytes], str]) -> Definition:
    """``definition`` with each http step's headers sealed by ``seal`` into
    ``headers_sealed`` and their values shown as :data:`SEALED`: a header may carry a
    credential, and neither the log nor a read ever holds it in plain text."""
    steps: list[Any] = []
    for step in definition.steps:
        if isinstance(step, HttpStep) and step.headers:
            sealed = seal(orjson.dumps(step.headers))
            step = step.model_copy(
                update={"headers": dict.fromkeys(step.headers, SEALED), "headers_sealed": sealed}
            )
        steps.append(step)
    return definition.model_copy(update={"steps": steps})


def served(document: dict[str, Any]) -> dict[str, Any]:
    """A stored definition as reads serve it: without the sealed headers."""
    steps = [{k: v for k, v in s.items() if k != "headers_sealed"} for s in document["steps"]]
    return {**document, "steps": steps}
