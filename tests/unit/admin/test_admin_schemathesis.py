"""Property-based tests of the admin API against its own OpenAPI schema (schemathesis).

Every documented operation gets generated requests, valid and invalid; schemathesis' default
checks then hold: never a 5xx, documented status codes, content types and response bodies.
The app has a token configured and the test sends it, so PUT /api/rules really compiles and
swaps generated rule sets; schemathesis also sends requests without it (ignored_auth check).
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import negative_data_rejection

from audit_guard.admin import AdminState, create_app
from audit_guard.rules import RuleRegistry
from audit_guard.telemetry import BatchStats

TOKEN = "schemathesis-token"


def _app():  # noqa: ANN202 - a FastAPI app
    state = AdminState(flags_buffer=50)
    state.mark_receiver_started()
    state.record(BatchStats(
        records=Counter({"nginx": 3}),
        flagged=[{"time_unix_nano": None, "source": "nginx", "trace_id": "ab" * 16,
                  "span_id": "cd" * 8, "flags": ["rule:auth_failure"], "user_id": "u1",
                  "app_id": None, "method": "GET", "path": "/v1/x", "status": 401}],
        lags_s={"nginx": [0.1]}))
    return create_app(state, RuleRegistry(), token=TOKEN)


# A rule set can be well formed by the schema yet refused (a `when` that is not JMESPath): a
# 422 is the documented answer there, so it counts as acceptance of valid data on the two rules
# endpoints (and only there).
_CONFIG = SchemathesisConfig.from_dict({"operations": [{
    "include-path-regex": "^/api/rules",
    "checks": {"positive_data_acceptance": {
        "expected-statuses": ["2xx", "401", "403", "422"]}},
}]})
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), config=_CONFIG)


@schema.parametrize()
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_admin_api_conforms_to_its_schema(case) -> None:  # noqa: ANN001
    components = case.meta.components if case.meta else {}
    header = components.get(ParameterLocation.HEADER)
    body = components.get(ParameterLocation.BODY)
    # The real token, unless schemathesis made the Authorization header invalid on purpose (it
    # then expects a refusal, and gets one: the test must not repair the header).
    headers = ({} if header is not None and header.mode == GenerationMode.NEGATIVE
               else {"Authorization": f"Bearer {TOKEN}"})
    excluded = []
    if (body is not None and body.mode == GenerationMode.NEGATIVE
            and (case.media_type or "").startswith("text/")):
        # Any text is a valid text/plain body: a "type" violation schemathesis makes of one (an
        # array, sent as the text "[]") is still a valid YAML rule set, rightly accepted.
        excluded.append(negative_data_rejection)
    response = case.call_and_validate(headers=headers, excluded_checks=excluded)
    assert response.status_code < 500, response.text
