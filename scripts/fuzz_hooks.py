"""schemathesis checks for scripts/fuzz.sh (loaded with SCHEMATHESIS_HOOKS=fuzz_hooks).

Two built-in checks are replaced by stricter twins that know what no schema can say: answers
that depend on state or on two fields together. Each tolerance below is one documented
answer (docs/api.md), tolerated only in the situation that causes it; anything else fails as
the built-in check would fail it.
"""

import schemathesis
from schemathesis.specs.openapi.checks import is_unexpected_http_status_case


def _code(response):
    try:
        return (response.json() or {}).get("code")
    except ValueError:
        return None


def _present(mapping, *names):
    mapping = {key.lower(): value for key, value in (mapping or {}).items()}
    return all(name.lower() in mapping for name in names)


def _state_dependent(case, status, code):
    """A refusal of a well-formed request that depends on state or on two fields at once."""
    body = case.body if isinstance(case.body, dict) else {}
    # The same key was sent before with another request (per caller, for 24 h): 422 by the
    # IETF Idempotency-Key draft. The fuzzer draws keys from a small space and reuses them.
    if (status, code) == (422, "idempotency-key-reused"):
        return True
    # `If-Match` and `expected_version` both given, and different.
    if (status, code) == (400, "invalid-header"):
        return _present(case.headers, "If-Match") and "expected_version" in body
    if (status, code) == (400, "invalid-query"):
        # A cursor is opaque: only one `next_cursor` handed out is valid.
        if _present(case.query, "cursor"):
            return True
        # `min_version` and `as_of` exclude each other.
        return _present(case.query, "min_version", "as_of")
    return False


@schemathesis.check
def valid_requests_accepted(ctx, response, case):
    """positive_data_acceptance, less the state-dependent refusals above."""
    meta = case.meta
    if meta is None or is_unexpected_http_status_case(case):
        return None
    if not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status in (401, 403, 404, 409, 429) or status >= 500:
        return None
    if _state_dependent(case, status, _code(response)):
        return None
    raise AssertionError(f"Valid data should have been accepted: {status} {_code(response)}")


@schemathesis.check
def no_server_error(ctx, response, case):
    """not_a_server_error, less `503 not-yet-projected`: a read-your-writes read of a version
    the projector has not applied (the fuzzer asks for versions no delivery has) answers it
    after its wait, by design; every other 5xx fails."""
    status = response.status_code
    if status < 500:
        return None
    if (status, _code(response)) == (503, "not-yet-projected") and _present(case.query, "min_version"):
        return None
    raise AssertionError(f"Server error: {status} {_code(response)}")
