#!/usr/bin/python3
"""A client in another language: Python stubs generated from proto/shardtune/v1/jobs.proto with
grpc_python_plugin, driving a shardtune-server with Debian's python3-grpcio: health and
reflection, create, watch and cancel a job.

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
sys.path.insert(0, out)

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
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
            "output": {"dir": output}, "training": {"max_step": 3}})
try:
    jobs.CreateJob(jobs_pb2.CreateJobRequest(spec_fields=bad), metadata=auth, timeout=30)
    raise AssertionError("a bad structured spec was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "did you mean 'max_steps'" in e.details(), e.details()
print("ok: a bad structured spec -> INVALID_ARGUMENT naming the key")
job = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec_fields=spec), metadata=auth, timeout=30)
assert job.status == jobs_pb2.VALIDATING, job
print(f"ok: created {job.id}")
running = False
log_lines = 0
for event in jobs.WatchJob(jobs_pb2.WatchJobRequest(id=job.id), metadata=auth, timeout=120):
    log_lines += event.kind == "log" and "[rank 0]" in event.message
    if event.kind == "progress" and event.job.step >= 3 and not running:
        running = True
        cancelled = jobs.CancelJob(jobs_pb2.JobRef(id=job.id), metadata=auth, timeout=30)
        print(f"ok: watched it run to step {event.job.step}; cancel requested")
    if event.job.status in (jobs_pb2.SUCCEEDED, jobs_pb2.FAILED, jobs_pb2.CANCELLED):
        break
final = jobs.GetJob(jobs_pb2.JobRef(id=job.id), metadata=auth, timeout=10)
assert running and final.status == jobs_pb2.CANCELLED, jobs_pb2.JobStatus.Name(final.status)
print("ok: the job ended CANCELLED")
assert log_lines > 0, "WatchJob streamed none of rank 0's log lines"
print(f"ok: WatchJob streamed {log_lines} of rank 0's log lines")
