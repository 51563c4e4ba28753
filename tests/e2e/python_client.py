#!/usr/bin/python3
"""A client in another language: Python stubs generated from proto/shardtune/v1/jobs.proto with
grpc_python_plugin, driving a shardtune-server with Debian's python3-grpcio: health and
reflection, create, watch and cancel a job, a refused spec's field violations (a
google.rpc.BadRequest in the status details), and ListJobEvents page by page.

The job spec goes as structured fields (a google.protobuf.Struct), not as YAML text.

Usage: python_client.py PROTO_DIR SERVER TOKEN MODEL_DIR TRAIN_JSONL OUTPUT_DIR
"""
import subprocess
import sys
import tempfile

proto_dir, server, token, model, train, output = sys.argv[1:7]
out = tempfile.mkdtemp()
subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={out}", f"--grpc_out={out}",
                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "shardtune/v1/jobs.proto"], check=True)
subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={out}", "google/rpc/status.proto",
                "google/rpc/error_details.proto"], check=True)
sys.path.insert(0, out)

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from shardtune.v1 import jobs_pb2, jobs_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel(server)
auth = [("authorization", f"Bearer {token}")]

# grpc.health.v1: an empty HealthCheckRequest; SERVING is field 1 = 1.
health = channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
assert health == b"\x08\x01", f"health check answered {health!r}"
print("ok: health check says SERVING")
# Reflection lists the services (list_services is field 7 of the request).
reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
answers = b"".join(reflection(iter([b"\x3a\x00"]), timeout=10))
assert b"shardtune.v1.JobService" in answers, answers
print("ok: reflection lists shardtune.v1.JobService")

jobs = jobs_pb2_grpc.JobServiceStub(channel)
try:
    jobs.ListJobs(jobs_pb2.ListJobsRequest(), timeout=10)
    raise AssertionError("a call without a key was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
print("ok: no key -> UNAUTHENTICATED")

spec = struct_pb2.Struct()
spec.update({
    "name": "python",
    "model": {"path": model},
    "data": {"train": train, "format": "tokens"},
    "training": {"max_steps": 20000, "micro_batch_size": 2, "global_batch_size": 8},
    "sharding": {"zero_stage": 3},
    "output": {"dir": output},
    "resources": {"ranks_per_node": 2},
})
bad = struct_pb2.Struct()
bad.update({"name": "python", "model": {"path": model}, "data": {"train": train, "format": "tokens"},
            "output": {"dir": output}, "training": {"max_step": 3, "optimizer": {"lr": "fast"}}})
try:
    jobs.CreateJob(jobs_pb2.CreateJobRequest(spec_fields=bad), metadata=auth, timeout=30)
    raise AssertionError("a bad structured spec was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "did you mean 'max_steps'" in e.details(), e.details()
    trailers = dict(e.trailing_metadata())
    assert trailers.get("shardtune-error-code") == "JOB_ERROR_CODE_INVALID_SPEC", trailers
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], status
    bad_request = error_details_pb2.BadRequest()
    assert len(status.details) == 1 and status.details[0].Unpack(bad_request), status
    violations = {v.field: v.description for v in bad_request.field_violations}
    assert set(violations) == {"training.max_step", "training.optimizer.lr"}, violations
    assert "did you mean 'max_steps'" in violations["training.max_step"], violations
print("ok: a bad structured spec -> INVALID_ARGUMENT with a BadRequest: " + ", ".join(sorted(violations)))
job = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec_fields=spec), metadata=auth, timeout=30)
assert job.status == jobs_pb2.JOB_STATUS_VALIDATING, job
assert job.create_time.seconds > 0 and not job.HasField("finish_time"), job
print(f"ok: created {job.id}")
running = False
log_lines = 0
ENDED = (jobs_pb2.JOB_STATUS_SUCCEEDED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED)
for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=auth, timeout=120):
    log_lines += event.kind == jobs_pb2.JOB_EVENT_KIND_LOG and "[rank 0]" in event.message
    if event.kind == jobs_pb2.JOB_EVENT_KIND_PROGRESS and event.job.step >= 3 and not running:
        running = True
        assert event.data["step"] == event.job.step and "train_loss" in event.data, event.data
        cancelled = jobs.CancelJob(jobs_pb2.CancelJobRequest(id=job.id), metadata=auth, timeout=30)
        print(f"ok: watched it run to step {event.job.step}; cancel requested")
    if event.job.status in ENDED:
        break
final = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), metadata=auth, timeout=10)
assert running and final.status == jobs_pb2.JOB_STATUS_CANCELLED, jobs_pb2.JobStatus.Name(final.status)
assert final.finish_time.ToMilliseconds() >= final.create_time.ToMilliseconds() > 0, final
print("ok: the job ended JOB_STATUS_CANCELLED")
assert log_lines > 0, "WatchJob streamed none of rank 0's log lines"
print(f"ok: WatchJob streamed {log_lines} of rank 0's log lines")

# Every event, page by page (3 a page): the same events as one big page, in order, none twice.
pages, seqs, token = 0, [], ""
while True:
    page = jobs.ListJobEvents(jobs_pb2.ListJobEventsRequest(job_id=job.id, page_size=3, page_token=token),
                              metadata=auth, timeout=10)
    pages += 1
    assert len(page.events) <= 3, len(page.events)
    seqs += [e.seq for e in page.events]
    token = page.next_page_token
    if not token:
        break
whole = jobs.ListJobEvents(jobs_pb2.ListJobEventsRequest(job_id=job.id, page_size=1000), metadata=auth, timeout=10)
assert seqs == [e.seq for e in whole.events] and not whole.next_page_token, (seqs, [e.seq for e in whole.events])
assert pages > 2 and seqs == sorted(set(seqs)), seqs
cancel = [e for e in whole.events if e.kind == jobs_pb2.JOB_EVENT_KIND_STATUS and e.job.status == ENDED[2]]
assert len(cancel) == 1 and cancel[0].level == jobs_pb2.JOB_EVENT_LEVEL_WARNING, cancel
print(f"ok: ListJobEvents pages through {len(seqs)} events in {pages} pages; the cancellation at level WARNING")
try:
    jobs.ListJobEvents(jobs_pb2.ListJobEventsRequest(job_id=job.id, page_size=3, page_token="bm90LWEtdG9rZW4"),
                       metadata=auth, timeout=10)
    raise AssertionError("a page token this server never gave was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
print("ok: a foreign page token -> INVALID_ARGUMENT")
