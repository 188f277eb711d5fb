"""POST /api/membership-change: the operator says the scale-out ring changed.

For the collector's static resolver, whose list of processors audit-guard cannot watch: call it
on every instance when you add or remove one (with reconcile.membership_dns set, instances
notice DNS/Kubernetes changes themselves). For reconcile.membership_grace_s around the call, a
request without its app record is counted instead of reported `missing_record`
(audit_guard.correlate.membership). It changes what is reported, so it needs the bearer token
like PUT /api/rules. `serve` puts the watch in the admin state (`AdminState.membership`, which
/api/status shows); 404 while reconciliation is off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from .errors import AdminError, error_responses
from .state import AdminState

__all__ = ["MembershipChangeOut", "add_membership_routes"]


class MembershipChangeOut(BaseModel):
    change_unix: float = Field(description="When the change was recorded (Unix seconds).")
    grace_s: float = Field(description="reconcile.membership_grace_s: missing_record reports "
                           "of requests logged this long either side of the change are kept "
                           "back and counted (audit_missing_suppressed_total).")
    grace_until_unix: float = Field(description="When the grace after this change ends.")
    suppressed_total: int = Field(description="Reports kept back since start, all changes.")
    note: str


def add_membership_routes(app: FastAPI, state: AdminState,
                          require_token: Callable[..., None]) -> None:
    @app.post("/api/membership-change", summary="Announce a membership change",
              tags=["scale-out"], response_model=MembershipChangeOut,
              dependencies=[Depends(require_token)], responses=error_responses(401, 403, 404),
              description="Records a change of the scale-out ring now (the static resolver's "
                          "list was edited): for reconcile.membership_grace_s either side of "
                          "it, requests without their app record are counted, not reported "
                          "missing_record. Call it on every instance. Needs the token. 404 "
                          "when reconciliation is off.")
    def membership_change() -> MembershipChangeOut:
        watch = state.membership
        if watch is None:
            raise AdminError(404, "reconciliation is off (reconcile.enabled: false): no "
                                  "missing_record reports to keep back")
        change = watch.changed(time.time_ns(), "api", "POST /api/membership-change")
        return MembershipChangeOut(
            change_unix=change.at_ns / 1e9, grace_s=watch.grace_s,
            grace_until_unix=change.at_ns / 1e9 + watch.grace_s,
            suppressed_total=watch.suppressed_total,
            note="call it on every instance; the grace also covers requests logged before "
                 "the call")
