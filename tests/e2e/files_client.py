#!/usr/bin/python3
"""The Files API from another language: Python stubs generated from proto/shardtune/v1/*.proto with
grpc_python_plugin, driving a shardtune-server with Debian's python3-grpcio (files_test.sh).

  refusals  an upload whose SHA-256 does not match is refused; an upload killed mid-stream
            (kill -9 of the client) leaves no file behind
  job       upload, list, a job whose data.train is file:ID (structured spec), downloads

Usage: files_client.py PROTO_DIR SERVER MODE WORK_DIR   (key: $SHARDTUNE_TOKEN)
"""
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time

proto_dir, server, mode, work = sys.argv[1:5]
out = tempfile.mkdtemp()
subprocess.run(["protoc", f"--proto_path={proto_dir}", f"--python_out={out}", f"--grpc_out={out}",
                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "shardtune/v1/jobs.proto",
                "shardtune/v1/files.proto"], check=True)
sys.path.insert(0, out)

import grpc  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from shardtune.v1 import files_pb2, files_pb2_grpc, jobs_pb2, jobs_pb2_grpc  # noqa: E402

channel = grpc.insecure_channel(server)
auth = [("authorization", f"Bearer {os.environ['SHARDTUNE_TOKEN']}")]
files = files_pb2_grpc.FileServiceStub(channel)
jobs = jobs_pb2_grpc.JobServiceStub(channel)


def upload_messages(name, data, sha256=None, purpose="fine-tune", pause_after_first=0):
    yield files_pb2.UploadFileRequest(metadata=files_pb2.UploadFileRequest.Metadata(
        filename=name, purpose=purpose, bytes=len(data), sha256=sha256 or hashlib.sha256(data).hexdigest()))
    for i, start in enumerate(range(0, len(data), 1 << 20)):
        yield files_pb2.UploadFileRequest(chunk=data[start:start + (1 << 20)])
        if i == 0 and pause_after_first:
            time.sleep(pause_after_first)


def download(request):
    return b"".join(c.data for c in files.DownloadFile(request, metadata=auth, timeout=60))


def temporary_uploads():
    return [os.path.join(d, f) for d, _, names in os.walk(os.path.join(work, "state"))
            for f in names if f.startswith(".upload-")]


def refusals():
    data = b'{"text": "hello"}\n'
    try:
        files.UploadFile(upload_messages("x.jsonl", data, sha256="0" * 64), metadata=auth, timeout=30)
        raise AssertionError("an upload with the wrong SHA-256 was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
        assert "SHA-256" in e.details(), e.details()
    print("ok: a SHA-256 mismatch -> INVALID_ARGUMENT")
    # A client killed mid-stream: its temporary file exists while it streams, and is gone after.
    child = subprocess.Popen([sys.executable, __file__, proto_dir, server, "slow-upload", work])
    for _ in range(200):
        if temporary_uploads():
            break
        time.sleep(0.05)
    assert temporary_uploads(), "the slow upload never started"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    for _ in range(100):
        if not temporary_uploads():
            break
        time.sleep(0.05)
    assert not temporary_uploads(), temporary_uploads()
    print("ok: an upload killed mid-stream left nothing")


def slow_upload():
    data = os.urandom(100000)  # within the quota: only the kill stops it
    files.UploadFile(upload_messages("slow.bin", data, purpose="data", pause_after_first=60), metadata=auth, timeout=90)


def job():
    train = open(os.path.join(work, "train.jsonl"), "rb").read()
    uploaded = files.UploadFile(upload_messages("py-train.jsonl", train), metadata=auth, timeout=60)
    assert uploaded.status == "processed", uploaded
    assert uploaded.create_time.seconds > 0, uploaded
    assert uploaded.id in [f.id for f in files.ListFiles(files_pb2.ListFilesRequest(), metadata=auth).files]
    print(f"ok: uploaded and listed {uploaded.id}")
    spec = struct_pb2.Struct()
    spec.update({
        "name": "python-files",
        "model": {"path": os.path.join(work, "base")},
        "data": {"train": f"file:{uploaded.id}", "format": "tokens"},
        "training": {"max_steps": 4, "micro_batch_size": 2, "global_batch_size": 2},
        "output": {"dir": os.path.join(work, "runs", "python")},
        "resources": {"ranks_per_node": 1},
    })
    job = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec_fields=spec), metadata=auth, timeout=30)
    for _ in range(1200):
        job = jobs.GetJob(jobs_pb2.GetJobRequest(id=job.id), metadata=auth, timeout=10)
        if job.status in (jobs_pb2.JOB_STATUS_SUCCEEDED, jobs_pb2.JOB_STATUS_FAILED, jobs_pb2.JOB_STATUS_CANCELLED):
            break
        time.sleep(0.1)
    assert job.status == jobs_pb2.JOB_STATUS_SUCCEEDED, job
    print(f"ok: job {job.id} with data.train file:{uploaded.id} succeeded")
    metrics = download(files_pb2.DownloadFileRequest(job_id=job.id, artifact="metrics"))
    assert metrics == open(os.path.join(work, "runs", "python", "metrics.jsonl"), "rb").read()
    assert download(files_pb2.DownloadFileRequest(file_id=uploaded.id)) == train
    print("ok: downloaded metrics.jsonl and the uploaded file, byte for byte")


{"refusals": refusals, "slow-upload": slow_upload, "job": job}[mode]()
