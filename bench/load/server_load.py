#!/usr/bin/python3
"""shardtune-server under load, on loopback: a real server (its own temporary SQLite database, a
pool of 2 slots) and real clients in several processes (Debian's python3-grpcio, stubs generated
from proto/shardtune/v1/jobs.proto with grpc_python_plugin).

  - CLIENTS threads submit JOBS small jobs between them (CreateJob with an idempotency key each),
    and read jobs back (GetJob, three per CreateJob);
  - WATCHERS threads hold WatchJob streams open on jobs already created;
  - the main process pages through ListJobs (page_size 50) again and again while jobs are created;
  - with --kill-at F, the server is killed with SIGKILL once a fraction F of the jobs were
    acknowledged, and started again on the same database: clients retry with their keys.

The jobs: a tiny Llama (2 layers, hidden size 64) on an 8-line token file, 2 steps on 1 rank.
Each is admitted for real (spec parsed, checked) and validated for real (the server runs
`shardtune-worker validate-data` on it, one at a time), and the pool runs two at a time: most of
the thousand wait VALIDATING or QUEUED during the run, which is the load a busy server carries
(a queue far longer than its pool), without a thousand trainings; the script cancels what is left
at the end.

Checks (exit status 1 when one fails): every CreateJob that returned OK names a job that exists
exactly once (ListJobs, and the database itself); a retried CreateJob with the same key returns
the same job (every key is retried once at the end, after any restart); no ListJobs pass lists a
row twice, out of order, or misses a row an earlier pass listed; PRAGMA integrity_check is "ok".
Reports p50/p99 of GetJob and CreateJob (client side, successful calls) and the server's RSS
(sampled every 0.5 s; its peak). No timing assertion: the figures are printed, and written with
--json-out.

Usage: server_load.py --bin BUILD/bin --src SOURCE_DIR [--jobs 1000 --clients 50 --watchers 100
       --kill-at 0.5 --time-limit 600 --json-out FILE]
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

RETRYABLE = None  # grpc status codes a client retries on (set after grpc is imported)
API_KEY = "key-load"


def generate_stubs(src, out):
    subprocess.run(["protoc", f"--proto_path={src}/proto", f"--python_out={out}", f"--grpc_out={out}",
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", "shardtune/v1/jobs.proto"], check=True)


def import_stubs(stub_dir):
    global RETRYABLE
    sys.path.insert(0, stub_dir)
    import grpc
    from shardtune.v1 import jobs_pb2, jobs_pb2_grpc
    RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
    return grpc, jobs_pb2, jobs_pb2_grpc


def spec_yaml(work, index):
    return (f"name: load-{index}\nlabels: {{suite: load}}\nmodel: {{path: {work}/base}}\n"
            f"data: {{train: {work}/train.jsonl, format: tokens}}\n"
            "training: {max_steps: 2, micro_batch_size: 1, global_batch_size: 1}\n"
            f"output: {{dir: {work}/out/{index}}}\nresources: {{ranks_per_node: 1}}\n")


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- client processes ----

def client_process(stub_dir, server, work, indexes, n_clients, n_watchers, deadline, acked_count, stop, results):
    """Creates the jobs of `indexes` from n_clients threads and holds n_watchers WatchJob streams;
    puts its results (latencies, acknowledged keys, counts) on `results`."""
    grpc, pb, pb_grpc = import_stubs(stub_dir)
    channel = grpc.insecure_channel(server)
    stub = pb_grpc.JobServiceStub(channel)
    auth = [("authorization", f"Bearer {API_KEY}")]
    lock = threading.Lock()
    out = {"create_ms": [], "get_ms": [], "acked": {}, "retries": 0, "errors": [], "events": 0, "streams": 0,
           "stream_errors": 0}
    known_ids = []
    calls = {}  # each watcher's current stream

    def create(index):
        request = pb.CreateJobRequest(spec_yaml=spec_yaml(work, index), idempotency_key=f"load-{index}")
        while time.time() < deadline:
            started = time.perf_counter()
            try:
                job = stub.CreateJob(request, metadata=auth, timeout=30)
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    with lock:
                        out["errors"].append(f"CreateJob load-{index}: {e.code()}: {e.details()}")
                    return
                with lock:
                    out["retries"] += 1
                time.sleep(0.2)
                continue
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                out["create_ms"].append(elapsed)
                out["acked"][f"load-{index}"] = job.id
                known_ids.append(job.id)
            with acked_count.get_lock():
                acked_count.value += 1
            return
        with lock:
            out["errors"].append(f"CreateJob load-{index}: not acknowledged before the time limit")

    def get(job_id):
        started = time.perf_counter()
        try:
            job = stub.GetJob(pb.GetJobRequest(id=job_id), metadata=auth, timeout=30)
        except grpc.RpcError as e:
            if e.code() not in RETRYABLE:
                with lock:
                    out["errors"].append(f"GetJob {job_id}: {e.code()}: {e.details()}")
            return
        with lock:
            out["get_ms"].append((time.perf_counter() - started) * 1000)
            if not job.name.startswith("load-"):
                out["errors"].append(f"GetJob {job_id}: a corrupted job: name {job.name!r}")

    def client(my_indexes):
        rng = random.Random(my_indexes[0] if my_indexes else 0)
        for index in my_indexes:
            create(index)
            for _ in range(3):
                with lock:
                    job_id = rng.choice(known_ids) if known_ids else None
                if job_id:
                    get(job_id)

    def watcher(seed):
        rng = random.Random(seed)
        while not stop.is_set() and time.time() < deadline:
            with lock:
                job_id = rng.choice(known_ids) if known_ids else None
            if job_id is None:
                time.sleep(0.1)
                continue
            call = stub.WatchJob(pb.WatchJobRequest(id=job_id), metadata=auth)
            with lock:
                out["streams"] += 1
                calls[seed] = call  # cancelled at the end
            try:
                for _ in call:
                    with lock:
                        out["events"] += 1
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE:
                    with lock:
                        out["errors"].append(f"WatchJob {job_id}: {e.code()}: {e.details()}")
                    return
                if not stop.is_set():  # not the cancel at the end
                    with lock:
                        out["stream_errors"] += 1
                time.sleep(0.2)  # the server restarting, or stopped by us: watch again

    shares = [indexes[i::n_clients] for i in range(n_clients)]
    threads = [threading.Thread(target=client, args=(share,)) for share in shares]
    watchers = [threading.Thread(target=watcher, args=(i,), daemon=True) for i in range(n_watchers)]
    for t in threads + watchers:
        t.start()
    for t in threads:
        t.join()
    stop.wait(max(0.0, deadline - time.time()))
    stop.set()
    with lock:
        for call in calls.values():
            call.cancel()
    for t in watchers:
        t.join(timeout=5)
    results.put(out)


# ---- the server ----

class Server:
    def __init__(self, bin_dir, work, port):
        self.bin_dir, self.work, self.port = bin_dir, work, port
        self.address = f"127.0.0.1:{port}"
        self.config = f"{work}/server.yaml"
        self.database = f"{work}/state/jobs.db"
        with open(self.config, "w") as f:
            f.write(f"listen: 127.0.0.1:{port}\ndatabase: {self.database}\n"
                    f"api_keys:\n  - {{key: {API_KEY}, tenant: load, role: user}}\n"
                    "local: {hosts: [{host: localhost, slots: 2}], extra_args: [--oversubscribe]}\n"
                    "retry: {max_attempts: 1}\ncancel_grace_s: 2\n")
        self.process = None
        self.rss_samples = []  # (seconds since the start, RSS in MiB)
        self.started = time.time()
        self._sampling = True
        threading.Thread(target=self._sample_rss, daemon=True).start()

    def start(self):
        log = open(f"{self.work}/server.log", "a")
        self.process = subprocess.Popen([f"{self.bin_dir}/shardtune-server", "--config", self.config],
                                        stdout=log, stderr=subprocess.STDOUT)
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise SystemExit(f"the server did not start; its log:\n{open(f'{self.work}/server.log').read()[-4000:]}")

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._sampling = False

    def _sample_rss(self):
        while self._sampling:
            p = self.process
            if p is not None and p.poll() is None:
                try:
                    with open(f"/proc/{p.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                self.rss_samples.append((time.time() - self.started, int(line.split()[1]) / 1024))
                except OSError:
                    pass
            time.sleep(0.5)

    def kill_job_processes(self):
        """Nothing a job of this server started may outlive the run (cf. tests/e2e/server_test.sh)."""
        marker = f"SHARDTUNE_SERVER=127.0.0.1:{self.port}".encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


# ---- ListJobs paging ----

def list_pass(stub, pb, auth, page_size=50):
    """One pass through every job, newest first: the ids in order, or None when a call failed
    (the server restarting)."""
    import grpc
    ids, token = [], ""
    while True:
        try:
            page = stub.ListJobs(pb.ListJobsRequest(page_size=page_size, page_token=token), metadata=auth, timeout=30)
        except grpc.RpcError:
            return None
        ids += [(j.create_time.ToMilliseconds(), j.id) for j in page.jobs]
        token = page.next_page_token
        if not token:
            return ids


def check_pass(ids, previous, problems):
    seen = set()
    for i, (created, job_id) in enumerate(ids):
        if job_id in seen:
            problems.append(f"ListJobs listed {job_id} twice in one pass")
        seen.add(job_id)
        if i and not (created, job_id) < ids[i - 1]:
            problems.append(f"ListJobs out of order at {job_id}")
    missing = previous - seen
    if missing:
        problems.append(f"ListJobs skipped {len(missing)} rows an earlier pass listed, e.g. {sorted(missing)[:3]}")
    return seen


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4, help="client processes (Python's GIL)")
    parser.add_argument("--kill-at", type=float, default=0, help="SIGKILL the server at this fraction acknowledged")
    parser.add_argument("--time-limit", type=float, default=600)
    parser.add_argument("--json-out")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args()


def make_fixtures(args, work):
    """The tiny model and its data (shared by every job)."""
    os.environ.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    subprocess.run([f"{args.bin}/shardtune", "init-model", "--config", f"{args.src}/examples/tiny-llama/config.json",
                    "--out", f"{work}/base", "--seed", "1", "--log-level", "warn"], check=True)
    with open(f"{work}/train.jsonl", "w") as f:
        for n in range(8):
            f.write(json.dumps({"input_ids": [1] + [3 + (n + i) % 61 for i in range(8)]}) + "\n")


def run_load(args, stub_dir, work, server, stub, pb, deadline, problems):
    """The clients in their processes, and ListJobs paged here meanwhile (with the kill, if asked);
    returns the clients' merged results, the pager's last pass and its pass count."""
    ctx = mp.get_context("spawn")  # no gRPC state crosses a fork
    acked_count, stop, results = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
    procs = []
    for p in range(args.processes):
        indexes = list(range(args.jobs))[p::args.processes]
        procs.append(ctx.Process(target=client_process, args=(
            stub_dir, server.address, work, indexes, max(1, args.clients // args.processes),
            max(1, args.watchers // args.processes), deadline, acked_count, stop, results)))
    for p in procs:
        p.start()
    auth = [("authorization", f"Bearer {API_KEY}")]
    previous, passes, killed = set(), 0, False
    while time.time() < deadline and acked_count.value < args.jobs and any(p.is_alive() for p in procs):
        if args.kill_at and not killed and acked_count.value >= args.kill_at * args.jobs:
            killed = True
            server.kill9()
            print(f"killed the server (SIGKILL) after {acked_count.value} jobs were acknowledged", flush=True)
            time.sleep(0.5)
            server.start()
            print("restarted it on the same database", flush=True)
        ids = list_pass(stub, pb, auth)
        if ids is not None:
            previous = check_pass(ids, previous, problems)
            passes += 1
    stop.set()
    outs = [results.get(timeout=max(60, deadline - time.time() + 60)) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    merged = {"create_ms": [], "get_ms": [], "errors": [], "acked": {}}
    counts = dict.fromkeys(("retries", "events", "streams", "stream_errors"), 0)
    for o in outs:
        for k in ("create_ms", "get_ms", "errors"):
            merged[k] += o[k]
        merged["acked"].update(o["acked"])
        for k in counts:
            counts[k] += o[k]
    merged.update(counts)
    problems += merged["errors"]
    return merged, previous, passes


def verify(work, server, stub, pb, grpc, acked, previous, problems):
    """Every acknowledged job exists exactly once and its key returns it again; then what is left
    is cancelled, the server stopped and its database checked. Returns how many keys returned the
    same job, and what PRAGMA integrity_check said."""
    auth = [("authorization", f"Bearer {API_KEY}")]
    ids = list_pass(stub, pb, auth, page_size=500)
    final = check_pass(ids or [], previous, problems)
    if set(acked.values()) != final:
        problems.append(f"acknowledged {len(acked)} jobs, ListJobs lists {len(final)}: missing "
                        f"{sorted(set(acked.values()) - final)[:3]}, extra {sorted(final - set(acked.values()))[:3]}")
    same = 0
    for key, job_id in acked.items():
        request = pb.CreateJobRequest(spec_yaml=spec_yaml(work, int(key.split("-")[1])), idempotency_key=key)
        try:
            again = stub.CreateJob(request, metadata=auth, timeout=30)
            same += again.id == job_id
            if again.id != job_id:
                problems.append(f"CreateJob retried with key {key} returned {again.id}, first {job_id}")
        except grpc.RpcError as e:
            problems.append(f"CreateJob retried with key {key}: {e.code()}: {e.details()}")
    for job_id in final:
        try:
            stub.CancelJob(pb.CancelJobRequest(id=job_id), metadata=auth, timeout=30)
        except grpc.RpcError:
            pass  # it has ended
    server.stop()
    server.kill_job_processes()
    db = sqlite3.connect(server.database)
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    rows, keys = db.execute("SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM jobs").fetchone()
    db.close()
    if integrity != "ok":
        problems.append(f"PRAGMA integrity_check: {integrity}")
    if rows != len(acked) or keys != len(acked):
        problems.append(f"the database holds {rows} jobs with {keys} keys; {len(acked)} were acknowledged")
    return same, integrity


def latency(values):
    return {"n": len(values), "p50": round(percentile(values, 0.5) or 0, 2), "p99": round(percentile(values, 0.99) or 0, 2)}


def main():
    args = parse_args()
    started = time.time()
    deadline = started + args.time_limit
    work = tempfile.mkdtemp(prefix="shardtune-load-")
    stub_dir = f"{work}/stubs"
    os.makedirs(stub_dir)
    generate_stubs(args.src, stub_dir)
    grpc, pb, pb_grpc = import_stubs(stub_dir)
    make_fixtures(args, work)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(args.bin, work, port)
    server.start()
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.JobServiceStub(channel)
    problems = []
    load_started = time.time()
    merged, previous, passes = run_load(args, stub_dir, work, server, stub, pb, deadline, problems)
    load_seconds = time.time() - load_started
    same, integrity = verify(work, server, stub, pb, grpc, merged["acked"], previous, problems)
    channel.close()
    rss = [mib for _, mib in server.rss_samples]
    report = {
        "jobs": args.jobs, "clients": args.clients, "watchers": args.watchers, "kill_at": args.kill_at,
        "acknowledged": len(merged["acked"]), "retries": merged["retries"], "same_job_on_retry": same,
        "load_seconds": round(load_seconds, 1), "creates_per_s": round(len(merged["create_ms"]) / load_seconds, 1),
        "create_ms": latency(merged["create_ms"]), "get_ms": latency(merged["get_ms"]),
        "list_passes": passes, "watch_streams": merged["streams"], "watch_events": merged["events"],
        "watch_streams_broken": merged["stream_errors"],
        "rss_mib": {"start": round(rss[0], 1) if rss else None, "peak": round(max(rss), 1) if rss else None,
                    "end": round(rss[-1], 1) if rss else None,
                    "every_10s": [round(m, 1) for _, m in server.rss_samples[::20]]},
        "integrity_check": integrity, "problems": problems[:20],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(text + "\n")
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        subprocess.run(["rm", "-rf", work])
    print("FAILED" if problems else "ok", f"({time.time() - started:.0f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
