#!/usr/bin/env python3
"""Issue 11 benchmark: does sharing the HTTPS port with TURN cost anything that matters?

One daemon serves HTTPS on one port with the relay's front door on it (turn.on_https_port) and
also a dedicated TURN-over-TLS port (turn.tls_listen), both with the same certificate. In one
run, alternating, coturn's turnutils_uclient relays over TLS through the shared HTTPS port, then
through the dedicated port, while a client makes HTTPS requests (a new TLS connection each, so
every request pays the first-bytes detection) to the HTTPS port. Phases:

  idle       HTTPS requests only (no TURN traffic)
  shared     TURN over TLS on the HTTPS port + HTTPS requests
  dedicated  TURN over TLS on turn.tls_listen + HTTPS requests

Per phase: HTTPS request latency (connect + handshake + GET /healthz + reply; p50, p90, p99),
relayed packets (both directions, from /metrics) per CPU-second of the daemon (utime+stime of
/proc/PID/stat), and the busy cores of the whole machine (non-idle jiffies of /proc/stat per
second of wall time), so a phase that ran beside other work can be told apart.

The daemon's CPU covers the paced HTTPS requests too (40/s in every phase); the last CPU column
takes out their share, estimated from the idle phase.

usage: bench/front-door/run.py [--parley target/debug/parley] [--rounds 2] [--out FILE]
Needs turnutils_uclient and turnutils_peer (Debian package coturn) and openssl.
"""

import argparse
import http.client
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

SECRET = "bench-front-door"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def proc_cpu_secs(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def machine_busy_jiffies():
    values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle


class Daemon:
    def __init__(self, parley, workdir):
        self.workdir = workdir
        self.https = free_port()
        self.turn = free_port()
        self.tls = free_port()
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-days", "2", "-keyout", key, "-out", cert],
            check=True, capture_output=True)
        self.cert = cert
        low = 30000 + (self.turn % 200) * 100
        config = os.path.join(workdir, "parley.toml")
        with open(config, "w") as f:
            f.write(f"""[http]
listen = "127.0.0.1:{self.https}"
[tls]
enabled = true
cert = "{cert}"
key = "{key}"
[storage]
data_dir = "{workdir}/data"
[log]
level = "warn"
[turn]
listen = "127.0.0.1:{self.turn}"
tls_listen = "127.0.0.1:{self.tls}"
on_https_port = true
secret = "{SECRET}"
relay_ports = "{low}-{low + 99}"
allowed_peer_ranges = ["127.0.0.0/8"]
max_allocations_per_user = 100
""")
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        self.log = open(os.path.join(workdir, "daemon.log"), "w")
        self.child = subprocess.Popen([parley, "--config", config, "serve"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=self.log)
        self.context = ssl.create_default_context(cafile=cert)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("parley did not become ready; see " + self.log.name)

    def get(self, path):
        connection = http.client.HTTPSConnection("127.0.0.1", self.https, context=self.context,
                                                 timeout=10)
        try:
            connection.request("GET", path, headers={"Connection": "close"})
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def relayed_packets(self):
        text = self.get("/metrics")[1]
        total = 0
        for name in ("parley_turn_relayed_packets_to_peers_total",
                     "parley_turn_relayed_packets_from_peers_total"):
            total += int(re.search(rf"^{name} (\d+)$", text, re.M).group(1))
        return total

    def stop(self):
        self.child.send_signal(signal.SIGTERM)
        try:
            self.child.wait(10)
        except subprocess.TimeoutExpired:
            self.child.kill()


def https_sampler(daemon, stop, latencies, rate=40):
    # Paced (not back to back), so every phase asks the daemon for the same HTTPS work per
    # second and the CPU figures compare.
    next_at = time.perf_counter()
    while not stop.is_set():
        started = time.perf_counter()
        status, _ = daemon.get("/healthz")
        latencies.append(time.perf_counter() - started)
        assert status == 200
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.perf_counter()))


def uclient(port, peer_port):
    # 10 TLS allocations with a channel each, 1000 messages of 120 bytes every 5 ms per client.
    out = subprocess.run(
        ["timeout", "120", "turnutils_uclient", "-t", "-S", "-c", "-e", "127.0.0.1",
         "-r", str(peer_port), "-p", str(port), "-n", "1000", "-m", "10", "-l", "120",
         "-z", "5", "-W", SECRET, "127.0.0.1"],
        capture_output=True, text=True)
    text = out.stdout + out.stderr
    totals = re.findall(r"tot_send_msgs=\s*(\d+)\s*,\s*tot_recv_msgs=\s*(\d+)", text)
    if not totals:
        raise SystemExit("uclient failed:\n" + text[-2000:])
    return int(totals[-1][0]), int(totals[-1][1])


def phase(daemon, name, turn_port, peer_port, idle_secs=8.0):
    stop = threading.Event()
    latencies = []
    sampler = threading.Thread(target=https_sampler, args=(daemon, stop, latencies))
    packets0 = daemon.relayed_packets()
    cpu0, busy0, wall0 = proc_cpu_secs(daemon.child.pid), machine_busy_jiffies(), time.time()
    sampler.start()
    sent = received = 0
    if turn_port is None:
        time.sleep(idle_secs)
    else:
        sent, received = uclient(turn_port, peer_port)
    stop.set()
    sampler.join()
    cpu1, busy1, wall1 = proc_cpu_secs(daemon.child.pid), machine_busy_jiffies(), time.time()
    packets = daemon.relayed_packets() - packets0
    latencies.sort()
    q = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000
    cpu = cpu1 - cpu0
    return {
        "phase": name,
        "requests": len(latencies),
        "p50": q(0.50), "p90": q(0.90), "p99": q(0.99),
        "sent": sent, "received": received,
        "packets": packets,
        "cpu": cpu,
        "pps_per_cpu": packets / cpu if cpu > 0 and packets else 0,
        "busy_cores": (busy1 - busy0) / TICKS / (wall1 - wall0),
        "wall": wall1 - wall0,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--parley", default="target/debug/parley")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        peer_port = free_port()
        peer = subprocess.Popen(["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon = Daemon(args.parley, workdir)
        try:
            time.sleep(0.5)
            rows.append(phase(daemon, "idle", None, peer_port))
            for _ in range(args.rounds):
                rows.append(phase(daemon, "shared", daemon.https, peer_port))
                rows.append(phase(daemon, "dedicated", daemon.tls, peer_port))
        finally:
            daemon.stop()
            peer.kill()
            peer.wait()
    idle = rows[0]
    https_cpu_per_request = idle["cpu"] / max(1, idle["requests"])
    for r in rows:
        turn_cpu = r["cpu"] - r["requests"] * https_cpu_per_request
        r["pps_per_turn_cpu"] = r["packets"] / turn_cpu if r["packets"] and turn_cpu > 0 else 0
    load = open("/proc/loadavg").read().split()[:3]
    lines = [
        f"binary: {args.parley}; load average before the summary: {' '.join(load)}",
        "",
        "| phase | HTTPS requests | p50 ms | p90 ms | p99 ms | uclient sent/received | relayed packets | daemon CPU s | packets per CPU-second | the same, HTTPS CPU taken out | busy cores (machine) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['phase']} | {r['requests']} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} "
            f"| {r['sent']}/{r['received']} | {r['packets']} | {r['cpu']:.2f} "
            f"| {r['pps_per_cpu']:.0f} | {r['pps_per_turn_cpu']:.0f} | {r['busy_cores']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    lost = [r for r in rows if r["sent"] != r["received"]]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
