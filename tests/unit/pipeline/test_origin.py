"""Where a record came from reaches its span (issue #16): the collector's resource attributes
(host, container, k8s ids) and the record's `log.file.path` become the span's resource beside
`service.name`, as they came; records of different resources or files get different resources;
a retried request gives the same bytes."""

from __future__ import annotations

import orjson
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from audit_guard.config import load_settings
from audit_guard.pipeline import Pipeline

T0 = 1_764_165_600


def rid(i: int) -> str:
    return f"4bf92f35{i:024x}"


def _line(i: int) -> str:
    return orjson.dumps({
        "msec": f"{T0 + i}.000", "request_id": rid(i), "request_method": "GET",
        "request_uri": f"/v1/datasets/d{i}/documents", "status": "200", "user_id": "u1",
        "app_id": "a1", "request_completion": "OK", "body_bytes_sent": 10,
        "sent_http_content_length": "10", "request_time": "0.010"}).decode()


def _request(resources: list[tuple[dict[str, str], list[tuple[str, str]]]]
             ) -> ExportLogsServiceRequest:
    """resources: [(resource attributes, [(file path, line)])]."""
    request = ExportLogsServiceRequest()
    for attributes, records in resources:
        resource_logs = request.resource_logs.add()
        for key, value in {"audit.source": "nginx_access", **attributes}.items():
            kv = resource_logs.resource.attributes.add()
            kv.key, kv.value.string_value = key, value
        scope = resource_logs.scope_logs.add()
        for path, line in records:
            record = scope.log_records.add()
            record.body.string_value = line
            kv = record.attributes.add()
            kv.key, kv.value.string_value = "log.file.path", path
    return request


def _resources(out: bytes) -> list[tuple[dict[str, str], list[str]]]:
    """[(resource attributes, [the request ids (trace ids) of its spans])]."""
    traces = ExportTraceServiceRequest.FromString(out)
    return [({kv.key: kv.value.string_value for kv in rs.resource.attributes},
             [span.trace_id.hex() for ss in rs.scope_spans for span in ss.spans])
            for rs in traces.resource_spans]


def test_resource_attributes_and_file_path_reach_the_span_resource() -> None:
    request = _request([
        ({"host.name": "web-1", "container.id": "c" * 64},
         [("/var/log/nginx/audit.json.log", _line(i)) for i in range(3)]),
        ({"host.name": "web-2"}, [("/var/log/nginx/audit.json.log", _line(3))]),
    ])
    out, count = Pipeline(load_settings()).process_logs(request, (T0 + 10) * 10**9)
    assert count == 4
    assert _resources(out) == [
        ({"service.name": "nginx", "host.name": "web-1", "container.id": "c" * 64,
          "log.file.path": "/var/log/nginx/audit.json.log"}, [rid(i) for i in range(3)]),
        ({"service.name": "nginx", "host.name": "web-2",
          "log.file.path": "/var/log/nginx/audit.json.log"}, [rid(3)]),
    ]


def test_records_of_several_files_in_one_batch_are_split_by_file() -> None:
    live, rotated = "/var/log/nginx/audit.json.log", "/var/log/nginx/audit.json.log.1"
    # The middle record differs from the first and the last: the batch is read record by record.
    paths = [rotated, rotated, live, rotated, rotated]
    request = _request([({}, [(p, _line(i)) for i, p in enumerate(paths)])])
    out, _ = Pipeline(load_settings()).process_logs(request, (T0 + 10) * 10**9)
    found = _resources(out)
    assert [(r["log.file.path"], ids) for r, ids in found] == [
        (rotated, [rid(0), rid(1)]), (live, [rid(2)]),
        (rotated, [rid(3), rid(4)])]


def test_a_retried_request_gives_the_same_bytes_with_origins() -> None:
    request = _request([
        ({"host.name": "web-1"}, [("/a.log", _line(i)) for i in range(2)]),
        ({"host.name": "web-2"}, [("/b.log", _line(i)) for i in range(2, 4)]),
    ])
    pipeline = Pipeline(load_settings())
    first, _ = pipeline.process_logs(request, (T0 + 10) * 10**9)
    again, _ = pipeline.process_logs(request, (T0 + 20) * 10**9)
    assert again == first


def test_records_without_an_origin_keep_service_name_alone() -> None:
    request = ExportLogsServiceRequest()
    request.resource_logs.add().scope_logs.add().log_records.add().body.string_value = _line(0)
    out, _ = Pipeline(load_settings()).process_logs(request, (T0 + 10) * 10**9)
    assert _resources(out) == [({"service.name": "nginx"}, [rid(0)])]


def test_a_request_split_one_record_per_resource_gives_the_spans_of_the_whole() -> None:
    """The collector's load_balancing exporter (scale-out) sends each record in a ResourceLogs
    of its own: consecutive ones of the same resource are one run (one span resource), and the
    spans are byte for byte those of the same records sent together."""
    web1 = {"host.name": "web-1"}
    path = "/var/log/nginx/audit.json.log"
    whole = _request([(web1, [(path, _line(i)) for i in range(4)]),
                      ({"host.name": "web-2"}, [(path, _line(4))])])
    split = _request([(web1, [(path, _line(i))]) for i in range(4)]
                     + [({"host.name": "web-2"}, [(path, _line(4))])])
    now = (T0 + 10) * 10**9
    out_whole, _ = Pipeline(load_settings()).process_logs(whole, now)
    out_split, _ = Pipeline(load_settings()).process_logs(split, now)
    assert out_split == out_whole
    assert [len(ids) for _, ids in _resources(out_split)] == [4, 1]
