#!/usr/bin/env python3
"""Prints a port P on 127.0.0.1 where P and the next COUNT - 1 ports (default 3) are free, below
the kernel's ephemeral range. Usage: free_port.py [COUNT]

The tests and the demo start servers on P (and P + 1, P + 2). A random port picked anywhere can
be in use already: another test's server, or the local port of an outgoing connection (MPI's, a
gRPC client's), which the kernel takes from the ephemeral range. The server then fails to start
with "Address already in use", and so does the test. The ports are free when this checks them;
they are not reserved."""
import random
import socket
import sys

count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
except (OSError, ValueError):
    ephemeral = 32768
low = 20000
high = ephemeral - count if ephemeral - count > low + 1000 else 30000


def free(port):
    sockets = []
    try:
        for p in range(port, port + count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in sockets:
            s.close()


for _ in range(500):
    port = random.randrange(low, high)
    if free(port):
        print(port)
        sys.exit(0)
sys.exit(f"free_port.py: no {count} free consecutive ports between {low} and {high}")
